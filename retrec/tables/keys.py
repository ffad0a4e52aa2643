"""Key hashing for the embedding tables: raw IDs → exact 64-bit keys, the 64-bit mixer, batch dedupe.

Raw IDs are int64 (kept bit for bit) or strings (a stable BLAKE2b-64 fingerprint). Keys travel as
``uint64`` arrays holding the int64 bit pattern. :func:`mix64` (MurmurHash3 fmix64) seeds the cuckoo
index's bucket choice; :func:`dedupe` finds the distinct keys of a batch without sorting.

Example::

    keys, raw = as_keys(["user:1", "user:2", "user:1"])   # uint64 fingerprints, raw == the strings
    first, inverse = dedupe(keys)                         # keys[first][inverse] == keys
    int(fingerprint(["user:1"])[0]) == int(keys.view(np.int64)[0])   # True
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any, TypeAlias

import numpy as np
from numpy.typing import NDArray

__all__ = ["MASK64", "KeysLike", "as_keys", "dedupe", "fingerprint", "mix64", "next_seed"]

KeysLike: TypeAlias = (
    "NDArray[np.integer[Any]] | Sequence[int] | Sequence[str] | NDArray[np.str_] | int | str"
)

MASK64 = (1 << 64) - 1
_U64 = np.uint64
_M1 = _U64(0xFF51AFD7ED558CCD)
_M2 = _U64(0xC4CEB9FE1A85EC53)
_S33 = _U64(33)
_GOLDEN = 0x9E3779B97F4A7C15


def fingerprint(strings: Iterable[str]) -> NDArray[np.int64]:
    """Stable 64-bit fingerprints: BLAKE2b-64 of the UTF-8 bytes, read little-endian, as int64.

    >>> int(fingerprint(["a"])[0]) == int(fingerprint(["a"])[0])
    True
    """
    joined = b"".join(hashlib.blake2b(s.encode("utf-8"), digest_size=8).digest() for s in strings)
    return np.frombuffer(joined, dtype="<u8").astype(np.uint64).view(np.int64)


def as_keys(keys: KeysLike) -> tuple[NDArray[np.uint64], list[str] | None]:
    """Normalise keys to a 1-D uint64 array (bit pattern of the int64 key) plus the raw strings, if any.

    The string list is aligned with the keys; in a sequence mixing ints and strings it holds None
    for the ints.

    Integers are taken as 64-bit values (negative int64 keep their bit pattern); strings are
    fingerprinted with :func:`fingerprint`. The returned array may share memory with the input.
    """
    if isinstance(keys, str | bytes):
        keys = [keys]  # type: ignore[list-item]
    elif isinstance(keys, int | np.integer):
        keys = [int(keys)]
    if isinstance(keys, list | tuple) and any(isinstance(s, str) for s in keys):
        if all(isinstance(s, str) for s in keys):
            strs = list(keys)
            return fingerprint(strs).view(np.uint64), strs
        return _mixed_keys(keys)
    arr = keys if isinstance(keys, np.ndarray) else np.asarray(keys)
    if arr.ndim != 1:
        if arr.size == 0:
            return np.empty(0, np.uint64), None
        raise ValueError(f"keys must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        return np.empty(0, np.uint64), None
    kind = arr.dtype.kind
    if kind == "i":
        return arr.astype(np.int64, copy=False).view(np.uint64), None
    if kind == "u":
        return arr.astype(np.uint64, copy=False), None
    if kind in "US":
        strs = [s.decode("utf-8") if isinstance(s, bytes) else str(s) for s in arr.tolist()]
        return fingerprint(strs).view(np.uint64), strs
    if kind == "O":
        return _mixed_keys(arr.tolist())
    raise TypeError(f"keys must be integers or strings, got dtype {arr.dtype}")


def _mixed_keys(items: Sequence[Any]) -> tuple[NDArray[np.uint64], list[str] | None]:
    """Per-element conversion of a sequence mixing ints and strings (strings -> fingerprints)."""
    out = np.empty(len(items), np.uint64)
    strs: list[str | None] = [s if isinstance(s, str) else None for s in items]
    is_str = np.array([s is not None for s in strs], dtype=bool)
    if is_str.any():
        out[is_str] = fingerprint([s for s in strs if s is not None]).view(np.uint64)
    for i in np.flatnonzero(~is_str).tolist():
        item = items[i]
        if isinstance(item, bool) or not isinstance(item, int | np.integer):
            raise TypeError(f"keys must be integers or strings, got {type(item).__name__}")
        out[i] = int(item) & MASK64
    return out, (strs if is_str.any() else None)  # type: ignore[return-value]


def mix64(keys: NDArray[np.uint64], seed: int) -> NDArray[np.uint64]:
    """MurmurHash3 fmix64 of ``keys ^ seed`` (a bijection on 64-bit values)."""
    x = keys ^ _U64(seed & MASK64)
    t = np.empty_like(x)
    np.right_shift(x, _S33, out=t)
    x ^= t
    x *= _M1
    np.right_shift(x, _S33, out=t)
    x ^= t
    x *= _M2
    np.right_shift(x, _S33, out=t)
    x ^= t
    return x


def next_seed(seed: int) -> int:
    return int(mix64(np.array([seed + _GOLDEN & MASK64], np.uint64), 0x5EED)[0])


def dedupe(keys: NDArray[np.uint64]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Distinct keys without sorting: ``(first, inverse)`` with ``keys[first][inverse] == keys``.

    Each round scatters the unresolved keys into a scratch table (one writer per slot survives) and
    resolves every key equal to its slot's winner; the rest retry with a fresh hash.
    """
    n = keys.size
    if n <= 1:
        return np.arange(n, dtype=np.int64), np.zeros(n, np.int64)
    bits = max(4, int(2 * n - 1).bit_length())
    idx_t = np.int32 if n < 2**31 else np.int64
    owner = np.empty(1 << bits, idx_t)
    rep = np.empty(n, np.int64)
    todo = np.arange(n, dtype=idx_t)
    sub = keys
    shift = _U64(64 - bits)
    rnd = 0
    while todo.size:
        pos = (mix64(sub, 0xD1CE + rnd) >> shift).astype(np.intp)
        owner[pos] = todo
        cand = owner[pos]
        ok = keys[cand] == sub
        rep[todo[ok]] = cand[ok]
        todo = todo[~ok]
        sub = keys[todo]
        rnd += 1
    is_first = rep == np.arange(n)
    first = np.flatnonzero(is_first)
    inverse = (np.cumsum(is_first) - 1)[rep]
    return first, inverse

