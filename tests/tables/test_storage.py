"""Tests for retrec.tables.storage: altered or mismatched bundles are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from retrec.bundle import BundleError
from retrec.tables import FrozenTable
from tests.tables.support import populated


@pytest.mark.parametrize("victim", ["rows.safetensors", "keys.parquet"])
def test_corrupted_snapshot_refused(tmp_path: Path, victim: str) -> None:
    t, _ = populated(500)
    t.snapshot(tmp_path / "snap")
    path = tmp_path / "snap" / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum mismatch"):
        FrozenTable.load(tmp_path / "snap")


def test_wrong_kind_refused(tmp_path: Path) -> None:
    t, _ = populated(100)
    t.snapshot(tmp_path / "snap")
    t.observe([1, 2], now=5.0)
    t.export_delta(tmp_path / "delta")
    with pytest.raises(BundleError, match="kind"):
        FrozenTable.load(tmp_path / "delta")
    with pytest.raises(BundleError, match="kind"):
        FrozenTable.load(tmp_path / "snap").apply_delta(tmp_path / "snap")
