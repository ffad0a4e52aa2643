"""Retrieval metrics equal pytrec_eval's; recommendation metrics equal hand computation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import pytrec_eval

from retrec.data.beir import load_retrieval_data
from retrec.index.bm25_index import BM25Index
from retrec.pipelines.eval.ir_metrics import evaluate_run, rec_metrics_from_ranks, target_ranks
from retrec.pipelines.eval.rec import sample_negatives
from tests.conftest import shared_dataset

TREC_NAMES = {"nDCG@10": "ndcg_cut_10", "RR@10": "recip_rank", "R@100": "recall_100",
              "R@1000": "recall_1000", "AP": "map"}


def _pytrec(qrels: dict, run: dict) -> dict[str, dict[str, float]]:
    # RR@10 is reciprocal rank over the top 10: evaluate recip_rank on the run truncated to 10.
    full = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100,1000", "map"}).evaluate(run)
    top10 = {q: dict(sorted(d.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)[:10]) for q, d in run.items()}
    rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)
    return {q: {**full[q], **rr[q]} for q in full}


def _check_equal(qrels: dict, run: dict) -> None:
    mean, per_query = evaluate_run(qrels, run)
    ref = _pytrec(qrels, run)
    for q in qrels:
        for ours, theirs in TREC_NAMES.items():
            assert per_query[q][ours] == pytest.approx(ref[q][theirs], abs=1e-9), (q, ours)
    for ours, theirs in TREC_NAMES.items():
        assert mean[ours] == pytest.approx(np.mean([ref[q][theirs] for q in qrels]), abs=1e-9)


def test_retrieval_metrics_equal_pytrec_eval_on_bm25_run(default_data: Path) -> None:
    data = load_retrieval_data(default_data)
    ids, texts = data.doc_texts()
    index = BM25Index.build(ids, texts)
    qt = data.query_texts()
    run = {q: dict(h) for q, h in zip(qt, index.search(list(qt.values()), 1000))}
    _check_equal(data.qrels_dict(), run)


def test_retrieval_metrics_equal_pytrec_eval_with_ties_and_grades() -> None:
    rng = np.random.default_rng(0)
    docs = [f"d{i}" for i in range(300)]
    qrels = {f"q{i}": {d: int(rng.integers(1, 3)) for d in rng.choice(docs, 5, replace=False)} for i in range(20)}
    run = {q: {d: float(rng.integers(0, 4)) for d in docs} for q in qrels}  # heavy ties
    _check_equal(qrels, run)


def test_retrieval_metrics_on_scifact_bm25_equal_pytrec_eval() -> None:
    data = load_retrieval_data(shared_dataset("scifact"))
    ids, texts = data.doc_texts()
    index = BM25Index.build(ids, texts)
    qt = data.query_texts()
    run = {q: dict(h) for q, h in zip(qt, index.search(list(qt.values()), 1000))}
    _check_equal(data.qrels_dict(), run)
    assert 0.65 <= evaluate_run(data.qrels_dict(), run)[0]["nDCG@10"] <= 0.70


def test_missing_query_counts_zero() -> None:
    mean, per_query = evaluate_run({"a": {"d": 1}, "b": {"d": 1}}, {"a": {"d": 1.0}})
    assert per_query["b"]["nDCG@10"] == 0.0 and mean["nDCG@10"] == pytest.approx(0.5)


def test_rec_metrics_hand_computed() -> None:
    # Three users; target ranks 0, 3 and 12 (0-based) among 20 candidates, no ties.
    scores = np.zeros((3, 20))
    scores[0] = np.arange(20)[::-1]          # target col 0 has the top score → rank 0
    scores[1] = np.arange(20)[::-1]          # target col 3 → rank 3
    scores[2] = np.arange(20)[::-1]          # target col 12 → rank 12
    g, t = target_ranks(scores, np.array([0, 3, 12]))
    assert g.tolist() == [0, 3, 12] and t.tolist() == [0, 0, 0]
    m = rec_metrics_from_ranks(g, t, 20, cutoffs=(1, 5, 10))
    assert m["HR@1"].tolist() == [1, 0, 0]
    assert m["HR@5"].tolist() == [1, 1, 0]
    assert m["HR@10"].tolist() == [1, 1, 0]
    assert m["NDCG@10"] == pytest.approx([1.0, 1 / np.log2(5), 0.0])
    assert m["MRR"] == pytest.approx([1.0, 1 / 4, 1 / 13])


def test_rec_ties_use_expected_rank() -> None:
    # Everything tied among 4 candidates: the target is equally likely at ranks 0..3.
    g, t = target_ranks(np.ones((1, 4)), np.array([2]))
    assert (g[0], t[0]) == (0, 3)
    m = rec_metrics_from_ranks(g, t, 4, cutoffs=(1, 2))
    assert m["HR@1"][0] == pytest.approx(0.25)
    assert m["HR@2"][0] == pytest.approx(0.5)
    assert m["NDCG@2"][0] == pytest.approx((1 + 1 / np.log2(3)) / 4)
    assert m["MRR"][0] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)


def test_sampled_negatives_are_distinct_unseen_and_follow_popularity() -> None:
    seen = [{0, 1, 2}, {5}]
    neg = sample_negatives(seen, 200, 100, None, seed=1)
    for row, s in zip(neg, seen):
        assert len(set(row.tolist())) == 100 and not set(row.tolist()) & s
    pop = np.ones(200)
    pop[:20] = 1000.0
    neg = sample_negatives([set()] * 50, 200, 30, pop, seed=2)
    assert np.mean(neg < 20) > 0.5  # the 20 popular items dominate the draws
    with pytest.raises(ValueError, match="unseen items"):
        sample_negatives([set(range(150))], 200, 100, None, seed=0)
