"""Cross-encoder training: groups never hold judged documents as negatives; a tiny run exports a verified
bundle that `retrec eval --rerank` uses."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from retrec.bundle import load_bundle
from retrec.pipelines.train.text.config import RerankerTrainConfig
from retrec.pipelines.train.text.data import Miners, TrainingSet
from retrec.pipelines.train.text.reranker import choose_first_stage_weight, plan_epoch, train_reranker

TINY = {"batch_size": 2, "group_size": 3, "epochs": 1, "max_length": 32, "dev_max_queries": 4, "dev_candidates": 4,
        "checkpoint_every": 1, "max_minutes": None}


@pytest.fixture(scope="module")
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RETREC_CACHE", str(tmp_path_factory.mktemp("retrec-cache-reranker")))
        yield


class _Everything:
    """A miner whose candidates are every document in order (judged ones included, before filtering)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def candidates(self, query_id: str, depth: int, exclude: np.ndarray) -> np.ndarray:
        rows = np.arange(self.n)
        return rows[~np.isin(rows, exclude)]


def test_groups_hold_one_positive_first_and_no_judged_negative() -> None:
    qrels = {"q0": {0: 2, 1: 1, 2: 0}, "q1": {3: 1}, "q2": {4: 1, 5: 1}}
    ts = TrainingSet(doc_ids=[f"d{i}" for i in range(8)], doc_texts=["t"] * 8, query_ids=["q0", "q1", "q2"],
                     positives={q: np.array(sorted(r for r, v in rel.items() if v > 0)) for q, rel in qrels.items()},
                     dev_ids=[], dev_qrels={}, query_texts={q: q for q in qrels}, qrels_rows=qrels)
    cfg = RerankerTrainConfig(batch_size=2, group_size=4)
    miners = Miners(bm25=None, dense=None)  # type: ignore[arg-type]
    miners.candidates = _Everything(8).candidates  # type: ignore[method-assign]
    for epoch in range(20):
        for group in plan_epoch(epoch, ts, cfg, miners):
            assert group.docs.shape == (len(group.queries), 4)
            for q, row in zip(group.queries, group.docs):
                assert qrels[q].get(int(row[0]), 0) > 0  # the positive, judged relevant
                assert all(qrels[q].get(int(d), 0) <= 0 for d in row[1:])  # no judged-relevant negative


def test_tiny_training_exports_a_verified_reranker_and_eval_reranks(tiny_data: Path, tmp_path: Path,
                                                                    private_cache: None) -> None:
    out = tmp_path / "reranker"
    train_reranker(tiny_data, out, RerankerTrainConfig(**TINY, max_steps=2), progress=False)
    manifest = load_bundle(out, kind="model/reranker")
    m = manifest.metrics
    assert m["steps"] == 2 and m["onnx_max_abs_diff"] <= 1e-3 and m["dev_queries"] == 4
    assert m["dev_nDCG@10_first_stage"] is not None and m["dev_nDCG@10"] is not None
    # the mix chosen on dev is never below the first stage alone (weight 1 keeps its order)
    assert 0.0 <= manifest.config["first_stage_weight"] <= 1.0
    assert m["dev_nDCG@10_interpolated"] >= m["dev_nDCG@10_first_stage"] - 1e-9
    assert manifest.config["max_length"] == 32 and manifest.config["train"]["group_size"] == 3
    curve = json.loads((out / "training_curve.json").read_text())
    steps = [c for c in curve if "loss" in c]
    assert [c["step"] for c in steps] == [1, 2] and all(0.0 <= c["group_accuracy"] <= 1.0 for c in steps)

    from retrec.cli import app

    result = CliRunner().invoke(app, ["eval", "--data", str(tiny_data), "--retriever", "bm25", "--rerank", str(out),
                                      "--depth", "5", "--k", "20", "--json"])
    assert result.exit_code == 0, result.output
    systems = {s["retriever"]: s for s in json.loads(result.stdout)["systems"]}
    assert set(systems) == {"bm25", f"bm25>{manifest.name}"}
    first, reranked = systems["bm25"], systems[f"bm25>{manifest.name}"]
    assert reranked["rerank"]["depth"] == 5 and reranked["rerank"]["p50_ms"] > 0
    assert reranked["R@1000"] == pytest.approx(first["R@1000"])  # re-ranking reorders, never drops
    kept = CliRunner().invoke(app, ["eval", "--data", str(tiny_data), "--retriever", "bm25", "--rerank", str(out),
                                    "--depth", "5", "--k", "20", "--rerank-weight", "1", "--json"])
    assert kept.exit_code == 0, kept.output
    mixed = {s["retriever"]: s for s in json.loads(kept.stdout)["systems"]}[f"bm25>{manifest.name}"]
    # weight 1: the first stage's order
    assert mixed["rerank"]["first_stage_weight"] == 1.0 and mixed["nDCG@10"] == pytest.approx(first["nDCG@10"])
    short = CliRunner().invoke(app, ["eval", "--data", str(tiny_data), "--retriever", "bm25", "--rerank", str(out),
                                     "--depth", "5", "--k", "20", "--rerank-variant", "int8", "--rerank-max-length",
                                     "16", "--json"])
    assert short.exit_code == 0, short.output
    quick = {s["retriever"]: s for s in json.loads(short.stdout)["systems"]}[f"bm25>{manifest.name}"]
    assert (quick["rerank"]["variant"], quick["rerank"]["max_length"]) == ("int8", 16)
    assert (reranked["rerank"]["variant"], reranked["rerank"]["max_length"]) == ("fp32", 32)
    assert quick["R@1000"] == pytest.approx(first["R@1000"])
    missing = CliRunner().invoke(app, ["eval", "--data", str(tiny_data), "--retriever", "bm25", "--rerank", str(out),
                                       "--rerank-variant", "int9"])
    assert missing.exit_code == 2 and "no 'int9' model in this bundle" in missing.output
    bad = CliRunner().invoke(app, ["eval", "--run", str(tmp_path / "x.run"), "--qrels", str(tmp_path / "q.tsv"),
                                   "--rerank", str(out)])
    assert bad.exit_code == 2 and "--rerank needs --data" in bad.output


@pytest.mark.parametrize("model_right", [True, False])
def test_the_first_stage_weight_is_the_mix_that_scores_best_on_dev(model_right: bool) -> None:
    docs = [f"d{i}" for i in range(6)]
    dev = {f"q{i}": {f"d{i}": 1} for i in range(3)}
    ts = TrainingSet(doc_ids=docs, doc_texts=["t"] * 6, query_ids=[], positives={}, dev_ids=list(dev),
                     dev_qrels=dev, query_texts={}, qrels_rows={})
    cands = {f"q{i}": np.arange(6) for i in range(3)}
    right = {f"q{i}": np.where(np.arange(6) == i, 1.0, 0.1 * np.arange(6)) for i in range(3)}  # the judged one
    wrong = {q: -v for q, v in right.items()}  # the judged document last
    weight, ndcg = choose_first_stage_weight(ts, cands, right if model_right else wrong,
                                             wrong if model_right else right)
    assert ndcg == pytest.approx(1.0)
    assert weight == 0.0 if model_right else 0.5 < weight <= 1.0  # the smallest weight that ranks as well
