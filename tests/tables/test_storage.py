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


_KILLED_SNAPSHOT = """
import os, sys
from pathlib import Path
import retrec.bundle as b
import retrec.tables.storage as storage
from tests.tables.support import populated

fresh, target, kill_at = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
table, _ = populated(400, seed=1)  # the new version's content (the old one is seed 0)
events = [0]

def counted(fn):
    def wrapper(*args, **kwargs):
        for _ in range(2):
            events[0] += 1
            if events[0] == kill_at:
                os._exit(17)
            if _ == 0:
                out = fn(*args, **kwargs)
        return out
    return wrapper

os.fsync, os.rename, os.replace = counted(os.fsync), counted(os.rename), counted(os.replace)
b._exchange, b.shutil.rmtree = counted(b._exchange), counted(b.shutil.rmtree)
storage.save_file, storage.pq.write_table = counted(storage.save_file), counted(storage.pq.write_table)
table.snapshot(fresh, name="new")                 # a first version at a new path
table.snapshot(target, name="new", replace=True)  # a new version over the previous one
print(events[0])
"""


def test_a_snapshot_writer_killed_at_random_points_leaves_a_loadable_version(tmp_path: Path) -> None:
    """Kill the writer at random points of two snapshots (a new path; over the previous version): the previous
    version stays loadable, a new path holds nothing or the whole new version, and no partial version loads."""
    import subprocess
    import sys

    import numpy as np

    from retrec.bundle import load_bundle

    def run(fresh: Path, target: Path, kill_at: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", _KILLED_SNAPSHOT, str(fresh), str(target), str(kill_at)],
                              capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])

    old_table, old_keys = populated(300, seed=0)
    new_table, new_keys = populated(400, seed=1)
    expected = {"old": (old_keys, old_table), "new": (new_keys, new_table)}

    def check(path: Path, allowed: tuple[str, ...]) -> str:
        name = load_bundle(path).name  # every checksum verified
        assert name in allowed
        frozen = FrozenTable.load(path)
        keys, table = expected[name]
        np.testing.assert_array_equal(frozen.embed(keys), table.embed(keys))
        return name

    probe = tmp_path / "probe"
    old_table.snapshot(probe / "target", name="old")
    done = run(probe / "fresh", probe / "target", 0)
    assert done.returncode == 0, done.stderr
    total = int(done.stdout)
    assert total > 20 and check(probe / "target", ("new",)) == "new"
    points = sorted({1, total, *np.random.default_rng(12).choice(np.arange(2, total), min(22, total - 2),
                                                                 replace=False).tolist()})
    seen: dict[str, set[str]] = {"fresh": set(), "target": set()}
    for kill_at in points:
        root = tmp_path / f"k{kill_at}"
        old_table.snapshot(root / "target", name="old")
        assert run(root / "fresh", root / "target", kill_at).returncode == 17
        if (root / "fresh").exists() and any((root / "fresh").iterdir()):
            seen["fresh"].add(check(root / "fresh", ("new",)))
        else:
            seen["fresh"].add("none")
        seen["target"].add(check(root / "target", ("old", "new")))
        old_table.snapshot(root / "target", name="old", replace=True)  # the next writer is not blocked by leftovers
        assert check(root / "target", ("old",)) == "old"
    assert seen == {"fresh": {"none", "new"}, "target": {"old", "new"}}


def test_snapshot_files_are_fsynced_before_the_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A power loss after publishing must not leave a renamed folder of unwritten files: every file and the
    folder are fsynced before the version is renamed into place."""
    import os

    events: list[str] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        events.append("fsync " + os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def rename(src: object, dst: object) -> None:
        events.append("rename " + os.path.basename(str(dst)))
        real_rename(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(Path, "rename", lambda self, dst: rename(self, dst) or Path(dst))
    t, _ = populated(100)
    t.snapshot(tmp_path / "snap")
    published = events.index("rename snap")
    for name in ("keys.parquet", "rows.safetensors", "manifest.json"):
        assert f"fsync {name}" in events[:published], events
    assert FrozenTable.load(tmp_path / "snap") is not None
