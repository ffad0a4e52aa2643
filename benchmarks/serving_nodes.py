"""Index shards across Ray nodes on one machine: placement, equality, QPS, and a node killed under load.

Starts a three-node Ray cluster here (``ray start --head`` and two ``ray start --address`` workers, each in its own
session and with its own custom resource ``retrec_node_<i>``; Ray's files under a private ``RAY_TMPDIR`` so
no other Ray on the machine sees it), serves the index version ``--index`` (any index kind; ``--encoder`` for an
encoded one) with ``retrec serve --config FILE --ray-address HEAD`` — its shards pinned round-robin to the nodes by
``shard_resources``, the ingress (with the query encoder) on the head — and measures:

1. ``placement``: the node each shard replica runs on (asked of the replica), against the node its resource names;
2. ``equality``: every test query of ``--data`` over HTTP against the in-process index (same ids, scores to 1e-4);
3. ``qps``: ``--concurrency`` connections for ``--seconds`` over HTTP, against the in-process pipeline on the same
   queries (one query at a time with one ONNX thread, as the ingress runs it; and batched with every CPU);
4. ``failure``: under the same load, worker ``--kill`` is SIGKILLed (its raylet, agents and replica processes: a
   node crash), restarted with the same resources after ``--down`` seconds; reported: errors in and outside the
   kill window (in flight at the kill or sent within ``KILL_WINDOW_S`` after it; outside must be 0), the partial
   answers while down and the shards they name, and the seconds from the restart to complete answers.

No ``ray stop``: it would stop every Ray of this user on the machine; each node is stopped (or crashed) through
the processes of its own session. The run has its own Ray token (``RAY_AUTH_MODE=token``, ``RAY_AUTH_TOKEN``);
the nodes listen on the machine's address (``ray start``'s rule for a multi-node cluster).
``--make-random-dense`` first writes ``--index`` (unless it exists): a dense Flat index of ``--shards`` (default 4)
over random unit vectors for the corpus's documents, recorded as built with ``--encoder`` (BM25 is one shard only).

Example::

    .venv/bin/python benchmarks/serving_nodes.py --data ../shared/data/scifact --encoder ~/.cache/retrec/minilm-onnx \
        --make-random-dense --index runs/nodes/dense4 --json runs/nodes/result.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving_load import Connection  # a lean keep-alive HTTP/1.1 client

from retrec.process_env import configure_process

configure_process()
log = logging.getLogger("serving_nodes")
NODES = 3
RESOURCE = "retrec_node_{}"
KILL_WINDOW_S = 5.0  # the shard timeout (1 s) and the request in flight, with room


class Cluster:
    """``ray start`` processes on this machine: node 0 the head, 1.. workers; each in a session of its own."""

    def __init__(self, temp: Path, env: dict[str, str]) -> None:
        from retrec.serving.launch import free_port

        self.temp, self.env, self.port = temp, env, free_port()
        self.procs: dict[int, subprocess.Popen] = {}
        self.free_port = free_port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, node: int) -> float:
        """Start node ``node`` (blocking until Ray lists it alive); returns the seconds it took."""
        started = time.monotonic()
        before = self.node_ids(node) if node else set()
        ray_cli = str(Path(sys.executable).parent / "ray")
        ports = [f"--dashboard-agent-listen-port={self.free_port()}", f"--metrics-export-port={self.free_port()}",
                 f"--runtime-env-agent-port={self.free_port()}"]
        common = [f"--num-cpus={1 if node == 0 else 0}", f"--resources={json.dumps({RESOURCE.format(node): 100})}",
                  "--node-ip-address=127.0.0.1", "--block", *ports]
        if node == 0:
            args = [ray_cli, "start", "--head", f"--port={self.port}", "--include-dashboard=false",
                    f"--ray-client-server-port={self.free_port()}", f"--dashboard-port={self.free_port()}", *common]
        else:
            args = [ray_cli, "start", f"--address={self.address}", *common]
        out = (self.temp / f"node{node}.log").open("ab")
        self.procs[node] = subprocess.Popen(args, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        if node:
            self.wait_alive(node, before)
        else:
            self._wait_head()
        return time.monotonic() - started

    def _wait_head(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (self.temp / "ray" / "ray_current_cluster").is_file():
                return
            if self.procs[0].poll() is not None:
                raise RuntimeError(f"the head exited; see {self.temp / 'node0.log'}")
            time.sleep(0.5)
        raise TimeoutError("the head did not start")

    def node_ids(self, node: int) -> set[str]:
        """Ids of the live Ray nodes offering node ``node``'s resource (a killed one stays listed until the GCS
        notices)."""
        import ray

        if not ray.is_initialized():
            ray.init(address=self.address, configure_logging=False, log_to_driver=False)
        return {n["NodeID"] for n in ray.nodes() if n["Alive"] and RESOURCE.format(node) in n["Resources"]}

    def wait_alive(self, node: int, before: set[str], timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.node_ids(node) - before:
                return
            if self.procs[node].poll() is not None:
                raise RuntimeError(f"node {node} exited; see {self.temp / f'node{node}.log'}")
            time.sleep(0.25)
        raise TimeoutError(f"node {node} did not join")

    def kill(self, node: int) -> int:
        """A node crash: SIGKILL to every process of its session (``ray start``, raylet, agents, and the replica
        workers, which Ray puts in process groups of their own); returns how many."""
        proc = self.procs.pop(node)
        pids = signal_session(proc.pid, signal.SIGKILL)
        proc.wait()
        return len(pids)

    def stop(self) -> None:
        for node in sorted(self.procs, reverse=True):  # workers first, then the head
            proc = self.procs.pop(node)
            signal_session(proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            while session(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.5)
            signal_session(proc.pid, signal.SIGKILL)
            proc.wait()


def session(sid: int) -> list[int]:
    """The processes of session ``sid`` (Linux ``/proc``): one ``ray start`` node and everything it started."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def signal_session(sid: int, sig: int) -> list[int]:
    pids = session(sid)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    return pids


