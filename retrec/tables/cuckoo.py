"""Bucketed cuckoo hash index: exact uint64 keys → int32 payloads, vectorised with NumPy.

Each key has ``num_hashes`` candidate buckets of ``bucket_size`` slots; every slot stores the full
64-bit key and compares it exactly, so two distinct keys never share a payload. Lookups probe whole
batches bucket by bucket; insertion processes every pending key per round as arrays (one writer per
bucket and round, displaced keys re-queued to an alternative bucket). A bounded number of rounds that
leaves keys unplaced rehashes with a fresh seed (and, every second failure, twice the buckets).
The key equal to :data:`EMPTY` (the empty-slot marker) is kept in a side slot.

Example::

    idx = CuckooIndex(1024)
    idx.insert_new(np.array([7, 9], np.uint64), np.array([0, 1]))   # distinct, absent keys only
    idx.lookup(np.array([9, 8], np.uint64))                           # array([ 1, -1])
    idx.remove(np.array([7], np.uint64))                              # array([0])
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
from numpy.typing import NDArray

from retrec.tables.keys import MASK64, mix64, next_seed

__all__ = ["EMPTY", "CuckooIndex"]

_U64 = np.uint64
# Marks an empty slot. A real key with this value is kept in a side slot (see CuckooIndex.sentinel_val).
EMPTY = _U64(0xA5E17C3B9D24F60B)
_S32 = _U64(32)
_LOW32 = _U64(0xFFFFFFFF)
_ONE = _U64(1)
_CHUNK = 1 << 16  # keys per probe chunk: keeps the temporaries in cache
_PLACE_CHUNK = 1 << 17  # keys per insertion chunk


class CuckooIndex:
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
        self.seed = seed & MASK64
        self.size = 0
        self.rebuilds = 0
        self.sentinel_val = -1  # payload of the key equal to EMPTY, if present
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
        self.keys = np.full((num_buckets, self.bucket_size), EMPTY, dtype=np.uint64)
        self.vals = np.full((num_buckets, self.bucket_size), -1, dtype=np.int32)
        self._kf = self.keys.reshape(-1)
        self._vf = self.vals.reshape(-1)
        self.occ = np.zeros(num_buckets, np.uint8)  # occupancy bitmask per bucket (bit j: slot j used)
        self._owner = np.empty(num_buckets, np.int32)  # scratch for _place_chunk (one writer per bucket)

    def copy(self) -> CuckooIndex:
        """An independent index holding the same entries (arrays copied, their flat views re-made)."""
        out = copy.copy(self)
        out.keys, out.vals, out.occ = self.keys.copy(), self.vals.copy(), self.occ.copy()
        out._kf, out._vf = out.keys.reshape(-1), out.vals.reshape(-1)
        out._owner = np.empty_like(self._owner)
        out._rng = copy.deepcopy(self._rng)
        return out

    @property
    def nbytes(self) -> int:
        """Keys, payloads, occupancy bits and the insertion scratch array."""
        return int(self.keys.nbytes + self.vals.nbytes + self.occ.nbytes + self._owner.nbytes)

    @property
    def load(self) -> float:
        return self.size / (self.num_buckets * self.bucket_size)

    def _halves(self, keys: NDArray[np.uint64]) -> tuple[NDArray[np.uint64], NDArray[np.uint64]]:
        h = mix64(keys, self.seed)
        lo = h & _LOW32
        lo |= _ONE
        return h >> _S32, lo

    # -- queries
    def find_slots(self, keys: NDArray[np.uint64]) -> NDArray[np.int64]:
        """Flat slot index of each key, -1 where absent (the EMPTY key is never found here)."""
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
        is_empty_key = k == EMPTY
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
            out[keys == EMPTY] = self.sentinel_val
        return out

    def items(self) -> tuple[NDArray[np.uint64], NDArray[np.int64]]:
        """All (key, payload) pairs, in slot order."""
        occupied = self._kf != EMPTY
        keys = self._kf[occupied]
        vals = self._vf[occupied].astype(np.int64)
        if self.sentinel_val >= 0:
            keys = np.append(keys, EMPTY)
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
        self._kf[s] = EMPTY
        self._vf[s] = -1
        clear = ~np.left_shift(1, s % self.bucket_size).astype(np.uint8)
        np.bitwise_and.at(self.occ, s // self.bucket_size, clear)  # .at: correct with repeated buckets
        self.size -= int(s.size)
        if self.sentinel_val >= 0:
            is_e = keys == EMPTY
            if is_e.any():
                out[is_e] = self.sentinel_val
                self.sentinel_val = -1
                self.size -= 1
        return out

    def insert_new(self, keys: NDArray[np.uint64], vals: NDArray[np.integer[Any]]) -> None:
        """Insert keys that are distinct and not yet present (the caller guarantees both)."""
        vals = np.asarray(vals, dtype=np.int32)
        is_e = keys == EMPTY
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
            slots = np.flatnonzero(old_kf[start : start + _CHUNK * 16] != EMPTY)
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
            part = self.keys[start : start + _CHUNK * 4] != EMPTY
            self.occ[start : start + _CHUNK * 4] = np.packbits(part, axis=1, bitorder="little")[:, 0]
        self.rebuilds += 1

    def _rebuild(self, num_buckets: int, extra_k: NDArray[np.uint64], extra_v: NDArray[np.int32]) -> None:
        """Rehash everything (plus ``extra``) with a fresh seed into at least ``num_buckets`` buckets.

        A failed attempt (keys left after the eviction bound) retries with another seed; every second
        failure also doubles the bucket count.
        """
        occupied = self._kf != EMPTY
        all_k = np.concatenate([self._kf[occupied], extra_k])
        all_v = np.concatenate([self._vf[occupied], extra_v.astype(np.int32, copy=False)])
        failures = 0
        while True:
            self.rebuilds += 1
            self.seed = next_seed(self.seed)
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

