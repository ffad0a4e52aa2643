"""Multi-vector indexes: exact MaxSim (``index/maxsim``) and MUVERA (``index/muvera``), sharded.

Each document is a matrix of token vectors (a ``model/multivector`` encoder's output), scored by MaxSim: the sum
over query tokens of the best dot product with any document token. Documents go to shards by
:func:`retrec.index.faiss_index.shard_of`; a shard stores its token vectors as one float16 matrix
(``shards/NNN.tokens.npy``, memory-mapped) with a Parquet table of doc id, first row and token count.

- ``index/maxsim`` scores every document of every shard (brute force): the exact reference.
- ``index/muvera`` also holds, per shard, a FAISS index (any ``index_factory`` string; default
  :func:`default_factory`) over the documents' MUVERA fixed dimensional encodings (:mod:`retrec.runtime.fde`),
  takes each shard's top ``ceil(candidates / shards)`` by FDE inner product and re-ranks them by exact MaxSim;
  ``candidates`` is tuned at build time to recall@10 >= 0.95 against exact MaxSim unless given
  (:mod:`~retrec.index.muvera_auto`; the measurement in ``config.auto``).

Shard results merge as dense does (score descending, then doc id descending); ``bytes_per_document`` in the
manifest: FDE raw (float32), FDE as indexed (the FAISS file), token store.

Example::

    index = build_muvera(doc_ids, texts, encoder=OnnxTokenEncoder("artifacts/mv"), factory="Flat", shards=2)
    index.search(encoder.encode_queries(["what causes scurvy"]), k=10)     # [[(doc_id, maxsim), ...]]
    index.save("artifacts/scifact-muvera", name="scifact-muvera")
    load_index("artifacts/scifact-muvera", shard=0, candidates=200)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from retrec.bundle import BundleError, Manifest, load_bundle, publish
from retrec.contracts import strict_options
from retrec.index import muvera_auto
from retrec.index.doc_ids import DocIdTable
from retrec.index.encoder_check import check_encoder, encoder_ref, index_check_ref
from retrec.index.faiss_build import SHARD_HASH, new_index, shard_of, train_index
from retrec.index.faiss_check import load_npy, shard_files
from retrec.index.faiss_check import read_checked as _read_index
from retrec.index.filters import AllowedDocs
from retrec.index.retriever import Hits
from retrec.kinds import MAXSIM_INDEX, MUVERA_INDEX
from retrec.runtime.fde import FDEConfig
from retrec.runtime.fde import encode_documents as fde_documents
from retrec.runtime.fde import encode_queries as fde_queries

KINDS = (MUVERA_INDEX, MAXSIM_INDEX)
DEFAULT_CANDIDATES = 100
FDE_DEFAULTS: dict[str, Any] = {"repetitions": 20, "simhash_bits": 4, "projection_dim": 32}  # RESULTS.md: MUVERA
_EXACT_BLOCK = 1 << 18  # token rows scored at once by brute force (bounds the similarity matrix)
_FDE_CHUNK = 16_384  # documents whose FDEs are encoded and added at once
FAST_SCAN_FROM = 1_000  # documents in a shard from which the default FDE index is fast-scan PQ (default_factory)


@dataclass(eq=False)
class TokenShard:
    """One shard: doc ids, each document's first row and token count, the float16 token matrix, the FDE index."""

    ids: list[str]
    offsets: np.ndarray  # int64 [n]
    lengths: np.ndarray  # int64 [n]
    tokens: np.ndarray  # float16 [total tokens, dim] (memory-mapped when loaded)
    fde: faiss.Index | None = None
    fde_factory: str | None = None  # the FAISS factory string of ``fde``
    _tokens32: np.ndarray | None = field(default=None, repr=False)

    def exact(self) -> np.ndarray:
        """The token matrix as float32, converted once and kept (brute force: a reference, not for large corpora)."""
        if self._tokens32 is None:
            self._tokens32 = np.asarray(self.tokens, dtype=np.float32)  # once; rows stay in page cache otherwise
        return self._tokens32


