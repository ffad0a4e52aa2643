"""MUVERA fixed dimensional encodings (FDEs): one vector per multi-vector set, whose inner product approximates
MaxSim (Chamfer) similarity, so a FAISS index over document FDEs retrieves candidates for exact MaxSim re-ranking.

Dhulipala et al., "MUVERA: Multi-Vector Retrieval via Fixed Dimensional Encodings" (2024), and Google's reference
implementation (graph-mining, ``fixed_dimensional_encoding``). Per repetition ``r`` of ``repetitions``:

1. SimHash: ``simhash_bits`` Gaussian hyperplanes (seeded by ``seed + r``) give each token vector a sign pattern;
   its partition is the pattern read as a Gray code (so neighbouring partitions differ in one hyperplane), one of
   ``2 ** simhash_bits``;
2. optional inner projection to ``projection_dim`` by a random ±1 matrix scaled by ``1/sqrt(projection_dim)``
   (an AMS sketch; none: the vectors as they are);
3. a query block is the **sum** of its projected tokens in the partition, a document block their **average**;
   an empty document partition takes the projected token whose sign pattern is nearest in Hamming distance
   (``fill_empty``; queries are never filled, as in the reference);
4. blocks concatenated over partitions and repetitions; optional count-sketch ``final_dim`` projection.

As in the reference: Gray-code partition indices, sum vs average asymmetry, Hamming-distance filling for
documents only, ±1 inner projection, count-sketch final projection. Differs: random matrices come from NumPy's
PCG64 seeded per repetition (the reference uses its own generator), so encodings match the reference in
distribution, not bit for bit. Everything here is vectorised NumPy; deterministic by ``seed``.

Example::

    cfg = FDEConfig(dim=128, repetitions=20, simhash_bits=5, projection_dim=16)
    docs = encode_documents([doc_tokens_1, doc_tokens_2], cfg)     # float32 [2, cfg.output_dim]
    queries = encode_queries([query_tokens], cfg)                   # float32 [1, cfg.output_dim]
    approx = queries @ docs.T                                       # ≈ maxsim(query_tokens, doc_tokens_i)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

MAX_SIMHASH_BITS = 16
MAX_RAW_DIM = 1 << 22  # floats per encoding before the final projection (16 MiB a vector): a bound on what a
# manifest can make a search allocate
_CHUNK_TOKENS = 1 << 18  # token x repetition rows per vectorised step (bounds the temporary arrays)


@dataclass(frozen=True)
class FDEConfig:
    """Every parameter of an FDE (recorded in a bundle's manifest: ``asdict(cfg)``)."""

    dim: int
    repetitions: int = 20
    simhash_bits: int = 5
    projection_dim: int | None = None
    fill_empty: bool = True
    final_dim: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("dim", "repetitions", "simhash_bits", "seed", "projection_dim", "final_dim"):
            value = getattr(self, name)
            if not (value is None and name in ("projection_dim", "final_dim")) and (
                    not isinstance(value, int) or isinstance(value, bool)):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        if not isinstance(self.fill_empty, bool):
            raise ValueError(f"fill_empty must be true or false, got {self.fill_empty!r}")
        if self.dim < 1 or self.repetitions < 1:
            raise ValueError(f"FDE needs dim >= 1 and repetitions >= 1, got {self.dim}, {self.repetitions}")
        if not 0 <= self.simhash_bits <= MAX_SIMHASH_BITS:
            raise ValueError(f"simhash_bits must be in 0..{MAX_SIMHASH_BITS}, got {self.simhash_bits}")
        for name in ("projection_dim", "final_dim"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {value}")
        if self.raw_dim > MAX_RAW_DIM:
            raise ValueError(f"an FDE of {self.raw_dim} values (repetitions x 2^simhash_bits x block dimension) "
                             f"exceeds {MAX_RAW_DIM}; use fewer repetitions or bits, or a projection_dim")

    @property
    def partitions(self) -> int:
        return 1 << self.simhash_bits

    @property
    def block_dim(self) -> int:
        return self.projection_dim or self.dim

    @property
    def raw_dim(self) -> int:
        """Dimension before the final projection: repetitions × partitions × block dimension."""
        return self.repetitions * self.partitions * self.block_dim

    @property
    def output_dim(self) -> int:
        return self.final_dim or self.raw_dim

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@functools.lru_cache(maxsize=4096)
def _repetition(cfg: FDEConfig, r: int) -> tuple[NDArray[np.float32], NDArray[np.float32] | None]:
    """The SimHash hyperplanes ``[dim, bits]`` and the ±1 inner projection ``[dim, projection_dim]`` of repetition r."""
    rng = np.random.default_rng(cfg.seed + r)
    planes = rng.standard_normal((cfg.dim, cfg.simhash_bits)).astype(np.float32)
    projection = None
    if cfg.projection_dim is not None:
        signs = rng.integers(0, 2, size=(cfg.dim, cfg.projection_dim)) * 2 - 1
        projection = (signs / np.sqrt(cfg.projection_dim)).astype(np.float32)
    return planes, projection


def _sign_bits(tokens: NDArray[np.float32], planes: NDArray[np.float32]) -> NDArray[np.int64]:
    """Each token's sign pattern as an integer, first hyperplane in the most significant bit."""
    bits = (tokens @ planes > 0).astype(np.int64)
    weights = 1 << np.arange(planes.shape[1] - 1, -1, -1, dtype=np.int64)
    return bits @ weights


def gray_partition(pattern: NDArray[np.int64], bits: int) -> NDArray[np.int64]:
    """The partition of a sign pattern read as a Gray code (the reference's ``AppendToGrayCode`` bit by bit)."""
    out = np.zeros_like(pattern)
    for i in range(bits - 1, -1, -1):
        bit = (pattern >> i) & 1
        out = (out << 1) + (bit ^ (out & 1))
    return out


def partition_pattern(partition: NDArray[np.int64]) -> NDArray[np.int64]:
    """The sign pattern of a partition (inverse of :func:`gray_partition`: binary to Gray)."""
    return partition ^ (partition >> 1)


def _popcount(values: NDArray[np.int64]) -> NDArray[np.int64]:
    counts = np.zeros_like(values)
    v = values.copy()
    while np.any(v):
        counts += v & 1
        v >>= 1
    return counts


def _check(sets: Sequence[NDArray[Any]], dim: int) -> list[NDArray[np.float32]]:
    out = []
    for i, tokens in enumerate(sets):
        array = np.asarray(tokens, dtype=np.float32)
        if array.ndim != 2 or array.shape[1] != dim:
            raise ValueError(f"set {i}: token matrix of shape {array.shape}, expected [tokens, {dim}]")
        out.append(array)
    return out


def _encode(sets: Sequence[NDArray[Any]], cfg: FDEConfig, *, is_query: bool) -> NDArray[np.float32]:
    mats = _check(sets, cfg.dim)
    n, reps, parts, width = len(mats), cfg.repetitions, cfg.partitions, cfg.block_dim
    out = np.zeros((n * reps * parts, width), dtype=np.float32)  # rows: (set, repetition, partition)
    if not n:
        return _final(out.reshape(0, cfg.raw_dim), cfg)
    lengths = np.fromiter((len(m) for m in mats), dtype=np.int64, count=n)
    tokens = np.concatenate(mats) if lengths.sum() else np.zeros((0, cfg.dim), np.float32)
    owner = np.repeat(np.arange(n), lengths)
    planes, projection = _stacked(cfg)
    weights = 1 << np.arange(cfg.simhash_bits - 1, -1, -1, dtype=np.int64)
    rep_rows = np.arange(reps, dtype=np.int64)[None, :] * parts
    cells = np.empty((len(tokens), reps), dtype=np.int64)
    step = max(1, _CHUNK_TOKENS // reps)
    for s in range(0, len(tokens), step):  # every repetition at once, a chunk of tokens at a time
        chunk = tokens[s:s + step]
        signs = (chunk @ planes > 0).reshape(len(chunk), reps, cfg.simhash_bits).astype(np.int64)
        cell = gray_partition(signs @ weights, cfg.simhash_bits)  # [tokens, reps]
        cells[s:s + step] = cell
        projected = (chunk @ projection).reshape(len(chunk), reps, width) if projection is not None else \
            np.broadcast_to(chunk[:, None, :], (len(chunk), reps, width))
        rows = owner[s:s + step, None] * (reps * parts) + rep_rows + cell
        np.add.at(out, rows.ravel(), projected.reshape(-1, width))
    block = out.reshape(n, reps, parts, width)
    if not is_query:
        counts = np.bincount((owner[:, None] * (reps * parts) + rep_rows + cells).ravel(),
                             minlength=n * reps * parts).reshape(n, reps, parts)
        filled = counts > 0
        block[filled] /= counts[filled][:, None]
        if cfg.fill_empty and cfg.simhash_bits > 0 and not filled.all():
            for r in range(reps):
                planes_r, projection_r = _repetition(cfg, r)
                projected_r = tokens if projection_r is None else tokens @ projection_r
                _fill_empty(block[:, r], counts[:, r], _sign_bits(tokens, planes_r), projected_r, lengths,
                            cfg.simhash_bits)
    return _final(block.reshape(n, cfg.raw_dim), cfg)


@functools.lru_cache(maxsize=64)
def _stacked(cfg: FDEConfig) -> tuple[NDArray[np.float32], NDArray[np.float32] | None]:
    """Every repetition's hyperplanes ``[dim, reps * bits]`` and inner projections ``[dim, reps * width]``."""
    parts = [_repetition(cfg, r) for r in range(cfg.repetitions)]
    planes = np.concatenate([p for p, _ in parts], axis=1)
    projection = None if cfg.projection_dim is None else np.concatenate([q for _, q in parts], axis=1)  # type: ignore[misc]
    return planes, projection


def _fill_empty(block: NDArray[np.float32], counts: NDArray[np.int64], pattern: NDArray[np.int64],
                projected: NDArray[np.float32], lengths: NDArray[np.int64], bits: int) -> None:
    """Each document's empty partitions take its projected token with the nearest sign pattern (Hamming
    distance; ties: the first token), as the reference's ``fill_empty_partitions``."""
    targets = partition_pattern(np.arange(1 << bits, dtype=np.int64))
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    for doc in np.flatnonzero((counts == 0).any(axis=1) & (lengths > 0)):
        own = slice(starts[doc], starts[doc] + lengths[doc])
        empty = np.flatnonzero(counts[doc] == 0)
        distance = _popcount(pattern[own][None, :] ^ targets[empty][:, None])  # [empty, tokens]
        block[doc, empty] = projected[own][distance.argmin(axis=1)]


def _final(raw: NDArray[np.float32], cfg: FDEConfig) -> NDArray[np.float32]:
    """The count-sketch projection to ``final_dim`` (each coordinate to a seeded bucket with a seeded sign)."""
    if cfg.final_dim is None:
        return np.ascontiguousarray(raw, dtype=np.float32)
    bucket, sign = _sketch(cfg)
    out = np.zeros((cfg.final_dim, len(raw)), dtype=np.float32)
    np.add.at(out, bucket, (raw * sign).T)
    return np.ascontiguousarray(out.T)


@functools.lru_cache(maxsize=4)
def _sketch(cfg: FDEConfig) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
    """The count-sketch's bucket and sign of every raw coordinate."""
    rng = np.random.default_rng(cfg.seed + cfg.repetitions)  # a stream the repetitions never use
    bucket = rng.integers(0, cfg.final_dim or 1, size=cfg.raw_dim)
    return bucket, (rng.integers(0, 2, size=cfg.raw_dim) * 2 - 1).astype(np.float32)


def encode_queries(sets: Sequence[NDArray[Any]], cfg: FDEConfig) -> NDArray[np.float32]:
    """Query FDEs ``float32 [len(sets), cfg.output_dim]``: per partition the sum of the query's token vectors."""
    return _encode(sets, cfg, is_query=True)


def encode_documents(sets: Sequence[NDArray[Any]], cfg: FDEConfig) -> NDArray[np.float32]:
    """Document FDEs ``float32 [len(sets), cfg.output_dim]``: per partition the average of the document's token
    vectors, empty partitions filled (``cfg.fill_empty``)."""
    return _encode(sets, cfg, is_query=False)


def maxsim(query: NDArray[Any], document: NDArray[Any]) -> float:
    """Exact MaxSim (Chamfer) similarity: the sum over query tokens of the best dot product with a document token."""
    q, d = np.asarray(query, dtype=np.float32), np.asarray(document, dtype=np.float32)
    if not len(q) or not len(d):
        return 0.0
    return float((q @ d.T).max(axis=1).sum())
