"""Which approximate index for ``auto``: recall@10 against exact search, real queries vs document pseudo-queries.

On the first N vectors of a vector haystack (``benchmarks/vector_haystack.py``), compares inverted files (exact
vectors, 4-bit fast-scan PQ, 8-bit PQ, each PQ with an exact re-scoring of ``refine × 10`` candidates) and HNSW
graphs, over ``nprobe`` / ``efSearch``, on SciFact's test queries (encoded by the same encoder) and on sampled
documents as pseudo-queries (own document held out) — the measurements behind ``retrec/index/ann.py``'s recipe
and its tuning on query vectors. Prints one JSON line a setting.

Example::

    python benchmarks/ann_recipes.py --vectors /tmp/vec/haystack-5m --queries /tmp/vec/scifact_queries.npy --docs 100000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import faiss
import numpy as np


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def recall(found: np.ndarray, truth: np.ndarray, own: np.ndarray | None = None) -> float:
    total = 0.0
    for i, (f, t) in enumerate(zip(found, truth)):
        f, t = [d for d in f if own is None or d != own[i]][:10], [d for d in t if own is None or d != own[i]][:10]
        total += len(set(f) & set(t)) / len(t)
    return round(total / len(found), 4)


def refined(index: faiss.Index, x: np.ndarray, queries: np.ndarray, k: int, depth: int) -> np.ndarray:
    _, cand = index.search(queries, k * depth)
    out = []
    for q, row in zip(queries, cand):
        row = row[row >= 0]
        out.append(row[np.argsort(-(x[row] @ q))[:k]])
    return np.asarray(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vectors", type=Path, required=True, help="vector haystack prefix (PREFIX.npy)")
    parser.add_argument("--queries", type=Path, required=True, help="query vectors (.npy) of the same encoder")
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--nlist", type=int, default=512)
    args = parser.parse_args()
    x = unit(np.load(str(args.vectors) + ".npy", mmap_mode="r")[:args.docs])
    queries = unit(np.load(args.queries))
    own = np.random.default_rng(0).choice(len(x), 256, replace=False)
    pseudo = x[own]
    flat = faiss.IndexFlatIP(x.shape[1])
    flat.add(x)
    truth_q, truth_p = flat.search(queries, 10)[1], flat.search(pseudo, 11)[1]
    print(json.dumps({"query_top1_cosine": round(float(flat.search(queries, 1)[0].mean()), 4),
                      "document_nn_cosine": round(float(flat.search(pseudo, 2)[0][:, 1].mean()), 4)}))
    train = x[np.random.default_rng(1).choice(len(x), min(len(x), 40 * args.nlist), replace=False)]
    for factory, depths in ((f"IVF{args.nlist},Flat", (1,)), (f"IVF{args.nlist},PQ{x.shape[1] // 2}x4fs", (1, 8, 32)),
                            (f"IVF{args.nlist},PQ{x.shape[1] // 4}", (1, 8, 32))):
        index = faiss.index_factory(x.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
        index.train(train)
        index.add(x)
        for nprobe in (8, 16, 32, 64, 128):
            index.nprobe = nprobe
            for depth in depths:
                t = time.perf_counter()
                got_q = refined(index, x, queries, 10, depth)
                ms = 1e3 * (time.perf_counter() - t) / len(queries)
                got_p = refined(index, x, pseudo, 11, depth)
                print(json.dumps({"factory": factory, "nprobe": nprobe, "refine": depth,
                                  "queries": recall(got_q, truth_q), "pseudo": recall(got_p, truth_p, own),
                                  "ms": round(ms, 2)}), flush=True)
    index = faiss.index_factory(x.shape[1], "HNSW32", faiss.METRIC_INNER_PRODUCT)
    index.add(x)
    for ef in (32, 64, 128, 256):
        index.hnsw.efSearch = ef
        got_q, got_p = index.search(queries, 10)[1], index.search(pseudo, 11)[1]
        print(json.dumps({"factory": "HNSW32", "efSearch": ef, "queries": recall(got_q, truth_q),
                          "pseudo": recall(got_p, truth_p, own)}), flush=True)


if __name__ == "__main__":
    main()
