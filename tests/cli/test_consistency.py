"""One CLI (issue 45, item 5): ``--json`` on every command that reports, one JSON shape for one system or several,
tables never cut when piped, progress lines when not a terminal, the kind given the same way to ``index`` and
``reindex``, and ``retrec ls`` / ``retrec show``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from retrec.cli import app

runner = CliRunner()
RETREC = str(Path(sys.executable).with_name("retrec"))
# what prints JSON whatever is asked, or reports nothing: a server, the demo's walk-through
ALWAYS_JSON = {"events read", "events show", "train online"}
NOT_REPORTS = {"serve", "demo"}


def _leaves(group: Any, prefix: str = "") -> dict[str, Any]:
    ctx = typer.Context(group)
    out: dict[str, Any] = {}
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None
        path = f"{prefix}{name}"
        out.update(_leaves(command, path + " ") if hasattr(command, "list_commands") else {path: command})
    return out


def test_every_command_that_reports_takes_json() -> None:
    leaves = _leaves(typer.main.get_command(app))  # type: ignore[arg-type]
    assert {"eval", "index", "reindex", "ls", "show", "train dense", "data fetch", "compat report"} <= set(leaves)
    missing = [name for name, command in leaves.items() if name not in ALWAYS_JSON | NOT_REPORTS
               and not any("--json" in p.opts and getattr(p, "is_flag", False) for p in command.params)]
    assert missing == []


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``retrec ARGS`` with stdout and stderr piped (not a terminal), $COLUMNS unset."""
    clean = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    return subprocess.run([RETREC, *args], capture_output=True, text=True, env={**clean, **(env or {})},
                          timeout=300)


def test_piped_tables_keep_long_names_and_eval_shows_progress(tiny_data: Path, tmp_path: Path) -> None:
    long = tmp_path / ("an-index-version-whose-name-is-longer-than-a-terminal-is-wide-" + "x" * 60)
    assert _run("index", "bm25", "--data", str(tiny_data), "--out", str(long)).returncode == 0
    done = _run("eval", "--data", str(tiny_data), "--index", str(long), "--retriever", "bm25")
    assert done.returncode == 0, done.stderr
    assert long.name in done.stdout and "[test]" in done.stdout  # whole, and a bracket is text, not markup
    assert f"search {long.name}: 30/30 queries" in done.stderr  # progress lines in a log, whole, not only on a
    # terminal
    as_json = _run("eval", "--data", str(tiny_data), "--index", str(long), "--retriever", "bm25", "--json")
    assert len(json.loads(as_json.stdout)["systems"]) == 2  # stdout stays one JSON object ...
    assert f"search {long.name}: 30/30 queries" in as_json.stderr  # ... and the log still shows the progress
    listed = _run("ls", str(tmp_path))
    assert listed.returncode == 0 and str(long) in listed.stdout


def test_index_train_data_and_show_report_one_json_object(tiny_data: Path, tmp_path: Path) -> None:
    index = json.loads(_run("index", "bm25", "--data", str(tiny_data), "--out", str(tmp_path / "b"), "--json")
                       .stdout)
    assert index["kind"] == "index/bm25" and index["path"] == str(tmp_path / "b") and index["bytes"] > 0
    trained = runner.invoke(app, ["train", "markov", "--data", str(tiny_data), "--out", str(tmp_path / "m"),
                                  "--json"])
    assert trained.exit_code == 0, trained.output
    assert json.loads(trained.stdout.strip().splitlines()[-1])["kind"] == "model/markov"
    data = json.loads(_run("data", "default", str(tmp_path / "d"), "--json").stdout)
    assert data == {"path": str(tmp_path / "d")}
    shown = json.loads(_run("show", str(tmp_path / "b"), "--json").stdout)
    assert shown["checksums"] == "verified" and shown["config"]["k1"] == 0.9
    listed = json.loads(_run("ls", str(tmp_path), "--json").stdout)
    assert {Path(b["path"]).name for b in listed["bundles"]} == {"b", "m"}


def test_show_names_a_changed_file_and_ls_skips_what_it_cannot_read(tiny_data: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "b"
    assert runner.invoke(app, ["index", "bm25", "--data", str(tiny_data), "--out", str(bundle)]).exit_code == 0
    (bundle / "doc_ids.json").write_text("[]")
    shown = runner.invoke(app, ["show", str(bundle)])
    assert shown.exit_code == 2 and "checksum mismatch for doc_ids.json" in shown.output
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{")
    listed = runner.invoke(app, ["ls", str(tmp_path), "--json"])
    out = json.loads(listed.stdout.strip().splitlines()[-1])
    assert [Path(b["path"]).name for b in out["bundles"]] == ["b"]
    assert [Path(p["path"]).name for p in out["unreadable"]] == ["broken"]
    assert runner.invoke(app, ["ls", str(tmp_path / "nope")]).exit_code == 2


@pytest.mark.parametrize(("args", "message"), [
    (["reindex", "--data", "D", "--out", "O"], "give the index kind"),
    (["reindex", "bm25", "--kind", "dense", "--data", "D", "--out", "O"], "the kind given twice"),
    (["reindex", "bm25", "--data", "D"], "give the corpus and the versions root"),
])
def test_reindex_takes_the_kind_as_index_does(args: list[str], message: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and message in " ".join(result.output.split())


def test_reindex_still_reads_the_old_kind_option_with_a_warning(tiny_data: Path, tmp_path: Path) -> None:
    old = _run("reindex", "--kind", "bm25", "--data", str(tiny_data), "--out", str(tmp_path / "r"), "--local",
               "--json")
    assert old.returncode == 0, old.stderr
    assert "--kind is deprecated" in old.stderr and json.loads(old.stdout.strip().splitlines()[-1])["version"]
