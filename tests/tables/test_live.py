"""Tests for retrec.tables.live: admission, expiry, defaults, duplicates, initialisation, a dict model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retrec.tables import EmbeddingTable
from retrec.tables.cuckoo import EMPTY
from tests.tables.support import DIM, random_rows


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
    t.update([3], random_rows(1), now=9.0)
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


def test_in_batch_duplicates() -> None:
    t = EmbeddingTable(DIM)
    rows = t.observe([5, 5, 6, 5, 6], now=0.0)
    assert rows[0] == rows[1] == rows[3] and rows[2] == rows[4] and rows[0] != rows[2]
    assert len(t) == 2 and t.stats.admitted == 2
    vals = random_rows(3)
    t.update([5, 6, 5], vals, now=1.0)  # last value wins
    assert np.array_equal(t.embed([5, 6]), vals[[2, 1]])
    # absent keys are skipped by update
    assert t.update([42], random_rows(1), now=1.0)[0] == -1 and len(t) == 2


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
        [rng.integers(-(2**63), 2**63 - 1, size=1500), [int(EMPTY.view(np.int64)), 0, -1]]
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


def test_export_delta_needs_snapshot(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        EmbeddingTable(DIM).export_delta(tmp_path / "d")


def test_a_table_continued_from_its_snapshot_exports_deltas_that_chain(tmp_path: Path) -> None:
    """A restarted writer: ``from_frozen`` holds the published entries exactly, changes nothing by itself, and its
    next delta (with the writer's own config) applies to the table it continued from."""
    from retrec.tables import FrozenTable

    t = EmbeddingTable(DIM)
    t.observe(["a", "b", "c"], now=1.0)
    t.snapshot(tmp_path / "snap")
    t.update(["b"], random_rows(1), now=2.0)
    t.export_delta(tmp_path / "d1")
    published = FrozenTable.load(tmp_path / "snap").apply_delta(tmp_path / "d1")
    again = EmbeddingTable.from_frozen(published)
    assert np.array_equal(again.embed(["a", "b", "c"]), published.embed(["a", "b", "c"]))
    assert again.raw_ids(["a", "c"]) == ["a", "c"] and len(again) == 3 and again.stats.admitted == 0
    again.observe(["d"], now=3.0)
    again.update(["a"], random_rows(1, seed=5), now=3.0)
    manifest = again.export_delta(tmp_path / "d2", extra={"seq": 2})
    assert manifest.config["seq"] == 2 and manifest.config["base_version"] == published.version
    final = published.apply_delta(tmp_path / "d2")
    assert np.array_equal(final.embed(["a", "b", "c", "d"]), again.embed(["a", "b", "c", "d"]))
    assert final.raw_ids(["d", "b"]) == ["d", "b"]
