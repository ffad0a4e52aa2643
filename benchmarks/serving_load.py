"""Load test of the Ray Serve app on 127.0.0.1: p50/p99 latency and QPS for dense and hybrid search.

Builds (once, cached) a SciFact BM25 index and a zero-shot MiniLM dense index (the dense retriever's
export/encoding cache), starts the app with dynamic batching on and off (off: ``max_batch_size: 1``, i.e.
one ONNX call and one call per shard for every request), and drives it with an async httpx load generator
at each concurrency — bounded by a request count and a time limit per cell. Each cell also reports the CPU
milliseconds per request spent by all Ray processes (proxy, ingress, shards, ...; from ``/proc``) and by
the load generator. Also reports the HTTP path's overhead over the in-process pipeline (median ms, c=1),
the in-process ONNX encoder's cost per query at batch 1 and at ``--max-batch-size`` (what batching can
save in the encoder itself), and the mean encoder batch and shard-call batch per batching mode.

Example::

    .venv/bin/python benchmarks/serving_load.py --data ../shared/data/scifact --out runs/bench-serving \\
        --concurrency 1 8 32 --requests 400 --seconds 20 --json runs/bench-serving/results.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
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
               placement: str = "ingress") -> dict[str, Any]:
    light = {"replicas": 1, "num_cpus": 0, "max_ongoing_requests": 64, "max_queued_requests": 1024}
    return {"http_options": {"host": "127.0.0.1", "port": port},
            "applications": [{"name": "retrec", "route_prefix": "/", "import_path": "retrec.serving.app:build_app",
                              "args": {
                                  "retrievers": {"bm25": {"index": str(paths["bm25"]), "shards": light},
                                                 "dense": {"index": str(paths["dense"]),
                                                           "encoder": str(paths["encoder"]), "shards": light}},
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


async def drive(url: str, retriever: str, queries: list[str], concurrency: int, requests: int,
                seconds: float) -> dict[str, float]:
    """``concurrency`` workers send up to ``requests`` searches in at most ``seconds``; latency stats + QPS."""
    latencies: list[float] = []
    errors = 0
    counter = iter(range(requests))
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=30.0, limits=limits) as client:
        async def worker() -> None:
            nonlocal errors
            for i in counter:
                if time.perf_counter() > deadline:
                    return
                body = {"query": queries[i % len(queries)], "k": 10, "retriever": retriever}
                t = time.perf_counter()
                r = await client.post("/v1/search", json=body)
                latencies.append(time.perf_counter() - t)
                errors += r.status_code != 200

        cpu0, own0 = ray_cpu_ms(), time.process_time()
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
        cpu1, own1 = ray_cpu_ms(), time.process_time()
    ms = np.array(latencies) * 1000
    n = max(1, len(latencies))
    return {"requests": len(latencies), "errors": errors, "qps": round(len(latencies) / wall, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "ray_cpu_ms_per_req": round((cpu1 - cpu0) / n, 2) if cpu0 is not None and cpu1 is not None else None,
            "client_cpu_ms_per_req": round((own1 - own0) * 1000 / n, 2)}


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

    encoder = OnnxEncoder(paths["encoder"], num_threads=threads, providers=["CPUExecutionProvider"],
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


def in_process_median_ms(paths: dict[str, Path], queries: list[str], threads: int) -> float:
    """Median latency of the same search in-process (DenseRetriever, one query at a time)."""
    from retrec.index.dense_retriever import DenseRetriever

    retriever = DenseRetriever.load(paths["encoder"], paths["dense"], num_threads=threads)
    times = []
    for q in queries:
        t = time.perf_counter()
        retriever.search([q], 10)
        times.append((time.perf_counter() - t) * 1000)
    return round(statistics.median(times), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/scifact"))
    parser.add_argument("--out", type=Path, default=Path("runs/bench-serving"))
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--retrievers", nargs="+", default=["dense", "hybrid"])
    parser.add_argument("--batching", nargs="+", default=["on", "off"], choices=["on", "off"])
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="ONNX intra-op threads of the query encoder")
    parser.add_argument("--placement", default="ingress", choices=["ingress", "deployment"],
                        help="where the query encoder runs (encoder.placement)")
    parser.add_argument("--requests", type=int, default=400, help="per cell (bounded)")
    parser.add_argument("--seconds", type=float, default=20.0, help="per cell (bounded)")
    parser.add_argument("--encoder", type=Path, default=None, help="model/dense bundle (default: zero-shot MiniLM)")
    parser.add_argument("--serve-defaults", action="store_true",
                        help="keep Ray Serve's default threading (not the runtime_env settings of configs/serve.yaml)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import ray

    from retrec.data.beir import load_retrieval_data
    from retrec.serving.launch import apply_serve_env, free_port, start, stop

    paths = build_bundles(args.data, args.out, args.encoder)
    queries = load_retrieval_data(args.data, split="test").queries.column("text").to_pylist()
    results: dict[str, Any] = {"cells": []}
    results["in_process_dense_p50_ms"] = in_process_median_ms(paths, queries[:100], args.threads)
    results["encoder_ms_per_query"] = encoder_ms_per_query(paths, queries[:256], args.threads, args.max_batch_size)
    results["placement"], results["threads"] = args.placement, args.threads
    print(json.dumps({k: results[k] for k in ("in_process_dense_p50_ms", "encoder_ms_per_query")}), flush=True)
    if not args.serve_defaults:
        apply_serve_env()
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        for batching in args.batching:
            batch = args.max_batch_size if batching == "on" else 1
            url = start(app_config(paths, free_port(), batch, args.threads, args.placement))
            asyncio.run(drive(url, "dense", queries, 4, 40, 10))  # warm-up
            for retriever in args.retrievers:
                for c in args.concurrency:
                    before = batch_totals(url)
                    cell = asyncio.run(drive(url, retriever, queries, c, args.requests, args.seconds))
                    cell = {"retriever": retriever, "batching": batching, "concurrency": c, **cell,
                            **mean_batches(before, batch_totals(url))}
                    results["cells"].append(cell)
                    print(json.dumps(cell), flush=True)
            if batching == args.batching[0]:
                one = [x for x in results["cells"] if x["retriever"] == "dense" and x["concurrency"] == 1
                       and x["batching"] == batching]
                if one:
                    results["http_overhead_ms"] = round(one[0]["p50_ms"] - results["in_process_dense_p50_ms"], 2)
            from ray import serve

            serve.shutdown()
    finally:
        stop()
    top = max(args.concurrency)
    for retriever in args.retrievers:
        qps = {x["batching"]: x["qps"] for x in results["cells"] if x["retriever"] == retriever
               and x["concurrency"] == top}
        if qps.get("off"):
            results[f"batching_speedup_{retriever}_c{top}"] = round(qps.get("on", 0.0) / qps["off"], 2)
    print(json.dumps({k: v for k, v in results.items() if k != "cells"}))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
