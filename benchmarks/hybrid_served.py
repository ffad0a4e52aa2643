"""Served hybrid == offline hybrid: every test query's fused ranking over HTTP equals the offline one.

Opens two built index versions offline (``retrec index ...``; the dense one with its query encoder), fuses their
rankings with :mod:`retrec.pipelines.eval.hybrid` (the functions ``retrec eval --retriever hybrid`` uses), then serves
the same two index versions with Ray Serve on 127.0.0.1 and asks ``/v1/search {"retriever": "hybrid"}`` with the
same fusion method, weights and depth for every query of the split. Reports how many rankings are identical
(doc ids in order) and the largest score difference; exits 1 when any ranking differs.

Example::

    .venv/bin/python benchmarks/hybrid_served.py --data ../shared/data/scifact --index bm25=runs/idx-bm25 \\
        --index dense=runs/idx-dense --fusion rrf --weight bm25=0.3 --weight dense=0.7 --k 10
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import httpx

from retrec.process_env import configure_process

configure_process()


def pairs(values: list[str]) -> dict[str, str]:
    out = {}
    for v in values:
        name, sep, rest = v.partition("=")
        if not sep:
            raise SystemExit(f"expected NAME=VALUE, got {v!r}")
        out[name] = rest
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--index", action="append", required=True, help="NAME=DIR (two or more)")
    parser.add_argument("--fusion", default="rrf", choices=["rrf", "minmax"])
    parser.add_argument("--weight", action="append", default=[], help="NAME=W")
    parser.add_argument("--rrf-k", type=float, default=60.0)
    parser.add_argument("--depth", type=int, default=100)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from retrec.data.beir import load_retrieval_data
    from retrec.index.generic import open_index, recorded_encoder
    from retrec.pipelines.eval.hybrid import FusionSpec, fuse_runs
    from retrec.pipelines.eval.retrieval import run_retriever
    from retrec.serving.launch import free_port, start, stop

    indexes = pairs(args.index)
    weights = {n: float(w) for n, w in pairs(args.weight).items()} or None
    spec = FusionSpec(method=args.fusion, rrf_k=args.rrf_k, weights=weights, depth=args.depth)
    queries = load_retrieval_data(args.data, split=args.split).query_texts()
    started = time.perf_counter()
    runs = {}
    for name, path in indexes.items():
        runs[name] = run_retriever(open_index(path), queries, k=spec.fetch(args.k), progress=False)
    offline = fuse_runs(runs, k=args.k, spec=spec)
    offline_s = time.perf_counter() - started

    retrievers = {}
    for name, path in indexes.items():
        from retrec.bundle import read_manifest

        encoder = recorded_encoder(read_manifest(path))
        retrievers[name] = {"index": str(Path(path).resolve()), "shards": {"replicas": 1, "num_cpus": 0},
                            **({"encoder": encoder} if encoder else {})}
    port = free_port()
    config = {"http_options": {"host": "127.0.0.1", "port": port},
              "applications": [{"name": "retrec", "route_prefix": "/", "import_path": "retrec.serving.app:build_app",
                                "args": {"retrievers": retrievers, "ingress": {"replicas": 1, "num_cpus": 0},
                                         "auth": {"mode": "none"}}}]}
    url = start(config, num_cpus=2)
    fusion: dict[str, object] = {"method": args.fusion, "depth": args.depth}
    if args.fusion == "rrf":
        fusion["rrf_k"] = args.rrf_k
    if weights:
        fusion["weights"] = weights
    same, differ, max_diff, examples = 0, 0, 0.0, []
    try:
        with httpx.Client(timeout=60.0) as client:
            for qid, text in queries.items():
                r = client.post(f"{url}/v1/search", json={"query": text, "k": args.k, "retriever": "hybrid",
                                                          "fusion": fusion})
                r.raise_for_status()
                served = [(h["doc_id"], h["score"]) for h in r.json()["hits"]]
                mine = offline[qid]
                if [d for d, _ in served] == [d for d, _ in mine]:
                    same += 1
                    max_diff = max([max_diff, *(abs(a[1] - b[1]) for a, b in zip(served, mine))])
                else:
                    differ += 1
                    if len(examples) < 3:
                        examples.append({"query_id": qid, "served": served[:5], "offline": mine[:5]})
    finally:
        stop()
    out = {"queries": len(queries), "identical_rankings": same, "different_rankings": differ,
           "max_score_diff": max_diff, "fusion": spec.to_json(), "k": args.k, "offline_seconds": round(offline_s, 1),
           "examples": examples}
    print(json.dumps(out))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
