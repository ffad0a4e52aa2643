"""Load test of the Ray Serve app on 127.0.0.1: p50/p99 latency and QPS for BM25, dense and hybrid search.

Builds (once, cached) a SciFact BM25 index and a zero-shot MiniLM dense index (2 shards), then, for each HTTP
path (``proxy``: Serve's HTTP proxy; ``direct``: Ray Serve's direct ingress, each ingress replica's own HTTP
server; a fresh Ray each) and each shard placement (``ingress``: shards inside the ingress replica;
``deployment``: a deployment per shard), starts the app and drives it with a lean keep-alive HTTP/1.1 load
generator (:class:`Connection`, ~0.1 ms CPU per request, so the 2 cores go to the server) at each concurrency —
bounded by a request count and a time limit per cell. The same run measures the peers: the in-process pipeline
(one query at a time: p50; batched: queries/s, with every CPU; in each c=1 cell also query by query, the in-
process search of a query just before its request, so both are measured in the same seconds) and the floor of
each HTTP path (a Serve app that answers a constant). Each cell also reports the CPU milliseconds per request of
all Ray processes (from ``/proc``) and of the load generator, and the mean encoder and shard-call batch.

Example::

    .venv/bin/python benchmarks/serving_load.py --data ../shared/data/scifact --out runs/bench-serving \
        --json runs/bench-serving/results.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
import urllib.parse
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from retrec.process_env import configure_process

configure_process()


def build_bundles(data: Path, out: Path, encoder: Path | None = None) -> dict[str, Path]:
    """BM25 + dense (Flat, 2 shards) index versions of the collection; the MiniLM ONNX bundle is cached."""
    from retrec.data.beir import load_retrieval_data
    from retrec.index.bm25_index import BM25Index
    from retrec.index.dense_retriever import DenseRetriever
    from retrec.models.text_encoder import zero_shot_bundle
    from retrec.process_env import cache_dir
    from retrec.runtime.onnx_encoder import OnnxEncoder

    collection = load_retrieval_data(data, split="test")
    paths = {"bm25": out / "bm25", "dense": out / "dense", "encoder": encoder or zero_shot_bundle()}
    ids, texts = collection.doc_texts(with_title=True)
    if not (paths["bm25"] / "manifest.json").is_file():
        BM25Index.build(ids, texts).save(paths["bm25"], name=f"{data.name}-bm25")
    if not (paths["dense"] / "manifest.json").is_file():
        encoder = OnnxEncoder(paths["encoder"])
        DenseRetriever.build(encoder, ids, texts, factory="Flat", shards=2, cache=cache_dir() / "embeddings",
                             progress=True).save(paths["dense"], name=f"{data.name}-dense")
    return paths


def app_config(paths: dict[str, Path], port: int, batch: int, threads: int,
               placement: str = "ingress", shard_placement: str = "auto") -> dict[str, Any]:
    light = {"replicas": 1, "num_cpus": 0, "max_ongoing_requests": 64, "max_queued_requests": 1024}
    shards = {"placement": shard_placement, "shards": light}
    return {"http_options": {"host": "127.0.0.1", "port": port},
            "applications": [{"name": "retrec", "route_prefix": "/", "import_path": "retrec.serving.app:build_app",
                              "args": {
                                  "retrievers": {"bm25": {"index": str(paths["bm25"]), **shards},
                                                 "dense": {"index": str(paths["dense"]),
                                                           "encoder": str(paths["encoder"]), **shards}},
                                  "encoder": {"placement": placement, "max_batch_size": batch,
                                              "batch_wait_timeout_s": 0.003,
                                              "threads": threads, "replicas": {**light, "max_ongoing_requests": 128}},
                                  "ingress": {**light, "max_ongoing_requests": 256},
                                  "limits": {"max_inflight": 256, "shard_timeout_s": 5, "request_timeout_s": 30},
                                  "auth": {"mode": "none"}, "use_gpu": False}}]}


def ray_cpu_ms() -> float | None:
    """CPU milliseconds used so far by this machine's Ray processes (``ray::*`` workers, raylet, GCS)."""
    total, tick = 0, os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes()
            if not (cmd.startswith(b"ray::") or b"raylet" in cmd or b"gcs_server" in cmd):
                continue
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
        except (OSError, IndexError, ValueError):
            continue
    return total * 1000.0 / tick


