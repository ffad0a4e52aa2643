"""Figures of record: re-measure the cheap ones, list (or run) the commands of the others.

    python benchmarks/check_records.py --quick        # the records flagged quick (about a minute on 2 cores)
    python benchmarks/check_records.py                # every record the library re-measures; the others' commands
    python benchmarks/check_records.py --run          # ... and run those commands too (hours: they train models)
    python benchmarks/check_records.py --only bm25-scifact --only minilm-onnx-parity
    python benchmarks/check_records.py --table        # the table at the top of RESULTS.md, from records.json

The records live in benchmarks/records.json; the first table of benchmarks/RESULTS.md is rendered from them and
tests/test_records.py keeps the two equal. A record passes when the measured value is within its tolerance of the
recorded one (BM25's 5e-05: equal to 4 decimals). Records whose dataset is not under --data-root are skipped with
the reason. Exit status 0 when nothing failed (skips are not failures), 1 otherwise, with the table of outcomes.

Example::

    >>> record = {"id": "bm25-scifact", "value": 0.6762, "tolerance": 5e-05}
    >>> compare(record, 0.67619).status, compare(record, 0.6862).status
    ('pass', 'fail')
    >>> format_value({"value": 1148.9, "decimals": 1})
    '1,148.9'
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RECORDS_FILE = Path(__file__).resolve().with_name("records.json")
RESULTS_FILE = Path(__file__).resolve().with_name("RESULTS.md")
REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = REPO.parent / "shared" / "data"  # where tests/conftest.py looks too
CHECK_FIELDS = ("id", "model", "data", "metric", "value", "decimals", "tolerance", "quick", "command")
REQUIRED = (*CHECK_FIELDS, "date", "machine")  # a record is a journal figure: when and where it was measured
TABLE_COLUMNS = ("id", "model", "data", "metric", "value", "command", "date", "machine")
TABLE_HEADING = "## Figures of record"
PARITY_TEXTS = (
    "what causes scurvy", "0-dimensional biomaterials show inductive properties.",
    "Vitamin C deficiency impairs collagen synthesis, which leads to scurvy: bleeding gums, poor wound healing and "
    "fatigue. Supplementation reverses the symptoms within weeks.", "", "a", "COVID-19", "ß-catenin (Wnt) — 5 µM",
    "long " * 400,
)


class DataMissingError(Exception):
    """A record that cannot be measured here (its dataset is absent); the message says why."""


@dataclass
class Outcome:
    """What happened to one record: pass, fail, skip, error, listed (command printed) or ran (compare by hand)."""

    id: str
    status: str
    expected: float | None = None
    measured: float | None = None
    tolerance: float | None = None
    detail: str = ""
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return self.status in ("fail", "error")


def load_records(path: Path = RECORDS_FILE) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The records (the figures of record) and the checks (guards with no journal figure) of a records file.

    >>> records, checks = load_records()
    >>> records[0]["id"], records[0]["value"], checks[0]["id"]
    ('bm25-scifact', 0.6762, 'minilm-onnx-parity')
    """
    raw = json.loads(path.read_text(encoding="utf-8"))
    records, checks = list(raw["records"]), list(raw.get("checks", []))
    seen: set[str] = set()
    for item, required in [*((r, REQUIRED) for r in records), *((c, CHECK_FIELDS) for c in checks)]:
        missing = [k for k in required if k not in item]
        if missing:
            raise ValueError(f"{path}: record {item.get('id', '?')!r} lacks {missing}")
        if item["id"] in seen:
            raise ValueError(f"{path}: record id {item['id']!r} appears twice")
        seen.add(item["id"])
    return records, checks


def compare(record: dict[str, Any], measured: float) -> Outcome:
    """Pass when ``measured`` is within the record's tolerance of its value (a hair of float slack)."""
    expected, tolerance = float(record["value"]), float(record["tolerance"])
    ok = abs(float(measured) - expected) <= tolerance + 1e-12
    return Outcome(record["id"], "pass" if ok else "fail", expected, float(measured), tolerance)


