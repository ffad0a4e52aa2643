"""`retrec reindex` at scale on a haystack corpus (SciFact + generated distractors), BM25 — tokenizing is its
parallel prepare step: scaling with Ray actors, an incremental run after editing 1% of the documents, and the cost
of part records at ~4,000 parts. Every reindex is a whole command in its own process, one after the other; the
working tree's code runs (``PYTHONPATH`` = this repository), Ray's files under a private ``RAY_TMPDIR``.

    .venv/bin/python benchmarks/reindex_scale.py --data /tmp/haystack-100k --out /tmp/reindex-scale \\
        [--arms local ray-1 ray-2 up-1 up-2 nodes-4] [--rounds 1] [--kinds bm25 dense --model tiny] \\
        [--json benchmarks/results/reindex_scale.json]

1. arms, ``retrec reindex bm25 --full``: ``local`` (``--local``: no Ray, the reference), ``ray-1``
   (``--actors 1 --threads 1``; a local Ray started by the command, its start-up counted), ``ray-2``
   (``--actors 2 --threads 1``), ``up-1``/``up-2`` (the same on a Ray already up: a one-node cluster of 2 CPUs
   started here, ``--ray-address``: what a deployment with Ray running pays), ``nodes-4`` (``--actors 4
   --ray-address``: a simulated 3-node Ray — a head of 2 CPUs and two workers of 1, fake CPUs on this machine's
   cores). Clusters are started before their arm and stopped after it. Per arm: wall, docs/s and the job's stages
   (read, prepare with its Ray start-up, build, publish, verify; ``process``: the rest — interpreter, imports, Ray
   shutdown); the speed-ups of 2 actors over 1 (own Ray, Ray up), whole command and prepare stage.
2. incremental: the corpus with 1% of its documents edited and 0.1% deleted; ``retrec reindex`` without ``--full``
   on the root of a full run (its ``current`` is the base), timed against that full run, and compared with a
   ``--full`` rebuild of the edited corpus: doc ids, files (sha256), top-10 of the test queries.
3. part records: ``--part-size`` giving ~4,000 parts against the default (256), ray-2's flags; a wrapper around
   the same CLI times PartStore's writes, checks and reads and, just before the job removes its work folder,
   measures it (files, bytes) and checks every record again (what a resumed run pays).
Phases 2 and 3 run for each of ``--kinds``. BM25 is a text kind: rebuilt whole, no parts (the measurements say
so). ``dense`` is an encoded kind (parts recorded, unchanged documents reused); it needs ``--model``: a model/dense
bundle, or ``tiny`` (the tests' random-embedding encoder: tokenizing only, the mechanism, not a real model's cost).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RETREC = [str(Path(sys.executable).with_name("retrec"))]
RAY = str(Path(sys.executable).with_name("ray"))
STAGES = ("read", "plan", "prepare", "encode", "build", "assemble", "publish", "verify")
# arm: (flags, the CPUs of each node of a cluster started for it, or None: the command starts its own Ray if any)
ARMS: dict[str, tuple[list[str], tuple[int, ...] | None]] = {
    "local": (["--local"], None), "ray-1": (["--actors", "1", "--threads", "1"], None),
    "ray-2": (["--actors", "2", "--threads", "1"], None), "up-1": (["--actors", "1", "--threads", "1"], (2,)),
    "up-2": (["--actors", "2", "--threads", "1"], (2,)), "nodes-4": (["--actors", "4", "--threads", "1"], (2, 1, 1))}
WRAP = r"""
import atexit, json, sys, time
from pathlib import Path
from retrec.bundle import sha256_file
from retrec.pipelines.reindex import job, parts
stats = {"parts_written": 0, "write_s": 0.0, "parts_checked": 0, "check_s": 0.0, "parts_read": 0, "read_s": 0.0,
         "work_files": 0, "work_bytes": 0, "record_files": 0, "record_bytes": 0, "recheck_s": 0.0, "recheck_ok": 0}
def timed(method, count, seconds):
    def call(*args, **kwargs):
        start = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            stats[count] += 1
            stats[seconds] += time.perf_counter() - start
    return call
for name, count in (("write", "parts_written"), ("done", "parts_checked"), ("read", "parts_read")):
    setattr(parts.PartStore, name, timed(getattr(parts.PartStore, name), count, "check_s" if name == "done"
                                         else f"{name}_s"))
