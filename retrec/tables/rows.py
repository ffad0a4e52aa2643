"""Rows of an embedding table: the row allocator, counters, the shared read path and row initialisation.

:class:`KeyedRows` is the read path of both the live and the frozen table (keys → cuckoo index → rows →
vectors, absent keys → the default vector, misses counted). :class:`FreeList` hands out row ids,
reusing freed ones first; :func:`fill_normal` initialises new rows.

Example::

    ids = FreeList(); rows = ids.alloc(3)          # array([0, 1, 2])
    ids.release(rows[:1]); ids.alloc(1)             # array([0]): freed ids are reused first
    gather(emb, np.array([2, -1]), default)         # row 2, then the default vector
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from numpy.typing import NDArray

from retrec.tables.cuckoo import CuckooIndex
from retrec.tables.keys import KeysLike, as_keys

__all__ = ["FreeList", "KeyedRows", "TableStats", "fill_normal", "gather", "grow"]


class FreeList:
    """Id allocator: reuses freed ids (LIFO) before handing out fresh ones."""

    def __init__(self) -> None:
        self.next = 0
        self._free = np.empty(0, np.int64)
        self._nfree = 0

    def alloc(self, n: int) -> NDArray[np.int64]:
        take = min(n, self._nfree)
        reused = self._free[self._nfree - take : self._nfree].copy()
        self._nfree -= take
        fresh = np.arange(self.next, self.next + n - take, dtype=np.int64)
        self.next += n - take
        return np.concatenate([reused, fresh]) if take else fresh

    def release(self, ids: NDArray[np.int64]) -> None:
        need = self._nfree + ids.size
        if need > self._free.size:
            grown = np.empty(max(need, 2 * self._free.size), np.int64)
            grown[: self._nfree] = self._free[: self._nfree]
            self._free = grown
        self._free[self._nfree : need] = ids
        self._nfree = need

    @property
    def in_use(self) -> int:
        return self.next - self._nfree


def grow(arr: NDArray[Any], capacity: int, fill: Any = None) -> NDArray[Any]:
    """Copy into a larger array; the new tail is filled with ``fill`` (left uninitialised if None)."""
    out = np.empty((capacity, *arr.shape[1:]), dtype=arr.dtype)
    out[: arr.shape[0]] = arr
    if fill is not None:
        out[arr.shape[0] :] = fill
    return out



@dataclasses.dataclass
class TableStats:
    """Counters of a table. ``misses`` counts lookups/embeds of absent (unseen or pending) keys."""

    lookups: int = 0
    misses: int = 0
    observed: int = 0
    admitted: int = 0
    evicted: int = 0
    pending_evicted: int = 0
    size: int = 0
    pending: int = 0
    index_rebuilds: int = 0
    index_load: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class KeyedRows:
    """The read path shared by the live and the frozen table: keys → rows → vectors, misses counted."""

    _index: CuckooIndex
    default_vector: NDArray[np.float32]

    def _counters(self) -> TableStats:
        raise NotImplementedError

    def _matrix(self) -> NDArray[np.float32]:
        raise NotImplementedError

    def _raw_map(self) -> dict[int, str]:
        raise NotImplementedError

    def lookup(self, keys: KeysLike) -> NDArray[np.int64]:
        """Row index per key, -1 for absent (unseen, pending or evicted) keys."""
        k, _ = as_keys(keys)
        rows = self._index.lookup(k)
        counters = self._counters()
        counters.lookups += k.size
        counters.misses += int(np.count_nonzero(rows < 0))
        return rows

    def embed(self, keys: KeysLike) -> NDArray[np.float32]:
        """float32 ``[n, dim]`` embeddings; absent keys get :attr:`default_vector`."""
        return gather(self._matrix(), self.lookup(keys), self.default_vector)

    def raw_ids(self, keys: KeysLike) -> list[str | None]:
        """Original string of each fingerprinted key, None for integer or unknown keys."""
        k, _ = as_keys(keys)
        raw = self._raw_map()
        return [raw.get(x) for x in k.view(np.int64).tolist()]



def gather(
    emb: NDArray[np.float32], rows: NDArray[np.int64], default: NDArray[np.float32]
) -> NDArray[np.float32]:
    absent = rows < 0
    if not emb.shape[0]:
        return np.tile(default, (rows.size, 1))
    out = np.take(emb, np.where(absent, 0, rows), axis=0)
    if absent.any():
        out[absent] = default
    return out


def fill_normal(rng: np.random.Generator, out: NDArray[np.float32], std: float) -> None:
    """Fill a contiguous 1-D float32 array with N(0, std^2) samples (Box-Muller, ~2x numpy's float32)."""
    if std == 0.0:
        out[:] = 0.0
        return
    half = (out.size + 1) // 2
    u = rng.random(2 * half, dtype=np.float32)
    radius, angle = u[:half], u[half:]
    np.subtract(np.float32(1.0), radius, out=radius)  # (0, 1]: log is finite
    np.log(radius, out=radius)
    radius *= np.float32(-2.0 * std * std)
    np.sqrt(radius, out=radius)
    angle *= np.float32(2.0 * np.pi)
    np.multiply(radius, np.cos(angle), out=out[:half])
    np.sin(angle, out=angle)
    np.multiply(radius[: out.size - half], angle[: out.size - half], out=out[half:])

