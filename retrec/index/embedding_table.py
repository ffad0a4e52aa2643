"""Collisionless embedding table (Monolith-style): exact 64-bit keys, cuckoo hashing, admission, expiry.

Raw IDs (int64, or strings through a stable 64-bit BLAKE2b fingerprint) map to float32 embedding rows.
The index is a bucketed cuckoo hash table (``num_hashes`` candidate buckets of ``bucket_size`` slots);
every slot stores the full 64-bit key and compares it exactly, so two distinct keys never share a row.
All operations are vectorised with NumPy: lookups probe whole batches bucket by bucket, and insertion
processes every pending key per round as arrays (in-batch conflicts are resolved by a scatter, one
writer per bucket and round; displaced keys are re-queued to their alternative bucket). A bounded
number of rounds that leaves keys unplaced grows the table and rehashes with a fresh seed.

Frequency admission: a key gets a row only after ``observe`` has seen it ``admit_threshold`` times
(exact per-key counts of pending keys, kept in a second cuckoo index); until then it looks up as the
default vector. With ``ttl`` set, ``sweep(now)`` evicts rows (and pending counts) not updated or
observed within ``ttl`` seconds.

Snapshots are bundles (:mod:`retrec.bundle`): ``keys.parquet`` (key, row, raw_id, last_update),
``rows.safetensors`` (``embeddings``, ``default``) and ``manifest.json``; deltas add ``evicted.parquet``.
No pickle is used anywhere.

Example::

    table = EmbeddingTable(dim=16, admit_threshold=2, ttl=86_400.0)
    table.observe([10, 11, 10], now=0.0)            # 10 reaches the threshold and is admitted
    table.update([10], np.ones((1, 16), np.float32), now=1.0)
    table.embed([10, 11, "user:42"])                # 11 and "user:42" give the default vector
    table.snapshot("runs/emb-v1", name="user-emb")
    frozen = FrozenTable.load("runs/emb-v1")        # checksums verified, read-only
    table.observe(["user:42"], now=2.0); table.observe(["user:42"], now=2.0)
    table.export_delta("runs/emb-v1-d1")
    frozen = frozen.apply_delta("runs/emb-v1-d1")   # == live table
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import os
import secrets
import shutil
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from numpy.typing import NDArray
from safetensors.numpy import load_file, save_file

from retrec.bundle import BundleError, Manifest, load_bundle, write_manifest
from retrec.kinds import EMBEDDING_TABLE, EMBEDDING_TABLE_DELTA

__all__ = [
    "DELTA_KIND",
    "KIND",
    "EmbeddingTable",
    "FrozenTable",
    "KeysLike",
    "TableStats",
    "as_keys",
    "fingerprint",
]

KIND = EMBEDDING_TABLE
DELTA_KIND = EMBEDDING_TABLE_DELTA
KEYS_FILE = "keys.parquet"
ROWS_FILE = "rows.safetensors"
EVICTED_FILE = "evicted.parquet"
FORMAT_VERSION = 1

KeysLike: TypeAlias = (
    "NDArray[np.integer[Any]] | Sequence[int] | Sequence[str] | NDArray[np.str_] | int | str"
)

_U64 = np.uint64
# Marks an empty slot. A real key with this value is kept in a side slot (see _CuckooIndex.sentinel_val).
_EMPTY = _U64(0xA5E17C3B9D24F60B)
_M1 = _U64(0xFF51AFD7ED558CCD)
_M2 = _U64(0xC4CEB9FE1A85EC53)
_S33 = _U64(33)
_S32 = _U64(32)
_LOW32 = _U64(0xFFFFFFFF)
_ONE = _U64(1)
_GOLDEN = 0x9E3779B97F4A7C15
_MASK64 = (1 << 64) - 1
_CHUNK = 1 << 16  # keys per probe chunk: keeps the temporaries in cache
_PLACE_CHUNK = 1 << 17  # keys per insertion chunk


# --------------------------------------------------------------------------------------------- keys


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
        out[i] = int(item) & _MASK64
    return out, (strs if is_str.any() else None)  # type: ignore[return-value]


def _mix(keys: NDArray[np.uint64], seed: int) -> NDArray[np.uint64]:
    """MurmurHash3 fmix64 of ``keys ^ seed`` (a bijection on 64-bit values)."""
    x = keys ^ _U64(seed & _MASK64)
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


def _next_seed(seed: int) -> int:
    return int(_mix(np.array([seed + _GOLDEN & _MASK64], np.uint64), 0x5EED)[0])


def _dedupe(keys: NDArray[np.uint64]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
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
        pos = (_mix(sub, 0xD1CE + rnd) >> shift).astype(np.intp)
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


# -------------------------------------------------------------------------------------------- index


class _CuckooIndex:
    """Bucketed cuckoo hash map from exact uint64 keys to int32 payloads (vectorised, NumPy only).

    Candidate buckets: ``h = fmix64(key ^ seed)``, ``b_i = (hi + i * lo) & mask`` with ``hi``/``lo`` the
    32-bit halves of ``h`` (``lo`` forced odd, so the candidates of one key are distinct).
    """

    def __init__(
        self,
        capacity: int,
        *,
        num_hashes: int = 2,
        bucket_size: int = 4,
        seed: int = 0,
        max_load: float = 0.9,
        max_rounds: int = 200,
    ) -> None:
        if num_hashes < 2:
            raise ValueError("num_hashes must be >= 2 (cuckoo hashing needs alternative buckets)")
        if not 1 <= bucket_size <= 8:
            raise ValueError("bucket_size must be in 1..8")
        self.num_hashes = num_hashes
        self.bucket_size = bucket_size
        self.max_load = max_load
        self.max_rounds = max_rounds
        self.seed = seed & _MASK64
        self.size = 0
        self.rebuilds = 0
        self.sentinel_val = -1  # payload of the key equal to _EMPTY, if present
        self._rng = np.random.default_rng(seed & 0xFFFFFFFF)
        # first free slot for each occupancy mask (lowest zero bit), bucket_size when the bucket is full
        self._first_free = np.array(
            [next((j for j in range(bucket_size) if not m >> j & 1), bucket_size) for m in range(256)],
            dtype=np.int64,
        )
        self._alloc(self._buckets_for(capacity))

    # -- layout
    def _buckets_for(self, n: int) -> int:
        need = max(1, int(np.ceil(max(n, 1) / (self.max_load * self.bucket_size))))
        return 1 << max(2, (need - 1).bit_length())

    def _alloc(self, num_buckets: int) -> None:
        self.num_buckets = num_buckets
        self.mask = _U64(num_buckets - 1)
        self.keys = np.full((num_buckets, self.bucket_size), _EMPTY, dtype=np.uint64)
        self.vals = np.full((num_buckets, self.bucket_size), -1, dtype=np.int32)
        self._kf = self.keys.reshape(-1)
        self._vf = self.vals.reshape(-1)
        self.occ = np.zeros(num_buckets, np.uint8)  # occupancy bitmask per bucket (bit j: slot j used)
        self._owner = np.empty(num_buckets, np.int32)  # scratch for _place_chunk (one writer per bucket)

    @property
    def nbytes(self) -> int:
        """Keys, payloads, occupancy bits and the insertion scratch array."""
        return int(self.keys.nbytes + self.vals.nbytes + self.occ.nbytes + self._owner.nbytes)

    @property
    def load(self) -> float:
        return self.size / (self.num_buckets * self.bucket_size)

    def _halves(self, keys: NDArray[np.uint64]) -> tuple[NDArray[np.uint64], NDArray[np.uint64]]:
        h = _mix(keys, self.seed)
        lo = h & _LOW32
        lo |= _ONE
        return h >> _S32, lo

    # -- queries
    def find_slots(self, keys: NDArray[np.uint64]) -> NDArray[np.int64]:
        """Flat slot index of each key, -1 where absent (the _EMPTY key is never found here)."""
        out = np.empty(keys.size, np.int64)
        for start in range(0, keys.size, _CHUNK):
            out[start : start + _CHUNK] = self._find_chunk(keys[start : start + _CHUNK])
        return out

    def _find_chunk(self, k: NDArray[np.uint64]) -> NDArray[np.int64]:
        bsz = self.bucket_size
        hi, lo = self._halves(k)
        b = (hi & self.mask).astype(np.intp)
        eq = np.take(self.keys, b, axis=0) == k[:, None]
        j = eq.argmax(axis=1)
        found = eq[np.arange(k.size), j]
        slot = np.where(found, b * bsz + j, -1)
        miss = np.flatnonzero(~found)
        for i in range(1, self.num_hashes):
            if not miss.size:
                break
            bi = ((hi[miss] + _U64(i) * lo[miss]) & self.mask).astype(np.intp)
            eq = np.take(self.keys, bi, axis=0) == k[miss, None]
            j = eq.argmax(axis=1)
            f = eq[np.arange(miss.size), j]
            slot[miss[f]] = bi[f] * bsz + j[f]
            miss = miss[~f]
        is_empty_key = k == _EMPTY
        if is_empty_key.any():
            slot[is_empty_key] = -1  # matched an empty slot, not a stored key
        return slot

    def lookup(self, keys: NDArray[np.uint64]) -> NDArray[np.int64]:
        """Payload per key, -1 where absent."""
        slots = self.find_slots(keys)
        out = np.full(keys.size, -1, np.int64)
        hit = slots >= 0
        out[hit] = self._vf[slots[hit]]
        if self.sentinel_val >= 0:
            out[keys == _EMPTY] = self.sentinel_val
        return out

    def items(self) -> tuple[NDArray[np.uint64], NDArray[np.int64]]:
        """All (key, payload) pairs, in slot order."""
        occupied = self._kf != _EMPTY
        keys = self._kf[occupied]
        vals = self._vf[occupied].astype(np.int64)
        if self.sentinel_val >= 0:
            keys = np.append(keys, _EMPTY)
            vals = np.append(vals, self.sentinel_val)
        return keys, vals

    # -- updates
    def remove(self, keys: NDArray[np.uint64]) -> NDArray[np.int64]:
        """Remove distinct keys; returns their payloads (-1 for keys that were absent)."""
        slots = self.find_slots(keys)
        out = np.full(keys.size, -1, np.int64)
        hit = slots >= 0
        s = slots[hit]
        out[hit] = self._vf[s]
        self._kf[s] = _EMPTY
        self._vf[s] = -1
        clear = ~np.left_shift(1, s % self.bucket_size).astype(np.uint8)
        np.bitwise_and.at(self.occ, s // self.bucket_size, clear)  # .at: correct with repeated buckets
        self.size -= int(s.size)
        if self.sentinel_val >= 0:
            is_e = keys == _EMPTY
            if is_e.any():
                out[is_e] = self.sentinel_val
                self.sentinel_val = -1
                self.size -= 1
        return out

    def insert_new(self, keys: NDArray[np.uint64], vals: NDArray[np.integer[Any]]) -> None:
        """Insert keys that are distinct and not yet present (the caller guarantees both)."""
        vals = np.asarray(vals, dtype=np.int32)
        is_e = keys == _EMPTY
        if is_e.any():
            self.sentinel_val = int(vals[is_e][0])
            self.size += 1
            keys, vals = keys[~is_e], vals[~is_e]
        if not keys.size:
            return
        need = self._buckets_for(self.size + keys.size)
        if need > self.num_buckets:
            self._expand(need)
        left_k, left_v = self._place(keys, vals)
        if left_k.size:
            self._rebuild(self.num_buckets, left_k, left_v)

    def _expand(self, num_buckets: int) -> None:
        """Grow to ``num_buckets`` (a larger power of two) keeping the seed: no cuckoo placement needed.

        A key in candidate bucket ``b_i`` of the old table lands in ``b_i`` of the new one, whose bucket
        index extends the old one by high bits; so each new bucket receives the entries of exactly one
        old bucket, each keeping its slot number. This is a conflict-free vectorised scatter.
        """
        bsz = self.bucket_size
        old_kf, old_vf, old_mask = self._kf, self._vf, self.mask
        self._alloc(num_buckets)
        for start in range(0, old_kf.size, _CHUNK * 16):  # chunked: temporaries stay small
            slots = np.flatnonzero(old_kf[start : start + _CHUNK * 16] != _EMPTY)
            slots += start
            keys = old_kf[slots]
            hi, lo = self._halves(keys)
            old_b = (slots // bsz).astype(np.uint64)
            choice = np.zeros(keys.size, np.uint64)
            for i in range(1, self.num_hashes):
                choice[((hi + _U64(i) * lo) & old_mask) == old_b] = i
            new_slot = ((hi + choice * lo) & self.mask).astype(np.int64)
            new_slot *= bsz
            new_slot += slots % bsz
            self._kf[new_slot] = keys
            self._vf[new_slot] = old_vf[slots]
        for start in range(0, num_buckets, _CHUNK * 4):
            part = self.keys[start : start + _CHUNK * 4] != _EMPTY
            self.occ[start : start + _CHUNK * 4] = np.packbits(part, axis=1, bitorder="little")[:, 0]
        self.rebuilds += 1

    def _rebuild(self, num_buckets: int, extra_k: NDArray[np.uint64], extra_v: NDArray[np.int32]) -> None:
        """Rehash everything (plus ``extra``) with a fresh seed into at least ``num_buckets`` buckets.

        A failed attempt (keys left after the eviction bound) retries with another seed; every second
        failure also doubles the bucket count.
        """
        occupied = self._kf != _EMPTY
        all_k = np.concatenate([self._kf[occupied], extra_k])
        all_v = np.concatenate([self._vf[occupied], extra_v.astype(np.int32, copy=False)])
        failures = 0
        while True:
            self.rebuilds += 1
            self.seed = _next_seed(self.seed)
            self._alloc(num_buckets)
            self.size = int(self.sentinel_val >= 0)
            left_k, _ = self._place(all_k, all_v)
            if not left_k.size:
                return
            failures += 1
            if failures % 2 == 0:
                num_buckets *= 2

    def _place(
        self, keys: NDArray[np.uint64], vals: NDArray[np.int32]
    ) -> tuple[NDArray[np.uint64], NDArray[np.int32]]:
        """Place keys chunk by chunk (temporaries stay in cache); returns the keys left unplaced."""
        left_k: list[NDArray[np.uint64]] = []
        left_v: list[NDArray[np.int32]] = []
        for start in range(0, keys.size, _PLACE_CHUNK):
            lk, lv = self._place_chunk(keys[start : start + _PLACE_CHUNK], vals[start : start + _PLACE_CHUNK])
            if lk.size:
                left_k.append(lk)
                left_v.append(lv)
        if not left_k:
            return np.empty(0, np.uint64), np.empty(0, np.int32)
        return np.concatenate(left_k), np.concatenate(left_v)

    def _place_chunk(
        self, pk: NDArray[np.uint64], pv: NDArray[np.int32]
    ) -> tuple[NDArray[np.uint64], NDArray[np.int32]]:
        """Vectorised cuckoo insertion; returns the keys still unplaced after ``max_rounds`` rounds.

        Each round every pending key targets its current candidate bucket: into a free slot if there is
        one, otherwise (once all its candidates were seen full) it evicts a random slot. One writer per
        bucket wins the round (scatter, last writer wins); losers retry, displaced keys are re-queued
        towards one of their other candidate buckets.
        """
        d, bsz = self.num_hashes, self.bucket_size
        kf, vf, occ, owner, rng = self._kf, self._vf, self.occ, self._owner, self._rng
        first_free = self._first_free
        pv = pv.astype(np.int32, copy=False)
        hi, lo = self._halves(pk)
        choice = np.zeros(pk.size, np.uint64)
        may_evict = np.zeros(pk.size, bool)
        for _ in range(self.max_rounds):
            n = pk.size
            if not n:
                break
            b = ((hi + choice * lo) & self.mask).astype(np.intp)
            occ_b = np.take(occ, b)
            j = np.take(first_free, occ_b)  # first free slot of the bucket, bsz if full
            has_free = j < bsz
            all_free = bool(has_free.all())
            if all_free:
                contenders = np.arange(n, dtype=np.int32)
            else:
                want = has_free | may_evict
                evict = want & ~has_free
                j[evict] = rng.integers(0, bsz, size=int(np.count_nonzero(evict)))
                contenders = np.flatnonzero(want).astype(np.int32)
            cb = np.take(b, contenders)
            owner[cb] = contenders
            win = contenders[np.take(owner, cb) == contenders]  # one writer per bucket and round
            bw = np.take(b, win)
            jw = np.take(j, win)
            slot = bw * bsz + jw
            fw = np.take(has_free, win)
            if all_free or fw.all():
                dk = None
            else:  # evicting winners displace the slot's current occupant
                es = slot[~fw]
                dk, dv, db = np.take(kf, es), np.take(vf, es), bw[~fw]
                bw, jw, ow = bw[fw], jw[fw], np.take(occ_b, win[fw])
            kf[slot] = np.take(pk, win)
            vf[slot] = np.take(pv, win)
            occ[bw] = (occ_b[win] if dk is None else ow) | np.left_shift(1, jw).astype(np.uint8)
            self.size += int(bw.size)
            stay = np.ones(n, bool)
            stay[win] = False
            if not all_free:
                # Keys that found their bucket full move on to the next candidate (evicting from the last).
                advance = ~want
                if advance.any():
                    choice[advance] += _ONE
                    may_evict[advance] = choice[advance] >= _U64(d - 1)
            pk, pv, hi, lo = pk[stay], pv[stay], hi[stay], lo[stay]
            choice, may_evict = choice[stay], may_evict[stay]
            if dk is not None:
                dhi, dlo = self._halves(dk)
                cur = np.zeros(dk.size, np.uint64)
                for i in range(1, d):
                    cur[((dhi + _U64(i) * dlo) & self.mask).astype(np.intp) == db] = i
                step = rng.integers(1, d, size=dk.size).astype(np.uint64) if d > 2 else _ONE
                pk = np.concatenate([pk, dk])
                pv = np.concatenate([pv, dv])
                hi = np.concatenate([hi, dhi])
                lo = np.concatenate([lo, dlo])
                choice = np.concatenate([choice, (cur + step) % _U64(d)])
                may_evict = np.concatenate([may_evict, np.ones(dk.size, bool)])
        return pk, pv


# ---------------------------------------------------------------------------------------- allocator


class _FreeList:
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


def _grow(arr: NDArray[Any], capacity: int, fill: Any = None) -> NDArray[Any]:
    """Copy into a larger array; the new tail is filled with ``fill`` (left uninitialised if None)."""
    out = np.empty((capacity, *arr.shape[1:]), dtype=arr.dtype)
    out[: arr.shape[0]] = arr
    if fill is not None:
        out[arr.shape[0] :] = fill
    return out


# ------------------------------------------------------------------------------------------ stats


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


# ------------------------------------------------------------------------------------- live table


class _KeyedRows:
    """The read path shared by the live and the frozen table: keys → rows → vectors, misses counted."""

    _index: _CuckooIndex
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
        return _gather(self._matrix(), self.lookup(keys), self.default_vector)

    def raw_ids(self, keys: KeysLike) -> list[str | None]:
        """Original string of each fingerprinted key, None for integer or unknown keys."""
        k, _ = as_keys(keys)
        raw = self._raw_map()
        return [raw.get(x) for x in k.view(np.int64).tolist()]


class EmbeddingTable(_KeyedRows):
    """Mutable collisionless embedding table with frequency admission and TTL expiry.

    Args:
        dim: embedding width.
        admit_threshold: ``observe`` calls (occurrences) needed before a key gets a row.
        ttl: seconds without ``observe``/``update`` after which ``sweep`` evicts an entry; None: never.
        initial_capacity: rows (and index slots) preallocated; both grow by doubling.
        num_hashes: candidate buckets per key (>= 2).
        seed: seeds the hash functions and the row initialiser.
        init_std: standard deviation of the normal initialisation of new rows.
        bucket_size: slots per cuckoo bucket (4 = one 32-byte key line per bucket).

    Example::

        t = EmbeddingTable(8)
        rows = t.observe(np.array([7, 8, 7]), now=0.0)   # rows[0] == rows[2] != rows[1]
        t.embed(["never-seen"])                          # default vector, counted as a miss
    """

    def __init__(
        self,
        dim: int,
        *,
        admit_threshold: int = 1,
        ttl: float | None = None,
        initial_capacity: int = 1024,
        num_hashes: int = 2,
        seed: int = 0,
        init_std: float = 0.01,
        bucket_size: int = 4,
    ) -> None:
        if dim < 1:
            raise ValueError("dim must be >= 1")
        if admit_threshold < 1:
            raise ValueError("admit_threshold must be >= 1")
        if ttl is not None and ttl <= 0:
            raise ValueError("ttl must be positive or None")
        self.dim = int(dim)
        self.admit_threshold = int(admit_threshold)
        self.ttl = None if ttl is None else float(ttl)
        self.num_hashes = int(num_hashes)
        self.bucket_size = int(bucket_size)
        self.seed = int(seed)
        self.init_std = float(init_std)
        cap = max(16, int(initial_capacity))
        self._index = _CuckooIndex(cap, num_hashes=num_hashes, bucket_size=bucket_size, seed=seed)
        self._rows = _FreeList()
        self._emb = np.zeros((cap, self.dim), np.float32)
        self._last = np.zeros(cap, np.float64)
        self._used = np.zeros(cap, bool)
        self._dirty = np.zeros(cap, bool)
        # pending (not yet admitted) keys: exact counts, allocated only when admit_threshold > 1
        self._pindex = _CuckooIndex(16, num_hashes=num_hashes, bucket_size=bucket_size, seed=seed + 1)
        self._pslots = _FreeList()
        self._pcount = np.zeros(16, np.int32)
        self._plast = np.zeros(16, np.float64)
        self._raw: dict[int, str] = {}
        self._evicted_log: list[NDArray[np.uint64]] = []
        self._base_version: str | None = None
        self._rng = np.random.default_rng(seed)
        self._stats = TableStats()
        self.default_vector: NDArray[np.float32] = np.zeros(self.dim, np.float32)

    # -- introspection
    def __len__(self) -> int:
        return self._index.size

    @property
    def stats(self) -> TableStats:
        """A copy of the counters with the current size, pending count and index load."""
        return dataclasses.replace(
            self._stats,
            size=len(self),
            pending=self._pindex.size,
            index_rebuilds=self._index.rebuilds,
            index_load=round(self._index.load, 4),
        )

    @property
    def config(self) -> dict[str, Any]:
        return {
            "dim": self.dim,
            "admit_threshold": self.admit_threshold,
            "ttl": self.ttl,
            "num_hashes": self.num_hashes,
            "bucket_size": self.bucket_size,
            "seed": self.seed,
            "init_std": self.init_std,
            "key_fingerprint": "blake2b-64 of utf-8, little-endian, as int64",
            "format_version": FORMAT_VERSION,
        }

    def memory_bytes(self) -> dict[str, int]:
        """Bytes held, by part (capacity, not just the used part)."""
        return {
            "index": self._index.nbytes,
            "row_meta": int(self._last.nbytes + self._used.nbytes + self._dirty.nbytes),
            "embeddings": int(self._emb.nbytes),
            "pending": int(self._pindex.nbytes + self._pcount.nbytes + self._plast.nbytes),
        }

    def entries(self) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """All admitted ``(keys, rows)`` as int64 arrays (index order)."""
        keys, rows = self._index.items()
        return keys.view(np.int64), rows

    # -- reads
    def _counters(self) -> TableStats:
        return self._stats

    def _matrix(self) -> NDArray[np.float32]:
        return self._emb

    def _raw_map(self) -> dict[int, str]:
        return self._raw

    # -- writes
    def observe(self, keys: KeysLike, now: float | None = None) -> NDArray[np.int64]:
        """Count occurrences, admit keys that reach the threshold, touch admitted keys.

        Returns the row per key (-1 for keys still pending admission).
        """
        now = time.time() if now is None else float(now)
        k, strs = as_keys(keys)
        self._stats.observed += k.size
        rows = self._index.lookup(k)
        miss = np.flatnonzero(rows < 0)
        if miss.size:
            mk = k[miss]
            first, inverse = _dedupe(mk)
            uk = mk[first]
            if self.admit_threshold > 1:
                counts = np.bincount(inverse, minlength=uk.size)
                admit = self._count_pending(uk, counts, now)
            else:
                admit = np.ones(uk.size, bool)
            urows = np.full(uk.size, -1, np.int64)
            if admit.any():
                urows[admit] = self._admit(uk[admit], now)
                if strs is not None:
                    src = miss[first[admit]].tolist()
                    pairs = zip(uk[admit].view(np.int64).tolist(), [strs[i] for i in src], strict=True)
                    self._raw.update((key, raw) for key, raw in pairs if raw is not None)
            rows[miss] = urows[inverse]
        hit = rows[rows >= 0]
        self._last[hit] = now
        self._dirty[hit] = True
        return rows

    def update(
        self, keys: KeysLike, values: NDArray[np.floating[Any]], now: float | None = None
    ) -> NDArray[np.int64]:
        """Write rows of admitted keys (absent keys are skipped; duplicates: the last value wins).

        Returns the row per key (-1 where skipped).
        """
        now = time.time() if now is None else float(now)
        k, _ = as_keys(keys)
        values = np.asarray(values, dtype=np.float32)
        if values.shape != (k.size, self.dim):
            raise ValueError(f"values must have shape {(k.size, self.dim)}, got {values.shape}")
        rows = self._index.lookup(k)
        sel = np.flatnonzero(rows >= 0)
        r = rows[sel]
        first, inverse = _dedupe(r.view(np.uint64))
        if first.size < r.size:  # duplicates: keep the last occurrence of each row
            last = np.zeros(first.size, np.int64)
            np.maximum.at(last, inverse, np.arange(r.size))
            sel = sel[last]
            r = rows[sel]
        self._emb[r] = values[sel]
        self._last[r] = now
        self._dirty[r] = True
        return rows

    def sweep(self, now: float | None = None) -> int:
        """Evict entries (and pending counts) not touched within ``ttl``; returns evicted entries."""
        if self.ttl is None:
            return 0
        now = time.time() if now is None else float(now)
        cutoff = now - self.ttl
        evicted = 0
        keys, rows = self._index.items()
        stale = self._last[rows] < cutoff
        if stale.any():
            ek, er = keys[stale], rows[stale]
            self._index.remove(ek)
            self._release_rows(er)
            self._evicted_log.append(ek)
            if self._raw:
                for key in ek.view(np.int64).tolist():
                    self._raw.pop(key, None)
            evicted = int(ek.size)
            self._stats.evicted += evicted
        if self._pindex.size:
            pkeys, pslots = self._pindex.items()
            pstale = self._plast[pslots] < cutoff
            if pstale.any():
                self._pindex.remove(pkeys[pstale])
                self._pslots.release(pslots[pstale])
                self._stats.pending_evicted += int(np.count_nonzero(pstale))
        return evicted

    # -- internals
    def _admit(self, keys: NDArray[np.uint64], now: float) -> NDArray[np.int64]:
        rows = self._rows.alloc(keys.size)
        if not rows.size:
            return rows
        if self._rows.next > self._emb.shape[0]:
            cap = max(self._rows.next, 2 * self._emb.shape[0])
            self._emb = _grow(self._emb, cap)  # rows are initialised on admission
            self._last = _grow(self._last, cap, 0.0)
            self._used = _grow(self._used, cap, False)
            self._dirty = _grow(self._dirty, cap, False)
        lo, hi = int(rows[0]), int(rows[-1]) + 1
        if hi - lo == rows.size and np.all(rows[1:] > rows[:-1]):  # fresh rows: a contiguous range
            rows_ix: slice | NDArray[np.int64] = slice(lo, hi)
            _fill_normal(self._rng, self._emb[lo:hi].reshape(-1), self.init_std)
        else:
            rows_ix = rows
            init = np.empty((keys.size, self.dim), np.float32)
            _fill_normal(self._rng, init.reshape(-1), self.init_std)
            self._emb[rows] = init
        self._last[rows_ix] = now
        self._used[rows_ix] = True
        self._dirty[rows_ix] = True
        self._index.insert_new(keys, rows)
        self._stats.admitted += keys.size
        return rows

    def _release_rows(self, rows: NDArray[np.int64]) -> None:
        self._used[rows] = False
        self._dirty[rows] = False
        self._emb[rows] = 0.0
        self._rows.release(rows)

    def _count_pending(
        self, keys: NDArray[np.uint64], counts: NDArray[np.int64], now: float
    ) -> NDArray[np.bool_]:
        """Add ``counts`` to the pending counts of distinct ``keys``; returns which reached the threshold."""
        slots = self._pindex.lookup(keys)
        have = slots >= 0
        total = counts.astype(np.int64)
        total[have] += self._pcount[slots[have]]
        admit = total >= self.admit_threshold
        done = have & admit
        if done.any():
            self._pindex.remove(keys[done])
            self._pslots.release(slots[done])
        keep = have & ~admit
        s = slots[keep]
        self._pcount[s] = total[keep]
        self._plast[s] = now
        new = ~have & ~admit
        if new.any():
            ns = self._pslots.alloc(int(np.count_nonzero(new)))
            if self._pslots.next > self._pcount.size:
                cap = max(self._pslots.next, 2 * self._pcount.size)
                self._pcount = _grow(self._pcount, cap, 0)
                self._plast = _grow(self._plast, cap, 0.0)
            self._pcount[ns] = total[new]
            self._plast[ns] = now
            self._pindex.insert_new(keys[new], ns)
        return admit

    # -- snapshots
    def snapshot(self, out_dir: str | os.PathLike[str], name: str = "embedding-table") -> Manifest:
        """Write a frozen snapshot bundle (kind ``table/embedding``) and start a new delta window."""
        keys, rows = self._index.items()
        return self._publish(Path(out_dir), KIND, name, keys, rows, evicted=None, base=None)

    def export_delta(self, out_dir: str | os.PathLike[str], name: str = "embedding-table") -> Manifest:
        """Write the keys touched (admitted, observed, updated) or evicted since the last snapshot/delta.

        The bundle (kind ``table/embedding-delta``) names its base version in ``config.base_version``;
        apply it with :meth:`FrozenTable.apply_delta` on the table of that version.
        """
        if self._base_version is None:
            raise RuntimeError("export_delta needs a base: call snapshot() first")
        keys, rows = self._index.items()
        touched = self._dirty[rows]
        keys, rows = keys[touched], rows[touched]
        if self._evicted_log:
            ev = np.concatenate(self._evicted_log)
            ev = ev[_dedupe(ev)[0]]
            ev = ev[self._index.lookup(ev) < 0]  # re-admitted keys travel as upserts
        else:
            ev = np.empty(0, np.uint64)
        return self._publish(Path(out_dir), DELTA_KIND, name, keys, rows, evicted=ev.view(np.int64),
                             base=self._base_version)

    def _publish(self, out_dir: Path, kind: str, name: str, keys: NDArray[np.uint64], rows: NDArray[np.int64],
                 evicted: NDArray[np.int64] | None, base: str | None) -> Manifest:
        """Write ``rows`` as a bundle of ``kind`` and start a new delta window on its version."""
        version = _new_version()
        manifest = _write_bundle(
            out_dir,
            kind=kind,
            name=name,
            version=version,
            keys=keys.view(np.int64),
            embeddings=self._emb[rows],
            last_update=self._last[rows],
            raw=self._raw,
            default=self.default_vector,
            evicted=evicted,
            config={**self.config, "base_version": base},
            metrics=self.stats.as_dict(),
        )
        self._dirty[:] = False
        self._evicted_log.clear()
        self._base_version = version
        return manifest


# ----------------------------------------------------------------------------------- frozen table


class FrozenTable(_KeyedRows):
    """Read-only table loaded from a snapshot bundle, with the same vectorised ``lookup``/``embed``.

    Rows are compact (``0..len-1``); the cuckoo index is rebuilt from the keys at load time.

    Example::

        frozen = FrozenTable.load("runs/emb-v1")          # BundleError if any file was altered
        vecs = frozen.embed(np.array([10, 11]))
        frozen = frozen.apply_delta("runs/emb-v1-d1")     # a new FrozenTable; self is unchanged
    """

    def __init__(
        self,
        keys: NDArray[np.int64],
        embeddings: NDArray[np.float32],
        last_update: NDArray[np.float64],
        default: NDArray[np.float32],
        *,
        raw: dict[int, str] | None = None,
        version: str = "",
        name: str = "",
        config: dict[str, Any] | None = None,
    ) -> None:
        n = keys.shape[0]
        if embeddings.ndim != 2 or embeddings.shape[0] != n or last_update.shape != (n,):
            raise ValueError("keys, embeddings and last_update disagree in length")
        self.keys = _readonly(np.ascontiguousarray(keys, dtype=np.int64))
        self.embeddings = _readonly(np.ascontiguousarray(embeddings, dtype=np.float32))
        self.last_update = _readonly(np.ascontiguousarray(last_update, dtype=np.float64))
        self.default_vector = _readonly(np.asarray(default, dtype=np.float32).reshape(-1))
        self.dim = int(self.embeddings.shape[1])
        if self.default_vector.shape != (self.dim,):
            raise ValueError("default vector width differs from the embedding width")
        self.raw = dict(raw or {})
        self.version = version
        self.name = name
        self.config = dict(config or {})
        self.stats = TableStats()
        self._index = _CuckooIndex(
            n,
            num_hashes=int(self.config.get("num_hashes", 2)),
            bucket_size=int(self.config.get("bucket_size", 4)),
            seed=int(self.config.get("seed", 0)),
        )
        if _dedupe(self.keys.view(np.uint64))[0].size != n:
            raise ValueError("duplicate keys")
        self._index.insert_new(self.keys.view(np.uint64), np.arange(n, dtype=np.int64))
        self.stats.size = n

    def __len__(self) -> int:
        return self.keys.shape[0]

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> FrozenTable:
        """Load a ``table/embedding`` bundle, verifying every checksum (raises BundleError)."""
        manifest = load_bundle(directory, kind=KIND)
        keys, emb, last, raw, default, _ = _read_bundle(manifest)
        try:
            return cls(
                keys,
                emb,
                last,
                default,
                raw=raw,
                version=manifest.version,
                name=manifest.name,
                config=manifest.config,
            )
        except ValueError as exc:
            raise BundleError(f"{directory}: inconsistent snapshot ({exc})") from exc

    def _counters(self) -> TableStats:
        return self.stats

    def _matrix(self) -> NDArray[np.float32]:
        return self.embeddings

    def _raw_map(self) -> dict[int, str]:
        return self.raw

    def apply_delta(self, directory: str | os.PathLike[str]) -> FrozenTable:
        """Return a new table: this one with a ``table/embedding-delta`` bundle applied.

        Evicted keys are removed, new keys added and changed rows replaced. Refuses (BundleError) a
        delta whose base version is not this table's version, or of another width.
        """
        manifest = load_bundle(directory, kind=DELTA_KIND)
        base = manifest.config.get("base_version")
        if base != self.version:
            raise BundleError(f"{directory}: delta is based on {base!r}, this table is {self.version!r}")
        keys, emb, last, raw, _, evicted = _read_bundle(manifest)
        if emb.shape[1] != self.dim:
            raise BundleError(f"{directory}: delta width {emb.shape[1]} != table width {self.dim}")
        assert evicted is not None
        drop = np.zeros(len(self), bool)
        for ks in (evicted, keys):
            r = self._index.lookup(ks.view(np.uint64))
            drop[r[r >= 0]] = True
        keep = ~drop
        merged_raw = dict(self.raw)
        if merged_raw and evicted.size:
            for key in evicted.tolist():
                merged_raw.pop(key, None)
        merged_raw.update(raw)
        return FrozenTable(
            np.concatenate([self.keys[keep], keys]),
            np.concatenate([self.embeddings[keep], emb]),
            np.concatenate([self.last_update[keep], last]),
            self.default_vector,
            raw=merged_raw,
            version=manifest.version,
            name=self.name,
            config=self.config,
        )


# ---------------------------------------------------------------------------------------- helpers


def _gather(
    emb: NDArray[np.float32], rows: NDArray[np.int64], default: NDArray[np.float32]
) -> NDArray[np.float32]:
    absent = rows < 0
    if not emb.shape[0]:
        return np.tile(default, (rows.size, 1))
    out = np.take(emb, np.where(absent, 0, rows), axis=0)
    if absent.any():
        out[absent] = default
    return out


def _fill_normal(rng: np.random.Generator, out: NDArray[np.float32], std: float) -> None:
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


def _readonly(arr: NDArray[Any]) -> NDArray[Any]:
    arr.setflags(write=False)
    return arr


def _new_version() -> str:
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{stamp}-{secrets.token_hex(3)}"


def _write_bundle(
    out_dir: Path,
    *,
    kind: str,
    name: str,
    version: str,
    keys: NDArray[np.int64],
    embeddings: NDArray[np.float32],
    last_update: NDArray[np.float64],
    raw: dict[int, str],
    default: NDArray[np.float32],
    evicted: NDArray[np.int64] | None,
    config: dict[str, Any],
    metrics: dict[str, Any],
) -> Manifest:
    """Write files into a temporary sibling directory, checksum them, then rename into place."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir} exists and is not an empty directory")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        n = keys.shape[0]
        if raw:
            raw_col = pa.array([raw.get(k) for k in keys.tolist()], type=pa.string())
        else:
            raw_col = pa.nulls(n, type=pa.string())
        table = pa.table(
            {
                "key": pa.array(keys, type=pa.int64()),
                "row": pa.array(np.arange(n, dtype=np.int64), type=pa.int64()),
                "raw_id": raw_col,
                "last_update": pa.array(last_update, type=pa.float64()),
            }
        )
        pq.write_table(table, tmp / KEYS_FILE)
        save_file(
            {
                "embeddings": np.ascontiguousarray(embeddings, np.float32),
                "default": np.ascontiguousarray(default, np.float32),
            },
            str(tmp / ROWS_FILE),
            metadata={"format_version": str(FORMAT_VERSION)},
        )
        (tmp / ROWS_FILE).chmod((tmp / KEYS_FILE).stat().st_mode & 0o777)  # safetensors writes 0600
        dims: dict[str, Any] = {"dim": int(embeddings.shape[1]), "rows": int(n)}
        if evicted is not None:
            pq.write_table(pa.table({"key": pa.array(evicted, type=pa.int64())}), tmp / EVICTED_FILE)
            dims["evicted"] = int(evicted.size)
        manifest = write_manifest(
            tmp, kind=kind, name=name, version=version, config=config, dims=dims, metrics=metrics
        )
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    manifest.path = out_dir
    return manifest


