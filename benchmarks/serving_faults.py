"""Fault run: continuous mixed load on the Ray Serve app while replicas die and an index version swaps.

Serves the demo bundles (``retrec demo`` writes them: bm25, dense + its encoder, bert4rec) on 127.0.0.1 with two
replicas per shard, two ingress replicas and the query encoder as its own deployment, drives a bounded mixed load
(search bm25 / dense / hybrid and recommend, ``--concurrency`` workers) for ``--seconds`` and, in turn, kills a
dense shard replica, an ingress replica and the encoder replica, then swaps the bm25 index to a new version
through the admin endpoint. Reports per phase: requests, failures by status, p50/p99 latency; per kill: the time
until requests succeed again (the end of the last failed or partial response); 5xx outside the kill windows (a
request is inside one when it was in flight at the kill or started within ``KILL_WINDOW_S`` after it); every
index version seen (a response from a half-loaded or never-published version would show up here); whether the
server answers at the end. Exits 1 when a 5xx falls outside a kill window or the server is not alive at the end.

Example::

    .venv/bin/retrec demo                    # once: writes runs/demo/bundles
    .venv/bin/python benchmarks/serving_faults.py --bundles runs/demo/bundles --seconds 180 --json runs/faults.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import sys
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx

from retrec.process_env import configure_process

configure_process()

ADMIN_KEYS_ENV = "RETREC_FAULTS_ADMIN_KEY"
ADMIN_KEY = "faults-admin-" + os.urandom(8).hex()  # this run's admin key (Ray workers inherit the variable)
KILL_WINDOW_S = 15.0  # after a kill, 5xx (and partial results) are allowed for this long


def replica_actor(deployment: str) -> Any:
    import ray

    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if f"#{deployment}#" in a["name"]]
    if not names:
        raise RuntimeError(f"no live replica of {deployment}")
    return ray.get_actor(names[0], namespace="serve")


def app_config(bundles: Path, port: int, admin_root: Path) -> dict[str, Any]:
    two = {"replicas": 2, "num_cpus": 0, "max_ongoing_requests": 64}
    args = {
        "retrievers": {"bm25": {"index": str(bundles / "bm25"), "shards": two},
                       "dense": {"index": str(bundles / "dense"), "encoder": str(bundles / "encoder"),
                                 "placement": "deployment", "shards": two}},  # its shard replica is killed
        "recommenders": {"bert4rec": {"bundle": str(bundles / "bert4rec"), "replicas": two}},
        "encoder": {"placement": "deployment", "replicas": {"replicas": 1, "num_cpus": 0,
                                                            "max_ongoing_requests": 64}},
        "ingress": {**two, "max_ongoing_requests": 128},
        "auth": {"mode": "none"},
        "admin": {"enabled": True, "keys_env": ADMIN_KEYS_ENV, "keys_file": None, "models_root": str(admin_root)},
        "limits": {"request_timeout_s": 10.0},
    }
    return {"http_options": {"host": "127.0.0.1", "port": port},
            "applications": [{"name": "retrec", "route_prefix": "/", "import_path": "retrec.serving.app:build_app",
                              "args": args}]}


def new_bm25_version(bundles: Path, out: Path) -> Path:
    """A second bm25 index version of the same corpus (what a reindex would publish)."""
    from retrec.data.beir import load_retrieval_data
    from retrec.index.bm25_index import BM25Config, BM25Index

    if out.exists():
        shutil.rmtree(out)
    data = load_retrieval_data(bundles.parent / "data", split="test")
    ids, texts = data.doc_texts()
    BM25Index.build(ids, texts, BM25Config(k1=1.2, b=0.75)).save(out, name="faults-bm25-v2")
    return out


async def load(url: str, queries: list[str], histories: list[list[str]], concurrency: int, seconds: float,
               log: list[dict[str, Any]], stop: asyncio.Event, model: str = "bert4rec") -> None:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    rng = random.Random(0)
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=url, timeout=30.0, limits=limits) as client:
        async def worker() -> None:
            while not stop.is_set() and time.monotonic() - started < seconds:
                roll = rng.random()
                if roll < 0.7:
                    retriever = ("bm25", "dense", "hybrid")[int(roll / 0.7 * 3)]
                    path, body = "/v1/search", {"query": rng.choice(queries), "k": 10, "retriever": retriever}
                else:
                    path, body = "/v1/recommend", {"history": rng.choice(histories), "k": 10, "model": model}
                t0 = time.monotonic()
                try:
                    r = await client.post(path, json=body)
                    status, data = r.status_code, (r.json() if r.headers.get("content-type", "").startswith(
                        "application/json") else {})
                except httpx.HTTPError as exc:
                    status, data = 599, {"error": type(exc).__name__}
                log.append({"t": t0 - started, "ms": (time.monotonic() - t0) * 1000, "path": path, "status": status,
                            "versions": data.get("index_versions") or {}, "partial": bool(data.get("partial")),
                            "error": data.get("error") if status != 200 else None,
                            "retriever": body.get("retriever", "")})
        await asyncio.gather(*(worker() for _ in range(concurrency)))


async def faults(url: str, plan: list[tuple[float, str]], new_index: Path, events: list[dict[str, Any]],
                 t0: float) -> None:
    import ray

    async with httpx.AsyncClient(base_url=url, timeout=60.0) as client:
        for at, action in plan:
            await asyncio.sleep(max(0.0, at - (time.monotonic() - t0)))
            when = time.monotonic() - t0
            if action == "swap":
                r = await client.post("/v1/admin/indexes", json={"retriever": "bm25", "path": new_index.name},
                                      headers={"X-API-Key": ADMIN_KEY})
                events.append({"t": when, "action": "swap", "status": r.status_code, "answer": r.json(),
                               "seconds": round(time.monotonic() - t0 - when, 2)})
            else:
                ray.kill(replica_actor(action), no_restart=False)
                events.append({"t": when, "action": f"kill {action}"})


def percentile(values: list[float], q: float) -> float:
    return round(statistics.quantiles(values, n=100)[q - 1], 1) if len(values) > 1 else (values or [0.0])[0]


def summarize(log: list[dict[str, Any]], events: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    kills = [e["t"] for e in events if e["action"].startswith("kill")]
    edges = [0.0, *[e["t"] for e in events], seconds]
    phases = []
    for (a, b), name in zip(pairwise(edges), ["steady", *[e["action"] for e in events]]):
        rows = [x for x in log if a <= x["t"] < b]
        statuses: dict[str, int] = {}
        for x in rows:
            statuses[str(x["status"])] = statuses.get(str(x["status"]), 0) + 1
        ok = [x["ms"] for x in rows if x["status"] == 200]
        phases.append({"phase": name, "from_s": round(a, 1), "to_s": round(b, 1), "requests": len(rows),
                       "statuses": statuses, "partial": sum(x["partial"] for x in rows),
                       "p50_ms": percentile(ok, 50), "p99_ms": percentile(ok, 99)})
    def in_window(x: dict[str, Any], k: float) -> bool:  # in flight at the kill, or started in the window after it
        return x["t"] + x["ms"] / 1000 >= k and x["t"] < k + KILL_WINDOW_S

    recovery = []
    for k in kills:
        failed = [x["t"] + x["ms"] / 1000 for x in log if in_window(x, k) and (x["status"] >= 500 or x["partial"])]
        recovery.append(round(max(0.0, max(failed) - k) if failed else 0.0, 2))
    outside = [x for x in log if x["status"] >= 500 and not any(in_window(x, k) for k in kills)]
    versions = sorted({f"{r}={v}" for x in log for r, v in x["versions"].items()})
    errors = [{k: x[k] for k in ("t", "ms", "path", "retriever", "status", "error")} for x in log
              if x["status"] != 200][:10]
    return {"requests": len(log), "phases": phases, "first_errors": errors, "recovery_s": recovery,
            "5xx_outside_kill_windows": len(outside),
            "versions_seen": versions, "events": events}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundles", type=Path, default=Path("runs/demo/bundles"))
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from retrec.data.beir import load_retrieval_data
    from retrec.data.interactions import load_interactions, user_sequences
    from retrec.serving.launch import free_port, start, stop

    bundles = args.bundles.resolve()
    os.environ[ADMIN_KEYS_ENV] = ADMIN_KEY
    new_index = new_bm25_version(bundles, bundles / "faults-bm25-v2")  # under admin.models_root
    queries = load_retrieval_data(bundles.parent / "data", split="test").queries.column("text").to_pylist()
    histories = [[str(i) for i in seq][-10:] for seq in user_sequences(load_interactions(bundles.parent / "data"))
                 .items[:200]]
    s = args.seconds
    plan = [(s * 1 / 6, "dense-shard-0"), (s * 2 / 6, "Ingress"), (s * 3 / 6, "QueryEncoder"), (s * 4 / 6, "swap")]
    url = start(app_config(bundles, free_port(), bundles), num_cpus=2)
    log: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    try:
        async def run() -> None:
            stop_event = asyncio.Event()
            t0 = time.monotonic()
            await asyncio.gather(load(url, queries, histories, args.concurrency, s, log, stop_event),
                                 faults(url, plan, new_index, events, t0))
        asyncio.run(run())
        alive = httpx.get(f"{url}/healthz", timeout=10).status_code == 200 and httpx.post(
            f"{url}/v1/search", json={"query": queries[0], "k": 3, "retriever": "bm25"}, timeout=10).status_code == 200
    finally:
        stop()
    out = {**summarize(log, events, s), "alive_at_end": alive, "seconds": s, "concurrency": args.concurrency}
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))
    sys.exit(0 if alive and not out["5xx_outside_kill_windows"] else 1)


if __name__ == "__main__":
    main()
