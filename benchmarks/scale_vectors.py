"""Cost curve of the dense index at 100 k – 5 M documents, on imported vectors (``retrec index dense --vectors``).

For each size N (the first N rows of a vector haystack made by ``benchmarks/vector_haystack.py``: SciFact's real
document vectors first), a fresh worker process builds the default ``auto`` index (FaissIndex.from_source, the
code behind ``--vectors``), publishes it, loads it back (memory-mapped) and measures: build seconds and peak RSS;
bytes a document on disk (index, ids, refine store) and in RAM (RSS growth when loading, refine store excluded:
it is memory-mapped); single-query latency p50/p99 over SciFact's test queries (in-process, encoding excluded);
QPS with 32 threads; recall@10 against exact search over the same N vectors (``--tune-queries``: auto
tunes on these query vectors, e.g. SciFact's *train* queries, instead of document pseudo-queries); SciFact
nDCG@10 of the index and of exact search. ``--exact`` adds the latency of exact search (a Flat index) at the
same size, for the curve.

Example::

    python benchmarks/scale_vectors.py --vectors /tmp/vec/haystack-5m --queries /tmp/vec/scifact_queries.npy \\
        --query-ids /tmp/vec/scifact_ids.json --sizes 100000,1000000,5000000 --out benchmarks/results/scale_vectors.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

SCIFACT = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"


def rss_bytes(field: str = "RssAnon") -> int:
    """This process's resident memory: ``RssAnon`` (its own allocations) or ``RssFile`` (mapped file pages)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def percentiles(samples: list[float]) -> dict[str, float]:
    a = np.asarray(samples) * 1e3
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p99_ms": round(float(np.percentile(a, 99)), 3)}


def exact_top10(vectors: np.ndarray, queries: np.ndarray, ids: list[str]) -> list[list[str]]:
    from retrec.index.ann import ExactTopK

    truth = ExactTopK(queries, 10)
    for start in range(0, len(vectors), 200_000):
        truth.add(unit(vectors[start:start + 200_000]), start)
    return [[ids[i] for i in row] for row in truth.rows]


def ndcg10(qrels: dict, query_ids: list[str], ranked: list[list[tuple[str, float]]]) -> float:
    from retrec.pipelines.eval.ir_metrics import evaluate_run

    run = {q: dict(hits) for q, hits in zip(query_ids, ranked)}
    return evaluate_run({q: qrels[q] for q in query_ids}, run, ["nDCG@10"])[0]["nDCG@10"]


