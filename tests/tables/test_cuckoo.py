"""Tests for retrec.tables.cuckoo: zero collisions, growth and rehash, the insertion-failure path."""

from __future__ import annotations

import numpy as np

from retrec.tables import EmbeddingTable
from retrec.tables.cuckoo import EMPTY, CuckooIndex
from tests.tables.support import DIM, check_bijective


def test_zero_collisions_random_and_adversarial() -> None:
    rng = np.random.default_rng(7)
    rand = rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, size=120_000, dtype=np.int64)
    i = np.arange(40_000, dtype=np.int64)
    same_low_bits = (i << 32) | 0x5EED  # identical low 32 bits
    same_high_bits = i  # differ only in the low bits
    low_zero = (i + 1) << 44  # low 44 bits all zero
    special = np.array(
        [0, -1, 1, np.iinfo(np.int64).min, np.iinfo(np.int64).max, int(EMPTY.view(np.int64))], np.int64
    )
    keys = np.unique(np.concatenate([rand, same_low_bits, same_high_bits, low_zero, special]))
    assert keys.size > 200_000
    rng.shuffle(keys)
    t = EmbeddingTable(DIM, initial_capacity=64)
    for start in range(0, keys.size, 50_000):
        assert (t.observe(keys[start : start + 50_000], now=0.0) >= 0).all()
    check_bijective(t, keys)
    ekeys, _ = t.entries()
    assert np.array_equal(np.sort(ekeys), np.sort(keys))
    # absent keys near the stored ones are not found
    assert (t.lookup(keys[:1000] ^ np.int64(1 << 62)) == -1).sum() >= 999


def test_growth_and_rehash_keep_all_keys() -> None:
    rng = np.random.default_rng(3)
    t = EmbeddingTable(DIM, initial_capacity=16)
    seen: list[np.ndarray] = []
    rows_at_insert: list[np.ndarray] = []
    for _ in range(40):
        k = rng.integers(0, 2**62, size=997, dtype=np.int64)
        rows_at_insert.append(t.observe(k, now=0.0))
        seen.append(k)
    assert t.stats.index_rebuilds >= 5
    for k, r in zip(seen, rows_at_insert, strict=True):
        assert np.array_equal(t.lookup(k), r)  # rehashing moves slots, never rows
    check_bijective(t, np.unique(np.concatenate(seen)))


def test_cuckoo_failure_path_rehashes() -> None:
    """A tiny eviction bound at 97% load makes insertion fail often; each failure rehashes, losing nothing."""
    rng = np.random.default_rng(11)
    idx = CuckooIndex(64, max_rounds=6, max_load=0.97)
    keys = np.unique(rng.integers(0, 2**63, size=30_000, dtype=np.int64)).view(np.uint64)
    for start in range(0, keys.size, 3000):
        part = keys[start : start + 3000]
        idx.insert_new(part, np.arange(start, start + part.size))
    assert idx.size == keys.size and idx.rebuilds > 0
    assert np.array_equal(idx.lookup(keys), np.arange(keys.size))
    gone = idx.remove(keys[::2])
    assert np.array_equal(gone, np.arange(0, keys.size, 2))
    assert (idx.lookup(keys[::2]) == -1).all() and np.array_equal(
        idx.lookup(keys[1::2]), np.arange(1, keys.size, 2)
    )
    assert idx.size == keys.size - keys[::2].size
    assert int(np.unpackbits(idx.occ).sum()) == np.count_nonzero(idx.keys != EMPTY)
