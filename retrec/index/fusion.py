"""Merging shard results and fusing retrievers, in the project's deterministic order.

Every ranking here is ordered by score descending, then doc_id descending (trec_eval's order, as in
:func:`retrec.index.retriever.top_k`). Merging each shard's exact top-k in that order gives exactly
the unsharded top-k.

Example::

    merge_hits([[("d1", 2.0)], [("d2", 2.0), ("d3", 1.0)]], k=2)   # [("d2", 2.0), ("d1", 2.0)]
    rrf({"bm25": bm25_hits, "dense": dense_hits}, k=10, rrf_k=60)
    minmax({"bm25": bm25_hits, "dense": dense_hits}, k=10, weights={"bm25": 0.3, "dense": 0.7})
    zscore({"bm25": bm25_hits, "dense": dense_hits}, k=10, weights={"bm25": 0.3, "dense": 0.7})
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from retrec.index.retriever import Hits


def ranked(scores: Mapping[str, float], k: int) -> Hits:
    """Top ``k`` of a ``doc_id -> score`` map: score desc, then doc_id desc."""
    return sorted(scores.items(), key=lambda h: (h[1], h[0]), reverse=True)[:k]


def merge_hits(parts: Iterable[Sequence[tuple[str, float]]], k: int) -> Hits:
    """Global top ``k`` from per-shard top-k lists (doc ids are disjoint across shards)."""
    merged = [(str(d), float(s)) for part in parts for d, s in part]
    merged.sort(key=lambda h: (h[1], h[0]), reverse=True)
    return merged[:k]


def _weight(weights: Mapping[str, float] | None, name: str) -> float:
    return 1.0 if weights is None else float(weights.get(name, 1.0))


def rrf(rankings: Mapping[str, Hits], k: int, rrf_k: float = 60.0, weights: Mapping[str, float] | None = None) -> Hits:
    """Reciprocal rank fusion: ``sum_r w_r / (rrf_k + rank_r(d))`` with 1-based ranks."""
    fused: dict[str, float] = {}
    for name, hits in rankings.items():
        w = _weight(weights, name)
        for rank, (doc, _) in enumerate(hits, start=1):
            fused[doc] = fused.get(doc, 0.0) + w / (rrf_k + rank)
    return ranked(fused, k)


def _spread_sum(rankings: Mapping[str, Hits], k: int, weights: Mapping[str, float] | None,
                spread: Callable[[list[float]], float]) -> Hits:
    """Weighted sum of ``(s - min) / spread(scores)`` per list (a missing document, like the lowest, adds 0;
    all-equal scores normalise to 1)."""
    fused: dict[str, float] = {}
    for name, hits in rankings.items():
        if not hits:
            continue
        w = _weight(weights, name)
        values = [s for _, s in hits]
        lo, width = min(values), spread(values)
        for doc, s in hits:
            norm = (s - lo) / width if width > 0 else 1.0
            fused[doc] = fused.get(doc, 0.0) + w * norm
    return ranked(fused, k)


def _std(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return (sum((s - mean) ** 2 for s in values) / len(values)) ** 0.5


def minmax(rankings: Mapping[str, Hits], k: int, weights: Mapping[str, float] | None = None) -> Hits:
    """Weighted sum of min-max normalised scores (all-equal scores normalise to 1)."""
    return _spread_sum(rankings, k, weights, lambda values: max(values) - min(values))


def zscore(rankings: Mapping[str, Hits], k: int, weights: Mapping[str, float] | None = None) -> Hits:
    """Weighted sum of scores in standard deviations above each list's lowest: ``(s - min) / std`` (a standard
    score shifted so that a missing document, like the lowest, contributes 0; min-max's range, which one outlying
    top score stretches, replaced by the spread of the whole list). All-equal scores normalise to 1."""
    return _spread_sum(rankings, k, weights, _std)


FUSIONS = {"rrf": rrf, "minmax": minmax, "zscore": zscore}
