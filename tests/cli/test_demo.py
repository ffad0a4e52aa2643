"""retrec.cli.demo: a second run starts from a clean work folder; a folder the demo did not write is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from retrec.cli.demo import MARKER, _fresh_workdir


def test_a_second_demo_run_clears_what_the_first_wrote(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    _fresh_workdir(work)
    (work / "bundles" / "bm25").mkdir(parents=True)
    (work / "bundles" / "bm25" / "manifest.json").write_text("{}")
    (work / "notes.txt").write_text("the user's")
    _fresh_workdir(work)
    assert sorted(p.name for p in work.iterdir()) == [MARKER, "notes.txt"]  # only what the demo writes goes


def test_a_folder_the_demo_did_not_write_is_refused_and_kept(tmp_path: Path) -> None:
    work = tmp_path / "mine"
    work.mkdir()
    (work / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not written by retrec demo"):
        _fresh_workdir(work)
    assert (work / "notes.txt").read_text() == "keep me"