def _float32(half: np.ndarray, codec: faiss.IndexScalarQuantizer) -> np.ndarray:
    """float16 rows as float32 through FAISS's fp16 decoder (SIMD), on this thread alone: an OpenMP pool woken here
    would spin against the BLAS threads of the MaxSim product that follows (8.4 ms a query instead of 5.9)."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        return codec.sa_decode(np.ascontiguousarray(half).view(np.uint8))
    finally:
        faiss.omp_set_num_threads(threads)


def default_factory(fde: FDEConfig, documents: int) -> str:
    """The FDE index of a shard when none is named: 4-bit fast-scan PQ over groups of 4 coordinates
    (``PQ{dim/4}x4fs``: 1/32 of the float32 bytes, SIMD scan) from :data:`FAST_SCAN_FROM` documents — on SciFact it
    finds 96.7% of exact MaxSim's top 10 in 100 candidates (Flat: 96.5%) in 0.17 ms instead of 9 ms — and an exact
    ``Flat`` scan of smaller shards (too few documents to train the codebooks, and cheap to scan)."""
    if documents >= FAST_SCAN_FROM and fde.output_dim % 4 == 0:
        return f"PQ{fde.output_dim // 4}x4fs"
    return "Flat"


def _valid(ids: np.ndarray) -> np.ndarray:
    return ids[ids >= 0]  # FAISS's -1: fewer hits than asked


def _maxsim_rows(query: np.ndarray, tokens: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """MaxSim of ``query`` against consecutive documents of ``tokens`` beginning at ``starts`` (all non-empty)."""
    sims = query @ tokens.T  # [query tokens, document tokens]
    return np.maximum.reduceat(sims, starts, axis=1).sum(axis=0)


class MultiVectorIndex:
    """Sharded token stores (+ FDE indices for MUVERA); ``search(token_matrices, k) -> list[Hits]``."""

    def __init__(self, shards: Sequence[TokenShard], *, kind: str, dim: int, fde: FDEConfig | None = None,
                 factory: str | None = None, encoder: Mapping[str, Any] | None = None,
                 candidates: int = DEFAULT_CANDIDATES, total_shards: int | None = None,
                 search_params: str | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if kind == MUVERA_INDEX and (fde is None or any(s.fde is None for s in shards)):
            raise ValueError("a MUVERA index needs an FDE config and an FDE index per shard")
        if candidates < 1:
            raise ValueError(f"candidates must be positive, got {candidates}")
        self.kind, self.dim, self.fde, self.factory = kind, dim, fde, factory
        self.encoder = dict(encoder) if encoder is not None else None
        self.shards = list(shards)
        self.total_shards = total_shards or len(self.shards)
        self.candidates = candidates
        self.tuning: dict[str, Any] | None = None  # what auto measured when it chose ``candidates``
        self.search_params = None
        self._half = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16)  # decodes the token store
        self._table = DocIdTable([s.ids for s in self.shards])  # the tie-break keys; ValueError on a duplicate
        self._keys = [self._table.keys(i) for i in range(len(self.shards))]
        if search_params:
            self.set_search_params(search_params)

    @property
    def shard_ids(self) -> list[list[str]]:
        return [list(s.ids) for s in self.shards]

    @property
    def doc_ids(self) -> list[str]:
        return [d for s in self.shards for d in s.ids]

    def __len__(self) -> int:
        return len(self._table)

    def set_search_params(self, params: str) -> None:
        """FAISS search-time parameters of the FDE indices, e.g. ``"efSearch=128"`` or ``"nprobe=16"``."""
        for s in self.shards:
            if s.fde is not None:
                faiss.ParameterSpace().set_index_parameters(s.fde, params)
        self.search_params = params

    def encoded_documents(self) -> None:
        """Tokens are stored as float16 (lossy): an incremental reindex encodes every document again."""
        return None

    def _check(self, queries: Sequence[np.ndarray]) -> list[np.ndarray]:
        out = [np.ascontiguousarray(q, dtype=np.float32) for q in queries]
        bad = [q.shape for q in out if q.ndim != 2 or q.shape[1] != self.dim or not len(q)]
        if bad:
            raise ValueError(f"query token matrices of shapes {bad[:3]}; this index has token dim {self.dim}")
        return out

    def _exact(self, s: int, query: np.ndarray) -> np.ndarray:
        shard = self.shards[s]
        tokens = shard.exact()
        scores = np.empty(len(shard.ids), dtype=np.float32)
        first = 0
        while first < len(shard.ids):  # blocks of whole documents, about _EXACT_BLOCK rows each
            last = int(np.searchsorted(shard.offsets, shard.offsets[first] + _EXACT_BLOCK, side="left"))
            last = max(last, first + 1)
            lo, hi = int(shard.offsets[first]), int(shard.offsets[last - 1] + shard.lengths[last - 1])
            scores[first:last] = _maxsim_rows(query, tokens[lo:hi], shard.offsets[first:last] - lo)
            first = last
        return scores

    def _rerank(self, s: int, query: np.ndarray, rows: np.ndarray) -> np.ndarray:
        shard = self.shards[s]
        parts = [shard.tokens[shard.offsets[r]:shard.offsets[r] + shard.lengths[r]] for r in rows]
        starts = np.cumsum(shard.lengths[rows]) - shard.lengths[rows]
        return _maxsim_rows(query, _float32(np.concatenate(parts), self._half), starts)

    def search(self, queries: Sequence[np.ndarray], k: int, candidates: int | None = None,
               allowed: AllowedDocs | None = None) -> list[Hits]:
        """Top-``k`` ``(doc_id, MaxSim)`` per query token matrix. MUVERA re-ranks ``candidates`` in all (at most
        that many hits, whatever ``k``: Recall@1000 needs as many); ``allowed`` (a filter): exact MaxSim over them."""
        queries = self._check(queries)
        if candidates is not None and candidates < 1:
            raise ValueError(f"candidates must be positive, got {candidates}")
        if k <= 0 or not queries:
            return [[] for _ in queries]
        per_shard = math.ceil((candidates or self.candidates) / self.total_shards)
        encoded = fde_queries(queries, self.fde) if self.kind == MUVERA_INDEX else None
        out = []
        for qi, query in enumerate(queries):
            scores, keys = [], []
            for s, shard in enumerate(self.shards):
                if not shard.ids:
                    continue
                if allowed is None and encoded is None:
                    rows, shard_scores = np.arange(len(shard.ids)), self._exact(s, query)
                else:  # a filter's allowed rows, or MUVERA's candidates: exact MaxSim over them
                    rows = np.flatnonzero(allowed.rows(shard.ids)) if allowed is not None else _valid(
                        shard.fde.search(encoded[qi:qi + 1], min(per_shard, len(shard.ids)))[1][0])
                    shard_scores = self._rerank(s, query, rows) if len(rows) else np.zeros(0, np.float32)
                scores.append(shard_scores)
                keys.append(self._keys[s][rows])
            if not scores:  # every shard held here is empty
                out.append([])
                continue
            all_scores, all_keys = np.concatenate(scores), np.concatenate(keys)
            order = np.lexsort((-all_keys, -all_scores))[:k]
            out.append(list(zip(self._table.lookup(all_keys[order]), all_scores[order].tolist())))
        return out

    def save(self, directory: str | Path, name: str = "multivector", metrics: dict[str, Any] | None = None) -> Manifest:
        """Publish the index version atomically (token stores, doc tables, FDE indices, manifest)."""
        encoder = self.encoder or {}
        with publish(directory, replace=False) as pub:
            (pub.path / "shards").mkdir()
            for s, shard in enumerate(self.shards):
                np.save(pub.path / "shards" / f"{s:03d}.tokens.npy", np.asarray(shard.tokens, np.float16),
                        allow_pickle=False)
                pq.write_table(pa.table({"doc_id": pa.array(shard.ids, pa.string()),
                                         "offset": pa.array(shard.offsets, pa.int64()),
                                         "length": pa.array(shard.lengths, pa.int64())}),
                               pub.path / "shards" / f"{s:03d}.docs.parquet")
                if shard.fde is not None:
                    faiss.write_index(shard.fde, str(pub.path / "shards" / f"{s:03d}.fde.faiss"))
            n, tokens = max(1, len(self)), sum(len(s.tokens) for s in self.shards)
            per_doc: dict[str, float] = {"tokens_float16": round(tokens * self.dim * 2 / n, 1)}
            if self.fde is not None:
                fde_bytes = sum((pub.path / "shards" / f"{s:03d}.fde.faiss").stat().st_size
                                for s in range(len(self.shards)))
                per_doc.update(fde_raw_float32=self.fde.output_dim * 4, fde_indexed=round(fde_bytes / n, 1))
            pub.set_manifest(
                kind=self.kind, name=name, metrics=metrics,
                config={"similarity": "maxsim", "metric": "inner_product", "token_dtype": "float16",
                        "shards": len(self.shards), "shard_hash": SHARD_HASH, "factory": self.factory,
                        "shard_factories": [s.fde_factory for s in self.shards],
                        "fde": asdict(self.fde) if self.fde is not None else None, "candidates": self.candidates,
                        "auto": self.tuning,
                        "search_params": self.search_params,
                        "encoder": {k: encoder.get(k) for k in ("name", "version", "path")}},
                dims={"dim": self.dim, "fde_dim": self.fde.output_dim if self.fde else None, "documents": len(self),
                      "tokens": tokens, "shard_documents": [len(s.ids) for s in self.shards],
                      "bytes_per_document": per_doc})
        assert pub.manifest is not None
        return pub.manifest


def _fde_index(fde: FDEConfig, factory: str, sets: list[np.ndarray], shard: int) -> faiss.Index:
    """A FAISS index (``factory``, inner product) over the documents' FDEs, encoded :data:`_FDE_CHUNK` at a time
    (a trained factory learns from the first chunk)."""
    index = new_index(fde.output_dim, factory)
    for start in range(0, len(sets), _FDE_CHUNK):
        vectors = fde_documents(sets[start:start + _FDE_CHUNK], fde)
        train_index(index, vectors, factory, shard)
        index.add(vectors)
    return index


def assemble(kind: str, doc_ids: Sequence[str], encoded: Sequence[np.ndarray], *, encoder: Any,
             factory: str | None = None, shards: int = 1, candidates: int | None = None,
             target_recall: float = muvera_auto.TARGET_RECALL, **fde_options: Any) -> MultiVectorIndex:
    """Index documents' token matrices (rows by doc id) that ``encoder`` produced; MUVERA's ``candidates``, when
    not given, tuned to ``target_recall`` (:mod:`retrec.index.muvera_auto`)."""
    if len(doc_ids) != len(encoded):
        raise ValueError(f"{len(doc_ids)} doc ids for {len(encoded)} token matrices")
    if not len(doc_ids):
        raise ValueError("cannot index an empty corpus")
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    ref = encoder_ref(encoder.manifest)
    dim = int(ref["dim"])
    empty = [d for d, m in zip(doc_ids, encoded) if np.asarray(m).ndim != 2 or not len(m) or m.shape[1] != dim]
    if empty:
        raise ValueError(f"{len(empty)} documents have no [tokens, {dim}] matrix (e.g. {empty[:3]})")
    fde = FDEConfig(dim=dim, **{**FDE_DEFAULTS, **fde_options}) if kind == MUVERA_INDEX else None
    assignment = np.fromiter((shard_of(d, shards) for d in doc_ids), dtype=np.int64, count=len(doc_ids))
    parts = []
    for s in range(shards):
        rows = np.flatnonzero(assignment == s)
        lengths = np.array([len(encoded[i]) for i in rows], dtype=np.int64)
        offsets = np.cumsum(lengths) - lengths  # each document's first row
        tokens = (np.concatenate([np.asarray(encoded[i], np.float16) for i in rows]) if len(rows)
                  else np.zeros((0, dim), np.float16))
        index, chosen = None, None
        if fde is not None:
            chosen = factory or default_factory(fde, len(rows))
            index = _fde_index(fde, chosen, [encoded[i] for i in rows], s)
        parts.append(TokenShard([doc_ids[i] for i in rows], offsets, lengths, tokens, index, chosen))
    ref["similarity"] = "maxsim"
    index = MultiVectorIndex(parts, kind=kind, dim=dim, fde=fde, factory=(factory or "auto") if fde else None,
                             encoder=ref, candidates=candidates or DEFAULT_CANDIDATES)
    if fde is not None and candidates is None:
        index.tuning = muvera_auto.tune_candidates(index, target_recall)
    return index


def assemble_muvera(doc_ids: Sequence[str], encoded: Sequence[np.ndarray], *, encoder: Any,
                    factory: str | None = None, shards: int = 1, candidates: int | None = None,
                    target_recall: float = muvera_auto.TARGET_RECALL,
                    repetitions: int = FDE_DEFAULTS["repetitions"], simhash_bits: int = FDE_DEFAULTS["simhash_bits"],
                    projection_dim: int | None = FDE_DEFAULTS["projection_dim"], final_dim: int | None = None,
                    fill_empty: bool = True, seed: int = 0) -> MultiVectorIndex:
    """Registry hook (``retrec reindex``): a MUVERA index over token matrices ``encoder`` produced; the FDE
    parameters as :class:`~retrec.runtime.fde.FDEConfig` names them (``--param repetitions=40``)."""
    return assemble(MUVERA_INDEX, doc_ids, encoded, encoder=encoder, factory=factory, shards=shards,
                    candidates=candidates, target_recall=target_recall, repetitions=repetitions,
                    simhash_bits=simhash_bits, projection_dim=projection_dim, final_dim=final_dim,
                    fill_empty=fill_empty, seed=seed)


def assemble_maxsim(doc_ids: Sequence[str], encoded: Sequence[np.ndarray], *, encoder: Any,
                    shards: int = 1) -> MultiVectorIndex:
    """Registry hook: an exact MaxSim index over token matrices ``encoder`` produced."""
    return assemble(MAXSIM_INDEX, doc_ids, encoded, encoder=encoder, shards=shards)


def build_muvera(doc_ids: Sequence[str], texts: Sequence[str], *, encoder: Any, factory: str | None = None,
                 shards: int = 1, progress: bool = False, candidates: int | None = None,
                 target_recall: float = muvera_auto.TARGET_RECALL,
                 repetitions: int = FDE_DEFAULTS["repetitions"], simhash_bits: int = FDE_DEFAULTS["simhash_bits"],
                 projection_dim: int | None = FDE_DEFAULTS["projection_dim"], final_dim: int | None = None,
                 fill_empty: bool = True, seed: int = 0) -> MultiVectorIndex:
    """Registry builder (``retrec index muvera``): encode the documents' tokens, index their FDEs."""
    return assemble_muvera(doc_ids, encoder.encode_documents(list(texts), progress=progress), encoder=encoder,
                           factory=factory, shards=shards, candidates=candidates, target_recall=target_recall,
                           repetitions=repetitions,
                           simhash_bits=simhash_bits, projection_dim=projection_dim, final_dim=final_dim,
                           fill_empty=fill_empty, seed=seed)