remove = job._remove_work
def measured(store):
    if store is not None and (store.folder / "parts").is_dir():
        files = list((store.folder / "parts").iterdir())
        records = [p for p in files if p.suffix == ".json"]
        stats.update(work_files=len(files), work_bytes=sum(p.stat().st_size for p in files),
                     record_files=len(records), record_bytes=sum(p.stat().st_size for p in records))
        start = time.perf_counter()
        for record in records:
            stats["recheck_ok"] += json.loads(record.read_text())["sha256"] == sha256_file(
                record.with_suffix(".safetensors"))
        stats["recheck_s"] = time.perf_counter() - start
    remove(store)
job._remove_work = measured
target = Path(sys.argv[1])
atexit.register(lambda: target.write_text(json.dumps(stats)))
sys.argv = ["retrec", *sys.argv[2:]]
from retrec.cli import main
main()
"""


def reindex(data: Path, out: Path, flags: list[str], env: dict[str, str], stats: Path | None = None) -> dict[str, Any]:
    """One ``retrec reindex`` in its own process (``stats``: through the measuring wrapper); wall, stages, report."""
    args = ["reindex", "--data", str(data), "--out", str(out), "--json", *flags]
    load = os.getloadavg()[0]
    cmd = [sys.executable, "-c", WRAP, str(stats), *args] if stats is not None else [*RETREC, *args]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-3000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    stages = {s: report[s]["seconds"] for s in STAGES if isinstance(report.get(s), dict) and "seconds" in report[s]}
    stages["process"] = wall - sum(stages.values())
    row = {"wall_s": wall, "load_before": load, "stages_s": stages, "version": report["version"], "report": report}
    if "startup_s" in report.get("prepare", report.get("encode", {})):
        row["ray_startup_s"] = report.get("prepare", report.get("encode"))["startup_s"]
    if stats is not None:
        row["part_records"] = json.loads(stats.read_text())
    return row


class Cluster:
    """A simulated multi-node Ray on this machine: ``ray start --head`` and workers, each ``--block`` in a session
    of its own, stopped by signalling that session (``ray stop`` would stop every Ray of this user here)."""

    def __init__(self, cpus: tuple[int, ...], env: dict[str, str], logs: Path) -> None:
        from retrec.serving.launch import free_port

        # Ray's files of its own: a stale ray_current_cluster left in a shared RAY_TMPDIR would make a later
        # local `ray.init()` try to join this (stopped) cluster
        self.tmp = Path(tempfile.mkdtemp(prefix="rsc-", dir="/tmp"))
        self.env = {**env, "RAY_TMPDIR": str(self.tmp)}
        self.cpus, self.logs, self.free_port = cpus, logs, free_port
        self.address = f"127.0.0.1:{free_port()}"
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> Cluster:
        import ray

        start = time.perf_counter()
        os.environ["RAY_TMPDIR"] = str(self.tmp)  # this process's ray.init, waiting for the nodes
        try:
            for node, cpus in enumerate(self.cpus):  # one at a time: two nodes starting at once can time out
                ports = [f"--dashboard-agent-listen-port={self.free_port()}",
                         f"--metrics-export-port={self.free_port()}", f"--runtime-env-agent-port={self.free_port()}"]
                common = [f"--num-cpus={cpus}", "--node-ip-address=127.0.0.1", "--block", *ports]
                head = ["--head", f"--port={self.address.rsplit(':', 1)[1]}", "--include-dashboard=false",
                        f"--ray-client-server-port={self.free_port()}", f"--dashboard-port={self.free_port()}"]
                args = [RAY, "start", *(head if node == 0 else [f"--address={self.address}"]), *common]
                with (self.logs / f"node{node}.log").open("ab") as log:
                    self.procs.append(subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                                       start_new_session=True))
                if node == 0:
                    self._wait(lambda: (Path(self.env["RAY_TMPDIR"]) / "ray" / "ray_current_cluster").is_file())
                    ray.init(address=self.address, configure_logging=False, log_to_driver=False)
                total = sum(self.cpus[:node + 1])
                self._wait(lambda: ray.cluster_resources().get("CPU", 0) >= total)  # noqa: B023 (called here)
            self.nodes = len([n for n in ray.nodes() if n["Alive"]])
        except BaseException:
            self.__exit__()
            raise
        finally:
            ray.shutdown()
        self.start_s = time.perf_counter() - start
        return self

    def _wait(self, ready: Any, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                raise RuntimeError(f"the simulated Ray cluster did not start; see {self.logs}/node*.log")
            time.sleep(0.5)

    def __exit__(self, *exc: object) -> None:
        for proc in reversed(self.procs):  # workers first, then the head
            _signal(proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            while _session(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.5)
            _signal(proc.pid, signal.SIGKILL)
            proc.wait()
        self.procs.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _signal(sid: int, sig: int) -> None:
    for pid in _session(sid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _session(sid: int) -> list[int]:
    """The live processes of session ``sid`` (Linux ``/proc``): a ``ray start`` node and everything it started."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[3]) == sid and fields[0] != "Z":
                    found.append(int(entry.name))
    return found


