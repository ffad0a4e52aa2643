"""The one metrics entry point.

Retrieval measures are computed by ir-measures (pytrec_eval underneath); no home-made IR metric code.
Recommendation measures (HR@k, NDCG@k, MRR under leave-one-out, one held-out item per user) are
computed here from the target's rank. Ties between the target and other items are resolved by
the *expected value under uniformly random tie-breaking*, so a model that scores everything equal
gets chance-level numbers, never a free hit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import ir_measures
import numpy as np

from retrec.data.trec import rank_scores

RETRIEVAL_MEASURES: tuple[str, ...] = ("nDCG@10", "RR@10", "R@100", "R@1000", "AP")
REC_CUTOFFS: tuple[int, ...] = (1, 5, 10, 20)

Qrels = Mapping[str, Mapping[str, int]]
Run = Mapping[str, Mapping[str, float]]


def evaluate_run(
    qrels: Qrels, run: Run, measures: Sequence[str] = RETRIEVAL_MEASURES
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Mean and per-query values of ``measures`` (names as ir-measures writes them).

    Every query in ``qrels`` counts; a judged query missing from ``run`` scores 0 (trec_eval -c).
    Ties are resolved once, as trec_eval does (score desc, doc_id desc), and every provider sees
    that strict order — ir-measures' providers otherwise disagree on ties (its RR@k provider
    sorts doc_id ascending).
    """
    parsed = [ir_measures.parse_measure(m) for m in measures]
    names = {p: str(p) for p in parsed}
    per_query: dict[str, dict[str, float]] = {q: dict.fromkeys(names.values(), 0.0) for q in qrels}
    judged_run = {q: _strict_order(docs) for q, docs in run.items() if q in qrels}
    qrels_plain = {q: dict(d) for q, d in qrels.items()}
    for metric in ir_measures.iter_calc(parsed, qrels_plain, judged_run):
        per_query[metric.query_id][names[metric.measure]] = float(metric.value)
    n = len(per_query)
    mean = {name: (sum(v[name] for v in per_query.values()) / n if n else 0.0) for name in names.values()}
    return mean, per_query


def _strict_order(docs: Mapping[str, float]) -> dict[str, float]:
    ranked = rank_scores(docs)
    n = len(ranked)
    return {doc_id: float(n - i) for i, (doc_id, _) in enumerate(ranked)}


def _expected_rank_gain(greater: np.ndarray, ties: np.ndarray, gain_at: np.ndarray) -> np.ndarray:
    """E[gain_at[greater + U]] with U uniform on {0..ties}; ``gain_at`` indexed by 0-based rank."""
    out = np.empty(greater.shape[0], dtype=np.float64)
    limit = gain_at.shape[0]
    no_ties = ties == 0
    idx = greater[no_ties]
    out[no_ties] = np.where(idx < limit, gain_at[np.minimum(idx, limit - 1)], 0.0)
    for i in np.flatnonzero(~no_ties):
        ranks = np.arange(greater[i], greater[i] + ties[i] + 1)
        out[i] = np.where(ranks < limit, gain_at[np.minimum(ranks, limit - 1)], 0.0).mean()
    return out


def target_ranks(scores: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row: how many candidates score strictly above the target, and how many tie with it.

    ``scores`` is [n, candidates]; ``targets`` holds the target's column per row.
    """
    scores = np.asarray(scores)
    rows = np.arange(scores.shape[0])
    t = scores[rows, targets][:, None]
    greater = (scores > t).sum(axis=1)
    ties = (scores == t).sum(axis=1) - 1
    return greater.astype(np.int64), ties.astype(np.int64)


def next_item_ranks(scores: np.ndarray, seen: Sequence[np.ndarray], targets: np.ndarray) -> tuple[np.ndarray, ...]:
    """:func:`target_ranks` of a full ranking with each row's ``seen`` columns excluded; a target column of ``-1``
    (an item the ranking does not know) ranks last. ``scores`` is modified in place."""
    targets = np.asarray(targets)
    for row, pos in enumerate(seen):
        scores[row, pos[pos >= 0]] = -np.inf
    missing = targets < 0
    greater, ties = target_ranks(scores, np.where(missing, 0, targets))
    return np.where(missing, scores.shape[1], greater), np.where(missing, 0, ties)


def rec_metrics_from_ranks(
    greater: np.ndarray, ties: np.ndarray, num_candidates: int, cutoffs: Iterable[int] = REC_CUTOFFS
) -> dict[str, np.ndarray]:
    """Per-user HR@k, NDCG@k (one relevant item: 1/log2(rank+2)) and MRR (no cutoff)."""
    greater = np.asarray(greater, dtype=np.int64)
    ties = np.asarray(ties, dtype=np.int64)
    positions = np.arange(num_candidates, dtype=np.float64)
    out: dict[str, np.ndarray] = {}
    for k in cutoffs:
        out[f"HR@{k}"] = _expected_rank_gain(greater, ties, np.ones(min(k, num_candidates)))
        out[f"NDCG@{k}"] = _expected_rank_gain(greater, ties, 1.0 / np.log2(positions[:k] + 2.0))
    out["MRR"] = _expected_rank_gain(greater, ties, 1.0 / (positions + 1.0))
    return out


def mean_metrics(per_user: Mapping[str, np.ndarray]) -> dict[str, float]:
    return {name: float(np.mean(values)) if len(values) else 0.0 for name, values in per_user.items()}
