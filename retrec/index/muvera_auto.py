"""MUVERA's ``auto``: how many FDE candidates a search re-ranks, chosen at build time by measured recall.

A MUVERA search takes each shard's top documents by FDE inner product and re-ranks them by exact MaxSim; the
number re-ranked (``candidates``) trades recall against latency, and the right number depends on the corpus and
its size. :func:`tune_candidates` measures it: pseudo-queries — a random span of :data:`QUERY_TOKENS` token
vectors from sampled documents (queries are short spans of text in the same token space) — are searched exactly
(brute-force MaxSim over every document) and through the FDE index with growing ``candidates``; the smallest
count whose recall@10 reaches the target is kept, and the measurement goes to the manifest (``config.auto``).
The structure of each shard's FDE index stays :func:`~retrec.index.multivector.default_factory`'s.

The exact pass costs ``pseudo_queries × query tokens × all token vectors × dim`` multiply-adds (SciFact's 5,183
documents: ~10 s on 2 cores); documents found by their own span make the figure optimistic for the first hit,
not for the other nine.

Example::

    index = assemble_muvera(doc_ids, token_matrices, encoder=enc)           # candidates tuned when not given
    index.tuning                # {"target_recall": 0.95, "recall_at_10": 0.97, "candidates": 200, ...}
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from retrec.kinds import MAXSIM_INDEX

TARGET_RECALL = 0.95
PSEUDO_QUERIES = 64
QUERY_TOKENS = 32
CANDIDATE_STEPS = (50, 100, 200, 400, 800, 1600, 3200)
RECALL_AT = 10


def pseudo_queries(index: Any, count: int, tokens: int, seed: int) -> list[np.ndarray]:
    """``count`` spans of ``tokens`` consecutive token vectors (float32) from documents sampled uniformly."""
    rng = np.random.default_rng(seed)
    sizes = np.array([len(s.ids) for s in index.shards])
    picks = rng.choice(int(sizes.sum()), size=min(count, int(sizes.sum())), replace=False)
    bounds = np.cumsum(sizes)
    out = []
    for pick in np.sort(picks):
        s = int(np.searchsorted(bounds, pick, side="right"))
        row = int(pick - (bounds[s - 1] if s else 0))
        shard = index.shards[s]
        length = int(shard.lengths[row])
        span = min(tokens, length)
        start = int(shard.offsets[row]) + int(rng.integers(0, length - span + 1))
        out.append(np.asarray(shard.tokens[start:start + span], np.float32))
    return out


def tune_candidates(index: Any, target_recall: float = TARGET_RECALL,
                    queries: int = PSEUDO_QUERIES, seed: int = 0) -> dict[str, Any]:
    """Set ``index.candidates`` to the smallest of :data:`CANDIDATE_STEPS` (at most the corpus) whose recall@10
    against exact MaxSim reaches ``target_recall`` on pseudo-queries (else the largest tried); what was measured.
    ``index``: a :class:`~retrec.index.multivector.MultiVectorIndex` of kind ``index/muvera``."""
    if not 0.0 < target_recall <= 1.0:
        raise ValueError(f"target_recall must be in (0, 1], got {target_recall}")
    started = time.perf_counter()
    sample = pseudo_queries(index, queries, QUERY_TOKENS, seed)
    exact = type(index)(index.shards, kind=MAXSIM_INDEX, dim=index.dim)  # the same stores, brute force
    truth = [{d for d, _ in hits} for hits in exact.search(sample, RECALL_AT)]
    exact_s = time.perf_counter() - started
    everything = max(len(s.ids) for s in index.shards) * index.total_shards  # every document of every shard
    steps = [c for c in CANDIDATE_STEPS if c < everything] + [everything]
    curve: dict[int, float] = {}
    for candidates in steps:
        found = index.search(sample, RECALL_AT, candidates=candidates)
        curve[candidates] = float(np.mean([len({d for d, _ in f} & t) / max(1, min(RECALL_AT, len(t)))
                                           for f, t in zip(found, truth)]))
        if curve[candidates] >= target_recall:
            break
    chosen = next((c for c, r in curve.items() if r >= target_recall), steps[-1])
    index.candidates = chosen
    return {"target_recall": target_recall, "recall_at_10": round(curve[chosen], 4), "candidates": chosen,
            "reached": curve[chosen] >= target_recall, "curve": {str(c): round(r, 4) for c, r in curve.items()},
            "tuned_on": f"{len(sample)} document spans of up to {QUERY_TOKENS} tokens", "seed": seed,
            "exact_seconds": round(exact_s, 1), "seconds": round(time.perf_counter() - started, 1)}