def build_maxsim(doc_ids: Sequence[str], texts: Sequence[str], *, encoder: Any, shards: int = 1,
                 progress: bool = False) -> MultiVectorIndex:
    """Registry builder (``retrec index maxsim``): encode the documents' tokens for brute-force MaxSim."""
    return assemble_maxsim(doc_ids, encoder.encode_documents(list(texts), progress=progress), encoder=encoder,
                           shards=shards)


@strict_options(" / ".join(KINDS))
def load_index(path: str | Path, *, shard: int | None = None, encoder: Manifest | Mapping[str, Any] | None = None,
               verify: bool = True, candidates: int | None = None, search_params: str | None = None,
               mmap: bool = True) -> MultiVectorIndex:
    """Registry loader: the whole index version, or one shard (``shard=i``), with its checks."""
    manifest = load_bundle(path, verify=verify, only=None if shard is None else shard_files([shard]))
    if manifest.kind not in KINDS:
        raise BundleError(f"{path}: a {manifest.kind!r} bundle, not {' or '.join(KINDS)}")
    try:
        return _load(manifest, path, shard, encoder, candidates, search_params, mmap)
    except (KeyError, TypeError, ValueError) as exc:  # a manifest or table of another shape
        raise BundleError(f"{path}: not a readable {manifest.kind} version ({type(exc).__name__}: {exc})") from None