class Connection:
    """One keep-alive HTTP/1.1 connection that POSTs JSON and reads the status and body: a load generator lean
    enough (~0.2 ms CPU per request) that on a 2-core machine the server, not the client, is what is measured."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        parts = urllib.parse.urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.head = f"Host: {self.host}:{self.port}\r\ncontent-type: application/json\r\n{extra}"
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        for attempt in (0, 1):  # a keep-alive connection the server closed: reconnect once
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            try:
                self.writer.write(f"POST {path} HTTP/1.1\r\n{self.head}content-length: {len(body)}\r\n\r\n"
                                  .encode() + body)
                return await self._response()
            except (ConnectionError, asyncio.IncompleteReadError):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    async def _response(self) -> tuple[int, bytes]:
        assert self.reader is not None
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(head[0].split(" ", 2)[1])
        fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:] if line)}
        if "content-length" in fields:
            body = await self.reader.readexactly(int(fields["content-length"]))
        else:  # chunked
            chunks = []
            while size := int((await self.reader.readuntil(b"\r\n")).strip(), 16):
                chunks.append(await self.reader.readexactly(size + 2))
            await self.reader.readuntil(b"\r\n")
            body = b"".join(c[:-2] for c in chunks)
        if fields.get("connection", "").lower() == "close":
            self.close()
        return status, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def drive(url: str, retriever: str, queries: list[str], concurrency: int, requests: int,
                seconds: float, peer: Any = None) -> dict[str, float]:
    """``concurrency`` connections send up to ``requests`` searches in at most ``seconds``; latency stats + QPS.

    ``peer`` (one connection only): the in-process search of the same query runs just before each request, so
    ``in_process_p50_ms`` is measured in the same seconds as the server (this host's speed drifts by minutes).
    """
    latencies: list[float] = []
    paired: list[float] = []
    paired_cpu: list[float] = []
    errors = 0
    counter = iter(range(requests))
    deadline = time.perf_counter() + seconds
    bodies = [json.dumps({"query": q, "k": 10, "retriever": retriever}).encode() for q in queries]

    async def worker() -> None:
        nonlocal errors
        conn = Connection(url)
        try:
            for i in counter:
                if time.perf_counter() > deadline:
                    return
                if peer is not None:
                    t, cpu = time.perf_counter(), time.process_time()
                    peer([queries[i % len(queries)]], 10)
                    paired.append(time.perf_counter() - t)
                    paired_cpu.append(time.process_time() - cpu)
                t = time.perf_counter()
                status, _ = await conn.post("/v1/search", bodies[i % len(bodies)])
                latencies.append(time.perf_counter() - t)
                errors += status != 200
        finally:
            conn.close()

    if peer is not None and concurrency != 1:
        raise ValueError("a paired in-process peer needs concurrency 1")
    cpu0, own0 = ray_cpu_ms(), time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started - sum(paired)
    cpu1, own1 = ray_cpu_ms(), time.process_time()
    ms = np.array(latencies) * 1000
    n = max(1, len(latencies))
    extra = {"in_process_p50_ms": round(float(np.percentile(np.array(paired) * 1000, 50)), 2)} if paired else {}
    return {**extra, "requests": len(latencies), "errors": errors, "qps": round(len(latencies) / wall, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "ray_cpu_ms_per_req": round((cpu1 - cpu0) / n, 2) if cpu0 is not None and cpu1 is not None else None,
            "client_cpu_ms_per_req": round((own1 - own0 - sum(paired_cpu)) * 1000 / n, 2)}


BATCH_METRICS = {"encoder_batch": "retrec_encoder_batch_size", "shard_batch": "retrec_shard_batch_size"}


def batch_totals(url: str) -> dict[str, tuple[float, float]]:
    """``(sum, count)`` of each batch-size histogram (summed over labels) from the app's Prometheus metrics.

    ``encoder_batch``: the encoder batch each request was in; ``shard_batch``: queries per batched shard call.
    """
    totals = {key: [0.0, 0.0] for key in BATCH_METRICS}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        for key, metric in BATCH_METRICS.items():
            for i, suffix in enumerate(("_sum", "_count")):
                if line.startswith(metric + suffix):
                    totals[key][i] += float(line.rsplit(" ", 1)[1])
    return {key: (total[0], total[1]) for key, total in totals.items()}


def mean_batches(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]) -> dict[str, float]:
    """Mean batch sizes between two :func:`batch_totals` snapshots."""
    out = {}
    for key in BATCH_METRICS:
        count = after[key][1] - before[key][1]
        out[f"mean_{key}"] = round((after[key][0] - before[key][0]) / count, 2) if count else 0.0
    return out


def encoder_ms_per_query(paths: dict[str, Path], queries: list[str], threads: int, batch: int) -> dict[str, float]:
    """In-process ONNX cost per query at batch 1 and at ``batch`` (run the way the server runs a batch)."""
    from retrec.runtime.onnx_encoder import OnnxEncoder
    from retrec.serving.encoders import CPU_ONNX_BATCH

    encoder = OnnxEncoder(paths["encoder"], threads=threads, providers=["CPUExecutionProvider"],
                          batch_size=min(CPU_ONNX_BATCH, batch))
    encoder.encode_queries(queries[:batch])
    out = {}
    for size in (1, batch):
        n = (len(queries) // size) * size
        started = time.perf_counter()
        for i in range(0, n, size):
            encoder.encode_queries(queries[i:i + size])
        out[f"batch_{size}"] = round((time.perf_counter() - started) * 1000 / n, 2)
    return out


def peers(paths: dict[str, Path], threads: int) -> dict[str, Any]:
    """The in-process pipelines (their threads spin inside a run only: idle spinning would slow the server the
    paired c=1 cells measure right after each in-process query; alone it is as fast as spinning always)."""
    from retrec.index.bm25_index import BM25Index
    from retrec.index.dense_retriever import DenseRetriever

    return {"bm25": BM25Index.load(paths["bm25"]),
            "dense": DenseRetriever.load(paths["encoder"], paths["dense"], threads=threads, spin="run")}


def in_process(retrievers: dict[str, Any], queries: list[str], batch: int) -> dict[str, float]:
    """The same searches without serving: p50 of one query at a time (``RETRIEVER_p50_ms``) and queries/s of
    the batched pipeline (``RETRIEVER_batched_qps``: ``batch`` queries per call; dense: encode + FAISS)."""
    out: dict[str, float] = {}
    for name, retriever in retrievers.items():
        retriever.search(queries[:batch], 10)  # warm-up
        times = []
        for q in queries[:200]:
            t = time.perf_counter()
            retriever.search([q], 10)
            times.append((time.perf_counter() - t) * 1000)
        out[f"{name}_p50_ms"] = round(statistics.median(times), 2)
        n = (len(queries) // batch) * batch
        started = time.perf_counter()
        for i in range(0, n, batch):
            retriever.search(queries[i:i + batch], 10)
        out[f"{name}_batched_qps"] = round(n / (time.perf_counter() - started), 1)
    return out


def floor_app() -> Any:
    """The floor of Ray Serve's HTTP path here: a FastAPI ingress that answers ``/v1/search`` with a constant."""
    from fastapi import FastAPI
    from ray import serve

    api = FastAPI()

    @serve.deployment(name="Floor", max_ongoing_requests=256, ray_actor_options={"num_cpus": 0})
    @serve.ingress(api)
    class Floor:
        @api.post("/v1/search")
        async def search(self, body: dict) -> dict:
            return {"retriever": body.get("retriever"), "hits": []}

        @api.get("/readyz")
        async def readyz(self) -> dict:
            return {"status": "ready"}

    return Floor.bind()


def find_direct(host: str = "127.0.0.1", first: int = 30000, tries: int = 60) -> str:
    """The URL of the (one) ingress replica's direct-ingress server: Ray allocates ports from ``first`` upward
    and may hold a released one back for a while, so the answering port is looked for."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for port in range(first, first + tries):
            try:
                if httpx.get(f"http://{host}:{port}/readyz", timeout=1.0).status_code == 200:
                    return f"http://{host}:{port}"
            except httpx.HTTPError:
                continue
        time.sleep(0.5)
    raise TimeoutError("no direct-ingress server answered")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/scifact"))
    parser.add_argument("--out", type=Path, default=Path("runs/bench-serving"))
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--retrievers", nargs="+", default=["bm25", "dense", "hybrid"])
    parser.add_argument("--batching", nargs="+", default=["on"], choices=["on", "off"])
    parser.add_argument("--shard-placement", nargs="+", default=["ingress", "deployment"],
                        choices=["auto", "ingress", "deployment"], help="where index shards run (one app each)")
    parser.add_argument("--http", nargs="+", default=["proxy", "direct"], choices=["proxy", "direct"],
                        help="proxy: through Serve's HTTP proxy; direct: Ray Serve's direct ingress (each ingress "
                             "replica's own HTTP server), a Ray instance each")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="ONNX intra-op threads of the served query encoder")
    parser.add_argument("--in-process-threads", type=int, default=None,
                        help="threads of the in-process peer (default: every CPU: its best)")
    parser.add_argument("--placement", default="ingress", choices=["ingress", "deployment"],
                        help="where the query encoder runs (encoder.placement)")
    parser.add_argument("--requests", type=int, default=3000, help="per cell (bounded)")
    parser.add_argument("--seconds", type=float, default=12.0, help="per cell (bounded)")
    parser.add_argument("--encoder", type=Path, default=None, help="model/dense bundle (default: zero-shot MiniLM)")
    parser.add_argument("--serve-defaults", action="store_true",
                        help="keep Ray Serve's default threading (not the runtime_env settings of configs/serve.yaml)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import ray
    from ray import serve

    from retrec.data.beir import load_retrieval_data
    from retrec.process_env import available_cpus
    from retrec.serving.launch import DIRECT_INGRESS, apply_serve_env, free_port, start, stop

    paths = build_bundles(args.data, args.out, args.encoder)
    queries = load_retrieval_data(args.data, split="test").queries.column("text").to_pylist()
    peer_threads = args.in_process_threads or available_cpus()
    results: dict[str, Any] = {"cells": [], "machine": f"{os.cpu_count()} CPUs", "threads": args.threads,
                               "in_process_threads": peer_threads, "encoder_placement": args.placement}
    retrievers = peers(paths, peer_threads)
    results["in_process"] = in_process(retrievers, queries, args.max_batch_size)
    results["encoder_ms_per_query"] = encoder_ms_per_query(paths, queries[:256], args.threads, args.max_batch_size)
    print(json.dumps({k: results[k] for k in ("in_process", "encoder_ms_per_query")}), flush=True)
    if not args.serve_defaults:
        apply_serve_env()

    def measure(url: str, retriever: str, row: dict[str, Any]) -> None:
        for c in args.concurrency:
            before = batch_totals(url) if retriever != "floor" else None
            peer = retrievers[retriever].search if c == 1 and retriever in retrievers else None
            cell = asyncio.run(drive(url, retriever, queries, c, args.requests, args.seconds, peer))
            cell = {**row, "retriever": retriever, "concurrency": c, **cell,
                    **(mean_batches(before, batch_totals(url)) if before else {})}
            results["cells"].append(cell)
            print(json.dumps(cell), flush=True)

    for http in args.http:
        os.environ[DIRECT_INGRESS] = "1" if http == "direct" else "0"  # read when Ray's Serve processes start
        for shard_placement in args.shard_placement:
            for batching in args.batching:  # a fresh Ray per app: Serve's processes start with this run's env
                batch = args.max_batch_size if batching == "on" else 1
                ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
                try:
                    config = app_config(paths, free_port(), batch, args.threads, args.placement, shard_placement)
                    url = start(config)
                    url = find_direct() if http == "direct" else url
                    asyncio.run(drive(url, "dense", queries, 4, 40, 10))  # warm-up
                    for retriever in args.retrievers:
                        measure(url, retriever, {"http": http, "shard_placement": shard_placement,
                                                 "batching": batching})
                finally:
                    stop()
        ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
        try:  # the floor: Serve's HTTP path around an app that does nothing
            port = free_port()
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            serve.run(floor_app(), name="floor", route_prefix="/")
            url = find_direct() if http == "direct" else f"http://127.0.0.1:{port}"
            asyncio.run(drive(url, "floor", queries, 4, 200, 5))
            measure(url, "floor", {"http": http, "shard_placement": "-", "batching": "-"})
        finally:
            stop()
    results["summary"] = summary(results)
    print(json.dumps(results["summary"], indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))


def summary(results: dict[str, Any]) -> dict[str, Any]:
    """Per HTTP path and shard placement (batching on): c=1 p50 minus the in-process p50, top-concurrency QPS
    and its ratio to the in-process batched pipeline; the floor app's c=1 p50 and top QPS per HTTP path."""
    inproc, out = results["in_process"], {}
    cells = [c for c in results["cells"] if c["batching"] in ("on", "-")]
    top = max((c["concurrency"] for c in cells), default=0)
    for c in cells:
        row = out.setdefault(f"{c['http']}/{c['shard_placement']}", {})
        name = c["retriever"]
        if c["concurrency"] == 1:
            row[f"{name}_c1_p50_ms"] = c["p50_ms"]
            peer = c.get("in_process_p50_ms", inproc.get(f"{name}_p50_ms"))  # paired in the cell, else the run's
            if peer is not None:
                row[f"{name}_c1_in_process_p50_ms"] = peer
                row[f"{name}_c1_p50_over_in_process_ms"] = round(c["p50_ms"] - peer, 2)
        if c["concurrency"] == top:
            row[f"{name}_c{top}_qps"] = c["qps"]
            if f"{name}_batched_qps" in inproc:
                row[f"{name}_c{top}_over_in_process_batched"] = round(c["qps"] / inproc[f"{name}_batched_qps"], 2)
    return out


if __name__ == "__main__":
    main()
