"""Batch composition for TAS-Balanced training ("Efficiently Teaching an Effective Dense Retriever with
Balanced Topic Aware Sampling", Hofstätter et al., SIGIR 2021).

- :func:`topic_clusters`: k-means (faiss) over the training queries' embeddings, once.
- :func:`topic_batches`: each batch draws its queries from ``clusters_per_batch`` clusters, so in-batch
  negatives share the query's topic; every query is used once an epoch.
- :func:`random_batches`: the plain baseline — a shuffled pass.
- :func:`balanced_margin_pick`: bin a query's teacher margins (positive − negative) into equal-width bins,
  pick a non-empty bin uniformly, then a negative within it — so pairs of every difficulty are seen.

All take a ``numpy.random.Generator`` and are deterministic for a given seed.
"""

from __future__ import annotations

import numpy as np


def topic_clusters(vectors: np.ndarray, n_clusters: int, seed: int = 0, niter: int = 20) -> np.ndarray:
    """Cluster label of each row of ``vectors`` (``float32 [n, d]``), k-means with ``n_clusters`` centroids."""
    import faiss

    n = len(vectors)
    if n == 0:
        raise ValueError("no query vectors to cluster")
    k = max(1, min(int(n_clusters), n))
    if k == 1:
        return np.zeros(n, dtype=np.int64)
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    # faiss warns below 39 points per centroid; topic clusters are deliberately small, so keep it quiet.
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, verbose=False, min_points_per_centroid=1)
    km.train(x)
    _, labels = km.index.search(x, 1)
    return labels[:, 0].astype(np.int64)


def random_batches(n: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A shuffled pass over ``n`` items in batches of ``batch_size`` (the last one may be smaller)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    order = rng.permutation(n)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def topic_batches(labels: np.ndarray, batch_size: int, clusters_per_batch: int,
                  rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch of batches, each drawn from ``clusters_per_batch`` clusters (fewer when they run dry).

    Clusters are chosen with probability proportional to the queries they have left, so every query is
    used exactly once an epoch; a batch tops up from further clusters when its own run out.
    """
    if batch_size < 1 or clusters_per_batch < 1:
        raise ValueError("batch_size and clusters_per_batch must be positive")
    pools = {int(c): list(rng.permutation(np.flatnonzero(labels == c))) for c in np.unique(labels)}
    batches = []
    while pools:
        names = np.array(sorted(pools))
        left = np.array([len(pools[c]) for c in names], dtype=np.float64)
        take = min(clusters_per_batch, len(names))
        chosen = list(rng.choice(names, size=take, replace=False, p=left / left.sum()))
        rest = [c for c in rng.permutation(names) if c not in chosen]
        per = -(-batch_size // take)
        batch: list[int] = []
        for c in chosen + rest:
            quota = per if c in chosen else batch_size - len(batch)
            room = min(quota, batch_size - len(batch))
            batch += pools[c][:room]
            pools[c] = pools[c][room:]
            if not pools[c]:
                del pools[c]
            if len(batch) == batch_size:
                break
        batches.append(np.array(batch, dtype=np.int64))
    return batches


def balanced_margin_pick(margins: np.ndarray, bins: int, rng: np.random.Generator) -> int:
    """Index of the chosen candidate: uniform non-empty margin bin, then uniform within the bin."""
    m = np.asarray(margins, dtype=np.float64)
    if m.size == 0:
        raise ValueError("no candidates to pick from")
    lo, hi = float(m.min()), float(m.max())
    if bins <= 1 or hi - lo <= 1e-12:
        return int(rng.integers(m.size))
    which = np.minimum(((m - lo) / (hi - lo) * bins).astype(np.int64), bins - 1)
    occupied = np.unique(which)
    b = occupied[rng.integers(occupied.size)]
    members = np.flatnonzero(which == b)
    return int(members[rng.integers(members.size)])


def graded_pick(grades: np.ndarray, rng: np.random.Generator) -> int:
    """Index of one positive, drawn with probability proportional to its relevance grade (higher grades more
    often; over an epoch's redraws every positive gets its turn). Equal grades: a uniform draw, the same one
    ``rng.integers(len(grades))`` makes, so binary judgements sample exactly as before."""
    if grades.size == 0:
        raise ValueError("no positive to pick from")
    if np.all(grades == grades[0]):
        return int(rng.integers(grades.size))
    weights = np.clip(grades.astype(np.float64), 0.0, None)
    return int(rng.choice(grades.size, p=weights / weights.sum()))
