"""retrec.index.generic.publish_index: a kind's save is published whole, verified and fsynced, or not at all."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from retrec.bundle import BundleError, load_bundle, write_manifest
from retrec.index.generic import publish_index


class _Index:
    """A kind's index whose ``save`` writes a bundle in place (as plugin kinds may), then maybe misbehaves."""

    def __init__(self, after: str | None = None) -> None:
        self.after = after

    def save(self, directory: str | os.PathLike[str], name: str = "x", metrics: dict[str, Any] | None = None) -> Any:
        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        (root / "docs.json").write_text('["a", "b"]')
        manifest = write_manifest(root, kind="index/toy", name=name)
        if self.after == "corrupt":
            (root / "docs.json").write_text('["a", "c"]')
        elif self.after == "fail":
            raise RuntimeError("disk full")
        return manifest


def test_publish_index_publishes_a_whole_verified_version(tmp_path: Path) -> None:
    out = publish_index(_Index(), tmp_path / "v1", name="toy-v1")
    assert load_bundle(out).name == "toy-v1" and sorted(p.name for p in tmp_path.iterdir()) == ["v1"]
    with pytest.raises(FileExistsError, match="written once"):
        publish_index(_Index(), out, name="again")


@pytest.mark.parametrize("after", ["corrupt", "fail"])
def test_a_bad_or_failed_save_publishes_nothing(tmp_path: Path, after: str) -> None:
    with pytest.raises((BundleError, RuntimeError)):
        publish_index(_Index(after), tmp_path / "v1", name="toy-v1")
    assert list(tmp_path.iterdir()) == []  # no version, no temporary leftovers


def test_published_files_are_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    publish_index(_Index(), tmp_path / "v1", name="toy-v1")
    assert "docs.json" in synced and "manifest.json" in synced