def format_value(record: dict[str, Any]) -> str:
    """The value as the journal writes it: the record's decimals, thousands separated."""
    return f"{float(record['value']):,.{int(record['decimals'])}f}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_table(records: Sequence[dict[str, Any]]) -> str:
    """The markdown table of the records (RESULTS.md's first table)."""
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    for r in records:
        cells = [r["id"], r["model"], r["data"], r["metric"], f"**{format_value(r)}**", f"`{r['command']}`",
                 r["date"], r["machine"]]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def parse_table(markdown: str, heading: str = TABLE_HEADING) -> list[dict[str, str]]:
    """The rows of the first table after ``heading`` in ``markdown``, each a {column: cell text} dict."""
    lines = markdown.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == heading), None)
    if start is None:
        raise ValueError(f"no {heading!r} heading")
    rows: list[list[str]] = []
    for line in lines[start + 1:]:
        if line.startswith("|"):
            cells = re.split(r"(?<!\\)\|", line.strip()[1:-1])
            rows.append([c.strip().replace("\\|", "|") for c in cells])
        elif rows:
            break
    if len(rows) < 3:
        raise ValueError(f"no table under {heading!r}")
    return [dict(zip(rows[0], row)) for row in rows[2:]]


def _dataset(root: Path, name: str) -> Path:
    path = root / name
    if not path.is_dir():
        raise DataMissingError(f"dataset {name!r} not found at {path}")
    return path


_LOADED: dict[tuple[str, str], Any] = {}


def _measure_retrieval(spec: dict[str, Any], root: Path) -> float:
    from retrec.data.beir import load_retrieval_data
    from retrec.pipelines.eval.retrieval import evaluate_retriever
    from retrec.pipelines.eval.retrievers import build_retriever

    path = _dataset(root, spec["dataset"])
    key = ("beir", f"{path}:{spec['split']}")
    if key not in _LOADED:
        _LOADED[key] = load_retrieval_data(path, split=spec["split"])
    data = _LOADED[key]  # as `retrec eval --retriever NAME`: title + text, k = 1000
    retriever = build_retriever(spec["retriever"], data, progress=False)
    return float(evaluate_retriever(retriever, data, k=1000, progress=False).metrics[spec["key"]])


def _measure_recommendation(spec: dict[str, Any], root: Path) -> float:
    from retrec.data.interactions import leave_one_out, load_interactions, user_sequences
    from retrec.pipelines.eval.rec import evaluate_recommender
    from retrec.pipelines.eval.recommenders import build_recommender, vocabulary_of

    path = _dataset(root, spec["dataset"])
    key = ("rec", str(path))
    if key not in _LOADED:
        loo = leave_one_out(user_sequences(load_interactions(path)))
        _LOADED[key] = (loo, vocabulary_of(loo))
    loo, vocab = _LOADED[key]  # as `retrec eval-rec --model NAME`: test item, seen items excluded, seed 0
    protocol = spec.get("protocol", "full")
    score = build_recommender(spec["model"], loo, vocab, target="test", exclude_seen=protocol == "full")
    result = evaluate_recommender(score, loo, vocab, protocol=protocol, target="test", seed=0, exclude_seen=True,
                                  progress=False)
    return float(result.metrics[spec["key"]])


def _measure_onnx_parity(spec: dict[str, Any], root: Path) -> float:
    from retrec.models.text_encoder import TextEncoder, zero_shot_bundle
    from retrec.pipelines.train.text.dense import onnx_max_abs_diff
    from retrec.runtime.tokenizer import load_tokenizer

    encoder = TextEncoder.from_pretrained()  # the packaged all-MiniLM-L6-v2 the zero-shot bundle is exported from
    return onnx_max_abs_diff(encoder, load_tokenizer(), zero_shot_bundle(), list(PARITY_TEXTS), max_length=256)


MEASURES: dict[str, Callable[[dict[str, Any], Path], float]] = {
    "retrieval": _measure_retrieval, "recommendation": _measure_recommendation, "onnx_parity": _measure_onnx_parity,
}


def measure_record(record: dict[str, Any], root: Path = DATA_ROOT) -> Outcome:
    """Re-measure one record through the library and compare it; skip when its data is absent."""
    started = time.perf_counter()
    try:
        spec = record["measure"]
        outcome = compare(record, MEASURES[spec["fn"]](spec, root))
    except DataMissingError as exc:
        outcome = Outcome(record["id"], "skip", float(record["value"]), detail=str(exc))
    except Exception as exc:  # a measurement that breaks is a failure with its reason, not a crash of the report
        outcome = Outcome(record["id"], "error", float(record["value"]), detail=f"{type(exc).__name__}: {exc}")
    outcome.seconds = time.perf_counter() - started
    return outcome


