"""The streaming half of building a dense index: FAISS shards filled from a :class:`VectorSource` batch by
batch, so a 5 M × 384 corpus never sits in memory as float32 (:meth:`FaissIndex.from_source` wraps it).

The passes: (1) the doc ids (Arrow) → each document's shard (:func:`shard_of`, a stable hash); (2) a seeded
sample of rows → training vectors for an IVF/PQ structure, trained once and copied to every shard, and the
pseudo-queries of ``auto``'s recall check; (3) every batch → normalised (cosine; with a refine store also
rounded to its float16), added to its shard's FAISS index and refine store, and scored against the
pseudo-queries (their exact top-k, for the check).

Example::

    parts = stream_shards(open_vectors("emb.npy", ids="emb.ids.txt"), factory="auto", shards=4, normalize=True)
    parts.recipe.factory, [i.ntotal for i in parts.indices]     # ('IVF2048,PQ192x4fs', [250112, ...]) at 1 M / 4
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import faiss
import numpy as np
import pyarrow as pa

from retrec.data.vectors import VectorSource
from retrec.index import ann
from retrec.runtime.vectors import l2_normalize

__all__ = ["SHARD_HASH", "StreamedShards", "VectorSource", "new_index", "shard_of", "stream_shards", "train_index"]

log = logging.getLogger(__name__)
SHARD_HASH = "blake2b-64 mod shards"
REFINE_DTYPE = np.float16  # a refine store: 2 bytes a dimension, re-scoring error ~1e-3 of a cosine
BATCH = 65_536


def shard_of(doc_id: str, shards: int) -> int:
    """Stable shard number of a doc id (the same in every process and Python version)."""
    digest = hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % shards


def new_index(dim: int, factory: str) -> faiss.Index:
    """An empty inner-product FAISS index from an ``index_factory`` string; ValueError for a string FAISS refuses."""
    try:
        return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ValueError(f"FAISS cannot build index {factory!r} over {dim}-d vectors: "
                         f"{str(exc).strip().splitlines()[-1][:200]}") from None


def train_index(index: faiss.Index, vectors: np.ndarray, factory: str, shard: int) -> None:
    """Train ``index`` on ``vectors`` when its factory needs training (IVF, PQ, ...); ValueError naming the shard."""
    if index.is_trained:
        return
    try:
        index.train(vectors)
    except RuntimeError as exc:
        raise ValueError(f"shard {shard}: cannot train {factory!r} on {len(vectors)} vectors ({exc}); "
                         "use fewer shards/lists or a Flat/HNSW factory") from exc


@dataclass
class StreamedShards:
    """What :func:`stream_shards` filled: shard indices, ids, refine stores, and ``auto``'s check data."""

    recipe: ann.Recipe
    ids: pa.Array  # every doc id, in source order
    indices: list[faiss.Index]
    shard_ids: list[pa.Array]
    refine: list[np.ndarray] | None
    queries: np.ndarray  # auto's pseudo-queries (sampled, normalised document vectors)
    query_rows: np.ndarray  # their rows in the source
    truth: ann.ExactTopK | None  # their exact top-k over the whole source (None: no tuning)
    seconds: float


