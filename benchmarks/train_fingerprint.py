"""One tiny training per family, through the CLI, and what it produced: a fingerprint to compare across a refactor.

Each family is trained for a few steps on the embedded synthetic dataset (small), with a fixed seed, via
``retrec train KIND`` (the stable interface: module paths may move, commands do not). The fingerprint of a run is
its manifest's ``metrics`` without timings, plus every ``loss`` the progress log printed. Two fingerprints of the
same code on the same machine are equal; a refactor that claims to change nothing must leave them equal too.

Example::

    python benchmarks/train_fingerprint.py --out runs/fp-before.json
    # ... move code around ...
    python benchmarks/train_fingerprint.py --out runs/fp-after.json --compare runs/fp-before.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TEXT = ["--batch-size", "4", "--epochs", "1", "--max-query-length", "16", "--max-doc-length", "32", "--no-int8",
        "--dev-max-queries", "4", "--dev-candidates", "5", "--queries-per-cluster", "8", "--max-steps", "3",
        "--lr", "1e-3"]
SEQ = ["--max-len", "12", "--hidden", "16", "--layers", "1", "--heads", "2", "--batch-size", "64", "--epochs", "2",
       "--patience", "2", "--eval-users", "100", "--device", "cpu"]
RUNS: dict[str, list[str]] = {
    "dense": ["dense", *TEXT],
    "sparse": ["sparse", *TEXT, "--calibration-documents", "20", "--start-terms", "50", "--flops-warmup-steps", "2"],
    "multivector": ["multivector", *TEXT, "--dim", "24", "--pca-documents", "30"],
    "reranker": ["reranker", "--batch-size", "2", "--group-size", "3", "--epochs", "1", "--max-length", "32",
                 "--dev-max-queries", "4", "--dev-candidates", "4", "--max-steps", "3", "--no-int8", "--lr", "1e-3"],
    "bert4rec": ["bert4rec", *SEQ, "--mask-prob", "0.4"],
    "sasrec": ["sasrec", *SEQ, "--negatives", "64", "--warmup-steps", "0"],  # fusion's component too
    "onerec": ["onerec", "--max-len", "10", "--levels", "2", "--hidden", "16", "--layers", "1", "--heads", "2",
               "--experts", "3", "--top-k", "2", "--session", "3", "--batch-size", "64", "--epochs", "2",
               "--patience", "2", "--eval-users", "40", "--beam", "5", "--list-beam", "12", "--dpo-rounds", "1",
               "--dpo-session", "2", "--dpo-users", "40", "--dpo-steps", "3", "--reward-steps", "20",
               "--dpo-lr", "1e-3", "--device", "cpu"],
    "markov": ["markov"],
    "cooc": ["cooc"],
    "fusion": ["fusion", "--component", "{work}/sasrec", "--component", "markov", "--grid-step", "0.25"],
}
LOSS = re.compile(r"\bloss (\d+\.\d+)")
TIMING = re.compile(r"seconds|minutes|_time|elapsed|onnx_max_abs_diff")


def fingerprint(manifest: dict, log: str) -> dict:
    metrics = {k: v for k, v in manifest.get("metrics", {}).items() if not TIMING.search(k)}
    return {"metrics": metrics, "losses": LOSS.findall(log)}


def same(before: dict | None, after: dict) -> bool:
    """Equal losses and equal values of every metric the earlier run had (metrics added since are not changes)."""
    if before is None or before["losses"] != after["losses"]:
        return False
    return all(after["metrics"].get(k, "missing") == v for k, v in before["metrics"].items())


def run_all(work: Path, only: list[str]) -> dict:
    from retrec.data.synthetic import SyntheticConfig, write_default_dataset

    data = write_default_dataset(work / "data", SyntheticConfig(docs=300, queries_train=40, queries_test=30,
                                                                users=150, items=400, genres=10))
    retrec = str(Path(sys.executable).with_name("retrec"))
    # one thread: a parallel reduction's order (and so the 4th decimal of a loss) may vary with the load
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200", "RETREC_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    out: dict = {}
    for name, args in RUNS.items():
        if only and name not in only:
            continue
        started = time.monotonic()
        bundle = work / name
        args = [a.format(work=work) for a in args]
        proc = subprocess.run([retrec, "train", *args, "--data", str(data), "--out", str(bundle)], env=env,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{name}: retrec train failed (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        manifest = json.loads((bundle / "manifest.json").read_text())
        out[name] = fingerprint(manifest, proc.stdout + proc.stderr)
        print(f"{name}: {time.monotonic() - started:.0f} s, {len(out[name]['losses'])} losses", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="JSON file to write the fingerprints to")
    ap.add_argument("--compare", type=Path, help="an earlier fingerprint file: exit 1 when any family differs")
    ap.add_argument("--only", nargs="*", default=[], help="families to run (default: all)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fp-") as tmp:
        prints = run_all(Path(tmp), args.only)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(prints, indent=1, sort_keys=True) + "\n")
    if args.compare:
        before = json.loads(args.compare.read_text())
        differ = [name for name in prints if not same(before.get(name), prints[name])]
        for name in prints:
            added = sorted(set(prints[name]["metrics"]) - set((before.get(name) or {}).get("metrics", {})))
            print(f"{name}: {'DIFFERS' if name in differ else 'same'}" + (f" (new metrics: {added})" if added else ""))
        raise SystemExit(1 if differ else 0)


if __name__ == "__main__":
    main()
