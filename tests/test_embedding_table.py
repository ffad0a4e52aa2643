"""Tests for retrec.index.embedding_table: admission, expiry, collisions, snapshots and deltas."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retrec.bundle import BundleError, load_bundle
from retrec.index.embedding_table import (
    _EMPTY,
    DELTA_KIND,
    KIND,
    EmbeddingTable,
    FrozenTable,
    _CuckooIndex,
    _dedupe,
    as_keys,
    fingerprint,
)

DIM = 8


def _vals(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def _check_bijective(table: EmbeddingTable, keys: np.ndarray) -> None:
    """Every key has its own row, and the row maps back to that key."""
    rows = table.lookup(keys)
    assert (rows >= 0).all()
    assert np.unique(rows).size == keys.size == len(table)
    ekeys, erows = table.entries()
    back = np.empty(erows.max() + 1, np.int64)
    back[erows] = ekeys
    assert np.array_equal(back[rows], keys.astype(np.int64))


def test_admission_threshold() -> None:
    t = EmbeddingTable(DIM, admit_threshold=3)
    assert t.observe([1], now=0.0)[0] == -1
    assert t.observe(np.array([1]), now=1.0)[0] == -1
    assert t.lookup([1])[0] == -1
    assert np.array_equal(t.embed([1]), np.zeros((1, DIM), np.float32))
    s = t.stats
    assert (s.pending, s.admitted, s.size, s.lookups, s.misses) == (1, 0, 0, 2, 2)
    row = t.observe([1], now=2.0)[0]
    assert row >= 0 and t.lookup([1])[0] == row
    assert np.abs(t.embed([1])).sum() > 0  # initialised row, not the default
    s = t.stats
    assert (s.pending, s.admitted, s.size, s.observed) == (0, 1, 1, 3)
    # occurrences inside one batch count too; every occurrence gets the new row
    rows = t.observe([2, 7, 2, 2], now=3.0)
    assert rows[0] == rows[2] == rows[3] >= 0 and rows[1] == -1
    assert len(t) == 2 and t.stats.pending == 1


def test_expiry_sweep() -> None:
    t = EmbeddingTable(DIM, ttl=10.0, admit_threshold=1)
    t.observe([1, 2, 3], now=0.0)
    t.observe([2], now=8.0)
    t.update([3], _vals(1), now=9.0)
    assert t.sweep(now=5.0) == 0
    assert t.sweep(now=12.0) == 1  # key 1 untouched since 0
    assert t.lookup([1, 2, 3]).tolist()[0] == -1
    assert (t.lookup([2, 3]) >= 0).all()
    assert t.stats.evicted == 1 and len(t) == 2
    assert t.sweep(now=30.0) == 2 and len(t) == 0
    # freed rows are reused, and an evicted key comes back with a fresh row
    row = t.observe([1], now=31.0)[0]
    assert 0 <= row < 3 and len(t) == 1


def test_pending_counts_expire() -> None:
    t = EmbeddingTable(DIM, ttl=10.0, admit_threshold=2)
    t.observe([5], now=0.0)
    assert t.stats.pending == 1
    t.sweep(now=20.0)
    assert t.stats.pending == 0 and t.stats.pending_evicted == 1
    assert t.observe([5], now=21.0)[0] == -1  # count restarted
    assert t.observe([5], now=22.0)[0] >= 0


def test_unseen_ids_default_vector_and_counted() -> None:
    t = EmbeddingTable(DIM)
    t.observe([10, 11], now=0.0)
    out = t.embed([10, 999, "never", 11])
    assert out.shape == (4, DIM) and out.dtype == np.float32
    assert np.array_equal(out[1], t.default_vector) and np.array_equal(out[2], t.default_vector)
    assert np.abs(out[0]).sum() > 0
    assert (t.stats.lookups, t.stats.misses) == (4, 2)
    assert t.embed(np.array([], np.int64)).shape == (0, DIM)


def test_zero_collisions_random_and_adversarial() -> None:
    rng = np.random.default_rng(7)
    rand = rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, size=120_000, dtype=np.int64)
    i = np.arange(40_000, dtype=np.int64)
    same_low_bits = (i << 32) | 0x5EED  # identical low 32 bits
    same_high_bits = i  # differ only in the low bits
    low_zero = (i + 1) << 44  # low 44 bits all zero
    special = np.array(
        [0, -1, 1, np.iinfo(np.int64).min, np.iinfo(np.int64).max, int(_EMPTY.view(np.int64))], np.int64
    )
    keys = np.unique(np.concatenate([rand, same_low_bits, same_high_bits, low_zero, special]))
    assert keys.size > 200_000
    rng.shuffle(keys)
    t = EmbeddingTable(DIM, initial_capacity=64)
    for start in range(0, keys.size, 50_000):
        assert (t.observe(keys[start : start + 50_000], now=0.0) >= 0).all()
    _check_bijective(t, keys)
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
    _check_bijective(t, np.unique(np.concatenate(seen)))


def test_cuckoo_failure_path_rehashes() -> None:
    """A tiny eviction bound at 97% load makes insertion fail often; each failure rehashes, losing nothing."""
    rng = np.random.default_rng(11)
    idx = _CuckooIndex(64, max_rounds=6, max_load=0.97)
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
    assert int(np.unpackbits(idx.occ).sum()) == np.count_nonzero(idx.keys != _EMPTY)


def test_in_batch_duplicates() -> None:
    t = EmbeddingTable(DIM)
    rows = t.observe([5, 5, 6, 5, 6], now=0.0)
    assert rows[0] == rows[1] == rows[3] and rows[2] == rows[4] and rows[0] != rows[2]
    assert len(t) == 2 and t.stats.admitted == 2
    vals = _vals(3)
    t.update([5, 6, 5], vals, now=1.0)  # last value wins
    assert np.array_equal(t.embed([5, 6]), vals[[2, 1]])
    # absent keys are skipped by update
    assert t.update([42], _vals(1), now=1.0)[0] == -1 and len(t) == 2


def test_dedupe_matches_numpy_unique() -> None:
    rng = np.random.default_rng(5)
    keys = rng.integers(0, 5000, size=100_000).astype(np.uint64)
    first, inverse = _dedupe(keys)
    assert np.array_equal(np.sort(keys[first]), np.unique(keys))
    assert np.array_equal(keys[first][inverse], keys)


def test_key_normalisation() -> None:
    a, _ = as_keys(np.array([2**64 - 1, 3], dtype=np.uint64))
    b, _ = as_keys([-1, 3])
    c, _ = as_keys(np.array([-1, 3], dtype=np.int32))
    assert np.array_equal(a, b) and np.array_equal(a, c)
    k, strs = as_keys(np.array(["x", "y"]))
    assert strs == ["x", "y"] and np.array_equal(k.view(np.int64), fingerprint(["x", "y"]))
    mixed, raw = as_keys([7, "x", -1])
    assert raw == [None, "x", None]
    assert mixed.view(np.int64).tolist() == [7, int(fingerprint(["x"])[0]), -1]
    with pytest.raises(TypeError):
        as_keys(np.array([1.5]))
    with pytest.raises(TypeError):
        as_keys([1, "x", 2.5])


def test_string_ids_round_trip(tmp_path: Path) -> None:
    t = EmbeddingTable(DIM)
    ids = ["user:1", "user:2", "ünïcode", "user:1"]
    rows = t.observe(ids, now=0.0)
    assert rows[0] == rows[3] and len(set(rows.tolist())) == 3
    fps = fingerprint(ids)
    assert np.array_equal(t.lookup(fps), rows)  # the same row through the int64 fingerprint
    assert t.raw_ids(ids) == ids and t.raw_ids([123]) == [None]
    t.observe([123], now=0.0)
    t.snapshot(tmp_path / "snap")
    frozen = FrozenTable.load(tmp_path / "snap")
    assert np.array_equal(frozen.embed(ids), t.embed(ids))
    assert frozen.raw_ids(fps) == ids and frozen.raw_ids([123]) == [None]


def _populated(n: int = 3000, seed: int = 0) -> tuple[EmbeddingTable, np.ndarray]:
    rng = np.random.default_rng(seed)
    keys = np.unique(rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, size=n, dtype=np.int64))
    t = EmbeddingTable(DIM, ttl=100.0, seed=seed)
    t.observe(keys, now=0.0)
    t.update(keys[::3], _vals(keys[::3].size, seed), now=1.0)
    return t, keys


def test_snapshot_round_trip(tmp_path: Path) -> None:
    t, keys = _populated()
    manifest = t.snapshot(tmp_path / "snap", name="emb-test")
    assert manifest.kind == KIND and manifest.dims == {"dim": DIM, "rows": keys.size}
    assert load_bundle(tmp_path / "snap", kind=KIND).version == manifest.version
    frozen = FrozenTable.load(tmp_path / "snap")
    probe = np.concatenate([keys, np.array([12345, -7], np.int64)])
    assert len(frozen) == len(t) and frozen.version == manifest.version
    assert np.array_equal(frozen.embed(probe), t.embed(probe))
    assert (frozen.lookup(probe[-2:]) == -1).all()
    assert not frozen.embeddings.flags.writeable
    with pytest.raises(FileExistsError):
        t.snapshot(tmp_path / "snap")


def test_delta_round_trip(tmp_path: Path) -> None:
    t, keys = _populated(seed=1)
    t.snapshot(tmp_path / "base")
    frozen = FrozenTable.load(tmp_path / "base")
    # changes: update some rows, admit new keys (int and str), evict stale ones, re-admit one of them
    t.update(keys[:50], _vals(50, 9), now=50.0)
    t.observe(keys[50:100], now=60.0)
    new = np.arange(10**6, 10**6 + 200, dtype=np.int64)
    t.observe(new, now=60.0)
    t.observe(["fresh-string"], now=60.0)
    evicted = t.sweep(now=120.0)  # keys only touched at t<=1 expire
    assert evicted > 0
    t.observe(keys[-1:], now=121.0)  # re-admitted after eviction: travels as an upsert
    manifest = t.export_delta(tmp_path / "d1")
    assert manifest.kind == DELTA_KIND and manifest.config["base_version"] == frozen.version
    assert manifest.dims["evicted"] == evicted - 1
    assert manifest.dims["rows"] < len(t) + 1  # only touched keys travel
    applied = frozen.apply_delta(tmp_path / "d1")
    probe = np.concatenate([keys, new, fingerprint(["fresh-string"])])
    assert len(applied) == len(t)
    assert np.array_equal(applied.embed(probe), t.embed(probe))
    assert applied.raw_ids(["fresh-string"]) == ["fresh-string"]
    assert len(frozen) == keys.size  # the base is unchanged
    # a second delta chains on the first; applying it to the wrong base is refused
    t.update(new[:10], _vals(10, 3), now=130.0)
    t.export_delta(tmp_path / "d2")
    chained = applied.apply_delta(tmp_path / "d2")
    assert np.array_equal(chained.embed(probe), t.embed(probe))
    with pytest.raises(BundleError, match="based on"):
        frozen.apply_delta(tmp_path / "d2")


def test_export_delta_needs_snapshot(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        EmbeddingTable(DIM).export_delta(tmp_path / "d")


@pytest.mark.parametrize("victim", ["rows.safetensors", "keys.parquet"])
def test_corrupted_snapshot_refused(tmp_path: Path, victim: str) -> None:
    t, _ = _populated(500)
    t.snapshot(tmp_path / "snap")
    path = tmp_path / "snap" / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum mismatch"):
        FrozenTable.load(tmp_path / "snap")


def test_wrong_kind_refused(tmp_path: Path) -> None:
    t, _ = _populated(100)
    t.snapshot(tmp_path / "snap")
    t.observe([1, 2], now=5.0)
    t.export_delta(tmp_path / "delta")
    with pytest.raises(BundleError, match="kind"):
        FrozenTable.load(tmp_path / "delta")
    with pytest.raises(BundleError, match="kind"):
        FrozenTable.load(tmp_path / "snap").apply_delta(tmp_path / "snap")


def test_row_initialisation_distribution() -> None:
    t = EmbeddingTable(7, init_std=0.5, seed=2)  # odd width: Box-Muller fills an odd-sized block
    t.observe(np.arange(20_001), now=0.0)
    emb = t.embed(np.arange(20_001))
    assert np.isfinite(emb).all() and abs(float(emb.mean())) < 0.01
    assert abs(float(emb.std()) - 0.5) < 0.01
    assert np.all(emb[:, -1] != 0)  # the tail of the block is written too
    assert EmbeddingTable(4, init_std=0.0).observe([1], now=0.0)[0] == 0


def test_matches_dict_model_under_random_operations() -> None:
    """observe/update/sweep interleaved, checked against a plain-dict model after every step."""
    rng = np.random.default_rng(21)
    space = np.concatenate(
        [rng.integers(-(2**63), 2**63 - 1, size=1500), [int(_EMPTY.view(np.int64)), 0, -1]]
    )
    t = EmbeddingTable(DIM, admit_threshold=2, ttl=5.0, initial_capacity=16, seed=4)
    counts: dict[int, int] = {}
    last_seen: dict[int, float] = {}
    model: dict[int, np.ndarray] = {}  # admitted key -> expected vector (None until first read)
    touched: dict[int, float] = {}
    for step in range(40):
        now = float(step)
        op = step % 4
        batch = rng.choice(space, size=400).astype(np.int64)
        if op in (0, 1):
            t.observe(batch, now=now)
            for k in batch.tolist():
                if k in model:
                    touched[k] = now
                    continue
                counts[k] = counts.get(k, 0) + 1
                last_seen[k] = now
                if counts[k] >= 2:
                    del counts[k], last_seen[k]
                    model[k] = None  # type: ignore[assignment]
                    touched[k] = now
        elif op == 2:
            vals = rng.standard_normal((batch.size, DIM)).astype(np.float32)
            t.update(batch, vals, now=now)
            for k, v in zip(batch.tolist(), vals, strict=True):
                if k in model:
                    model[k] = v
                    touched[k] = now
        else:
            t.sweep(now=now)
            for k in [k for k, ts in touched.items() if ts < now - 5.0]:
                del model[k], touched[k]
            for k in [k for k, ts in last_seen.items() if ts < now - 5.0]:
                del counts[k], last_seen[k]
        keys = np.array(sorted(model), dtype=np.int64)
        assert len(t) == len(model) and t.stats.pending == len(counts)
        rows = t.lookup(keys)
        assert (rows >= 0).all() and np.unique(rows).size == rows.size
        emb = t.embed(keys)
        for k, got in zip(keys.tolist(), emb, strict=True):
            if model[k] is None:
                model[k] = got.copy()
            assert np.array_equal(model[k], got)
        absent = np.setdiff1d(space, keys)
        assert (t.lookup(absent) == -1).all()
