"""BM25 on BEIR SciFact (test split, title+text): quality, time to index, query throughput.

    python benchmarks/bm25_scifact.py [--data ../shared/data/scifact] [--repeats 3]

Prints one JSON line: nDCG@10 etc. (ir-measures), median index seconds, median QPS (k=1000,
single process, threads capped to the CPUs given), with the published references beside them.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

from retrec.process_env import available_cpus, configure_process

PUBLISHED = {"BEIR (Elasticsearch BM25)": 0.665, "Anserini BM25 flat": 0.6789, "Anserini BM25 multifield": 0.6647}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/scifact")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    configure_process()
    from retrec.data.beir import load_retrieval_data
    from retrec.index.bm25_index import BM25Index
    from retrec.pipelines.eval.retrieval import evaluate_retriever

    data = load_retrieval_data(args.data, split="test")
    ids, texts = data.doc_texts(with_title=True)
    index_times, qps, metrics = [], [], {}
    for _ in range(args.repeats):
        start = time.perf_counter()
        index = BM25Index.build(ids, texts)
        index_times.append(time.perf_counter() - start)
        result = evaluate_retriever(index, data, k=1000, progress=False)
        qps.append(len(result.per_query) / result.seconds)
        metrics = result.metrics
    print(json.dumps({
        "dataset": "scifact/test", "documents": len(ids), "queries": len(data.query_texts()),
        **{k: round(v, 4) for k, v in metrics.items()},
        "index_seconds_median": round(statistics.median(index_times), 3),
        "qps_median": round(statistics.median(qps), 1),
        "published_nDCG@10": PUBLISHED, "cpus": available_cpus(), "machine": platform.processor() or platform.machine(),
    }))


if __name__ == "__main__":
    main()
