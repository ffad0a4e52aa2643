"""Figures of record: benchmarks/RESULTS.md's table equals benchmarks/records.json, the quick records re-measure
within tolerance, a changed record fails the check, and no `--help` text carries a benchmark figure.

    .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_records.py
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import shared_dataset

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load_checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_records", BENCHMARKS / "check_records.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("check_records", module)  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


checker = _load_checker()
RECORDS, CHECKS = checker.load_records()


def test_results_md_starts_with_the_table_of_records() -> None:
    text = checker.RESULTS_FILE.read_text(encoding="utf-8")
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert headings[0] == checker.TABLE_HEADING, "RESULTS.md must start with the figures of record"
    rows = checker.parse_table(text)
    expected = checker.parse_table(f"{checker.TABLE_HEADING}\n\n{checker.render_table(RECORDS)}\n")
    assert [r["id"] for r in rows] == [r["id"] for r in expected], \
        "ids differ: regenerate the table with `python benchmarks/check_records.py --table`"
    for row, want in zip(rows, expected):
        for column in checker.TABLE_COLUMNS:
            assert row[column] == want[column], f"{row['id']}: {column} {row[column]!r}, records.json {want[column]!r}"
        assert float(row["value"].strip("*").replace(",", "")) == pytest.approx(
            next(r["value"] for r in RECORDS if r["id"] == row["id"]), abs=1e-12)


def test_records_hold_the_known_anchors_and_every_family() -> None:
    by_id = {r["id"]: r for r in RECORDS}
    assert by_id["bm25-scifact"]["value"] == 0.6762 and by_id["bm25-scifact"]["quick"]
    assert by_id["dense-zero-shot-scifact"]["value"] == 0.6451
    families = ("bm25", "dense-zero-shot", "dense-tasb", "splade-siamese", "splade-inference-free", "maxsim",
                "muvera", "rerank", "hybrid", "bert4rec", "sasrec", "onerec", "markov", "markov-decay", "cooc",
                "fusion", "serving", "reindex")
    for family in families:
        assert any(i.startswith(family) for i in by_id), f"no record for {family}"
    for record in [*RECORDS, *CHECKS]:
        assert record["tolerance"] >= 0 and isinstance(record["quick"], bool)
        assert record["quick"] <= ("measure" in record), f"{record['id']}: quick without a way to measure it"
        if "date" in record:
            assert re.fullmatch(r"\d{4}-\d\d-\d\d", record["date"]), record["id"]


def test_a_changed_record_fails_the_comparison() -> None:
    bm25 = next(r for r in RECORDS if r["id"] == "bm25-scifact")
    assert checker.compare(bm25, 0.676188).status == "pass"  # what the library measures, to 4 decimals
    assert checker.compare({**bm25, "value": 0.6862}, 0.676188).status == "fail"
    assert checker.compare({**bm25, "value": 0.6763}, 0.676188).status == "fail"  # 4 decimals: no slack
    for record in [*RECORDS, *CHECKS]:
        assert checker.compare(record, record["value"]).status == "pass"
        assert checker.compare(record, record["value"] + 2 * record["tolerance"] + 1e-6).status == "fail"


def test_a_changed_record_fails_the_checker(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shared_dataset("ml-100k")
    raw = json.loads(checker.RECORDS_FILE.read_text(encoding="utf-8"))
    for record in raw["records"]:
        if record["id"] == "markov-ml100k":
            record["value"] = 0.0892  # recorded 0.0792
    doctored = tmp_path / "records.json"
    doctored.write_text(json.dumps(raw), encoding="utf-8")
    assert checker.main(["--records", str(doctored), "--only", "markov-ml100k", "--only", "cooc-ml100k"]) == 1
    out = capsys.readouterr()
    assert re.search(r"markov-ml100k\s+FAIL\s+0\.0892\s+0\.0792", out.out), out.out
    assert re.search(r"cooc-ml100k\s+pass", out.out) and "FAILED: markov-ml100k" in out.err


def test_absent_data_is_skipped_with_the_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert checker.main(["--quick", "--data-root", str(tmp_path), "--only", "bm25-scifact"]) == 0
    assert f"dataset 'scifact' not found at {tmp_path / 'scifact'}" in capsys.readouterr().out


@pytest.mark.shared_data
@pytest.mark.slow
def test_quick_records_hold(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shared_dataset("scifact")  # skips with the reason when the real data is absent
    code = checker.main(["--quick", "--json", str(tmp_path / "outcomes.json")])
    out = capsys.readouterr().out
    assert code == 0, out
    outcomes = {o["id"]: o for o in json.loads((tmp_path / "outcomes.json").read_text(encoding="utf-8"))}
    assert set(outcomes) == {r["id"] for r in [*RECORDS, *CHECKS] if r["quick"]}
    assert outcomes["bm25-scifact"]["status"] == "pass" and round(outcomes["bm25-scifact"]["measured"], 4) == 0.6762
    assert outcomes["minilm-onnx-parity"]["status"] == "pass"


# --- no benchmark figures in --help ---------------------------------------------------------------------------

METRIC = r"(?:n?DCG|NDCG|HR|RR|MRR|MAP|AP|R|P|Recall)@\d+|\bMRR\b|\bMAP\b"
FIGURE = r"[+-]?\d+(?:\.\d+)?%|\b\d\.\d{3,}\b"  # a percentage, or a figure with 3+ decimals (0.7541, 0.0204)
DATASETS = r"\b(?:SciFact|Beauty|MovieLens(?:-100k)?|ml-100k|MS MARCO|BEIR)\b"
CLAUSE = r"[^\[\]()|;]{0,50}?"  # within one clause: never across "[default: ...]", brackets or "|" choices
FIGURE_PATTERNS = {
    "a metric followed by a number": re.compile(rf"(?:{METRIC}){CLAUSE}(?:{FIGURE}|\b\d\.\d{{2}}\b)"),
    "a dataset followed by a measured figure": re.compile(rf"{DATASETS}{CLAUSE}(?:{FIGURE})"),
    "a figure next to 'measured'": re.compile(rf"measured{CLAUSE}\b\d\.\d{{2,}}|\b\d\.\d{{2,}}{CLAUSE}measured"),
    "a measured duration or size": re.compile(r"\b(?:took|takes)\s+~?\d|\b\d+(?:\.\d+)?\s?(?:GiB|GB|ms)\s+peak"),
}


def benchmark_figures(text: str) -> list[str]:
    """The benchmark-figure patterns ``text`` matches, with the matched words.

    >>> benchmark_figures("dev nDCG@10: 10 epochs 0.7541")
    ['a metric followed by a number: nDCG@10: 10 epochs 0.7541']
    >>> benchmark_figures("held out for dev nDCG@10 [default: 0.2]")
    []
    """
    found = []
    for name, pattern in FIGURE_PATTERNS.items():
        found += [f"{name}: {m.group(0)}" for m in pattern.finditer(text)]
    return found


@pytest.mark.parametrize("text", [
    "SciFact dev nDCG@10: 10 epochs 0.7541, 6: 0.7516",
    "Beauty, with --precision auto, side by side: test NDCG@10 0.0204 against 0.0200 without",
    "Beauty test NDCG@10 +11% at 20 over 10",
    "SciFact dev 0.735 -> 0.717; at 0.2 dev 0.763",
    "dev nDCG@10 after 146 steps: 0.728 at 1e-4",
    "(10 epochs of SciFact took 34 min on 2 cores)",
    "3.2 GiB peak for 64 documents",
    "measured on Beauty: 0.0337",
    "MRR 0.0295 on the test item",
])
def test_figure_patterns_catch_benchmark_figures(text: str) -> None:
    assert benchmark_figures(text), text


@pytest.mark.parametrize("text", [
    "at most this share of the training queries is held out for dev nDCG@10 when there is no dev split [default: 0.2]",
    "with --eval-data: refuse to move current when nDCG@10 falls more than this [default: 0.01]",
    "Evaluate retrievers, index versions, hybrids and/or TREC run files: nDCG@10, RR@10, R@100, R@1000, AP.",
    "Leave-one-out evaluation of recommenders: HR@k, NDCG@k, MRR.",
    "GPUs per Ray actor (0.25: four actors share a GPU; ONNX Runtime's CUDA provider) [default: 0.0]",
    "(Beauty: 31 epochs; MovieLens-100k: 200 epochs first) [default: 10000]",
    "codes^levels >= 16 x items, 4..1024; Beauty, 2 levels: 1024)",
    "peak learning rate (AdamW) [default: 3e-05]",
])
def test_figure_patterns_leave_defaults_alone(text: str) -> None:
    assert not benchmark_figures(text), benchmark_figures(text)


def _commands(command: Any, path: list[str]) -> Iterator[list[str]]:
    yield path
    if hasattr(command, "list_commands"):  # a group (typer vendors its own click: no isinstance check)
        for name in command.list_commands(None):
            yield from _commands(command.get_command(None, name), [*path, name])


def test_help_texts_carry_no_benchmark_figures() -> None:
    import typer
    from typer.testing import CliRunner

    from retrec.cli import app

    runner, seen, offenders = CliRunner(), 0, {}
    for path in _commands(typer.main.get_command(app), []):
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, (path, result.output)
        # undo rich's box and wrapping: a help text wrapped over lines reads as one line again
        text = " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.output).split())
        seen += 1
        if found := benchmark_figures(text):
            offenders[" ".join(["retrec", *path, "--help"])] = found
    assert seen > 15, f"walked only {seen} commands"
    assert not offenders, "benchmark figures in help texts (point to benchmarks/RESULTS.md instead):\n" + \
        "\n".join(f"{cmd}: {found}" for cmd, found in offenders.items())
