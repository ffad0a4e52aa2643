"""`retrec reindex` on SciFact (issue 14): equality with `retrec index`, throughput against a single-process ONNX
encoding loop (same run, same threads in total), scaling with actors, and an incremental reindex after editing 1%
and deleting 1% of the documents — every arm a whole command in its own process, one after the other.

    python benchmarks/reindex_scifact.py --data ../shared/data/scifact --model runs/dense-tasb3/default \\
        --out runs/reindex-bench [--arms loop ray-2x1 ray-1x2 local] [--json runs/reindex-bench/results.json]

Arms (wall time of the whole process: start, imports, model load, encoding, index, publish):
- ``loop``     ``OnnxEncoder(model, threads=2).encode_documents(texts)`` — the single-process peer;
- ``local``    ``retrec reindex --full --local --threads 2`` (this process, no Ray);
- ``ray-2x1``  ``retrec reindex --full --actors 2 --threads 1`` (the default on 2 cores), a local Ray started by
               the command (its start-up counted);
- ``ray-1x2``  ``retrec reindex --full --actors 1 --threads 2``;
- ``ray-1x1``  ``retrec reindex --full --actors 1 --threads 1`` (one actor: the scaling with actors).
Then: ``retrec index dense`` (fresh encoding cache) and ``retrec index bm25`` / ``retrec reindex bm25``
compared with the reindexed versions (ids; vectors within 1e-5; bm25 files identical), and an incremental
``retrec reindex`` over the edited corpus compared with a full rebuild of it. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RETREC = [str(Path(sys.executable).with_name("retrec"))]
LOOP = """
import sys, time
t0 = time.perf_counter()
from retrec.data.beir import corpus_texts
from retrec.data.corpus import read_corpus
from retrec.runtime.onnx_encoder import OnnxEncoder
ids, texts = corpus_texts(read_corpus(sys.argv[1]))
encoder = OnnxEncoder(sys.argv[2], threads=2)
t1 = time.perf_counter()
encoder.encode_documents(texts)
print(time.perf_counter() - t1, t1 - t0)
"""


def _run(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def _reindex(data: Path, out: Path, *extra: str) -> tuple[float, dict[str, Any]]:
    seconds, stdout = _run([*RETREC, "reindex", "--data", str(data), "--out", str(out), "--json", *extra])
    return seconds, json.loads(stdout.strip().splitlines()[-1])


def _vectors(version: Path) -> dict[str, Any]:
    from retrec.index.faiss_index import FaissIndex

    ids, vectors = FaissIndex.load(version, use_gpu=False).encoded_documents()  # type: ignore[misc]
    return dict(zip(ids, vectors))


def _same_vectors(a: Path, b: Path) -> dict[str, Any]:
    import numpy as np

    va, vb = _vectors(a), _vectors(b)
    same_ids = sorted(va) == sorted(vb)
    diff = max(float(np.abs(va[d] - vb[d]).max()) for d in va) if same_ids else float("nan")
    return {"same_ids": same_ids, "max_abs_diff": diff, "equal": same_ids and diff <= 1e-5}


def _same_files(a: Path, b: Path) -> bool:
    ma, mb = (json.loads((p / "manifest.json").read_text())["files"] for p in (a, b))
    return {k: v["sha256"] for k, v in ma.items()} == {k: v["sha256"] for k, v in mb.items()}


def _edited_corpus(src: Path, dst: Path, seed: int = 0) -> dict[str, int]:
    """SciFact's corpus with 1% of documents edited and 1% deleted (queries and judgements unchanged)."""
    lines = (src / "corpus.jsonl").read_text().splitlines()
    rng = random.Random(seed)
    picked = rng.sample(range(len(lines)), 2 * max(1, len(lines) // 100))
    edit, delete = set(picked[: len(picked) // 2]), set(picked[len(picked) // 2:])
    out = []
    for i, line in enumerate(lines):
        if i in delete:
            continue
        if i in edit:
            doc = json.loads(line)
            doc["text"] = doc["text"] + " (revised)"
            line = json.dumps(doc)
        out.append(line)
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "corpus.jsonl").write_text("\n".join(out) + "\n")
    return {"documents": len(out), "edited": len(edit), "deleted": len(delete)}


def _ray_pids() -> set[str]:
    """Processes of a local Ray (GCS, raylet, workers and actors)."""
    found = subprocess.run(["pgrep", "-f", "gcs_server|raylet|ray::|default_worker"], capture_output=True, text=True)
    return set(found.stdout.split())


def _kill_and_resume(data: Path, root: Path, model: str, reference: Path, part_size: int = 64) -> dict[str, Any]:
    """``retrec reindex`` on Ray killed with SIGKILL once half of its parts are recorded, then the same command
    again: parts skipped, files equal to ``reference`` (an uninterrupted run), no version visible before the end,
    no Ray process of the killed run left behind."""
    import signal

    extra = ["--kind", "dense", "--model", model, "--full", "--part-size", str(part_size)]
    cmd = [*RETREC, "reindex", "--data", str(data), "--out", str(root), "--json", *extra]
    parts = -(-sum(1 for _ in (data / "corpus.jsonl").open()) // part_size)
    before = _ray_pids()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    early_versions = 0
    while proc.poll() is None:
        early_versions = max(early_versions, len([p for p in root.glob("[!.]*")]) if root.is_dir() else 0)
        if len(list(root.glob(".reindex/*/parts/*.json"))) >= parts // 2:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    killed_at = time.perf_counter() - start
    finished = len(list(root.glob(".reindex/*/parts/*.json")))
    left_at_kill = len(_ray_pids() - before)
    gone_after = None
    for tick in range(120):  # how long the killed driver's local Ray outlives it
        if not _ray_pids() - before:
            gone_after = tick * 0.5
            break
        time.sleep(0.5)
    seconds, report = _reindex(data, root, *extra)
    return {"returncode": proc.returncode, "killed_after_s": killed_at, "parts": parts, "parts_done_at_kill": finished,
            "versions_visible_before_end": early_versions, "ray_processes_at_kill": left_at_kill,
            "ray_processes_gone_after_s": gone_after,
            "rerun_wall_s": seconds, "parts_skipped": report["encode"]["parts_skipped"],
            "identical_to_uninterrupted": _same_files(Path(report["version"]), reference)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/scifact"))
    ap.add_argument("--model", type=Path, required=True, help="a model/dense bundle")
    ap.add_argument("--out", type=Path, default=Path("runs/reindex-bench"))
    ap.add_argument("--arms", nargs="+", default=["loop", "ray-2x1", "ray-1x2", "local"])
    ap.add_argument("--rounds", type=int, default=1, help="run the arms this many times, interleaved (ABAB)")
    ap.add_argument("--skip-checks", action="store_true", help="throughput arms only")
    ap.add_argument("--kill", action="store_true", help="also: SIGKILL a Ray reindex half-way and re-run it")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model = str(args.model.absolute())
    rows: dict[str, dict[str, Any]] = {}
    flags = {"local": ["--local", "--threads", "2"], "ray-2x1": ["--actors", "2", "--threads", "1"],
             "ray-1x2": ["--actors", "1", "--threads", "2"], "ray-1x1": ["--actors", "1", "--threads", "1"]}
    for arm, label in ((a, a if args.rounds == 1 else f"{a}#{r + 1}") for r in range(args.rounds) for a in args.arms):
        if arm == "loop":
            seconds, stdout = _run([sys.executable, "-c", LOOP, str(args.data), model])
            encode_s, setup_s = map(float, stdout.split())
            rows[label] = {"wall_s": seconds, "encode_s": encode_s, "setup_s": setup_s,
                           "encoding_docs_per_s": sum(1 for _ in (args.data / "corpus.jsonl").open()) / encode_s}
        else:
            seconds, report = _reindex(args.data, args.out / arm, "--kind", "dense", "--model", model, "--full",
                                       *flags[arm])
            rows[label] = {"wall_s": seconds, "encode_s": report["encode"]["seconds"],
                           "startup_s": report["encode"].get("startup_s", 0.0),
                           "encoding_docs_per_s": report["encode"].get("encoding_docs_per_s"),
                           "actors": report["encode"]["actors"], "threads": report["encode"]["threads"],
                           "version": report["version"]}
        print(f"{label}: {rows[label]}", flush=True)
    documents = sum(1 for _ in (args.data / "corpus.jsonl").open())
    loops = [row["wall_s"] for name, row in rows.items() if name.split("#")[0] == "loop"]
    for name, row in rows.items():
        row["docs_per_s"] = documents / row["wall_s"]
        if loops:  # against the loop of the same round (else the mean of the loops)
            peer = rows.get(f"loop#{name.split('#')[1]}" if "#" in name else "loop", {}).get("wall_s")
            row["vs_loop"] = (peer or sum(loops) / len(loops)) / row["wall_s"]
    checks: dict[str, Any] = {}
    reindexed = next((Path(row["version"]) for name, row in rows.items()
                      if name.split("#")[0] in ("ray-2x1", "ray-1x2", "local")), None)
    if not args.skip_checks and reindexed is not None:
        index_dir = args.out / "index-dense"
        seconds, _ = _run([*RETREC, "index", "dense", "--data", str(args.data), "--model", model, "--out",
                           str(index_dir)], env={"RETREC_CACHE": str(args.out / "fresh-cache")})
        checks["index_dense_wall_s"] = seconds
        checks["dense_equals_index"] = _same_vectors(index_dir, reindexed)
        _run([*RETREC, "index", "bm25", "--data", str(args.data), "--out", str(args.out / "index-bm25")])
        _, bm25 = _reindex(args.data, args.out / "bm25", "--kind", "bm25")
        same = _same_files(args.out / "index-bm25", Path(bm25["version"]))
        checks["bm25_equals_index"] = same
        edited = args.out / "edited"
        checks["edit"] = _edited_corpus(args.data, edited)
        root = reindexed.parent  # its current is the reindexed version: the base of the incremental run
        seconds, inc = _reindex(edited, root, "--kind", "dense", "--model", model)
        checks["incremental"] = {"wall_s": seconds, **inc["plan"], "encoded": inc["encode"]["documents"]}
        _, full = _reindex(edited, args.out / "edited-full", "--kind", "dense", "--model", model, "--full")
        checks["incremental_equals_full"] = _same_vectors(Path(inc["version"]), Path(full["version"]))
    if args.kill:
        reference = args.out / "kill-reference"
        _, ref = _reindex(args.data, reference, "--kind", "dense", "--model", model, "--full", "--part-size", "64")
        checks["kill_and_resume"] = _kill_and_resume(args.data, args.out / "killed", model, Path(ref["version"]))
    result = {"benchmark": "reindex_scifact", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": f"{platform.node()} {os.cpu_count()} cpus", "documents": documents, "arms": rows,
              "checks": checks}
    print(f"\n{'arm':<11} {'wall s':>8} {'encode s':>9} {'start s':>8} {'docs/s':>8} {'vs loop':>8} {'enc docs/s':>11}")
    for arm, row in rows.items():
        print(f"{arm:<11} {row['wall_s']:8.1f} {row['encode_s']:9.1f} {row.get('startup_s', 0):8.1f} "
              f"{row.get('docs_per_s', 0):8.1f} {row.get('vs_loop', 0):8.2f} "
              f"{row.get('encoding_docs_per_s') or 0:11.1f}")
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