def random_dense(data: Path, encoder: Path, out: Path, shards: int, seed: int = 0) -> Path:
    """A dense Flat index of ``shards`` over random unit vectors (one per corpus document), built "with" ``encoder``."""
    from retrec.bundle import read_manifest
    from retrec.data.beir import load_retrieval_data
    from retrec.index.faiss_index import FaissIndex

    manifest = read_manifest(encoder)
    ids, _ = load_retrieval_data(data, split="test").doc_texts()
    vectors = np.random.default_rng(seed).standard_normal((len(ids), int(manifest.dims["dim"]))).astype(np.float32)
    FaissIndex.build(vectors, ids, factory="Flat", shards=shards, encoder=manifest).save(out, name="random-dense")
    return out


def app_config(index: Path, encoder: Path | None, port: int) -> tuple[str, dict[str, Any]]:
    """(retriever name, serve config): shard i pinned to node i % NODES, the ingress on the head."""
    from retrec.bundle import read_manifest
    from retrec.index.generic import display_name, index_kind
    from retrec.serving.launch import serve_env

    manifest = read_manifest(index)
    name = display_name(index_kind(manifest.kind))
    shards = int(manifest.config.get("shards", 1))
    retriever: dict[str, Any] = {"index": str(index.resolve()), "placement": "deployment",
                                 "shards": {"replicas": 1, "num_cpus": 0, "max_ongoing_requests": 64},
                                 "shard_resources": [{RESOURCE.format(i % NODES): 1} for i in range(shards)]}
    if encoder is not None:
        retriever["encoder"] = str(encoder.resolve())
    args = {"retrievers": {name: retriever},
            "encoder": {"placement": "ingress", "threads": 1, "max_batch_size": 16},
            "ingress": {"replicas": 1, "num_cpus": 0, "max_ongoing_requests": 256,
                        "resources": {RESOURCE.format(0): 1}},
            "limits": {"shard_timeout_s": 1.0, "request_timeout_s": 10, "max_inflight": 256},
            "auth": {"mode": "none"}, "use_gpu": False}
    return name, {"proxy_location": "HeadOnly", "http_options": {"host": "127.0.0.1", "port": port},
                  "applications": [{"name": "retrec", "route_prefix": "/", "args": args,
                                    "import_path": "retrec.serving.app:build_app",
                                    "runtime_env": {"env_vars": serve_env()}}]}


def placement(name: str, shards: int) -> dict[str, Any]:
    """Per shard: the node (its retrec_node_<i> resource) its replica runs on, and the node it is pinned to."""
    import ray

    by_id = {n["NodeID"]: next((k for k in n["Resources"] if k.startswith("retrec_node_")), "?")
             for n in ray.nodes() if n["Alive"]}
    out = {}
    for i in range(shards):
        found = [a for a in ray.util.list_named_actors(all_namespaces=True) if f"#{name}-shard-{i}#" in a["name"]]
        nodes = [by_id.get(ray.get(ray.get_actor(a["name"], namespace=a["namespace"]).__ray_call__.remote(
            lambda self: ray.get_runtime_context().get_node_id()), timeout=30), "?") for a in found]
        out[f"{name}-shard-{i}"] = {"runs_on": nodes, "pinned_to": RESOURCE.format(i % NODES)}
    return out


