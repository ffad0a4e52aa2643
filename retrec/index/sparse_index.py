"""Learned sparse retrieval index (``index/sparse``): an inverted index over quantised impacts, sharded, exact.

Each document is a sparse vector over the encoder's vocabulary (term ids → weights, a ``model/sparse`` encoder's
``encode_documents``); a query (term ids → weights) scores it by the dot product over the terms they share.
Documents go to shards by :func:`retrec.index.faiss_index.shard_of`. A shard is a term-major CSR matrix
``[vocabulary, documents]``: row ``t`` is term ``t``'s posting list (document rows and impacts), stored as
safetensors (``indptr`` int64, ``docs`` int32, ``impacts`` uint8 or float16) beside a Parquet table of doc ids.

- **Quantisation** (``uint8``, default): impact = round(weight / scale), scale = the largest weight of the whole
  index / 255 (one scale for every shard, so shard scores are comparable); impacts that round to 0 are dropped.
  ``float16`` keeps the weights to 3 significant digits.
- **Building** streams (:mod:`retrec.index.sparse_build`): vectors are checked in bulk and their impacts written
  chunk by chunk into the final arrays, so a million documents cost the index (5 bytes a posting), not copies.
- **Search** is exact posting-list accumulation: for each query term, in query order, weight × impact weight is
  added (float32, ``np.add.at``) to the scores of its posting list's documents, so only the posting lists of the
  query terms are read. Only documents sharing a term with the query (score > 0) are ranked, and of those only
  the ones reaching the k-th best score of one posting list (a floor: that list's documents are scored too); hits
  merge across shards by score descending, then doc id descending, so N shards equal one.

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
import pyarrow.parquet as pq
import scipy.sparse as sp
from safetensors import SafetensorError
from safetensors.numpy import save_file

from retrec.bundle import BundleError, Manifest, load_arrays, load_bundle, publish
from retrec.contracts import SparseVector, strict_options
from retrec.index.doc_ids import DocIdTable
from retrec.index.faiss_check import shard_files
from retrec.index.faiss_index import SHARD_HASH, check_encoder, encoder_ref, index_check_ref
from retrec.index.filters import AllowedDocs
from retrec.index.retriever import Hits
from retrec.index.sparse_build import (  # noqa: F401 (FLOAT16_MAX, quantize: this module's names before the split)
    FLOAT16_MAX,
    QUANTIZATIONS,
    STORED,
    build_shards,
    check_quantization,
    check_vector,
    quantize,
)
from retrec.kinds import SPARSE_INDEX

KIND = SPARSE_INDEX
Quantization = Literal["uint8", "float16"]


@dataclass(eq=False)
class SparseShard:
    """One shard: its doc ids and the term-major postings ``[vocabulary, documents]`` (stored impacts)."""

    ids: list[str]
    postings: sp.csr_matrix  # uint8 impacts, or float16 weights held as float32


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
        self._scale = np.float32(self.scale)  # impact x scale (float32): a posting's weight
        self._table = DocIdTable([s.ids for s in self.shards])  # the tie-break keys; ValueError on a duplicate
        self._keys = [self._table.keys(i) for i in range(len(self.shards))]

    @property
    def shard_ids(self) -> list[list[str]]:
        return [list(s.ids) for s in self.shards]

    @property
    def doc_ids(self) -> list[str]:
        """Every document id held, shard by shard."""
        return [d for s in self.shards for d in s.ids]

    def __len__(self) -> int:
        return len(self._table)

    def postings(self) -> int:
        """Stored (term, document) impacts over every shard held."""
        return sum(int(s.postings.nnz) for s in self.shards)

    def documents_without_postings(self) -> int:
        """Documents whose every weight quantised to 0 (or that had none): no query can retrieve them."""
        return sum(int((np.bincount(s.postings.indices, minlength=len(s.ids)) == 0).sum()) for s in self.shards)

    def encoded_documents(self) -> None:
        """Impacts are quantised: an incremental reindex encodes every document again."""
        return None

    def search(self, queries: Sequence[SparseVector], k: int, allowed: AllowedDocs | None = None) -> list[Hits]:
        """Top-``k`` ``(doc_id, score)`` per query vector, only documents sharing a term with it (and only the
        ``allowed`` ones when given: a filter)."""
        checked = [check_vector(ids, w, self.vocabulary, f"query {i}") for i, (ids, w) in enumerate(queries)]
        if k <= 0:
            return [[] for _ in checked]
        masks = None if allowed is None else [allowed.rows(shard.ids) for shard in self.shards]
        return [self._search_one(ids, weights, k, masks) for ids, weights in checked]

    def _scores(self, s: int, ids: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Shard ``s``'s documents' scores (float32): per query term, in query order, weight × impact weight added
        to the documents of its posting list (exact, float32, the sums SciPy's sparse product gave)."""
        p = self.shards[s].postings
        scores = np.zeros(p.shape[1], dtype=np.float32)
        for t, w in zip(ids.tolist(), weights):
            lo, hi = p.indptr[t], p.indptr[t + 1]
            if hi > lo:  # the scorer's float32 weights were impact x scale, then times the query weight
                np.add.at(scores, p.indices[lo:hi], p.data[lo:hi].astype(np.float32) * self._scale * w)
        return scores

    def _floor(self, s: int, scores: np.ndarray, ids: np.ndarray, weights: np.ndarray, k: int) -> float:
        """A score the ``k``-th best document reaches (0 if none is known): the ``k``-th best of the documents in
        the shortest posting list of a positive-weight query term holding ``k`` (their scores are all of them)."""
        p = self.shards[s].postings
        fit = [(int(p.indptr[t + 1] - p.indptr[t]), t) for t, w in zip(ids.tolist(), weights) if w > 0]
        fit = [(n, t) for n, t in fit if n >= k]
        if not fit:
            return 0.0
        t = min(fit)[1]
        part = scores[p.indices[p.indptr[t]:p.indptr[t + 1]]]
        return float(np.partition(part, len(part) - k)[len(part) - k])

    def _search_one(self, ids: np.ndarray, weights: np.ndarray, k: int, masks: list[np.ndarray] | None) -> Hits:
        """One query's top ``k`` over every shard: score desc, then doc id desc (only scores > 0 are ranked)."""
        per_shard = [self._scores(s, ids, weights) for s in range(len(self.shards))]
        if masks is not None:  # filtered: the rows outside never rank (and no posting list bounds the k-th score)
            for x, mask in zip(per_shard, masks):
                x[~mask] = 0.0
            floor = 0.0
        else:
            floor = max((self._floor(s, x, ids, weights, k) for s, x in enumerate(per_shard)), default=0.0)
        scores, keys = [], []
        for s, x in enumerate(per_shard):
            rows = np.flatnonzero(x >= floor) if floor > 0.0 else np.flatnonzero(x > 0.0)
            scores.append(x[rows])
            keys.append(self._keys[s][rows])
        all_scores = np.concatenate(scores) if scores else np.zeros(0, np.float32)
        all_keys = np.concatenate(keys) if keys else np.zeros(0, np.int64)
        if len(all_scores) > k:  # every document tied with the k-th score stays, then the exact order
            keep = all_scores >= np.partition(all_scores, len(all_scores) - k)[len(all_scores) - k]
            all_scores, all_keys = all_scores[keep], all_keys[keep]
        order = np.lexsort((-all_keys, -all_scores))[:k]
        return list(zip(self._table.lookup(all_keys[order]), all_scores[order].tolist()))

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
    parts, scale = build_shards(doc_ids, encoded, vocabulary=int(ref["dim"]), quantization=quantization,
                                shards=shards)
    return SparseIndex([SparseShard(ids, postings) for ids, postings in parts], vocabulary=int(ref["dim"]),
                       quantization=quantization, scale=scale, encoder=ref)


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
    manifest = load_bundle(path, kind=KIND, verify=verify, only=None if shard is None else shard_files([shard]))
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
        arrays = load_arrays(str(manifest.file(f"shards/{s:03d}.postings.safetensors")))
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
