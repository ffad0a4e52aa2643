"""The retriever contract shared by offline evaluation and online serving (:class:`retrec.contracts.Retriever`).

A retriever turns query texts into ranked ``(doc_id, score)`` lists. Rankings are deterministic:
score descending, ties broken by doc_id descending — the order trec_eval itself uses, so a run
file's ranks are exactly the ranks that get evaluated.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from retrec.contracts import Hits, Retriever

__all__ = ["Hits", "Retriever", "top_k", "top_k_rows"]  # the contract itself lives in retrec.contracts


def top_k_rows(scores: np.ndarray, k: int, order_key: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """Row numbers of the deterministic top-``k`` (score desc, then doc_id desc), best first.

    ``order_key`` is the rank of each row's doc_id in ascending string order. ``rows`` limits the ranking to
    those rows (e.g. the documents that match at all): the work is then proportional to ``len(rows)``.
    """
    if rows is not None:
        return rows[top_k_rows(scores[rows], k, order_key[rows])]
    n = scores.shape[0]
    k = min(k, n)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    if k < n:
        kth = np.partition(scores, n - k)[n - k]
        candidates = np.flatnonzero(scores >= kth)  # includes every tie at the boundary
    else:
        candidates = np.arange(n)
    order = np.lexsort((-order_key[candidates], -scores[candidates]))[:k]
    return candidates[order]


def top_k(scores: np.ndarray, doc_ids: Sequence[str], k: int, order_key: np.ndarray | None = None) -> Hits:
    """Deterministic top-``k`` of one score vector (score desc, then doc_id desc).

    ``order_key`` is the rank of each doc_id in ascending string order (precomputed once per index),
    used to break ties without string comparisons.
    """
    if order_key is None:
        order_key = np.argsort(np.argsort(np.asarray(doc_ids, dtype=object)))
    return [(doc_ids[i], float(scores[i])) for i in top_k_rows(scores, k, order_key)]
