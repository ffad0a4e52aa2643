"""Load test of the Ray Serve app on 127.0.0.1: p50/p99 latency and QPS for dense and hybrid search.

Builds (once, cached) a SciFact BM25 index and a zero-shot MiniLM dense index (the dense retriever's
export/encoding cache), starts the app with dynamic batching on and off, and drives it with an async httpx
load generator at each concurrency — bounded by a request count and a time limit per cell. Also reports the
HTTP path's overhead over the in-process pipeline (median ms, c=1).

Example::

    .venv/bin/python benchmarks/serving_load.py --data ../shared/data/scifact --out runs/bench-serving \\
        --concurrency 1 8 32 --requests 400 --seconds 20 --json runs/bench-serving/results.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
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
    from retrec.runtime import cache_dir
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


def app_config(paths: dict[str, Path], port: int, batch: int, threads: int) -> dict[str, Any]:
    light = {"replicas": 1, "num_cpus": 0, "max_ongoing_requests": 64, "max_queued_requests": 1024}
    return {"http_options": {"host": "127.0.0.1", "port": port},
            "applications": [{"name": "retrec", "route_prefix": "/", "import_path": "retrec.serving.app:build_app",
                              "args": {
                                  "retrievers": {"bm25": {"index": str(paths["bm25"]), "shards": light},
                                                 "dense": {"index": str(paths["dense"]),
                                                           "encoder": str(paths["encoder"]), "shards": light}},
                                  "encoder": {"max_batch_size": batch, "batch_wait_timeout_s": 0.003,
                                              "threads": threads, "replicas": {**light, "max_ongoing_requests": 128}},
                                  "ingress": {**light, "max_ongoing_requests": 256},
                                  "limits": {"max_inflight": 256, "shard_timeout_s": 5, "request_timeout_s": 30},
                                  "auth": {"api_keys_env": None}, "use_gpu": False}}]}


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

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {"requests": len(latencies), "errors": errors, "qps": round(len(latencies) / wall, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2)}


def mean_batch(url: str) -> float:
    """Mean query-encoder batch size seen by requests, from the app's Prometheus metrics."""
    values = {}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(("retrec_encoder_batch_size_sum", "retrec_encoder_batch_size_count")):
            name, value = line.split()
            values[name] = float(value)
    count = values.get("retrec_encoder_batch_size_count", 0.0)
    return round(values.get("retrec_encoder_batch_size_sum", 0.0) / count, 2) if count else 0.0


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
    parser.add_argument("--threads", type=int, default=2, help="ONNX threads of the encoder replica")
    parser.add_argument("--requests", type=int, default=400, help="per cell (bounded)")
    parser.add_argument("--seconds", type=float, default=20.0, help="per cell (bounded)")
    parser.add_argument("--encoder", type=Path, default=None, help="model/dense bundle (default: zero-shot MiniLM)")
    parser.add_argument("--serve-defaults", action="store_true",
                        help="keep Ray Serve's default threading (not retrec's SERVE_ENV latency settings)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import ray

    from retrec.data.beir import load_retrieval_data
    from retrec.serving.launch import apply_serve_env, free_port, start, stop

    paths = build_bundles(args.data, args.out, args.encoder)
    queries = load_retrieval_data(args.data, split="test").queries.column("text").to_pylist()
    results: dict[str, Any] = {"cells": []}
    results["in_process_dense_p50_ms"] = in_process_median_ms(paths, queries[:100], args.threads)
    if not args.serve_defaults:
        apply_serve_env()
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        for batching in args.batching:
            batch = args.max_batch_size if batching == "on" else 1
            url = start(app_config(paths, free_port(), batch, args.threads))
            asyncio.run(drive(url, "dense", queries, 4, 40, 10))  # warm-up
            for retriever in args.retrievers:
                for c in args.concurrency:
                    cell = asyncio.run(drive(url, retriever, queries, c, args.requests, args.seconds))
                    cell = {"retriever": retriever, "batching": batching, "concurrency": c, **cell}
                    results["cells"].append(cell)
                    print(json.dumps(cell), flush=True)
            results[f"mean_encoder_batch_{batching}"] = mean_batch(url)
            print(json.dumps({"batching": batching, "mean_encoder_batch": results[f"mean_encoder_batch_{batching}"]}))
            if batching == args.batching[0]:
                one = [x for x in results["cells"] if x["retriever"] == "dense" and x["concurrency"] == 1
                       and x["batching"] == batching]
                if one:
                    results["http_overhead_ms"] = round(one[0]["p50_ms"] - results["in_process_dense_p50_ms"], 2)
            from ray import serve

            serve.shutdown()
    finally:
        stop()
    print(json.dumps({k: v for k, v in results.items() if k != "cells"}))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