async def load(url: str, queries: list[str], concurrency: int, seconds: float, k: int = 10,
               stop: threading.Event | None = None) -> list[tuple[float, float, int, bool | None, list[str]]]:
    """``concurrency`` connections send searches for ``seconds`` (or until ``stop``): (sent, answered, status,
    partial, failed shards) per request."""
    log_: list[tuple[float, float, int, bool | None, list[str]]] = []
    end = time.monotonic() + seconds

    async def worker(offset: int) -> None:
        conn, i = Connection(url), offset
        while time.monotonic() < end and not (stop and stop.is_set()):
            sent = time.monotonic()
            try:
                status, body = await conn.post("/v1/search", json.dumps({"query": queries[i % len(queries)],
                                                                          "k": k}).encode())
                data = json.loads(body) if status == 200 else {}
            except (OSError, asyncio.IncompleteReadError, ValueError):
                status, data = 599, {}
                conn.close()
            log_.append((sent, time.monotonic(), status, data.get("partial"), data.get("failed_shards") or []))
            i += concurrency
        conn.close()

    await asyncio.gather(*(worker(j) for j in range(concurrency)))
    return log_


def latency(rows: list[tuple[Any, ...]]) -> dict[str, float]:
    ms = sorted((done - sent) * 1000 for sent, done, *_ in rows)
    return {"p50_ms": round(ms[len(ms) // 2], 2), "p99_ms": round(ms[int(len(ms) * 0.99)], 2)} if ms else {}


def equality(url: str, name: str, queries: list[str], want: list[list[tuple[str, float]]]) -> dict[str, Any]:
    mismatched = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for q, expected in zip(queries, want):
            body = client.post("/v1/search", json={"query": q, "k": 10, "retriever": name}).json()
            got = [(h["doc_id"], h["score"]) for h in body["hits"]]
            same = body["partial"] is False and [d for d, _ in got] == [d for d, _ in expected] and np.allclose(
                [s for _, s in got], [s for _, s in expected], rtol=1e-4, atol=1e-6)
            if not same:
                mismatched.append(q)
    return {"queries": len(queries), "equal": len(queries) - len(mismatched), "mismatched": mismatched[:5]}


def in_process(index: Path, encoder: Path | None, queries: list[str]) -> tuple[list[Any], dict[str, float]]:
    from retrec.index.generic import open_index

    options = {"threads": 1} if encoder is not None else {}
    one = open_index(index, model=encoder, use_gpu=False, **options)
    started = time.perf_counter()
    want = [one.search([q], 10)[0] for q in queries]
    sequential = len(queries) / (time.perf_counter() - started)
    every = open_index(index, model=encoder, use_gpu=False)
    started = time.perf_counter()
    every.search(queries, 10)
    batched = len(queries) / (time.perf_counter() - started)
    return want, {"one_at_a_time_qps": round(sequential, 1), "batched_qps": round(batched, 1)}


def failure(url: str, cluster: Cluster, queries: list[str], concurrency: int, node: int, down_s: float,
            name: str, shards: int) -> dict[str, Any]:
    stop = threading.Event()
    rows: list[Any] = []
    runner = threading.Thread(target=lambda: rows.extend(asyncio.run(load(url, queries, concurrency, 600, stop=stop))))
    runner.start()
    time.sleep(5.0)
    killed_at = time.monotonic()
    processes = cluster.kill(node)
    log.info("node %d killed (%d processes)", node, processes)
    time.sleep(down_s)
    back_at = time.monotonic()
    join_s = cluster.start(node)
    log.info("node %d back (joined in %.1f s)", node, join_s)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:  # complete answers for 3 s in a row
        recent = [r for r in list(rows) if r[0] > back_at and r[1] > time.monotonic() - 3.0]
        if len(recent) > 10 and all(r[3] is False for r in recent) and \
                min(r[0] for r in recent) < time.monotonic() - 2.5:
            break
        time.sleep(0.25)
    time.sleep(2.0)
    stop.set()
    runner.join()
    rows.sort()
    in_window = [r for r in rows if r[1] >= killed_at and r[0] <= killed_at + KILL_WINDOW_S]
    errors = [r for r in rows if r[2] != 200]
    outside = [r for r in errors if r not in in_window]
    down = [r for r in rows if killed_at <= r[0] and r[1] <= back_at]
    streak = 0
    while streak < len(rows) and rows[-1 - streak][3] is False:
        streak += 1
    complete_at = rows[-streak][0] if streak else None
    return {"killed_node": node, "killed_processes": processes, "down_s": round(back_at - killed_at, 1),
            "rejoin_s": round(join_s, 1),
            "requests": len(rows), "errors": len(errors), "errors_outside_kill_window": len(outside),
            "statuses": sorted({r[2] for r in rows}),
            "partial_while_down": f"{sum(r[3] is True for r in down)}/{len(down)}",
            "failed_shards_while_down": sorted({s for r in down for s in r[4]}),
            "latency_while_down": latency(down),
            "seconds_to_complete_after_restart": round(complete_at - back_at, 1) if complete_at else None,
            "placement_after": placement(name, shards)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", type=Path, required=True, help="index version to serve (its shards get pinned)")
    parser.add_argument("--encoder", type=Path, help="query-encoder bundle (encoded index kinds)")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/scifact"), help="BEIR folder: test queries")
    parser.add_argument("--make-random-dense", action="store_true", help="first write --index: random dense vectors")
    parser.add_argument("--shards", type=int, default=4, help="shards of --make-random-dense")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0, help="QPS measurement")
    parser.add_argument("--kill", type=int, default=2, help="the worker node killed (1 or 2)")
    parser.add_argument("--down", type=float, default=10.0, help="seconds the node stays down")
    parser.add_argument("--json", type=Path, help="also write the result here")
    opts = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from retrec.data.beir import load_retrieval_data
    from retrec.serving.launch import free_port, serve_env, wait_ready

    if opts.make_random_dense:
        if opts.encoder is None:
            parser.error("--make-random-dense needs --encoder")
        if not (opts.index / "manifest.json").is_file():
            random_dense(opts.data, opts.encoder, opts.index, opts.shards)
    queries = load_retrieval_data(opts.data, split="test").queries.column("text").to_pylist()
    name, config = app_config(opts.index, opts.encoder, free_port())
    temp = Path(tempfile.mkdtemp(prefix="rsn", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    # This run's own Ray files and token (Ray's token auth: every node, driver and `retrec serve` send it).
    own = {"RAY_TMPDIR": str(temp), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env = {**os.environ, **serve_env(), **own}
    env.pop("RAY_ADDRESS", None)
    os.environ.update(own)
    (temp / "serve.yaml").write_text(yaml.safe_dump(config))
    cluster, server = Cluster(temp, env), None
    result: dict[str, Any] = {"index": str(opts.index), "encoder": str(opts.encoder) if opts.encoder else None,
                              "retriever": name, "nodes": NODES, "cpus": os.cpu_count()}
    try:
        result["node_start_s"] = [round(cluster.start(i), 1) for i in range(NODES)]
        started = time.monotonic()
        server = subprocess.Popen([str(Path(sys.executable).parent / "retrec"), "serve", "--config",
                                   str(temp / "serve.yaml"), "--ray-address", cluster.address], env=env,
                                  stdout=(temp / "serve.log").open("ab"), stderr=subprocess.STDOUT,
                                  start_new_session=True)
        url = f"http://127.0.0.1:{config['http_options']['port']}"
        wait_ready(url, timeout_s=300)
        result["serve_start_s"] = round(time.monotonic() - started, 1)
        shards = len(config["applications"][0]["args"]["retrievers"][name]["shard_resources"])
        result["placement"] = placement(name, shards)
        want, result["in_process"] = in_process(opts.index, opts.encoder, queries)
        result["equality"] = equality(url, name, queries, want)
        asyncio.run(load(url, queries, opts.concurrency, 3.0))  # warm up
        rows = asyncio.run(load(url, queries, opts.concurrency, opts.seconds))
        ok = [r for r in rows if r[2] == 200]
        result["http"] = {"concurrency": opts.concurrency, "seconds": opts.seconds, "requests": len(rows),
                          "errors": len(rows) - len(ok), "qps": round(len(ok) / opts.seconds, 1), **latency(ok),
                          "partial": sum(bool(r[3]) for r in ok)}
        result["failure"] = failure(url, cluster, queries, opts.concurrency, opts.kill, opts.down, name, shards)
    finally:
        if server is not None:
            server.send_signal(signal.SIGINT)  # retrec serve shuts Serve down; the cluster stays for stop()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
        try:
            import ray

            ray.shutdown()
        finally:
            cluster.stop()
            shutil.rmtree(temp, ignore_errors=True)
    text = json.dumps(result, indent=2)
    print(text)
    if opts.json:
        opts.json.parent.mkdir(parents=True, exist_ok=True)
        opts.json.write_text(text + "\n")
    failed = result["failure"]["errors_outside_kill_window"] or result["equality"]["mismatched"]
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
