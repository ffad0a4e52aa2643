"""Semantic IDs: every item a short tuple of codes, similar items sharing prefixes (TIGER, OneRec).

Balanced residual k-means over item vectors: level 1 clusters the vectors into ``codes`` groups of (nearly) equal
size, level 2 clusters what level 1 left unexplained (the residuals), and so on for ``levels`` levels. Items
whose tuples collide get one more, disambiguating code (their order in the group: 0, 1, ...), which every item
then has, so that every item has exactly one tuple and every tuple names one item (when no tuples collide, which
the capacitated levels below make the rule for catalogues under ``codes^levels`` items, the extra level is left
out).

Balance matters: a level whose clusters are uneven wastes codes and makes long collision groups. The assignment
here is capacitated: each cluster takes at most ``ceil(n / codes)`` items, nearest first, the rest go to their
next-nearest open cluster (vectorised proposal rounds, not a per-item loop). Below the first level the codebook
is fitted on all residuals, and the assignment is capacitated within each prefix (at most ``ceil(size / codes)``
items of a prefix per code), so that near-identical vectors (items seen with the same few neighbours) are spread
over codes instead of sharing one tuple: a collision group is at most ``ceil(items / codes^levels)`` long.

Vector sources (:func:`cooccurrence_vectors`): when no trained model's item table is given, a factorisation of
the items' co-occurrence in user histories (PMI within a window, truncated SVD) — no training needed, and it is
what transition regularities look like.

NumPy + SciPy only. Example::

    codes = semantic_ids(item_vectors, levels=3, codes=256, seed=0)     # int32 [items, 3 or 4], unique rows
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

log = logging.getLogger("retrec.semantic_ids")


def balanced_assign(dist: np.ndarray, cap: int) -> np.ndarray:
    """Each row to a column, at most ``cap`` rows a column, nearest first (``dist``: ``[n, k]``, ``cap * k >= n``)."""
    n, k = dist.shape
    if cap * k < n:
        raise ValueError(f"capacity {cap} x {k} clusters < {n} items")
    assign = np.full(n, -1, np.int64)
    counts = np.zeros(k, np.int64)
    while (free := np.flatnonzero(assign < 0)).size:
        d = dist[free]
        d[:, counts >= cap] = np.inf
        choice = d.argmin(axis=1)
        near = d[np.arange(len(free)), choice]
        order = np.lexsort((near, choice))  # proposals by cluster, nearest first
        chosen = choice[order]
        rank = np.arange(len(order)) - np.searchsorted(chosen, chosen, side="left")
        ok = rank < cap - counts[chosen]
        assign[free[order[ok]]] = chosen[ok]
        counts += np.bincount(chosen[ok], minlength=k)
    return assign


def _sq_dist(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    return (x * x).sum(1)[:, None] - 2.0 * x @ c.T + (c * c).sum(1)[None, :]


def balanced_kmeans(x: np.ndarray, k: int, iters: int = 15, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``k`` centroids and a capacitated assignment (each cluster at most ``ceil(n / k)`` points) of ``x``."""
    n = len(x)
    k = max(1, min(k, n))
    rng = np.random.default_rng(seed)
    centroids = x[rng.choice(n, size=k, replace=False)].astype(np.float64)
    cap = math.ceil(n / k)
    assign = np.zeros(n, np.int64)
    for _ in range(iters):
        assign = balanced_assign(_sq_dist(x, centroids), cap)
        sums = np.zeros_like(centroids)
        np.add.at(sums, assign, x)
        counts = np.bincount(assign, minlength=k)[:, None]
        centroids = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
    return centroids, assign


def grouped_assign(dist: np.ndarray, prefixes: np.ndarray) -> np.ndarray:
    """:func:`balanced_assign` within each group of equal ``prefixes`` rows, capacity ``ceil(group size / k)``."""
    _, group = np.unique(prefixes, axis=0, return_inverse=True)
    order = np.argsort(group.reshape(-1), kind="stable")
    bounds = np.flatnonzero(np.diff(group.reshape(-1)[order])) + 1
    assign = np.empty(len(dist), np.int64)
    for rows in np.split(order, bounds):
        assign[rows] = balanced_assign(dist[rows], math.ceil(len(rows) / dist.shape[1]))
    return assign