def edit_corpus(src: Path, dst: Path, edit: float, delete: float, seed: int = 0) -> dict[str, int]:
    """``src``'s corpus.jsonl with a fraction of its documents' text changed and a fraction deleted (streamed)."""
    with (src / "corpus.jsonl").open() as f:
        lines = sum(1 for _ in f)
    edits, deletes = round(lines * edit), round(lines * delete)
    picked = random.Random(seed).sample(range(lines), edits + deletes)
    edited, deleted = set(picked[:edits]), set(picked[edits:])
    dst.mkdir(parents=True, exist_ok=True)
    with (src / "corpus.jsonl").open() as fin, (dst / "corpus.jsonl").open("w") as fout:
        for i, line in enumerate(fin):
            if i in deleted:
                continue
            if i in edited:
                doc = json.loads(line)
                doc["text"] = doc.get("text", "") + " (revised: see the erratum)"
                line = json.dumps(doc) + "\n"
            fout.write(line)
    return {"documents": lines - deletes, "edited": edits, "deleted": deletes}


def test_queries(data: Path, queries: Path) -> list[str]:
    """The texts of the queries judged in ``data``'s qrels/test.tsv (all of ``queries`` when it has none)."""
    texts = {}
    for line in queries.open():
        if line.strip():
            q = json.loads(line)
            texts[str(q["_id"])] = q["text"]
    qrels = data / "qrels" / "test.tsv"
    judged = {ln.split("\t")[0] for ln in qrels.read_text().splitlines()[1:]} if qrels.is_file() else set(texts)
    return [texts[q] for q in sorted(judged & set(texts))]


def compare(a: Path, b: Path, queries: list[str]) -> dict[str, Any]:
    """Two index versions: same doc ids, same files (sha256 in the manifests), same top-10 for ``queries``."""
    from retrec.index.generic import open_index

    ma, mb = (json.loads((p / "manifest.json").read_text())["files"] for p in (a, b))
    ra, rb = (open_index(p, verify=False, use_gpu=False) for p in (a, b))
    ha, hb = ra.search(queries, k=10), rb.search(queries, k=10)
    same = sum([d for d, _ in x] == [d for d, _ in y] for x, y in zip(ha, hb))
    diff = max((abs(s - t) for x, y in zip(ha, hb) for (_, s), (_, t) in zip(x, y)), default=0.0)
    ids = ra.doc_ids is not None and sorted(ra.doc_ids) == sorted(rb.doc_ids or [])
    out = {"same_doc_ids": ids, "same_files": {k: v["sha256"] for k, v in ma.items()} ==
           {k: v["sha256"] for k, v in mb.items()}, "queries": len(queries), "same_top10": same,
           "max_score_diff": diff}
    out["equal"] = bool(ids and same == len(queries) and diff <= 1e-5)
    return out


def _tiny_model(out: Path) -> str:
    from tests.tiny_models import tiny_dense_encoder

    path = out / "tiny-dense-encoder"
    return str(path if path.is_dir() else tiny_dense_encoder(path))


