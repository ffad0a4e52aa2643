"""The ``auto`` dense index: exact search while it is cheap, an approximate index beyond, recall-checked.

:func:`auto_recipe` picks the structure from the corpus size: up to :data:`EXACT_MAX_DOCS` documents it is
``Flat`` (exact; a query scans every vector). Above, it is an inverted file whose lists hold 4-bit fast-scan
product-quantisation codes (``IVF{nlist},PQ{dim/2}x4fs``: dim/4 bytes a document, e.g. 96 for 384-d — SIMD
distance tables make the scan of a list nearly free), followed by a **refine stage**: the best
``refine × k`` candidates are re-scored exactly against the vectors kept in a float16 store beside the index
(memory-mapped when served; 2 × dim bytes a document on disk). ``nlist`` grows as ``4·√N`` (a power of two):
lists of ~√N/4 documents, so the scan of a fixed number of lists grows as √N, not N.

The search parameters are then tuned, not guessed: :func:`tune` measures recall@10 against exact search and
picks the fewest lists (``nprobe``), then the shallowest refine depth, whose recall reaches the target (default
0.97), on **query vectors** when the builder is given some (``tune_queries``: e.g. a training split's queries
through the query encoder — the best check, since queries are what will be searched), else on
*pseudo-queries*: document vectors sampled from the corpus, each with its own document held out of both result
lists. Pseudo-queries flatter an inverted file: with an asymmetric encoder (MiniLM, TAS-B), queries lie in
another region of the space than documents, so their neighbours spread over more lists — on SciFact in a 100 k
haystack, the ``nprobe`` at which documents reach recall 0.98 gives real queries 0.85, and they need 4–8× more
lists. Tuned on pseudo-queries, ``nprobe`` is therefore multiplied by :data:`DOCUMENT_QUERY_MARGIN` (capped at
``nlist``); the manifest records which. The parameters, the measured recall and the bytes a document costs are
recorded in the manifest.

Example::

    recipe = auto_recipe(1_000_000, 384)     # Recipe(factory='IVF4096,PQ192x4fs', refine=True, nlist=4096)
    truth = ExactTopK(queries, k=11); truth.add(batch, start=0)     # streaming exact top-k over the corpus
    params, recall, report = tune(search, queries, truth_ids, held_out, nlist=4096, refine=True)
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
import pyarrow as pa

log = logging.getLogger(__name__)

AUTO = "auto"
EXACT_MAX_DOCS = 50_000  # a Flat scan of 50 k × 384-d vectors takes ~2–3 ms on one core
TARGET_RECALL = 0.97  # 0.95 on training queries gave 0.953 on SciFact's test queries and 0.983× exact nDCG@10
PSEUDO_QUERIES = 256
REFINE_DEPTHS = (4, 8, 16, 32, 64, 128)  # candidates re-scored exactly: depth × k
RECALL_AT = 10
DOCUMENT_QUERY_MARGIN = 8  # nprobe × this when tuned on document pseudo-queries (see the module docstring)


@dataclass(frozen=True)
class Recipe:
    """What ``auto`` builds: a FAISS factory string, whether a refine store is kept, and the IVF list count."""

    factory: str
    refine: bool
    nlist: int = 0

    @property
    def trains(self) -> bool:
        return self.nlist > 0


def nlist_for(n: int) -> int:
    """Inverted lists for ``n`` documents: the power of two nearest ``4·√n``, at least 64 (FAISS's guideline is
    4–16·√n; finer lists scan less for the same recall, coarser ones train and assign faster)."""
    return max(64, 2 ** round(math.log2(max(4.0 * math.sqrt(max(n, 1)), 1.0))))


def auto_recipe(n: int, dim: int, exact_max: int = EXACT_MAX_DOCS) -> Recipe:
    """``Flat`` up to ``exact_max`` documents, else IVF + 4-bit fast-scan PQ with a refine store."""
    if n <= exact_max:
        return Recipe("Flat", refine=False)
    m = dim // 2 if dim % 2 == 0 else dim
    nlist = nlist_for(n)
    return Recipe(f"IVF{nlist},PQ{m}x4fs", refine=True, nlist=nlist)


def training_size(nlist: int, n: int) -> int:
    """Vectors to train an IVF index of ``nlist`` lists on: 40 per list (FAISS wants ≥ 39), at most ``n``."""
    return min(n, max(40 * nlist, 10_000))


class ExactTopK:
    """The exact top-``k`` (inner product) of fixed queries over a corpus seen batch by batch.

    Keeps, per query, the ``k`` best global row numbers, best first.
    """

    def __init__(self, queries: np.ndarray, k: int) -> None:
        self.queries = np.ascontiguousarray(queries, dtype=np.float32)
        self.k = k
        self.scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
        self.rows = np.zeros((len(queries), 0), dtype=np.int64)

    def add(self, batch: np.ndarray, start: int) -> None:
        scores = self.queries @ np.ascontiguousarray(batch, dtype=np.float32).T
        rows = np.broadcast_to(np.arange(start, start + len(batch), dtype=np.int64), scores.shape)
        scores = np.concatenate([self.scores, scores], axis=1)
        rows = np.concatenate([self.rows, rows], axis=1)
        if scores.shape[1] > self.k:
            best = np.argpartition(-scores, self.k - 1, axis=1)[:, :self.k]
            scores, rows = np.take_along_axis(scores, best, 1), np.take_along_axis(rows, best, 1)
            order = np.lexsort((rows, -scores), axis=-1)
            scores, rows = np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)
        self.scores, self.rows = scores, rows


def recall_at(found: Sequence[Sequence[str]], truth: Sequence[Sequence[str]], held_out: Sequence[str | None],
              k: int = RECALL_AT) -> float:
    """Mean recall@``k`` of ``found`` against ``truth``, each query's own document ``held_out`` of both."""
    total = 0.0
    for got, want, own in zip(found, truth, held_out):
        want_k = [d for d in want if d != own][:k]
        got_k = [d for d in got if d != own][:k]
        total += len(set(got_k).intersection(want_k)) / max(len(want_k), 1)
    return total / max(len(found), 1)


