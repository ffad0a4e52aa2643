"""Filtered dense search: exact inner products over the allowed documents of each shard.

The allowed rows' stored vectors — the float16 refine store when the index keeps one (what its own search
re-ranks with), else the vectors FAISS reconstructs (exact for Flat; an IVF index gets a direct map once) — times
the queries, then the top ``k`` by score and doc id, as :meth:`FaissIndex.search` orders them. Its cost is
the allowed rows × dim per query: cheap for selective filters, a scan for broad ones.

Example::

    hits = filtered_search(index, query_vectors, 10, allowed)    # queries already normalised as the index does
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from retrec.index.filters import AllowedDocs
from retrec.index.retriever import Hits

BLOCK = 65_536  # rows scored at a time (bounds the float32 copy of a memory-mapped store)


def _vectors(index: Any, s: int, rows: np.ndarray) -> np.ndarray:
    if index.refine is not None:
        return np.asarray(index.refine[s][rows], dtype=np.float32)
    shard = index.cpu_shards[s]
    try:
        return shard.reconstruct_batch(rows.astype(np.int64))
    except RuntimeError:  # an IVF index without its direct map
        faiss.extract_index_ivf(shard).make_direct_map()
        return shard.reconstruct_batch(rows.astype(np.int64))


def filtered_search(index: Any, queries: np.ndarray, k: int, allowed: AllowedDocs) -> list[Hits]:
    """Top-``k`` ``(doc_id, score)`` per query among the ``allowed`` documents of ``index`` (a FaissIndex)."""
    score_parts, key_parts = [], []
    for s in range(index.ids.shard_count):
        rows = np.flatnonzero(allowed.rows(index.ids.shard_array(s)))
        for start in range(0, len(rows), BLOCK):
            part = rows[start:start + BLOCK]
            score_parts.append((queries @ _vectors(index, s, part).T).astype(np.float32))
            key_parts.append(np.broadcast_to(index.ids.keys(s)[part], (len(queries), len(part))))
    if not score_parts:
        return [[] for _ in range(len(queries))]
    scores, keys = np.concatenate(score_parts, axis=1), np.concatenate(key_parts, axis=1)
    order = np.lexsort((-keys, -scores), axis=-1)[:, :k]
    top_scores, top_keys = np.take_along_axis(scores, order, axis=1), np.take_along_axis(keys, order, axis=1)
    return [list(zip(index.ids.lookup(row_keys), row_scores.tolist()))
            for row_keys, row_scores in zip(top_keys, top_scores)]