def semantic_ids(vectors: np.ndarray, levels: int = 3, codes: int = 256, iters: int = 15,
                 seed: int = 0) -> np.ndarray:
    """``int32 [items, levels + 1]``: residual balanced k-means codes plus the disambiguating last code (``[items,
    levels]`` when the tuples are unique without it)."""
    if levels < 1 or codes < 2:
        raise ValueError("levels must be >= 1 and codes >= 2")
    x = np.asarray(vectors, np.float64)
    if x.ndim != 2 or not len(x):
        raise ValueError("item vectors must be a non-empty [items, dim] matrix")
    x = x - x.mean(0)
    out = np.zeros((len(x), levels + 1), np.int32)
    residual = x.copy()
    for level in range(levels):
        centroids, assign = balanced_kmeans(residual, codes, iters, seed + level)
        if level:  # within each prefix, at most ceil(size / codes) items a code: no long collision groups
            assign = grouped_assign(_sq_dist(residual, centroids), out[:, :level])
        out[:, level] = assign
        residual -= centroids[assign]
        log.info("semantic ids: level %d of %d, residual norm %.3f", level + 1, levels,
                 float(np.linalg.norm(residual) / max(np.linalg.norm(x), 1e-12)))
    out[:, levels] = disambiguate(out[:, :levels])
    return out if out[:, levels].any() else out[:, :levels]  # no collision: no disambiguating level


def disambiguate(codes: np.ndarray) -> np.ndarray:
    """Each item's position among the items sharing its tuple (0 for the first; the group's order is row order)."""
    _, inverse = np.unique(codes, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")
    sorted_groups = inverse[order]
    rank = np.arange(len(order)) - np.searchsorted(sorted_groups, sorted_groups, side="left")
    out = np.empty(len(codes), np.int32)
    out[order] = rank
    return out


def cooccurrence_vectors(sequences: Sequence[np.ndarray], num_items: int, dim: int = 64, window: int = 3,
                         seed: int = 0) -> np.ndarray:
    """``[num_items, dim]`` item vectors from co-occurrence within ``window`` steps: positive PMI, truncated SVD.

    ``sequences``: item rows in time order. Items never co-occurring get small random vectors (they still get
    distinct codes)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import svds

    rows, cols = [], []
    for s in sequences:
        s = np.asarray(s, np.int64)
        for gap in range(1, window + 1):
            if len(s) > gap:
                rows += [s[:-gap], s[gap:]]
                cols += [s[gap:], s[:-gap]]
    rng = np.random.default_rng(seed)
    if not rows:
        return rng.normal(scale=1e-3, size=(num_items, dim)).astype(np.float32)
    r, c = np.concatenate(rows), np.concatenate(cols)
    r, c = r[r != c], c[r != c]  # an item repeated says nothing about its neighbours
    counts = coo_matrix((np.ones(len(r)), (r, c)), shape=(num_items, num_items)).tocsr()
    counts.sum_duplicates()
    total = counts.sum()
    row_sum = np.asarray(counts.sum(1)).ravel()
    coo = counts.tocoo()
    pmi = np.log(coo.data * total / (row_sum[coo.row] * row_sum[coo.col]))
    keep = pmi > 0
    ppmi = coo_matrix((pmi[keep], (coo.row[keep], coo.col[keep])), shape=counts.shape).tocsr()
    k = max(1, min(dim, min(ppmi.shape) - 1))
    u, s, _ = svds(ppmi.astype(np.float64), k=k, random_state=seed)
    vectors = u * np.sqrt(s)[None, :]
    if k < dim:
        vectors = np.pad(vectors, ((0, 0), (0, dim - k)))
    empty = row_sum == 0
    vectors[empty] = rng.normal(scale=1e-3, size=(int(empty.sum()), dim))
    return vectors.astype(np.float32)
