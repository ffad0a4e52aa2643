"""Dense index: FAISS shards (any ``index_factory`` string), inner product, saved as an index version.

Documents go to one of N shards by a stable hash of their id (blake2b, not Python's salted ``hash()``); each
shard holds a FAISS index and a Parquet table of its doc ids. A search asks every shard for its top-k — widened
until ties at the cut-off are all in — and merges them in the order :func:`retrec.index.retriever.top_k` uses
(score descending, then doc_id descending), so N exact shards give exactly what one exact index gives.

The bundle (kind ``index/dense``) names the encoder bundle it was built with (name, version, similarity, dim); loading
against an encoder refuses another dimension, similarity or version, unless the encoder was trained compatible with it
(its queries' first dimensions are then searched). Shards are memory-mapped when FAISS supports it, and moved to the
GPUs when FAISS sees any. Factory strings are FAISS's own; note ``IVF…,PQ32x8`` also trains polysemous codes (≈ 60 s on
5k×384, one core) — ``IVF…,PQ32x8np`` skips that (≈ 3.5 s) and searches the same way.

Example::

    index = FaissIndex.build(doc_vectors, doc_ids, factory="HNSW32", shards=4, encoder=encoder.manifest)
    hits = index.search(encoder.encode_queries(["what causes scurvy"]), k=10)   # [[(doc_id, score), ...]]
    index.save("artifacts/scifact-dense")
    FaissIndex.load("artifacts/scifact-dense", encoder=encoder.manifest)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from retrec.bundle import BundleError, Manifest, load_bundle, publish
from retrec.contracts import strict_options
from retrec.index import ann
from retrec.index.dense_filter import filtered_search
from retrec.index.doc_ids import DocIdTable, IdColumn
from retrec.index.encoder_check import check_encoder, check_index, encoder_ref, index_check_ref
from retrec.index.faiss_build import REFINE_DTYPE, SHARD_HASH, VectorSource, shard_of, stream_shards
from retrec.index.faiss_check import load_npy, shard_files
from retrec.index.faiss_check import read_checked as _read_index
from retrec.index.filters import AllowedDocs
from retrec.index.retriever import Hits
from retrec.kinds import DENSE_INDEX
from retrec.runtime.vectors import l2_normalize

__all__ = ["SHARD_HASH", "FaissIndex", "check_encoder", "check_index", "encoder_ref", "index_check_ref", "load_index",
           "shard_of"]

KIND = DENSE_INDEX
REFINE_MAX = 4_096  # candidates a shard re-scores for one query, whatever k × refine asks (bounds a k=1000 request)
REFINE_BLOCK = 16_384  # candidate vectors gathered at once (× dim × 4 bytes of temporary memory)
METRIC = "inner_product"
SIMILARITIES = ("cosine", "dot")
# factory tokens whose stored vectors differ from the input (incremental reindexing encodes again)
LOSSY = ("PQ", "SQ", "LSH", "RaBitQ", "LSQ", "RQ", "PCA", "ITQ")
log = logging.getLogger(__name__)


def split_params(params: str | None) -> tuple[str, int]:
    """``"nprobe=32,refine=8"`` → ``("nprobe=32", 8)``: FAISS's own parameters, and the refine depth (0: none)."""
    faiss_parts, depth = [], 0
    for part in (params or "").split(","):
        key, _, value = part.strip().partition("=")
        if key == "refine":
            try:
                depth = int(value)
            except ValueError:
                raise ValueError(f"search parameter refine={value!r}: must be a whole number") from None
            if depth < 1:
                raise ValueError(f"search parameter refine={depth}: must be >= 1")
        elif key:
            faiss_parts.append(part.strip())
    return ",".join(faiss_parts), depth


def _gpu_copy(index: faiss.Index, use_gpu: bool | None) -> faiss.Index | None:
    """A GPU copy when FAISS sees GPUs (or ``use_gpu``), else None; unsupported index types stay on CPU."""
    if use_gpu is False or (use_gpu is None and faiss.get_num_gpus() <= 0):
        return None
    try:
        return faiss.index_cpu_to_all_gpus(index)
    except (RuntimeError, AttributeError) as exc:
        log.debug("FAISS index stays on CPU: %s", exc)
        return None


