"""A re-ranker fast enough to leave on: quality and latency by candidate depth, ONNX variant and pair length.

Runs the product's default first stage once (BM25 and dense, ``--model``, fused by untuned RRF, each fetching
``--fetch``), then re-ranks its test run with one ``model/reranker`` bundle in every setting asked for, one after
the other in this process (side by side, the same machine state): ``VARIANT@MAX_LENGTH/DEPTH`` such as
``int8@256/20``. Each row reports nDCG@10 and the re-ranking latency per query (p50 / p95, ms; the first stage's
time not included: it is the same for every row), and the first stage alone is the first row. The lengths of the
(query, document) pairs in tokens are reported too (what a shorter ``max_length`` cuts).

Example::

    .venv/bin/python benchmarks/rerank_depth.py --data ../shared/data/scifact --model artifacts/dense \\
        --reranker artifacts/reranker --setting int8@256/20 --setting int8@256/50 --setting fp32@256/100 \\
        --json benchmarks/results/rerank_depth.json
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import time
from pathlib import Path

import numpy as np

from retrec.process_env import configure_process

configure_process()

SETTING = re.compile(r"^(fp32|int8)@(\d+)/(\d+)$")


def parse_setting(text: str) -> tuple[str, int, int]:
    """``VARIANT@MAX_LENGTH/DEPTH`` → (variant, max_length, depth)."""
    match = SETTING.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"setting {text!r}: expected VARIANT@MAX_LENGTH/DEPTH, e.g. int8@256/20")
    return match.group(1), int(match.group(2)), int(match.group(3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--model", type=Path, default=None, help="the dense bundle of the hybrid (default: zero-shot)")
    parser.add_argument("--reranker", type=Path, required=True)
    parser.add_argument("--setting", type=parse_setting, action="append", required=True,
                        help="VARIANT@MAX_LENGTH/DEPTH (repeatable), e.g. int8@256/20")
    parser.add_argument("--fetch", type=int, default=100, help="hits fetched per first-stage component")
    parser.add_argument("--weight", type=float, default=None, help="first-stage weight (default: the bundle's)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from retrec.data.beir import load_retrieval_data
    from retrec.pipelines.eval.hybrid import FusionSpec, evaluate_hybrid
    from retrec.pipelines.eval.rerank import rerank_result
    from retrec.pipelines.eval.retrievers import build_retriever, default_components
    from retrec.runtime.reranker import OnnxReranker

    collection = load_retrieval_data(args.data, split="test")
    names = default_components(args.model)
    parts = {n: build_retriever(n, collection, args.model if n != "bm25" else None) for n in names}
    first = evaluate_hybrid(parts, collection, FusionSpec(depth=args.fetch), k=args.fetch).hybrid
    print(f"first stage {first.name} ({'+'.join(names)}): nDCG@10 {first.metrics['nDCG@10']:.4f}", flush=True)
    rows = [{"setting": "first stage", "nDCG@10": first.metrics["nDCG@10"], "R@100": first.metrics["R@100"]}]

    doc_ids, doc_texts = collection.doc_texts(with_title=True)
    texts = dict(zip(doc_ids, doc_texts))
    queries = collection.query_texts()
    probe = OnnxReranker(args.reranker)
    pairs = [(queries[q], texts[d]) for q, hits in first.run.items() if q in queries for d, _ in hits[:20]]
    lengths = [len(ids) for ids, _ in probe.tokenizer.encode_pairs(pairs, 100_000)]
    pair_tokens = {p: int(np.percentile(lengths, p)) for p in (50, 90, 99)}
    print(f"pair tokens (top 20 of each query, untruncated): {pair_tokens}", flush=True)
    for variant, max_length, depth in args.setting:
        reranker = OnnxReranker(args.reranker, variant=variant, max_length=max_length)
        started = time.perf_counter()
        res = rerank_result(first, reranker, collection, depth, first_stage_weight=args.weight)
        info = res.extra["rerank"]
        row = {"setting": f"{variant}@{max_length}/{depth}", "variant": variant, "max_length": max_length,
               "depth": depth, "nDCG@10": res.metrics["nDCG@10"], "R@100": res.metrics["R@100"],
               "p50_ms": info["p50_ms"], "p95_ms": info["p95_ms"], "threads": info["threads"],
               "first_stage_weight": info["first_stage_weight"], "seconds": round(time.perf_counter() - started, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.node(),
              "cpus": len(__import__("os").sched_getaffinity(0)), "data": str(args.data),
              "model": str(args.model), "reranker": str(args.reranker), "first_stage": names,
              "fetch": args.fetch, "pair_tokens": pair_tokens, "rows": rows}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
