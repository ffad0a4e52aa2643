"""Peak memory of ``retrec train dense`` against the number of judgements (issue 13, acceptance 4).

    python benchmarks/dense_memory.py --out runs/dense-memory [--judgements 25000 50000 100000] \\
        [--steps 4] [--json runs/dense-memory/results.json] [--set keep_freed_memory=false]

Each size is a synthetic BEIR folder built here, seeded: ``--docs`` documents of 200 pseudo-words drawn from a
Zipf-distributed vocabulary (over 256 word-piece tokens each: long, like biomedical abstracts), training
queries of 8 words, each with ``--per-query`` judged documents (grades 1 and 2, a tenth graded 0) — the shape of a
collection with many graded judgements per query. There is no dev split (the trainer holds out its own).

Every size trains in a child process with the command's defaults except ``--max-steps`` (mining, teacher,
topic clusters, dev evaluation at the start and the end, ONNX export and int8 quantisation all run); the child
samples its own RSS every 0.1 s and names the phase (the last log line) it was in, so the report says what
holds the peak. Peak RSS is the child's ``ru_maxrss``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

SYLLABLES = ["ba", "ce", "di", "fo", "gu", "ka", "le", "mi", "no", "pu", "ra", "se", "ti", "vo", "zu", "bra", "sto"]


def build(root: Path, judgements: int, docs: int, per_query: int, seed: int = 0) -> Path:
    """A BEIR folder (corpus.jsonl, queries.jsonl, qrels/train.tsv) with ``judgements`` train judgements."""
    if (root / "qrels" / "train.tsv").is_file():
        return root
    rng = np.random.default_rng(seed)
    vocab = sorted({"".join(rng.choice(SYLLABLES, size=rng.integers(2, 4))) for _ in range(30000)})
    zipf = 1.0 / np.arange(1, len(vocab) + 1)
    zipf /= zipf.sum()
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    doc_rng = np.random.default_rng(1)  # the corpus is the same at every size
    with (root / "corpus.jsonl").open("w") as f:
        for i in range(docs):
            words = doc_rng.choice(len(vocab), size=200, p=zipf)
            f.write(json.dumps({"_id": f"d{i}", "title": "", "text": " ".join(vocab[w] for w in words)}) + "\n")
    n_queries = judgements // per_query
    with (root / "queries.jsonl").open("w") as fq, (root / "qrels" / "train.tsv").open("w") as fr:
        fr.write("query-id\tcorpus-id\tscore\n")
        for q in range(n_queries):
            fq.write(json.dumps({"_id": f"q{q}", "text": " ".join(vocab[w] for w in rng.choice(len(vocab), 8, p=zipf))})
                     + "\n")
            for d in rng.choice(docs, size=per_query, replace=False):
                grade = 0 if rng.random() < 0.1 else int(rng.integers(1, 3))
                fr.write(f"q{q}\td{d}\t{grade}\n")
    return root


class _Phase(logging.Handler):
    """Remembers the last log message: the phase the sampler attributes memory to."""

    def __init__(self) -> None:
        super().__init__()
        self.phase = "start"

    def emit(self, record: logging.LogRecord) -> None:
        self.phase = record.getMessage()[:80]


def child(data: Path, out: Path, steps: int, report: Path, overrides: dict[str, Any]) -> None:
    """Train in this process while a thread samples RSS; write the samples' peak per phase to ``report``."""
    from retrec.pipelines.train.text.dense import DenseTrainConfig, train_dense

    handler = _Phase()
    logging.getLogger("retrec").addHandler(handler)
    logging.getLogger("retrec").setLevel(logging.INFO)
    logging.getLogger("retrec.train").setLevel(logging.DEBUG)  # "dense: step N": the peak of each step
    peaks: dict[str, float] = {}
    done, page = threading.Event(), os.sysconf("SC_PAGE_SIZE")

    def sample() -> None:
        while not done.is_set():
            rss = int(Path("/proc/self/statm").read_text().split()[1]) * page / 2**30
            peaks[handler.phase] = max(peaks.get(handler.phase, 0.0), rss)
            time.sleep(0.1)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    started = time.perf_counter()
    train_dense(data, out, DenseTrainConfig(max_steps=steps, max_minutes=None, **overrides), progress=False)
    done.set()
    thread.join()
    report.write_text(json.dumps({"seconds": round(time.perf_counter() - started, 1),
                                  "phases_gib": {k: round(v, 3) for k, v in peaks.items()}}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/dense-memory"))
    parser.add_argument("--judgements", type=int, nargs="+", default=[25000, 50000, 100000])
    parser.add_argument("--docs", type=int, default=8000)
    parser.add_argument("--per-query", type=int, default=40)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--set", nargs="*", default=[], metavar="OPTION=JSON",
                        help="a DenseTrainConfig field other than its default, e.g. keep_freed_memory=false")
    parser.add_argument("--child", nargs=3, metavar=("DATA", "OUT", "REPORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    overrides = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    if args.child:
        child(Path(args.child[0]), Path(args.child[1]), args.steps, Path(args.child[2]), overrides)
        return
    rows = []
    for n in args.judgements:
        data = build(args.out / f"data-{n}", n, args.docs, args.per_query)
        report = args.out / f"memory-{n}.json"
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        started = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--set", *args.set, "--child", str(data),
                        str(args.out / f"model-{n}"), str(report)], check=True)
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB; the largest child so far
        if peak <= before:
            print(f"note: {n} judgements peaked below an earlier size; ru_maxrss shows the earlier peak")
        child_report = json.loads(report.read_text())
        phases = child_report["phases_gib"]
        top = max(phases, key=phases.get)
        row: dict[str, Any] = {"judgements": n, "queries": n // args.per_query, "docs": args.docs,
                               "peak_rss_gib": round(peak / 2**20, 3), "peak_phase": top,
                               "seconds": round(time.perf_counter() - started, 1), "phases_gib": phases}
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.node(),
              "cpus": os.cpu_count(), "steps": args.steps, "overrides": overrides, "rows": rows}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
