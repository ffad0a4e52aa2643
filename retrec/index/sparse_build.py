"""Building the learned-sparse index's shards from documents' sparse vectors: checked in bulk, placed in chunks.

A million documents of ~150 terms are 150 million postings. They are read three times, a chunk of documents at a
time, and never copied whole: (1) checked (bulk checks over the chunk; a bad vector is then named by
:func:`check_vector`, as it always was) and the largest weight found (the uint8 scale); (2) each shard's posting
counts per term; (3) the impacts quantised and written straight to their final place (:mod:`retrec.index.postings`).
The memory built is the index itself: 4 bytes a posting for the document row, 1 for a uint8 impact.

Example::

    shards, scale = build_shards(doc_ids, vectors, vocabulary=30522, quantization="uint8", shards=2)
    [(len(ids), postings.nnz) for ids, postings in shards]     # each: doc ids, csr [vocabulary, documents]
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from retrec.contracts import SparseVector
from retrec.index.faiss_index import shard_of
from retrec.index.postings import offsets, place

log = logging.getLogger(__name__)
QUANTIZATIONS = ("uint8", "float16")
STORED = {"uint8": np.uint8, "float16": np.float16}  # the impacts' dtype on disk
HELD = {"uint8": np.uint8, "float16": np.float32}  # and in memory (SciPy has no float16 arithmetic)
FLOAT16_MAX = float(np.finfo(np.float16).max)
CHUNK = 20_000  # documents read at once


def check_quantization(quantization: str) -> None:
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")


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


def _plain(ids: Any, weights: Any) -> bool:
    """Whether a vector needs no conversion: 1-d int64 ids and as many 1-d float weights."""
    return (isinstance(ids, np.ndarray) and isinstance(weights, np.ndarray) and ids.dtype == np.int64
            and ids.ndim == 1 and weights.ndim == 1 and weights.dtype.kind == "f" and len(ids) == len(weights))


def _chunks(doc_ids: Sequence[str], encoded: Sequence[SparseVector], vocabulary: int,
            check: bool) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """``(first document, lengths, term ids int64, weights float32)`` of each chunk of documents, concatenated;
    with ``check``, in bulk — any doubt and the chunk's vectors go through :func:`check_vector` in order, so the
    first bad one is named as it always was."""
    for first in range(0, len(encoded), CHUNK):
        part = list(encoded[first:first + CHUNK])
        pairs = [(i, w) if _plain(i, w) else check_vector(i, w, vocabulary, f"document {doc_ids[first + j]!r}")
                 for j, (i, w) in enumerate(part)]
        lengths = np.fromiter((len(i) for i, _ in pairs), np.int64, len(pairs))
        ids = np.concatenate([i for i, _ in pairs]) if pairs else np.zeros(0, np.int64)
        weights = np.concatenate([w for _, w in pairs]).astype(np.float32) if pairs else np.zeros(0, np.float32)
        if check and _doubtful(ids, weights, lengths, vocabulary):
            for j, (i, w) in enumerate(part):
                check_vector(i, w, vocabulary, f"document {doc_ids[first + j]!r}")
        yield first, lengths, ids, weights


def _doubtful(ids: np.ndarray, weights: np.ndarray, lengths: np.ndarray, vocabulary: int) -> bool:
    """Whether a chunk may hold a bad vector: an id out of range, a weight not finite or negative, or a document
    whose ids do not strictly rise (repeats can only hide there)."""
    if not len(ids):
        return False
    if ids.min() < 0 or ids.max() >= vocabulary or not np.isfinite(weights).all() or (weights < 0).any():
        return True
    rises = ids[1:] > ids[:-1]
    starts = np.cumsum(lengths)[:-1]
    rises[starts[(starts > 0) & (starts < len(ids))] - 1] = True  # across a document boundary: no constraint
    return not bool(rises.all())


def build_shards(doc_ids: Sequence[str], encoded: Sequence[SparseVector], *, vocabulary: int, quantization: str,
                 shards: int) -> tuple[list[tuple[list[str], sp.csr_matrix]], float]:
    """Each shard's ``(doc ids, term-major postings [vocabulary, documents])`` and the index's scale."""
    check_quantization(quantization)
    top = 0.0
    for _, _, _, weights in _chunks(doc_ids, encoded, vocabulary, check=True):  # 1: checks and the scale
        top = max(top, float(weights.max())) if len(weights) else top
    if quantization == "float16" and top > FLOAT16_MAX:
        raise ValueError(f"a weight of {top:.4g} exceeds float16's range; use uint8")
    scale = top / 255.0 if quantization == "uint8" and top > 0 else 1.0
    shard = np.fromiter((shard_of(d, shards) for d in doc_ids), dtype=np.int64, count=len(doc_ids))
    row = np.zeros(len(doc_ids), dtype=np.int64)  # each document's row in its shard
    for s in range(shards):
        mine = shard == s
        row[mine] = np.arange(int(mine.sum()))
    counts = np.zeros(shards * vocabulary, dtype=np.int64)
    for first, lengths, ids, weights in _chunks(doc_ids, encoded, vocabulary, check=False):  # 2: list lengths
        doc, ids, _ = _kept(first, lengths, ids, weights, quantization, scale)
        counts += np.bincount(shard[doc] * vocabulary + ids, minlength=shards * vocabulary)
    indptr = [offsets(c) for c in counts.reshape(shards, vocabulary)]
    cursor = [p[:-1].copy() for p in indptr]
    data = [np.empty(int(p[-1]), HELD[quantization]) for p in indptr]
    rows = [np.empty(int(p[-1]), np.int32) for p in indptr]
    for first, lengths, ids, weights in _chunks(doc_ids, encoded, vocabulary, check=False):  # 3: the postings
        doc, ids, impacts = _kept(first, lengths, ids, weights, quantization, scale)
        for s in range(shards):
            mine = shard[doc] == s if shards > 1 else slice(None)
            place(ids[mine], row[doc[mine]].astype(np.int32), impacts[mine], cursor[s], data[s], rows[s])
        log.debug("sparse: %d/%d documents placed", first + len(lengths), len(doc_ids))
    out = []
    for s in range(shards):
        members = np.flatnonzero(shard == s)
        matrix = sp.csr_matrix((data[s], rows[s], indptr[s]), shape=(vocabulary, len(members)))
        matrix.has_sorted_indices = True  # rows ascend within each term, one posting a document (place)
        out.append(([doc_ids[i] for i in members], matrix))
    return out, scale


def _kept(first: int, lengths: np.ndarray, ids: np.ndarray, weights: np.ndarray, quantization: str,
          scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The chunk's postings whose impact is not 0: documents (global numbers), term ids (int32), impacts."""
    impacts = quantize(weights, quantization, scale)
    keep = impacts != 0
    doc = np.repeat(np.arange(first, first + len(lengths), dtype=np.int64), lengths)[keep]
    return doc, ids[keep].astype(np.int32), impacts[keep]