def main() -> None:
    sys.path.insert(0, str(REPO))  # this process too (comparing versions, the tiny encoder): the working tree
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("/tmp/haystack-100k"), help="a BEIR folder (corpus.jsonl)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/reindex-scale"), help="work folder (emptied first)")
    ap.add_argument("--queries", type=Path, help="queries.jsonl (default: DATA's, else ../shared/data/scifact's)")
    ap.add_argument("--arms", nargs="*", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--rounds", type=int, default=1, help="run the arms this many times, interleaved")
    ap.add_argument("--kinds", nargs="*", default=["bm25"], choices=["bm25", "dense"],
                    help="kinds of the incremental and part-record phases")
    ap.add_argument("--model", help="dense: a model/dense bundle, or 'tiny'")
    ap.add_argument("--edit", type=float, default=0.01, help="fraction of documents edited")
    ap.add_argument("--delete", type=float, default=0.001, help="fraction of documents deleted")
    ap.add_argument("--parts", type=int, default=4000, help="part records phase: about this many parts")
    ap.add_argument("--skip", nargs="*", default=[], choices=["incremental", "parts"])
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "reindex_scale.json")
    args = ap.parse_args()
    if "dense" in args.kinds and not args.model:
        ap.error("--kinds dense needs --model (a model/dense bundle, or 'tiny')")
    marker = args.out / ".reindex_scale"
    if args.out.is_dir() and any(args.out.iterdir()) and not marker.is_file():
        ap.error(f"--out {args.out}: not empty and not a folder of this benchmark; choose another")
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    marker.touch()
    model = _tiny_model(args.out) if args.model == "tiny" else str(Path(args.model).absolute()) if args.model else None
    queries_file = args.queries or next(p for p in (args.data / "queries.jsonl",
                                                    REPO.parent / "shared/data/scifact/queries.jsonl") if p.is_file())
    queries = test_queries(args.data, queries_file)
    with (args.data / "corpus.jsonl").open() as f:
        documents = sum(1 for _ in f)
    ray_tmp = Path(tempfile.mkdtemp(prefix="rs-", dir="/tmp"))  # short: Ray's socket paths live under it
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
           "RAY_TMPDIR": str(ray_tmp), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env.pop("RAY_ADDRESS", None)
    os.environ.update({k: env[k] for k in ("RAY_TMPDIR", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN")})  # before Ray's import
    result: dict[str, Any] = {
        "benchmark": "reindex_scale", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {"uname": list(os.uname()), "cpus": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
                    "load_at_start": os.getloadavg()},
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "commit": subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "data": str(args.data), "documents": documents,
        "arms": {}, "incremental": {}, "part_records": {}}
    try:
        for r in range(args.rounds):
            for arm in args.arms:
                label = arm if args.rounds == 1 else f"{arm}#{r + 1}"
                arm_flags, nodes = ARMS[arm]
                out, flags = args.out / "arms" / label, ["--kind", "bm25", "--full", *arm_flags]
                if nodes is not None:
                    with Cluster(nodes, env, args.out) as cluster:
                        row = reindex(args.data, out, [*flags, "--ray-address", cluster.address], cluster.env)
                        row.update(cluster_nodes=cluster.nodes, cluster_cpus=sum(nodes),
                                   cluster_start_s=cluster.start_s)
                else:
                    row = reindex(args.data, out, flags, env)
                row["docs_per_s"] = documents / row["wall_s"]
                result["arms"][label] = row
                print(f"{label}: wall {row['wall_s']:.1f} s, {row['docs_per_s']:.0f} docs/s, Ray up "
                      f"{row.get('ray_startup_s', 0):.2f} s, stages "
                      + ", ".join(f"{k} {v:.2f}" for k, v in row["stages_s"].items()), flush=True)
        _speedups(result)
        edited = args.out / "edited"
        if "incremental" not in args.skip:
            result["edit"] = edit_corpus(args.data, edited, args.edit, args.delete)
        for kind in args.kinds:
            flags = ["--kind", kind, *(["--model", model] if kind == "dense" else []), *ARMS["ray-2"][0]]
            ray2 = next((label for label in result["arms"] if label.split("#")[0] == "ray-2"), None)
            if "incremental" not in args.skip:
                if kind == "bm25" and ray2 is not None:  # its root's current: the full run of the same flags
                    base, root = result["arms"][ray2], args.out / "arms" / ray2
                else:
                    root = args.out / f"{kind}-base"
                    base = reindex(args.data, root, [*flags, "--full"], env)
                inc = reindex(edited, root, flags, env)
                full = reindex(edited, args.out / f"{kind}-edited-full", [*flags, "--full"], env)
                result["incremental"][kind] = {
                    "full_wall_s": base["wall_s"], "incremental_wall_s": inc["wall_s"],
                    "edited_full_wall_s": full["wall_s"], "ratio": inc["wall_s"] / base["wall_s"],
                    "plan": inc["report"].get("plan"), "incremental_stages_s": inc["stages_s"],
                    "full_stages_s": base["stages_s"],
                    "equals_full_rebuild": compare(Path(inc["version"]), Path(full["version"]), queries)}
                print(f"incremental {kind}: {result['incremental'][kind]}", flush=True)
            if "parts" not in args.skip:
                size = math.ceil(documents / args.parts)
                rows = {}
                for label, part_size in (("default", 256), (f"{args.parts}-parts", size)):
                    row = reindex(args.data, args.out / f"{kind}-parts-{label}", [*flags, "--full", "--part-size",
                                                                                  str(part_size)], env,
                                  stats=args.out / f"{kind}-parts-{label}.json")
                    rows[label] = {"part_size": part_size, "parts": row["report"].get("encode", {}).get("parts", 0),
                                   "wall_s": row["wall_s"], "stages_s": row["stages_s"], **row["part_records"]}
                    print(f"parts {kind} {label}: {rows[label]}", flush=True)
                result["part_records"][kind] = rows
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    result["machine"]["load_at_end"] = os.getloadavg()
    _table(result)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {args.json}")


def _speedups(result: dict[str, Any]) -> None:
    """2 actors over 1 (means over rounds), with the command's own Ray and with Ray up: the whole command, and the
    prepare stage once Ray and the actors are up."""
    def mean(arm: str, get: Any) -> float:
        rows = [row for label, row in result["arms"].items() if label.split("#")[0] == arm]
        return sum(map(get, rows)) / len(rows) if rows else 0.0

    def prepare(row: dict[str, Any]) -> float:
        return row["stages_s"].get("prepare", 0.0) - row.get("ray_startup_s", 0.0)

    result["speedup_2_vs_1"] = {"target": 1.6}
    for one, two in (("ray-1", "ray-2"), ("up-1", "up-2")):
        w1, w2, p1, p2 = (mean(a, f) for a, f in ((one, lambda r: r["wall_s"]), (two, lambda r: r["wall_s"]),
                                                  (one, prepare), (two, prepare)))
        if w1 and w2:
            result["speedup_2_vs_1"][f"{two} vs {one}"] = {"whole_command": w1 / w2,
                                                           "prepare_after_startup": p1 / p2 if p2 > 0 else None}


def _table(result: dict[str, Any]) -> None:
    cols = ("read", "prepare", "build", "publish", "verify", "process")
    print(f"\n{result['documents']} documents\n{'arm':<10} {'wall s':>7} {'docs/s':>7} {'ray up':>7} "
          + " ".join(f"{c:>8}" for c in cols))
    for arm, row in result["arms"].items():
        print(f"{arm:<10} {row['wall_s']:7.1f} {row['docs_per_s']:7.0f} {row.get('ray_startup_s', 0):7.2f} "
              + " ".join(f"{row['stages_s'].get(c, 0):8.2f}" for c in cols))
    for pair, s in result.get("speedup_2_vs_1", {}).items():
        if isinstance(s, dict):
            print(f"speed-up {pair}: whole command {s['whole_command']:.2f}x, prepare stage "
                  f"{s['prepare_after_startup'] or 0:.2f}x (target 1.6x)")
    for kind, inc in result["incremental"].items():
        eq = inc["equals_full_rebuild"]
        print(f"incremental {kind}: {inc['incremental_wall_s']:.1f} s vs full {inc['full_wall_s']:.1f} s = "
              f"{100 * inc['ratio']:.1f}% (target <= 5%); equal to a full rebuild: {eq['equal']} (files "
              f"{eq['same_files']}, top-10 {eq['same_top10']}/{eq['queries']})")
    for kind, rows in result["part_records"].items():
        for label, row in rows.items():
            print(f"parts {kind} {label:<11} size {row['part_size']:>4} parts {row['parts']:>5} wall "
                  f"{row['wall_s']:7.1f} s  records {row['record_files']:>5} files {row['work_bytes'] / 1e6:8.1f} MB "
                  f"(json {row['record_bytes'] / 1e3:.0f} kB)  write {row['write_s']:.2f} s check "
                  f"{row['check_s']:.2f} s read {row['read_s']:.2f} s recheck {row['recheck_s']:.2f} s")


if __name__ == "__main__":
    main()