def _read_bundle(
    manifest: Manifest,
) -> tuple[
    NDArray[np.int64],
    NDArray[np.float32],
    NDArray[np.float64],
    dict[int, str],
    NDArray[np.float32],
    NDArray[np.int64] | None,
]:
    """(keys, embeddings in key order, last_update, raw ids, default, evicted keys or None)."""
    where = manifest.path
    try:
        table = pq.read_table(manifest.file(KEYS_FILE))
        tensors = load_file(str(manifest.file(ROWS_FILE)))
        keys = table.column("key").to_numpy().astype(np.int64, copy=False)
        rows = table.column("row").to_numpy().astype(np.int64, copy=False)
        last = table.column("last_update").to_numpy().astype(np.float64, copy=False)
        raw_col = table.column("raw_id")
        valid = pc.is_valid(raw_col)
        raw: dict[int, str] = {}
        if raw_col.null_count < len(raw_col):
            raw = dict(
                zip(
                    pc.filter(table.column("key"), valid).to_pylist(),
                    pc.filter(raw_col, valid).to_pylist(),
                    strict=True,
                )
            )
        emb = tensors["embeddings"]
        default = tensors["default"]
        evicted = None
        if EVICTED_FILE in manifest.files:
            evicted = pq.read_table(manifest.file(EVICTED_FILE)).column("key").to_numpy().astype(np.int64)
        elif manifest.kind == DELTA_KIND:
            raise BundleError(f"{where}: delta without {EVICTED_FILE}")
    except (KeyError, OSError, pa.ArrowException, ValueError) as exc:
        raise BundleError(f"{where}: unreadable table bundle ({exc})") from exc
    if emb.ndim != 2 or emb.dtype != np.float32:
        raise BundleError(f"{where}: embeddings must be a 2-D float32 tensor")
    if rows.size and (rows.min() < 0 or rows.max() >= emb.shape[0]):
        raise BundleError(f"{where}: row ids out of range")
    if rows.size != emb.shape[0] or not np.array_equal(rows, np.arange(rows.size)):
        emb = emb[rows]
    if manifest.dims.get("dim") not in (None, emb.shape[1]):
        raise BundleError(f"{where}: manifest dim {manifest.dims.get('dim')} != tensor width {emb.shape[1]}")
    return keys, emb, last, raw, default, evicted
