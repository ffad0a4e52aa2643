"""Tests for retrec.tables.frozen: snapshots, string ids and deltas round-trip to the live table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retrec.bundle import BundleError, load_bundle
from retrec.tables import DELTA_KIND, KIND, EmbeddingTable, FrozenTable, fingerprint
from tests.tables.support import DIM, populated, random_rows


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


def test_snapshot_round_trip(tmp_path: Path) -> None:
    t, keys = populated()
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
    t, keys = populated(seed=1)
    t.snapshot(tmp_path / "base")
    frozen = FrozenTable.load(tmp_path / "base")
    # changes: update some rows, admit new keys (int and str), evict stale ones, re-admit one of them
    t.update(keys[:50], random_rows(50, 9), now=50.0)
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
    t.update(new[:10], random_rows(10, 3), now=130.0)
    t.export_delta(tmp_path / "d2")
    chained = applied.apply_delta(tmp_path / "d2")
    assert np.array_equal(chained.embed(probe), t.embed(probe))
    with pytest.raises(BundleError, match="based on"):
        frozen.apply_delta(tmp_path / "d2")