Search = Callable[[str, np.ndarray, int], list[list[str]]]  # (params, queries, k) -> doc ids per query


def _nprobes(nlist: int) -> list[int]:
    values, p = [], 1
    while p < nlist:
        values.append(p)
        p *= 2
    return [*values, nlist]


def tune(search: Search, queries: np.ndarray, truth: Sequence[Sequence[str]], held_out: Sequence[str | None], *,
         nlist: int, refine: bool, target: float = TARGET_RECALL, k: int = RECALL_AT) -> tuple[str, float, dict]:
    """The cheapest search parameters reaching recall@``k`` ≥ ``target``: ``(params, recall, report)``.

    Scanning lists is what costs, so: the smallest ``nprobe`` (doubling) at which some refine depth reaches the
    target, with the smallest such depth. Deterministic — no timing decides. When the deepest refine stops
    gaining (+0.002 or less a doubling) or every list is probed without reaching the target, the best recall
    seen (fewest lists, then shallowest depth, among equals), logged as a warning; the manifest records it.
    """
    depths = REFINE_DEPTHS if refine else (0,)
    tried: list[dict] = []
    previous = -1.0
    for nprobe in _nprobes(nlist):
        for depth in depths:
            params = f"nprobe={nprobe}" + (f",refine={depth}" if depth else "")
            t0 = time.perf_counter()
            found = search(params, queries, k + 1)
            elapsed = (time.perf_counter() - t0) / max(len(queries), 1)
            recall = recall_at(found, truth, held_out, k)
            tried.append({"params": params, "recall": round(recall, 4), "ms_per_query": round(1e3 * elapsed, 3)})
            log.info("auto index: %s → recall@%d %.4f, %.2f ms/query", params, k, recall, 1e3 * elapsed)
            if recall >= target:
                return params, recall, {"tried": tried, "target": target}
        if nprobe >= 64 and recall <= previous + 0.002:
            break  # more lists no longer help the deepest refine: its candidates are what limit recall
        previous = recall
    best = max(tried, key=lambda t: t["recall"])
    log.warning("auto index: no setting reached recall@%d %.2f (best %.4f with %s)", k, target, best["recall"],
                best["params"])
    return best["params"], best["recall"], {"tried": tried, "target": target}


def with_margin(params: str, factor: int, nlist: int) -> str:
    """``params`` with ``nprobe`` multiplied by ``factor`` (at most ``nlist``)."""
    parts = []
    for part in params.split(","):
        key, _, value = part.partition("=")
        parts.append(f"nprobe={min(int(value) * factor, nlist)}" if key == "nprobe" else part)
    return ",".join(parts)


def tune_index(index: Any, ids: pa.Array, queries: np.ndarray, query_rows: np.ndarray, truth: ExactTopK,
               recipe: Recipe, target: float) -> dict[str, Any]:
    """Tune a built :class:`~retrec.index.faiss_index.FaissIndex` (:func:`tune`) and describe it for the manifest:
    the parameters, the measured recall, and the bytes a document costs (index, doc ids, refine store)."""
    truth_ids = [ids.take(pa.array(row)).to_pylist() for row in truth.rows]
    documents = len(query_rows) > 0  # pseudo-queries are documents of the index, else query vectors
    held_out: list[str | None] = ids.take(pa.array(query_rows)).to_pylist() if documents else [None] * len(queries)

    def search(params: str, q: np.ndarray, k: int) -> list[list[str]]:
        index.set_search_params(params)
        return [[d for d, _ in hits] for hits in index.search(q, k)]

    params, recall, report = tune(search, queries, truth_ids, held_out, nlist=recipe.nlist, refine=recipe.refine,
                                  target=target)
    tuned_params = params
    if documents:
        params = with_margin(params, DOCUMENT_QUERY_MARGIN, recipe.nlist)
        index.set_search_params(params)
        recall = recall_at(search(params, queries, RECALL_AT + 1), truth_ids, held_out)
    n = len(index)
    index_bytes = sum(faiss.serialize_index(s).nbytes for s in index.cpu_shards)
    refine_bytes = sum(r.nbytes for r in index.refine) if index.refine is not None else 0
    return {"recipe": recipe.factory, "search_params": params, "recall_at_10": round(recall, 4), "target": target,
            "tuned_on": "documents (own document held out)" if documents else "query vectors",
            "pseudo_queries": len(queries), "params_at_target": tuned_params,
            "margin": DOCUMENT_QUERY_MARGIN if documents else 1,
            "bytes_per_doc": {"index": round(index_bytes / n, 1), "doc_ids": round(index.ids.nbytes() / n, 1),
                              "refine_store": round(refine_bytes / n, 1)},
            "tried": report["tried"]}