def value_at(output: str, path: Sequence[str]) -> float | None:
    """The number at ``path`` in the last JSON object line of ``output`` that has it, else None.

    >>> value_at('encoding...\\n{"results": {"markov": {"NDCG@10": 0.0323}}}', ["results", "markov", "NDCG@10"])
    0.0323
    """
    for line in reversed(output.splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            node: Any = json.loads(line)
            for key in path:
                node = node[key]
            return float(node)
        except (ValueError, KeyError, TypeError):
            continue
    return None


def _shell(command: str, cache: dict[str, tuple[int, str]]) -> tuple[int, str]:
    """Run ``command`` in the repository root with this interpreter's bin first on PATH (once per command)."""
    if command not in cache:
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        print(f"$ {command}", flush=True)
        done = subprocess.run(["bash", "-c", command], cwd=REPO, env=env, capture_output=True, text=True)
        cache[command] = (done.returncode, done.stdout + done.stderr)
    return cache[command]


def run_record(record: dict[str, Any], cache: dict[str, tuple[int, str]]) -> Outcome:
    """``--run``: the record's training commands, then its command; compared when its JSON output has the value."""
    commands = [*record.get("train", []), record["command"]]
    if any("…" in c or "[--" in c for c in commands):
        return Outcome(record["id"], "listed", float(record["value"]), detail="the command has placeholders: "
                       f"{record['command']}")
    started = time.perf_counter()
    for command in commands:
        code, output = _shell(command, cache)
        if code != 0:
            tail = " ".join(output.strip().splitlines()[-3:])[-300:]
            return Outcome(record["id"], "error", float(record["value"]), detail=f"exit {code}: {shlex.quote(command)}"
                           f" — {tail}", seconds=time.perf_counter() - started)
    measured = value_at(output, record["json_path"]) if record.get("json_path") else None
    if measured is None:
        return Outcome(record["id"], "ran", float(record["value"]), detail="ran; compare its output by hand",
                       seconds=time.perf_counter() - started)
    outcome = compare(record, measured)
    outcome.seconds = time.perf_counter() - started
    return outcome


def report(outcomes: Sequence[Outcome]) -> str:
    """A plain-text table of the outcomes, failures first marked FAIL / ERROR."""
    head = ("record", "status", "recorded", "measured", "delta", "tolerance", "seconds", "detail")
    rows = [head]
    for o in outcomes:
        delta = "" if o.measured is None or o.expected is None else f"{o.measured - o.expected:+.3g}"
        rows.append((o.id, o.status.upper() if o.failed else o.status,
                     "" if o.expected is None else f"{o.expected:g}",
                     "" if o.measured is None else f"{o.measured:.6g}", delta,
                     "" if o.tolerance is None else f"{o.tolerance:g}", f"{o.seconds:.1f}", o.detail))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="only the records flagged quick")
    parser.add_argument("--run", action="store_true", help="also run the commands of records the library cannot "
                        "re-measure (their trainings first)")
    parser.add_argument("--only", action="append", default=[], help="this record id (repeatable)")
    parser.add_argument("--records", type=Path, default=RECORDS_FILE)
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT, help="folder holding scifact/, beauty/, ...")
    parser.add_argument("--table", action="store_true", help="print RESULTS.md's table of records and exit")
    parser.add_argument("--json", type=Path, default=None, help="also write the outcomes here")
    args = parser.parse_args(argv)
    records, checks = load_records(args.records)
    if args.table:
        print(render_table(records))
        return 0
    from retrec.process_env import configure_process

    configure_process()
    chosen = [r for r in [*records, *checks] if not args.only or r["id"] in args.only]
    unknown = set(args.only) - {r["id"] for r in chosen}
    if unknown:
        parser.error(f"unknown record ids: {sorted(unknown)}")
    outcomes, cache = [], {}
    for record in chosen:
        if args.quick and not record["quick"]:
            continue
        if "measure" in record:
            outcomes.append(measure_record(record, args.data_root))
        elif args.run:
            outcomes.append(run_record(record, cache))
        else:
            outcomes.append(Outcome(record["id"], "listed", float(record["value"]), detail=record["command"]))
    print(report(outcomes))
    left = sum(1 for r in chosen if args.quick and not r["quick"])
    if left:
        print(f"\n{left} records are not quick: run without --quick to re-measure or list them.")
    if args.json:
        args.json.write_text(json.dumps([o.__dict__ for o in outcomes], indent=1), encoding="utf-8")
    failed = [o.id for o in outcomes if o.failed]
    if failed:
        print(f"\nFAILED: {', '.join(failed)} (recorded values in {args.records})", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