def worker(args: argparse.Namespace) -> dict:
    import faiss

    from retrec.data.beir import load_retrieval_data
    from retrec.data.vectors import ArraySource
    from retrec.index.faiss_index import FaissIndex

    n = args.size
    all_vectors = np.load(str(args.vectors) + ".npy", mmap_mode="r")
    vectors = all_vectors[:n]
    ids = Path(str(args.vectors) + ".ids.txt").read_text().splitlines()[:n]
    qinfo = json.loads(Path(args.query_ids).read_text())
    qrels = load_retrieval_data(args.scifact, split="test").qrels_dict()
    keep = [i for i, q in enumerate(qinfo["query_ids"]) if q in qrels]
    query_ids = [qinfo["query_ids"][i] for i in keep]
    queries = unit(np.load(args.queries)[keep])
    record: dict = {"kind": "index/dense", "documents": n, "factory_arg": args.factory,
                    "target_recall": args.target_recall,
                    "threads": faiss.omp_get_max_threads()}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        t0 = time.perf_counter()
        tune = {"tune_queries": np.load(args.tune_queries)} if args.tune_queries else {}
        if args.target_recall:
            tune["target_recall"] = args.target_recall
        index = FaissIndex.from_source(ArraySource(vectors, ids), factory=args.factory, similarity="cosine", **tune)
        record["build_s"] = round(time.perf_counter() - t0, 1)
        manifest = index.save(Path(tmp) / "v")
        record["build_peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
        record.update(factory=index.factory, search_params=index.search_params, auto=index.tuning and {
            k: v for k, v in index.tuning.items() if k != "tried"})
        files = manifest.files
        refine = sum(f.size for name, f in files.items() if name.endswith(".vectors.npy"))
        record["disk_bytes_per_doc"] = {"total": round(sum(f.size for f in files.values()) / n, 1),
                                        "refine_store": round(refine / n, 1)}
        del index
        base, base_file = rss_bytes(), rss_bytes("RssFile")
        loaded = FaissIndex.load(Path(tmp) / "v", verify=False)
        record["ram_bytes_per_doc_loaded"] = round((rss_bytes() - base) / n, 1)  # anonymous: the index itself
        loaded.search(queries[:20], 10)
        singles = []
        for _ in range(2):
            for q in queries:
                t = time.perf_counter()
                loaded.search(q[None, :], 10)
                singles.append(time.perf_counter() - t)
        record["latency_c1"] = percentiles(singles)
        record["ram_bytes_per_doc_after_queries"] = round((rss_bytes() - base) / n, 1)
        record["mapped_bytes_per_doc_after_queries"] = round((rss_bytes("RssFile") - base_file) / n, 1)
        batch = [q[None, :] for q in np.concatenate([queries, queries])]
        with ThreadPoolExecutor(32) as pool:
            t = time.perf_counter()
            list(pool.map(lambda q: loaded.search(q, 10), batch))
            record["qps_c32"] = round(len(batch) / (time.perf_counter() - t), 1)
        found = loaded.search(queries, 10)
    truth = exact_top10(vectors, queries, ids)
    record["recall_at_10_vs_exact"] = round(float(np.mean(
        [len({d for d, _ in f} & set(t)) / 10 for f, t in zip(found, truth)])), 4)
    flat_hits = [[(d, 10.0 - r) for r, d in enumerate(t)] for t in truth]  # exact ranks: all nDCG needs
    record["ndcg_at_10"] = round(ndcg10(qrels, query_ids, found), 4)
    record["ndcg_at_10_exact"] = round(ndcg10(qrels, query_ids, flat_hits), 4)
    if args.exact:
        flat = faiss.IndexFlatIP(vectors.shape[1])
        for start in range(0, n, 200_000):
            flat.add(unit(vectors[start:start + 200_000]))
        times = []
        for q in queries[:100]:
            t = time.perf_counter()
            flat.search(q[None, :], 10)
            times.append(time.perf_counter() - t)
        record["exact_latency_c1"] = percentiles(times)
    record["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    return record


def key(record: dict) -> tuple:
    """A record's identity in the results file: a rerun of the same arm replaces it."""
    target = (record.get("auto") or {}).get("target")
    return record["kind"], record["documents"], record.get("factory_arg"), target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vectors", type=Path, required=True, help="vector haystack prefix (PREFIX.npy, .ids.txt)")
    parser.add_argument("--queries", type=Path, required=True, help="SciFact query vectors (.npy, same encoder)")
    parser.add_argument("--query-ids", type=Path, required=True, help="JSON with query_ids in the .npy's order")
    parser.add_argument("--scifact", type=Path, default=SCIFACT)
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--factory", default="auto")
    parser.add_argument("--target-recall", type=float, default=None, help="auto's target (default: its own)")
    parser.add_argument("--tune-queries", default=None,
                        help="query vectors (.npy) auto checks recall on (SciFact's train queries; never test)")
    parser.add_argument("--exact", action="store_true", help="also time exact search (Flat) at each size")
    parser.add_argument("--tmp", default=None, help="folder for the index versions (default: the system's)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/scale_vectors.json"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.worker:
        print("RECORD " + json.dumps(worker(args)), flush=True)
        return
    records = json.loads(args.out.read_text()) if args.out.is_file() else []
    for size in [int(s) for s in args.sizes.split(",")]:
        cmd = [sys.executable, __file__, "--worker", "--size", str(size), *sys.argv[1:]]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RECORD ")]
        if proc.returncode or not lines:
            raise SystemExit(f"size {size}: worker failed (exit {proc.returncode})")
        record = {**json.loads(lines[-1][7:]), "date": time.strftime("%Y-%m-%d"), "machine": os.uname().nodename,
                  "cpus": os.cpu_count(), "command": " ".join(["python", "benchmarks/scale_vectors.py", *sys.argv[1:]])}
        print(json.dumps(record), flush=True)
        records = [r for r in records if key(r) != key(record)] + [record]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