def _load(manifest: Manifest, path: str | Path, shard: int | None, encoder: Manifest | Mapping[str, Any] | None,
          candidates: int | None, search_params: str | None, mmap: bool) -> MultiVectorIndex:
    config, dims = manifest.config, manifest.dims
    if encoder is not None:
        check_encoder(index_check_ref(manifest), encoder, where=str(path))
    count = int(config["shards"])
    if count < 1 or len(dims["shard_documents"]) != count:
        raise BundleError(f"{path}: {count} shards for {len(dims['shard_documents'])} shard sizes")
    wanted = list(range(count)) if shard is None else [shard]
    if any(not 0 <= s < count for s in wanted):
        raise BundleError(f"{path}: has {count} shards, cannot load shard {shard}")
    dim = int(dims["dim"])
    fde = FDEConfig(**config["fde"]) if manifest.kind == MUVERA_INDEX else None
    if fde is not None and fde.dim != dim:
        raise BundleError(f"{path}: FDE parameters for dim {fde.dim}, tokens of dim {dim}")
    parts = []
    for s in wanted:
        table = pq.read_table(manifest.file(f"shards/{s:03d}.docs.parquet"))
        tokens = load_npy(manifest.file(f"shards/{s:03d}.tokens.npy"), mmap)
        offsets, lengths = (table.column(c).to_numpy().astype(np.int64) for c in ("offset", "length"))
        contiguous = np.cumsum(lengths) - lengths
        if (tokens.dtype != np.float16 or tokens.ndim != 2 or tokens.shape[1] != dim
                or len(lengths) != int(dims["shard_documents"][s])
                or (len(lengths) and (lengths.min() < 1 or lengths.max() > len(tokens)))
                or int(lengths.sum()) != len(tokens) or not np.array_equal(offsets, contiguous)):
            raise BundleError(f"{path}: shard {s}'s token store does not match its document table or dim {dim}")
        index = None
        if fde is not None:
            index = _read_index(manifest.file(f"shards/{s:03d}.fde.faiss"), mmap)
            if index.d != fde.output_dim or index.ntotal != len(lengths):
                raise BundleError(f"{path}: shard {s}'s FDE index has dim {index.d} / {index.ntotal} documents, "
                                  f"manifest says {fde.output_dim} / {len(lengths)}")
        chosen = (config.get("shard_factories") or [None] * count)[s]
        parts.append(TokenShard(table.column("doc_id").to_pylist(), offsets, lengths, tokens, index, chosen))
    enc = config.get("encoder") or {}
    ref = {"name": enc.get("name"), "version": enc.get("version"), "dim": dim, "similarity": "maxsim",
           "path": enc.get("path")}
    index = MultiVectorIndex(parts, kind=manifest.kind, dim=dim, fde=fde, factory=config.get("factory"),
                             encoder=ref, candidates=candidates or int(config.get("candidates") or DEFAULT_CANDIDATES),
                             total_shards=count, search_params=search_params or config.get("search_params"))
    index.tuning = config.get("auto")
    return index