class FaissIndex:
    """N FAISS shards with their doc ids; ``search(vectors, k) -> list[Hits]``.

    ``refine`` (optional, one per shard): each shard's vectors (float16, row-aligned with its FAISS ids,
    typically memory-mapped) that an approximate shard's candidates are re-scored against exactly; the search
    parameter ``refine=D`` (in ``search_params``, beside FAISS's own such as ``nprobe=32``) asks each shard
    for ``D × k`` candidates. ``tuning`` is what ``auto`` measured when it built the index (see
    :mod:`retrec.index.ann`), recorded in the manifest.
    """

    def __init__(
        self, shards: Sequence[faiss.Index], shard_ids: Sequence[IdColumn], *, factory: str,
        similarity: str = "cosine", encoder: Mapping[str, Any] | None = None, search_params: str | None = None,
        use_gpu: bool | None = None, refine: Sequence[np.ndarray] | None = None,
        tuning: Mapping[str, Any] | None = None,
    ) -> None:
        if len(shards) != len(shard_ids) or not shards:
            raise ValueError(f"{len(shards)} shard indices for {len(shard_ids)} id tables")
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
        for i, (index, ids) in enumerate(zip(shards, shard_ids)):
            if index.ntotal != len(ids):
                raise ValueError(f"shard {i}: {index.ntotal} vectors for {len(ids)} doc ids")
        if refine is not None and (len(refine) != len(shards) or any(
                r.shape != (s.ntotal, s.d) for r, s in zip(refine, shards))):
            raise ValueError("refine stores must be one [documents, dim] array per shard")
        self.dim = int(shards[0].d)
        self.factory = factory
        self.similarity = similarity
        self.encoder = dict(encoder) if encoder is not None else None
        self.query_prefix: int | None = None  # a compatible query encoder's old-space width (check_encoder)
        self.cpu_shards = list(shards)
        self.ids = DocIdTable(shard_ids)
        self.refine = list(refine) if refine is not None else None
        self.tuning = dict(tuning) if tuning is not None else None
        self.search_params: str | None = None
        self._refine_depth = 0
        gpu_copies = [_gpu_copy(index, use_gpu) for index in self.cpu_shards]
        self._search_shards = [cpu if gpu is None else gpu for cpu, gpu in zip(self.cpu_shards, gpu_copies)]
        if search_params:
            self.set_search_params(search_params)

    @property
    def shard_ids(self) -> list[list[str]]:
        """Each shard's doc ids in row order (Python lists: built on each call)."""
        return [self.ids.shard(s) for s in range(self.ids.shard_count)]

    def encoder_check_ref(self) -> dict[str, Any]:
        """The facts :func:`check_encoder` compares: dim, similarity, encoder name and version."""
        enc = self.encoder or {}
        return {"dim": self.dim, "similarity": self.similarity,
                "encoder_name": enc.get("name"), "encoder_version": enc.get("version")}

    def check_encoder(self, encoder: Manifest | Mapping[str, Any]) -> None:
        """Refuse an encoder this index's vectors did not come from, except a compatible one (:func:`check_encoder`)."""
        self.query_prefix = check_encoder(self.encoder_check_ref(), encoder)

    @property
    def doc_ids(self) -> list[str]:
        """Every document id held, shard by shard."""
        return [d for s in range(self.ids.shard_count) for d in self.ids.shard(s)]

    @property
    def on_gpu(self) -> list[bool]:
        return [s is not c for s, c in zip(self._search_shards, self.cpu_shards)]

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def build(
        cls, vectors: np.ndarray, doc_ids: Sequence[str], *, factory: str = "Flat", shards: int = 1,
        similarity: str = "cosine", encoder: Manifest | Mapping[str, Any] | None = None,
        search_params: str | None = None, use_gpu: bool | None = None, **auto: Any,
    ) -> FaissIndex:
        """Index ``vectors`` (one row per doc id); cosine normalises them; see :meth:`from_source`."""
        from retrec.data.vectors import ArraySource

        if vectors.ndim != 2 or vectors.shape[0] != len(doc_ids):
            raise ValueError(f"vectors of shape {vectors.shape} for {len(doc_ids)} doc ids")
        return cls.from_source(ArraySource(vectors, doc_ids), factory=factory, shards=shards, similarity=similarity,
                               encoder=encoder, search_params=search_params, use_gpu=use_gpu, **auto)

    @classmethod
    def from_source(
        cls, source: VectorSource, *, factory: str = "Flat", shards: int = 1, similarity: str = "cosine",
        encoder: Manifest | Mapping[str, Any] | None = None, search_params: str | None = None,
        use_gpu: bool | None = None, target_recall: float = ann.TARGET_RECALL, **stream: Any,
    ) -> FaissIndex:
        """Index every vector of ``source`` (streamed: :func:`~retrec.index.faiss_build.stream_shards`).

        ``factory``: a FAISS ``index_factory`` string (IVF/PQ structures train once on a sample, shared by the
        shards), or ``auto`` (:mod:`retrec.index.ann`: exact when small, else IVF-PQ with a refine store whose
        search parameters are tuned here to ``target_recall`` and recorded in :attr:`tuning`). ``stream``:
        ``pseudo_queries``, ``seed``, ``exact_max``, ``batch_size``.
        """
        ref = encoder_ref(encoder) if encoder is not None else None
        if ref is not None:
            if int(ref["dim"]) != source.dim:
                raise ValueError(f"vectors have dim {source.dim}, encoder {ref['name']!r} has {ref['dim']}")
            similarity = ref["similarity"] or similarity
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
        if not 0.0 < target_recall <= 1.0:
            raise ValueError(f"target_recall must be in (0, 1], got {target_recall}")
        parts = stream_shards(source, factory=factory, shards=shards, normalize=similarity == "cosine", **stream)
        index = cls(parts.indices, parts.shard_ids, factory=parts.recipe.factory, similarity=similarity,
                    encoder=ref, use_gpu=use_gpu, refine=parts.refine)
        if parts.truth is not None:
            index.tuning = ann.tune_index(index, parts.ids, parts.queries, parts.query_rows, parts.truth,
                                          parts.recipe, target_recall)
            index.tuning["build_seconds"] = round(parts.seconds, 1)
            search_params = search_params or index.tuning["search_params"]
        if search_params:
            index.set_search_params(search_params)
        return index

    def encoded_documents(self) -> tuple[list[str], np.ndarray] | None:
        """Every document's vector as indexed (shard by shard), or None when the factory stores them lossily
        (PQ, SQ, ...) and keeps no refine store, or cannot give them back: what an incremental reindex reuses for
        unchanged documents. With a refine store: its float16 vectors, which are what such an index indexes."""
        if self.refine is not None:
            return self.doc_ids, np.concatenate([np.asarray(r) for r in self.refine])
        if any(token in self.factory for token in LOSSY):
            return None
        parts = []
        try:
            for shard in self.cpu_shards:
                parts.append(shard.reconstruct_n(0, shard.ntotal) if shard.ntotal else
                             np.zeros((0, self.dim), np.float32))
        except RuntimeError as exc:  # e.g. an IVF index without a direct map
            log.info("index vectors cannot be read back (%s): unchanged documents are encoded again", exc)
            return None
        return self.doc_ids, np.concatenate(parts).astype(np.float32, copy=False)

    def set_search_params(self, params: str) -> None:
        """Search-time parameters for every shard: FAISS's own (``"nprobe=16"``, ``"efSearch=128"``) and
        ``refine=D`` (re-score ``D × k`` candidates a shard, for an index with refine stores)."""
        faiss_params, depth = split_params(params)
        if depth and self.refine is None:
            raise ValueError(f"search parameter refine={depth}: this index keeps no vectors to refine with")
        for cpu, shard in zip(self.cpu_shards, self._search_shards):
            if faiss_params:
                faiss.ParameterSpace().set_index_parameters(cpu, faiss_params)
                if shard is not cpu:
                    faiss.GpuParameterSpace().set_index_parameters(shard, faiss_params)
        self.search_params, self._refine_depth = params, depth

    def _shard_search(self, s: int, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        shard = self._search_shards[s]
        if shard is not self.cpu_shards[s]:
            try:
                return shard.search(queries, k)
            except RuntimeError:  # e.g. k above the GPU's limit
                pass
        return self.cpu_shards[s].search(queries, k)

    def _complete_top_k(self, s: int, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Shard ``s``'s top ``k`` plus every result tied with its ``k``-th score."""
        n = self.cpu_shards[s].ntotal
        width = min(k + 1, n)
        scores, ids = self._shard_search(s, queries, width)
        while width < n:
            last_valid = ids[:, width - 1] >= 0
            open_rows = np.flatnonzero(last_valid & (scores[:, width - 1] == scores[:, k - 1]))
            if not len(open_rows):
                break
            width = min(2 * width, n)
            more_scores, more_ids = self._shard_search(s, queries[open_rows], width)
            pad = width - scores.shape[1]
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
            scores[open_rows], ids[open_rows] = more_scores, more_ids
        return scores, ids

    def _refined_top(self, s: int, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Shard ``s``'s ``refine × k`` approximate candidates (at most :data:`REFINE_MAX`, at least ``k``),
        re-scored exactly against its refine store, a block of queries at a time (bounded temporary memory)."""
        assert self.refine is not None
        width = min(max(k, min(self._refine_depth * k, REFINE_MAX)), self.cpu_shards[s].ntotal)
        _, ids = self._shard_search(s, queries, width)
        scores = np.full(ids.shape, -np.inf, dtype=np.float32)
        block = max(1, REFINE_BLOCK // width)
        for start in range(0, len(queries), block):
            part = ids[start:start + block]
            valid = part >= 0
            rows = np.where(valid, part, 0)
            flat = np.unique(rows)  # read each stored vector once, in file order (a memory-mapped store)
            stored = np.asarray(self.refine[s][flat], dtype=np.float32)
            exact = np.einsum("qwd,qd->qw", stored[np.searchsorted(flat, rows)], queries[start:start + block])
            scores[start:start + block] = np.where(valid, exact, -np.inf)
        return scores, ids

    def search(self, queries: np.ndarray, k: int, allowed: AllowedDocs | None = None) -> list[Hits]:
        """Top-``k`` ``(doc_id, score)`` per query row, merged over shards deterministically; only the ``allowed``
        documents (a filter), by exact scores, when given (:mod:`retrec.index.dense_filter`)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim == 2 and queries.shape[1] > self.dim == self.query_prefix:  # a compatible encoder's
            queries = np.ascontiguousarray(queries[:, :self.dim])  # old space: its first dimensions
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"query vectors of shape {queries.shape}; this index has dim {self.dim}")
        if k <= 0 or not len(queries):
            return [[] for _ in range(len(queries))]
        if self.similarity == "cosine":
            queries = l2_normalize(queries)
        if allowed is not None:
            return filtered_search(self, queries, k, allowed)
        score_parts, key_parts = [], []
        for s in range(len(self.cpu_shards)):
            if self.cpu_shards[s].ntotal == 0:
                continue
            if self._refine_depth and self.refine is not None:
                scores, ids = self._refined_top(s, queries, k)
            else:
                scores, ids = self._complete_top_k(s, queries, k)
            valid = ids >= 0
            key_parts.append(np.where(valid, self.ids.keys(s)[np.where(valid, ids, 0)], -1))
            score_parts.append(np.where(valid, scores, -np.inf).astype(np.float32))
        scores = np.concatenate(score_parts, axis=1)
        keys = np.concatenate(key_parts, axis=1)
        order = np.lexsort((-keys, -scores), axis=-1)[:, :k]
        top_scores = np.take_along_axis(scores, order, axis=1)
        top_keys = np.take_along_axis(keys, order, axis=1)
        out = []
        for row_keys, row_scores in zip(top_keys, top_scores):
            valid = row_keys >= 0
            out.append(list(zip(self.ids.lookup(row_keys[valid]), row_scores[valid].tolist())))
        return out

    def save(self, directory: str | Path, name: str = "dense", metrics: dict[str, Any] | None = None) -> Manifest:
        """Publish the index version atomically: ``shards/NNN.faiss`` + ``shards/NNN.ids.parquet``, manifest.

        Index versions are immutable: a non-empty ``directory`` is refused (FileExistsError).
        """
        encoder = self.encoder or {}
        with publish(directory, replace=False) as pub:
            (pub.path / "shards").mkdir()
            for s, index in enumerate(self.cpu_shards):
                faiss.write_index(index, str(pub.path / "shards" / f"{s:03d}.faiss"))
                pq.write_table(pa.table({"doc_id": self.ids.shard_array(s).cast(pa.string())}),
                               pub.path / "shards" / f"{s:03d}.ids.parquet")
                if self.refine is not None:
                    np.save(pub.path / "shards" / f"{s:03d}.vectors.npy", np.asarray(self.refine[s], REFINE_DTYPE))
            config = {"factory": self.factory, "metric": METRIC, "similarity": self.similarity,
                      "shards": len(self.cpu_shards), "shard_hash": SHARD_HASH, "search_params": self.search_params,
                      "encoder": {"name": encoder.get("name"), "version": encoder.get("version"),
                                  "path": encoder.get("path")}}
            if self.refine is not None:
                config["refine_store"] = np.dtype(REFINE_DTYPE).name
            if self.tuning is not None:
                config["auto"] = self.tuning
            pub.set_manifest(
                kind=KIND, name=name, metrics=metrics, config=config,
                dims={"dim": self.dim, "documents": len(self),
                      "shard_documents": [self.ids.shard_size(s) for s in range(self.ids.shard_count)]},
            )
        assert pub.manifest is not None
        return pub.manifest

    @classmethod
    def load(
        cls, directory: str | Path, encoder: Manifest | Mapping[str, Any] | None = None, *, mmap: bool = True,
        use_gpu: bool | None = None, verify: bool = True, shards: Sequence[int] | None = None,
    ) -> FaissIndex:
        """Load (checksums verified) and, given the encoder's manifest, refuse an incompatible one.

        ``shards`` loads only those shard numbers (a serving replica holds one); default: all of them.
        """
        only = None if shards is None else shard_files(shards)  # a shard replica hashes its own files only
        manifest = load_bundle(directory, kind=KIND, verify=verify, only=only)
        config, dims = manifest.config, manifest.dims
        if config.get("metric") != METRIC:
            raise BundleError(f"{directory}: metric {config.get('metric')!r} is not supported ({METRIC!r} is)")
        ref = index_check_ref(manifest)
        prefix = check_encoder(ref, encoder, where=str(directory)) if encoder is not None else None
        count = int(config["shards"])
        wanted = list(range(count)) if shards is None else list(shards)
        bad = [s for s in wanted if not 0 <= s < count]
        if bad or not wanted:
            raise BundleError(f"{directory}: has {count} shards, cannot load shard(s) {bad or wanted}")
        enc = config.get("encoder") or {}
        shard_indices, id_lists, refine = [], [], []
        for s in wanted:
            index = _read_index(manifest.file(f"shards/{s:03d}.faiss"), mmap)
            if index.d != int(dims["dim"]) or index.metric_type != faiss.METRIC_INNER_PRODUCT:
                raise BundleError(f"{directory}: shard {s} has dim {index.d} / metric {index.metric_type}, "
                                  f"manifest says dim {dims['dim']} / {METRIC}")
            shard_indices.append(index)
            id_lists.append(pq.read_table(manifest.file(f"shards/{s:03d}.ids.parquet")).column("doc_id"))
            if config.get("refine_store"):
                refine.append(load_npy(manifest.file(f"shards/{s:03d}.vectors.npy"), mmap))
        encoder_info = ({"name": enc.get("name"), "version": enc.get("version"), "dim": dims["dim"],
                         "similarity": config["similarity"], "path": enc.get("path")}
                        if enc.get("name") is not None else None)
        index = cls(shard_indices, id_lists, factory=config["factory"], similarity=config["similarity"],
                    encoder=encoder_info, search_params=config.get("search_params"), use_gpu=use_gpu,
                    refine=refine or None, tuning=config.get("auto"))
        index.query_prefix = prefix
        return index


@strict_options(KIND)
def load_index(
    path: str | Path, *, shard: int | None = None, encoder: Manifest | Mapping[str, Any] | None = None,
    use_gpu: bool | None = None, verify: bool = True,
) -> FaissIndex:
    """Registry loader: the whole index version, or one shard of it (``shard=i``), with every check."""
    return FaissIndex.load(path, encoder, use_gpu=use_gpu, verify=verify,
                           shards=None if shard is None else [shard])
