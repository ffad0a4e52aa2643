"""Precomputed document vectors ("bring your own vectors"): read in batches, never whole.

Two file forms, both with one row per document:

- **Parquet**: a ``doc_id`` string column and one vector column (``vector``, ``embedding`` or ``embeddings``;
  or name it) of ``fixed_size_list<float>`` or ``list<float>``, all of one length. Read row group by row group.
- **.npy**: a ``[documents, dim]`` float32/float16 array (memory-mapped), with the ids in a separate file:
  ``.txt`` (one id per line), ``.json`` (a list) or ``.parquet`` (a ``doc_id`` column).

A :class:`VectorSource` gives the ids (Arrow), the vectors in row order in batches, and chosen rows (a sample
for training an approximate index and its pseudo-queries). :class:`ArraySource` wraps arrays already in memory,
so one builder serves both. Errors name the file (and the row): a non-finite value, a wrong length, a missing
column, a count that differs between ids and vectors.

Example::

    source = open_vectors("embeddings.parquet")          # or open_vectors("emb.npy", ids="emb.ids.txt")
    source.count, source.dim                             # (1000000, 384)
    for start, batch in source.batches(65536): ...       # float32 [<=65536, 384] rows from ``start``
    source.rows(np.array([3, 17]))                       # two rows, float32
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from retrec.data.errors import DataError

VECTOR_COLUMNS = ("vector", "embedding", "embeddings")


class VectorSource(Protocol):
    """Document vectors in a fixed row order, read in batches."""

    count: int
    dim: int

    def ids(self) -> pa.Array: ...

    def batches(self, size: int) -> Iterator[tuple[int, np.ndarray]]: ...

    def rows(self, positions: np.ndarray) -> np.ndarray: ...


def _check_finite(batch: np.ndarray, path: str | Path, start: int) -> np.ndarray:
    bad = ~np.isfinite(batch).all(axis=1)
    if bad.any():
        raise DataError(path, "vector has a NaN or infinite value", line=start + int(np.argmax(bad)) + 1)
    return batch


class ArraySource:
    """Vectors already in memory (or a memory-mapped array) with their ids."""

    def __init__(self, vectors: np.ndarray, ids: Sequence[str] | pa.Array, path: str = "<vectors>") -> None:
        if vectors.ndim != 2:
            raise ValueError(f"{path}: vectors must be 2-d [documents, dim], got shape {vectors.shape}")
        if vectors.shape[0] != len(ids):
            raise ValueError(f"vectors of shape {vectors.shape} for {len(ids)} doc ids")
        self.vectors, self._ids, self.path = vectors, ids, path
        self.count, self.dim = int(vectors.shape[0]), int(vectors.shape[1])

    def ids(self) -> pa.Array:
        ids = self._ids
        return ids.cast(pa.large_string()) if isinstance(ids, pa.Array) else pa.array(list(ids), pa.large_string())

    def batches(self, size: int) -> Iterator[tuple[int, np.ndarray]]:
        for start in range(0, self.count, size):
            batch = np.asarray(self.vectors[start:start + size], dtype=np.float32)
            yield start, _check_finite(batch, self.path, start)

    def rows(self, positions: np.ndarray) -> np.ndarray:
        return np.asarray(self.vectors[np.sort(positions)], dtype=np.float32)


def _read_ids(path: Path) -> pa.Array:
    if not path.is_file():
        raise DataError(path, "ids file not found")
    if path.suffix == ".parquet":
        table = pq.read_table(path)
        if "doc_id" not in table.column_names:
            raise DataError(path, f"no doc_id column (columns: {', '.join(table.column_names)})")
        return table.column("doc_id").combine_chunks().cast(pa.large_string())
    if path.suffix == ".json":
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(path, f"not JSON: {exc.msg}", line=exc.lineno) from None
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise DataError(path, "must be a JSON list of doc id strings")
        return pa.array(values, pa.large_string())
    lines = path.read_text(encoding="utf-8").splitlines()
    if lines and lines[-1] == "":
        lines.pop()
    empty = [i for i, line in enumerate(lines) if not line.strip()]
    if empty:
        raise DataError(path, "empty doc id", line=empty[0] + 1)
    return pa.array(lines, pa.large_string())


class NpySource(ArraySource):
    """A ``.npy`` array, memory-mapped, with ids from a ``.txt`` / ``.json`` / ``.parquet`` file."""

    def __init__(self, path: str | Path, ids: str | Path) -> None:
        path = Path(path)
        try:
            vectors = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(path, f"not a readable .npy array ({exc})") from None
        if vectors.ndim != 2 or vectors.dtype.kind != "f":
            raise DataError(path, f"must be a 2-d float array, got {vectors.dtype} of shape {vectors.shape}")
        id_array = _read_ids(Path(ids))
        if len(id_array) != vectors.shape[0]:
            raise DataError(ids, f"{len(id_array)} doc ids for {vectors.shape[0]} vectors in {path.name}")
        super().__init__(vectors, id_array, str(path))


class ParquetSource:
    """A Parquet file of ``doc_id`` + a list-of-float vector column, read one record batch at a time."""

    def __init__(self, path: str | Path, column: str | None = None) -> None:
        self.path = Path(path)
        try:
            self._file = pq.ParquetFile(self.path)
        except (OSError, pa.ArrowException) as exc:
            raise DataError(self.path, f"not a readable Parquet file ({exc})") from None
        schema = self._file.schema_arrow
        if "doc_id" not in schema.names:
            raise DataError(self.path, f"no doc_id column (columns: {', '.join(schema.names)})")
        names = [column] if column else [c for c in VECTOR_COLUMNS if c in schema.names]
        if not names or names[0] not in schema.names:
            raise DataError(self.path, f"no vector column {column or ' / '.join(VECTOR_COLUMNS)!r} "
                                       f"(columns: {', '.join(schema.names)})")
        self.column = names[0]
        kind = schema.field(self.column).type
        if not (pa.types.is_list(kind) or pa.types.is_fixed_size_list(kind) or pa.types.is_large_list(kind)) \
                or not pa.types.is_floating(kind.value_type):
            raise DataError(self.path, f"column {self.column!r} must be a list of floats, not {kind}")
        self.count = self._file.metadata.num_rows
        if self.count == 0:
            raise DataError(self.path, "no rows")
        first = next(self._file.iter_batches(batch_size=1, columns=[self.column]))
        self.dim = len(first.column(0)[0].values)

    def ids(self) -> pa.Array:
        column = self._file.read(columns=["doc_id"]).column("doc_id")
        return pa.concat_arrays([c.cast(pa.large_string()) for c in column.chunks])

    def _matrix(self, column: pa.Array, start: int) -> np.ndarray:
        lengths = column.value_lengths().to_numpy(zero_copy_only=False) if not \
            pa.types.is_fixed_size_list(column.type) else np.full(len(column), column.type.list_size)
        wrong = np.flatnonzero(lengths != self.dim)
        if len(wrong) or column.null_count:
            row = int(wrong[0]) if len(wrong) else int(np.argmax(column.is_null().to_numpy(zero_copy_only=False)))
            raise DataError(self.path, f"vector of length {int(lengths[row])} (the first has {self.dim})",
                            line=start + row + 1)
        values = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        return _check_finite(values.reshape(len(column), self.dim), self.path, start)

    def batches(self, size: int) -> Iterator[tuple[int, np.ndarray]]:
        start = 0
        for batch in self._file.iter_batches(batch_size=size, columns=[self.column]):
            yield start, self._matrix(batch.column(0), start)
            start += batch.num_rows

    def rows(self, positions: np.ndarray) -> np.ndarray:
        positions = np.sort(np.asarray(positions, dtype=np.int64))
        parts = []
        for start, batch in self.batches(65536):
            lo, hi = np.searchsorted(positions, [start, start + len(batch)])
            if hi > lo:
                parts.append(batch[positions[lo:hi] - start])
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)


def open_vectors(path: str | Path, ids: str | Path | None = None, column: str | None = None) -> VectorSource:
    """A :class:`VectorSource` for a ``.parquet`` file, or a ``.npy`` file with its ``ids`` file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "vectors file not found")
    if path.suffix == ".npy":
        if ids is None:
            raise DataError(path, "a .npy vectors file needs its doc ids (an ids file: .txt, .json or .parquet)")
        return NpySource(path, ids)
    if path.suffix == ".parquet":
        if ids is not None:
            raise DataError(path, "a Parquet vectors file carries its own doc_id column; give no ids file")
        return ParquetSource(path, column)
    raise DataError(path, "vectors must be a .parquet file (doc_id + vector) or a .npy array with an ids file")
