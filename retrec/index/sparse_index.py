"""Learned sparse retrieval index (``index/sparse``): an inverted index over quantised impacts, sharded, exact.

Each document is a sparse vector over the encoder's vocabulary (term ids → weights, a ``model/sparse`` encoder's
``encode_documents``); a query (term ids → weights) scores it by the dot product over the terms they share.
Documents go to shards by :func:`retrec.index.faiss_index.shard_of`. A shard is a term-major CSR matrix
``[vocabulary, documents]``: row ``t`` is term ``t``'s posting list (document rows and impacts), stored as
safetensors (``indptr`` int64, ``docs`` int32, ``impacts`` uint8 or float16) beside a Parquet table of doc ids.

- **Quantisation** (``uint8``, default): impact = round(weight / scale), scale = the largest weight of the whole
  index / 255 (one scale for every shard, so shard scores are comparable); impacts that round to 0 are dropped.
  ``float16`` keeps the weights to 3 significant digits.
- **Search** is exact posting-list accumulation, vectorised: the queries of a batch form a sparse matrix
  ``[queries, vocabulary]`` multiplied by the shard's postings (SciPy's sparse product, in C++), so only the
  posting lists of the query terms are read. Only documents sharing a term with the query (score > 0) are
  ranked; hits merge across shards by score descending, then doc id descending, so N shards equal one.

Example::

    index = build_index(doc_ids, texts, encoder=OnnxSparseEncoder("artifacts/scifact-sparse"), shards=2)
    index.search(encoder.encode_queries(["what causes scurvy"]), k=10)       # [[(doc_id, score), ...]]
    index.save("artifacts/scifact-sparse-index", name="scifact-sparse")
    load_index("artifacts/scifact-sparse-index", shard=0)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import scipy.sparse as sp
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from retrec.bundle import BundleError, Manifest, load_bundle, publish
from retrec.contracts import SparseVector, strict_options
from retrec.index.faiss_index import SHARD_HASH, check_encoder, encoder_ref, index_check_ref, shard_of
from retrec.index.retriever import Hits
from retrec.kinds import SPARSE_INDEX

KIND = SPARSE_INDEX
Quantization = Literal["uint8", "float16"]
QUANTIZATIONS = ("uint8", "float16")
STORED = {"uint8": np.uint8, "float16": np.float16}  # the impacts' dtype on disk
FLOAT16_MAX = float(np.finfo(np.float16).max)
QUERY_CHUNK = 64  # queries multiplied by the postings at once (bounds the [queries, documents] product)


@dataclass(eq=False)
class SparseShard:
    """One shard: its doc ids and the term-major postings ``[vocabulary, documents]`` (stored impacts)."""

    ids: list[str]
    postings: sp.csr_matrix  # uint8 impacts, or float16 weights held as float32

    def scorer(self, scale: float) -> sp.csr_matrix:
        """The postings as float32 weights (impact × scale), what a search multiplies by."""
        p = self.postings  # the float32 weights share the postings' index arrays
        return sp.csr_matrix((p.data.astype(np.float32) * np.float32(scale), p.indices, p.indptr), shape=p.shape,
                             copy=False)


def check_vector(ids: Any, weights: Any, vocabulary: int, what: str) -> SparseVector:
    """``(ids, weights)`` as int64 / float32 arrays with unique in-vocabulary ids and finite weights ≥ 0."""
    raw = np.asarray(ids)
    if raw.size and raw.dtype.kind not in "iu":
        raise ValueError(f"{what}: term ids must be integers, got {raw.dtype}")
    try:
        ids, weights = raw.astype(np.int64).ravel(), np.asarray(weights, np.float32).ravel()
    except (OverflowError, TypeError, ValueError):
        raise ValueError(f"{what}: term ids must be int64 and weights numbers") from None
    if ids.shape != weights.shape:
        raise ValueError(f"{what}: {len(ids)} term ids for {len(weights)} weights")
    if len(ids) and (ids.min() < 0 or ids.max() >= vocabulary):
        raise ValueError(f"{what}: term ids must be in [0, {vocabulary}), got {int(ids.min())}..{int(ids.max())}")
    if not np.isfinite(weights).all() or (weights < 0).any():
        raise ValueError(f"{what}: weights must be finite and non-negative")
    if len(np.unique(ids)) != len(ids):
        raise ValueError(f"{what}: repeated term ids")
    return ids, weights


def quantize(weights: np.ndarray, quantization: str, scale: float) -> np.ndarray:
    """Impacts of ``weights`` (uint8: round(w / scale), clipped to 255; float16: the weights to float16 precision,
    held as float32)."""
    if quantization == "uint8":
        return np.clip(np.rint(weights / scale), 0, 255).astype(np.uint8)
    if quantization == "float16":  # float16 on disk; SciPy holds it as float32 (exactly the same values)
        if len(weights) and float(weights.max()) > FLOAT16_MAX:
            raise ValueError(f"a weight of {float(weights.max()):.4g} exceeds float16's range; use uint8")
        return weights.astype(np.float16).astype(np.float32)
    raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")


def _postings(vectors: Sequence[SparseVector], vocabulary: int, quantization: str, scale: float) -> sp.csr_matrix:
    """Term-major postings of documents (rows of ``vectors``, already checked), zero impacts dropped."""
    lengths = np.array([len(ids) for ids, _ in vectors], dtype=np.int64)
    terms = np.concatenate([ids for ids, _ in vectors]) if len(vectors) else np.zeros(0, np.int64)
    weights = np.concatenate([w for _, w in vectors]) if len(vectors) else np.zeros(0, np.float32)
    docs = np.repeat(np.arange(len(vectors), dtype=np.int32), lengths)
    impacts = quantize(weights, quantization, scale)
    keep = impacts != 0
    matrix = sp.csr_matrix((impacts[keep], (terms[keep], docs[keep])), shape=(vocabulary, len(vectors)))
    matrix.sort_indices()
    return matrix


class SparseIndex:
    """Sharded inverted index; ``search(list[(ids, weights)], k) -> list[Hits]`` (exact)."""

    def __init__(self, shards: Sequence[SparseShard], *, vocabulary: int, quantization: str, scale: float,
                 encoder: Mapping[str, Any] | None = None, total_shards: int | None = None) -> None:
        check_quantization(quantization)
        if not (np.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a positive number, got {scale}")
        self.vocabulary, self.quantization, self.scale = vocabulary, quantization, float(scale)
        self.encoder = dict(encoder) if encoder is not None else None
        self.shards = list(shards)
        self.total_shards = total_shards or len(self.shards)
        self._scorers = [s.scorer(self.scale) for s in self.shards]
        all_ids = pa.array([d for s in self.shards for d in s.ids], pa.string())
        if len(pc.unique(all_ids)) != len(all_ids):
            raise ValueError("duplicate doc ids")
        ranks = pc.rank(all_ids, sort_keys="ascending", tiebreaker="first").to_numpy().astype(np.int64) - 1
        bounds = np.cumsum([0] + [len(s.ids) for s in self.shards])
        self._keys = [ranks[bounds[i]:bounds[i + 1]] for i in range(len(self.shards))]
        self._ids_by_rank = np.empty(len(all_ids), dtype=object)
        self._ids_by_rank[ranks] = np.asarray(all_ids.to_pylist(), dtype=object)

    @property
    def shard_ids(self) -> list[list[str]]:
        return [list(s.ids) for s in self.shards]

    @property
    def doc_ids(self) -> list[str]:
        """Every document id held, shard by shard."""
        return [d for s in self.shards for d in s.ids]

    def __len__(self) -> int:
        return len(self._ids_by_rank)

    def postings(self) -> int:
        """Stored (term, document) impacts over every shard held."""
        return sum(int(s.postings.nnz) for s in self.shards)

    def documents_without_postings(self) -> int:
        """Documents whose every weight quantised to 0 (or that had none): no query can retrieve them."""
        return sum(int((np.bincount(s.postings.indices, minlength=len(s.ids)) == 0).sum()) for s in self.shards)

    def encoded_documents(self) -> None:
        """Impacts are quantised: an incremental reindex encodes every document again."""
        return None

    def _query_matrix(self, queries: Sequence[SparseVector]) -> sp.csr_matrix:
        checked = [check_vector(ids, w, self.vocabulary, f"query {i}") for i, (ids, w) in enumerate(queries)]
        lengths = np.array([len(ids) for ids, _ in checked], dtype=np.int64)
        indptr = np.concatenate([[0], np.cumsum(lengths)])
        ids = np.concatenate([ids for ids, _ in checked]) if checked else np.zeros(0, np.int64)
        weights = np.concatenate([w for _, w in checked]) if checked else np.zeros(0, np.float32)
        return sp.csr_matrix((weights, ids, indptr), shape=(len(checked), self.vocabulary))

    def search(self, queries: Sequence[SparseVector], k: int) -> list[Hits]:
        """Top-``k`` ``(doc_id, score)`` per query vector, only documents sharing a term with it."""
        if not len(queries):
            return []
        q = self._query_matrix(queries)
        if k <= 0:
            return [[] for _ in queries]
        out: list[Hits] = []
        for start in range(0, q.shape[0], QUERY_CHUNK):
            chunk = q[start:start + QUERY_CHUNK]
            per_shard = [(chunk @ scorer).tocsr() for scorer in self._scorers]  # [queries, shard documents] each
            out.extend(self._top(per_shard, qi, k) for qi in range(chunk.shape[0]))
        return out

    def _top(self, per_shard: list[sp.csr_matrix], qi: int, k: int) -> Hits:
        """Query ``qi``'s top ``k`` over the shards' score rows: score desc, then doc id desc."""
        scores, keys = [], []
        for s, result in enumerate(per_shard):
            lo, hi = result.indptr[qi], result.indptr[qi + 1]
            rows, values = result.indices[lo:hi], result.data[lo:hi]
            hit = values > 0
            scores.append(values[hit])
            keys.append(self._keys[s][rows[hit]])
        all_scores = np.concatenate(scores) if scores else np.zeros(0, np.float32)
        all_keys = np.concatenate(keys) if keys else np.zeros(0, np.int64)
        if len(all_scores) > k:  # every document tied with the k-th score stays, then the exact order
            keep = all_scores >= np.partition(all_scores, len(all_scores) - k)[len(all_scores) - k]
            all_scores, all_keys = all_scores[keep], all_keys[keep]
        order = np.lexsort((-all_keys, -all_scores))[:k]
        return list(zip(self._ids_by_rank[all_keys[order]].tolist(), all_scores[order].tolist()))

    def save(self, directory: str | Path, name: str = "sparse", metrics: dict[str, Any] | None = None) -> Manifest:
        """Publish the index version atomically (postings, doc tables, manifest)."""
        encoder = self.encoder or {}
        with publish(directory, replace=False) as pub:
            (pub.path / "shards").mkdir()
            for s, shard in enumerate(self.shards):
                p = shard.postings
                save_file({"indptr": p.indptr.astype(np.int64), "docs": p.indices.astype(np.int32),
                           "impacts": p.data.astype(STORED[self.quantization])},
                          str(pub.path / "shards" / f"{s:03d}.postings.safetensors"))
                pq.write_table(pa.table({"doc_id": pa.array(shard.ids, pa.string())}),
                               pub.path / "shards" / f"{s:03d}.docs.parquet")
            n = max(1, len(self))
            pub.set_manifest(
                kind=KIND, name=name, metrics=metrics,
                config={"similarity": "dot", "quantization": self.quantization, "scale": self.scale,
                        "shards": len(self.shards), "shard_hash": SHARD_HASH,
                        "encoder": {k: encoder.get(k) for k in ("name", "version", "path")}},
                dims={"dim": self.vocabulary, "documents": len(self), "postings": self.postings(),
                      "documents_without_postings": self.documents_without_postings(),
                      "postings_per_document": round(self.postings() / n, 1),
                      "shard_documents": [len(s.ids) for s in self.shards]})
        assert pub.manifest is not None
        return pub.manifest


def global_scale(vectors: Sequence[SparseVector], quantization: str) -> float:
    """One scale for the whole index: the largest weight / 255 for uint8 (1.0 for float16 or no weight)."""
    if quantization != "uint8":
        return 1.0
    top = max((float(w.max()) for _, w in vectors if len(w)), default=0.0)
    return top / 255.0 if top > 0 else 1.0


def assemble_index(doc_ids: Sequence[str], encoded: Sequence[SparseVector], *, encoder: Any, shards: int = 1,
                   quantization: str = "uint8") -> SparseIndex:
    """Registry hook (``retrec reindex``): index documents' sparse vectors (rows by doc id) from ``encoder``."""
    if len(doc_ids) != len(encoded):
        raise ValueError(f"{len(doc_ids)} doc ids for {len(encoded)} sparse vectors")
    if not len(doc_ids):
        raise ValueError("cannot index an empty corpus")
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    check_quantization(quantization)
    ref = encoder_ref(encoder.manifest)
    vocabulary = int(ref["dim"])
    vectors = [check_vector(ids, w, vocabulary, f"document {d!r}") for d, (ids, w) in zip(doc_ids, encoded)]
    scale = global_scale(vectors, quantization)
    assignment = np.fromiter((shard_of(d, shards) for d in doc_ids), dtype=np.int64, count=len(doc_ids))
    parts = []
    for s in range(shards):
        rows = np.flatnonzero(assignment == s)
        parts.append(SparseShard([doc_ids[i] for i in rows],
                                 _postings([vectors[i] for i in rows], vocabulary, quantization, scale)))
    return SparseIndex(parts, vocabulary=vocabulary, quantization=quantization, scale=scale, encoder=ref)


