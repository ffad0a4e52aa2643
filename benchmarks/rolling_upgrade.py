"""An encoder upgrade without downtime (issue 42): `retrec reindex --rolling --swap` under search load.

Processes, all real: a base version of the corpus built by the OLD encoder (``retrec reindex``, ``--shards``
shards); ``retrec serve`` with that version and the NEW encoder (trained ``--compatible-with`` OLD, or a
``retrec compat fit`` map) as the retriever's query encoder — new queries over the old index from the first
request; ``--clients`` closed-loop clients calling ``/v1/search`` with the collection's test queries; then
``retrec reindex --rolling --swap`` re-encodes shard by shard, each step swapped in while the clients run, and
finally (a wider BT² encoder) the new space.

Reported: requests, non-2xx, partial answers, latency p50/p99 before and during the roll, the longest gap between
two answers (a pause would show here), the index versions answers came from in order, and nDCG@10 of every
step (the new encoder's queries, judged test queries) beside old/old (the base version with the OLD encoder).

Example::

    python benchmarks/rolling_upgrade.py --data ../shared/data/scifact --old ~/.cache/retrec/minilm-onnx \\
        --new /tmp/compat/bt2-126 --work /tmp/roll --json benchmarks/results/rolling_upgrade_scifact.json
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import yaml

RETREC = str(Path(sys.executable).with_name("retrec"))
KEYS_ENV = "RETREC_ROLLING_ADMIN_KEYS"


def percentile(values: list[float], q: float) -> float | None:
    return round(sorted(values)[min(len(values) - 1, int(q * len(values)))], 1) if values else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_config(index: Path, encoder: Path, models: Path, port: int) -> dict[str, Any]:
    light = {"replicas": 1, "num_cpus": 0, "max_ongoing_requests": 64}
    args = {"retrievers": {"dense": {"index": str(index), "encoder": str(encoder), "placement": "deployment",
                                     "shards": light}},
            "encoder": {"placement": "deployment", "replicas": light},
            "ingress": {**light, "max_ongoing_requests": 128}, "auth": {"mode": "none"},
            "admin": {"enabled": True, "keys_env": KEYS_ENV, "keys_file": None, "models_root": str(models)}}
    return {"http_options": {"host": "127.0.0.1", "port": port},
            "applications": [{"name": "retrec", "route_prefix": "/", "import_path": "retrec.serving.app:build_app",
                              "args": args}]}


class Load:
    """Closed-loop search clients; every answer recorded as (start, end, status, version, partial)."""

    def __init__(self, url: str, queries: list[str], clients: int) -> None:
        self.url, self.queries, self.clients = url, queries, clients
        self.records: list[tuple[float, float, int, str | None, bool]] = []
        self.stop = threading.Event()

    async def _client(self, n: int) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=30.0) as client:
            i = n
            while not self.stop.is_set():
                q = self.queries[i % len(self.queries)]
                i += self.clients
                t0 = time.monotonic()
                try:
                    r = await client.post("/v1/search", json={"query": q, "retriever": "dense", "k": 10})
                    body = r.json() if r.status_code == 200 else {}
                    self.records.append((t0, time.monotonic(), r.status_code,
                                         body.get("index_versions", {}).get("dense"), bool(body.get("partial"))))
                except httpx.HTTPError:
                    self.records.append((t0, time.monotonic(), 0, None, False))

    def run(self) -> None:
        async def main() -> None:
            await asyncio.gather(*(self._client(n) for n in range(self.clients)))
        asyncio.run(main())

    def window(self, start: float, end: float) -> dict[str, Any]:
        rows = [r for r in self.records if start <= r[0] < end]
        ends = sorted(r[1] for r in rows)
        codes: dict[str, int] = {}
        for r in rows:
            if r[2] != 200:
                codes[str(r[2])] = codes.get(str(r[2]), 0) + 1
        return {"requests": len(rows), "non_2xx": sum(codes.values()), "by_code": codes,
                "partial": sum(r[4] for r in rows),
                "p50_ms": percentile([(r[1] - r[0]) * 1000 for r in rows], 0.5),
                "p99_ms": percentile([(r[1] - r[0]) * 1000 for r in rows], 0.99),
                "longest_gap_s": round(max((b - a for a, b in pairwise(ends)), default=0.0), 2)}


def ndcg(version: Path, data: Path, model: Path) -> float:
    from retrec.data.beir import load_retrieval_data
    from retrec.pipelines.eval.retrieval import evaluate_retriever
    from retrec.pipelines.eval.retrievers import open_retriever

    test = load_retrieval_data(data, split="test")
    return round(float(evaluate_retriever(open_retriever(version, test, model), test, progress=False)
                       .metrics["nDCG@10"]), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--old", type=Path, required=True, help="the encoder of the base version")
    parser.add_argument("--new", type=Path, required=True, help="a compatible encoder (or a compat map)")
    parser.add_argument("--work", type=Path, required=True, help="work folder (new or empty)")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--baseline-seconds", type=float, default=30.0)
    parser.add_argument("--reindex-threads", type=int, default=1, help="ONNX threads of the re-encoding (on 2 "
                        "cores, 1 leaves the other to the server: both at once starved it into timeouts)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if any(args.work.iterdir()):
        raise SystemExit(f"{args.work} is not empty")
    models = args.work / "models"
    root = models / "dense"
    started = time.perf_counter()
    subprocess.run([RETREC, "reindex", "dense", "--data", str(args.data), "--out", str(root), "--model",
                    str(args.old), "--shards", str(args.shards), "--local", "--json"], check=True,
                   stdout=subprocess.DEVNULL)
    base = (root / "current").resolve()
    old_old = ndcg(base, args.data, args.old)
    print(f"base {base.name}: old/old nDCG@10 {old_old}", flush=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    (args.work / "serve.yaml").write_text(yaml.safe_dump(serve_config(base, args.new, models, port)))
    key = os.urandom(12).hex()
    env = {**os.environ, KEYS_ENV: key, "RETREC_ADMIN_KEYS": key}
    with open(args.work / "serve.log", "w") as serve_log:
        server = subprocess.Popen([RETREC, "serve", "--config", str(args.work / "serve.yaml")], env=env,
                                  stdout=serve_log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        else:
            raise SystemExit("the server did not get ready in 300 s (see serve.log)")
        from retrec.data.beir import load_retrieval_data

        test = load_retrieval_data(args.data, split="test")
        queries = list(test.query_texts().values())
        load = Load(url, queries, args.clients)
        clients = threading.Thread(target=load.run, daemon=True)
        clients.start()
        t0 = time.monotonic()
        time.sleep(args.baseline_seconds)
        t1 = time.monotonic()
        done = subprocess.run([RETREC, "reindex", "dense", "--data", str(args.data), "--out", str(root),
                               "--model", str(args.new), "--rolling", "--swap", url, "--eval-data", str(args.data),
                               "--local", "--threads", str(args.reindex_threads), "--json"], env=env,
                              capture_output=True, text=True)
        t2 = time.monotonic()
        time.sleep(5.0)
        load.stop.set()
        clients.join(timeout=60)
        t3 = time.monotonic()
        if done.returncode:
            raise SystemExit(f"the rolling reindex failed:\n{done.stderr[-3000:]}")
        report = json.loads(done.stdout.strip().splitlines()[-1])
        alive = httpx.get(f"{url}/readyz", timeout=5).status_code == 200
    finally:
        server.send_signal(signal.SIGINT)  # retrec serve shuts its Ray down on SIGINT
        try:
            server.wait(timeout=120)
        except subprocess.TimeoutExpired:
            server.kill()
    versions_seen: list[str] = []
    for r in sorted(load.records, key=lambda r: r[1]):
        if r[3] and (not versions_seen or versions_seen[-1] != r[3]):
            versions_seen.append(r[3])
    steps = [{k: s.get(k) for k in ("step", "space", "version", "nDCG@10", "seconds", "encoded")}
             for s in report["rolling"]["steps"]]
    result = {"benchmark": "rolling_upgrade", "date": _dt.date.today().isoformat(), "command": " ".join(sys.argv),
              "machine": f"{platform.node()}, {os.cpu_count()} CPUs", "old": str(args.old), "new": str(args.new),
              "shards": args.shards, "clients": args.clients, "old/old nDCG@10": old_old,
              "new/old nDCG@10": report["rolling"].get("base_nDCG@10"), "steps": steps,
              "before": load.window(t0, t1), "during": load.window(t1, t2), "after": load.window(t2, t3),
              "roll_seconds": round(t2 - t1, 1), "versions_answered_from": versions_seen,
              "alive_at_end": alive, "seconds": round(time.perf_counter() - started, 1)}
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