def _recipe(factory: str, n: int, shards: int, dim: int, exact_max: int) -> ann.Recipe:
    if factory != ann.AUTO:
        return ann.Recipe(factory, refine=False)
    if not ann.auto_recipe(n, dim, exact_max).trains:
        return ann.Recipe("Flat", refine=False)
    return ann.auto_recipe(max(n // shards, exact_max + 1), dim, exact_max)  # lists sized by a shard's documents


def _preparer(normalize: bool, refine: bool) -> Callable[[np.ndarray], np.ndarray]:
    """What every vector goes through before it is indexed: unit length for cosine, and with a refine store the
    store's float16 rounding, so the structure, the store and the recall check all see the same vectors (and an
    incremental reindex reusing the store's vectors builds what a full rebuild would)."""
    def prepare(vectors: np.ndarray) -> np.ndarray:
        out = l2_normalize(vectors) if normalize else vectors
        return out.astype(REFINE_DTYPE).astype(np.float32) if refine else out

    return prepare


def _sample(n: int, size: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n, size=min(size, n), replace=False))


def stream_shards(
    source: VectorSource, *, factory: str = "Flat", shards: int = 1, normalize: bool = True,
    pseudo_queries: int = ann.PSEUDO_QUERIES, seed: int = 0, exact_max: int = ann.EXACT_MAX_DOCS,
    batch_size: int = BATCH, tune_queries: np.ndarray | None = None,
) -> StreamedShards:
    """Fill ``shards`` FAISS indices of ``factory`` (a FAISS string or ``auto``) with every vector of ``source``.

    ``auto`` checks recall on ``tune_queries`` (query vectors from the query encoder; at most ``pseudo_queries``
    of them) when given, else on ``pseudo_queries`` sampled documents (``query_rows`` then names them).
    """
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    dim, n = source.dim, source.count
    if not n:
        raise ValueError("cannot index an empty corpus")
    started = time.perf_counter()
    ids = source.ids()
    if len(ids) != n:
        raise ValueError(f"{len(ids)} doc ids for {n} vectors")
    assignment = np.fromiter((shard_of(d, shards) for d in ids.to_pylist()), dtype=np.int32, count=n)
    recipe = _recipe(factory, n, shards, dim, exact_max)
    tuned = factory == ann.AUTO and recipe.trains
    prepare = _preparer(normalize, recipe.refine)

    template = new_index(dim, recipe.factory)
    queries, query_rows = np.zeros((0, dim), np.float32), np.zeros(0, np.int64)
    if not template.is_trained:
        train_rows = _sample(n, ann.training_size(recipe.nlist, n) if recipe.trains else 100_000, seed)
        sample = prepare(source.rows(train_rows))
        log.info("training %s on %d of %d vectors", recipe.factory, len(sample), n)
        train_index(template, sample, recipe.factory, 0)
        if tuned and tune_queries is None:
            pick = np.sort(np.random.default_rng(seed + 1).permutation(len(train_rows))[:min(pseudo_queries, n)])
            query_rows, queries = train_rows[pick], sample[pick]
        del sample
    if tuned and tune_queries is not None:
        tune_queries = np.asarray(tune_queries, np.float32)
        if tune_queries.ndim != 2 or tune_queries.shape[1] != dim or not len(tune_queries):
            raise ValueError(f"tune_queries must be [queries, {dim}] vectors, got shape {tune_queries.shape}")
        pick = np.sort(np.random.default_rng(seed + 1).permutation(len(tune_queries))[:pseudo_queries])
        queries = prepare(tune_queries[pick])
    indices = [faiss.clone_index(template) for _ in range(shards)]
    sizes = np.bincount(assignment, minlength=shards)
    refine = [np.empty((int(size), dim), REFINE_DTYPE) for size in sizes] if recipe.refine else None
    filled = np.zeros(shards, np.int64)
    truth = ann.ExactTopK(queries, ann.RECALL_AT + 1) if tuned else None
    next_log = 0.0
    for start, batch in source.batches(batch_size):
        batch = prepare(batch)
        part = assignment[start:start + len(batch)]
        for s in range(shards):
            rows = np.flatnonzero(part == s)
            if not len(rows):
                continue
            indices[s].add(batch[rows])
            if refine is not None:
                refine[s][filled[s]:filled[s] + len(rows)] = batch[rows]
            filled[s] += len(rows)
        if truth is not None:
            truth.add(batch, start)
        done = (start + len(batch)) / n
        if done >= next_log:
            log.info("indexed %d / %d vectors (%.0f%%, %.0f s)", start + len(batch), n, 100 * done,
                     time.perf_counter() - started)
            next_log = done + 0.1
    if int(filled.sum()) != n:
        raise ValueError(f"the vectors source gave {int(filled.sum())} rows, expected {n}")
    order = np.argsort(assignment, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    shard_ids = [ids.take(pa.array(order[bounds[s]:bounds[s + 1]])) for s in range(shards)]
    seconds = time.perf_counter() - started
    log.info("built %s over %d vectors in %d shard(s) in %.1f s", recipe.factory, n, shards, seconds)
    return StreamedShards(recipe, ids, indices, shard_ids, refine, queries, query_rows, truth, seconds)