def check_quantization(quantization: str) -> None:
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")


def build_index(doc_ids: Sequence[str], texts: Sequence[str], *, encoder: Any, shards: int = 1,
                progress: bool = False, quantization: str = "uint8") -> SparseIndex:
    """Registry builder (``retrec index sparse``): encode the documents, index their impacts."""
    check_quantization(quantization)
    return assemble_index(doc_ids, encoder.encode_documents(list(texts), progress=progress), encoder=encoder,
                          shards=shards, quantization=quantization)


@strict_options(KIND)
def load_index(path: str | Path, *, shard: int | None = None, encoder: Manifest | Mapping[str, Any] | None = None,
               verify: bool = True) -> SparseIndex:
    """Registry loader: the whole index version, or one shard (``shard=i``), with its checks."""
    manifest = load_bundle(path, kind=KIND, verify=verify)
    try:
        return _load(manifest, path, shard, encoder)
    except (KeyError, TypeError, ValueError, IndexError, OSError, SafetensorError) as exc:  # another shape
        raise BundleError(f"{path}: not a readable {KIND} version ({type(exc).__name__}: {exc})") from None


def _load(manifest: Manifest, path: str | Path, shard: int | None,
          encoder: Manifest | Mapping[str, Any] | None) -> SparseIndex:
    config, dims = manifest.config, manifest.dims
    if encoder is not None:
        check_encoder(index_check_ref(manifest), encoder, where=str(path))
    count, vocabulary, quantization = int(config["shards"]), int(dims["dim"]), config["quantization"]
    check_quantization(quantization)
    scale = float(config["scale"])
    if vocabulary < 1 or not (np.isfinite(scale) and scale > 0):
        raise BundleError(f"{path}: vocabulary {vocabulary} and scale {scale} must be positive")
    if count < 1 or len(dims["shard_documents"]) != count:
        raise BundleError(f"{path}: {count} shards for {len(dims['shard_documents'])} shard sizes")
    wanted = list(range(count)) if shard is None else [shard]
    if any(not 0 <= s < count for s in wanted):
        raise BundleError(f"{path}: has {count} shards, cannot load shard {shard}")
    dtype = STORED[quantization]
    parts = []
    for s in wanted:
        ids = pq.read_table(manifest.file(f"shards/{s:03d}.docs.parquet")).column("doc_id").to_pylist()
        arrays = load_file(str(manifest.file(f"shards/{s:03d}.postings.safetensors")))
        indptr, docs, impacts = arrays["indptr"], arrays["docs"], arrays["impacts"]
        if not _postings_fit(indptr, docs, impacts, dtype, vocabulary, len(ids), int(dims["shard_documents"][s])):
            raise BundleError(f"{path}: shard {s}'s postings do not match its document table or vocabulary")
        held = impacts if quantization == "uint8" else impacts.astype(np.float32)
        matrix = sp.csr_matrix((held, docs, indptr), shape=(vocabulary, len(ids)))
        if not matrix.has_canonical_format:  # unsorted or repeated documents in a posting list
            raise BundleError(f"{path}: shard {s}'s posting lists are not sorted and unique")
        parts.append(SparseShard(ids, matrix))
    enc = config.get("encoder") or {}
    ref = {"name": enc.get("name"), "version": enc.get("version"), "dim": vocabulary, "similarity": "dot",
           "path": enc.get("path")}
    return SparseIndex(parts, vocabulary=vocabulary, quantization=quantization, scale=scale, encoder=ref,
                       total_shards=count)


def _postings_fit(indptr: np.ndarray, docs: np.ndarray, impacts: np.ndarray, dtype: Any, vocabulary: int,
                  documents: int, expected: int) -> bool:
    """Whether a shard's arrays are what :meth:`SparseIndex.save` writes: 1-d int64 offsets rising from 0 to the
    postings count, 1-d int32 document rows within the table, 1-d impacts of the stored dtype, positive and finite."""
    if (indptr.dtype != np.int64 or docs.dtype != np.int32 or impacts.dtype != dtype
            or indptr.ndim != 1 or docs.ndim != 1 or impacts.ndim != 1):
        return False
    if documents != expected or indptr.shape != (vocabulary + 1,) or len(docs) != len(impacts):
        return False
    if indptr[0] != 0 or (np.diff(indptr) < 0).any() or int(indptr[-1]) != len(docs):
        return False
    if len(docs) and (int(docs.min()) < 0 or int(docs.max()) >= documents):
        return False
    return bool(np.isfinite(impacts).all() and (impacts > 0).all())
