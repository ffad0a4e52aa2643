"""Zero-shot dense retrieval on BEIR SciFact (test split): all-MiniLM-L6-v2 through ONNX Runtime + FAISS.

    python benchmarks/dense_scifact.py [--data ../shared/data/scifact] [--threads N] [--torch-sample 1024]

Measures nDCG@10 of the packaged MiniLM (exported to ONNX, cached) with a Flat index; corpus encoding
seconds and docs/s (fp32 and int8, title + text, 256 tokens, length-sorted batches); torch eager vs
ONNX fp32 docs/s on the same document sample and threads; the int8 nDCG@10 delta; whether 4 Flat shards
return exactly what one Flat index returns (ids and scores, k=1000); recall@10 against Flat and search
QPS of HNSW32 and IVF256,PQ32x8. Prints a table and one JSON line. The load average is recorded: other
processes on the machine slow every timing down.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from retrec.process_env import available_cpus, configure_process

T = TypeVar("T")
MTEB_NDCG10 = 0.645  # MTEB / BEIR SciFact, sentence-transformers/all-MiniLM-L6-v2


def _timed(fn: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T, float]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def _recall_at_10(approx: list, exact: list) -> float:
    return float(np.mean([len({d for d, _ in a[:10]} & {d for d, _ in e[:10]}) / max(1, len(e[:10]))
                          for a, e in zip(approx, exact)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/scifact")
    parser.add_argument("--threads", type=int, default=None, help="default: the CPUs this process may use")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--torch-sample", type=int, default=1024,
                        help="documents for the torch-vs-ONNX docs/s comparison (0 = whole corpus)")
    parser.add_argument("--hnsw", default="HNSW32", help="factory string (efSearch set by --hnsw-params)")
    parser.add_argument("--hnsw-params", default="efSearch=128")
    parser.add_argument("--ivfpq", default="IVF256,PQ32x8")
    parser.add_argument("--ivfpq-params", default="nprobe=16")
    args = parser.parse_args()
    threads = configure_process(args.threads)
    load_before = os.getloadavg()

    import torch
    from rich.console import Console
    from rich.table import Table

    from retrec.data.beir import load_retrieval_data
    from retrec.index.dense_retriever import DenseRetriever
    from retrec.index.faiss_index import FaissIndex
    from retrec.models.text_encoder import TextEncoder, encode_texts, zero_shot_bundle
    from retrec.pipelines.eval.retrieval import evaluate_retriever
    from retrec.runtime.onnx_encoder import OnnxEncoder

    torch.set_num_threads(threads)
    data = load_retrieval_data(args.data, split="test")
    ids, texts = data.doc_texts(with_title=True)
    queries = list(data.query_texts().values())

    bundle, export_s = _timed(zero_shot_bundle)
    fp32 = OnnxEncoder(bundle, threads=threads, batch_size=args.batch_size)
    int8 = OnnxEncoder(bundle, variant="int8", threads=threads, batch_size=args.batch_size)

    doc_vecs, encode_s = _timed(fp32.encode_documents, texts)
    flat = DenseRetriever(fp32, FaissIndex.build(doc_vecs, ids, factory="Flat", encoder=fp32.manifest))
    flat_eval = evaluate_retriever(flat, data, progress=False)

    int8_vecs, int8_s = _timed(int8.encode_documents, texts)
    int8_ret = DenseRetriever(int8, FaissIndex.build(int8_vecs, ids, factory="Flat", encoder=int8.manifest))
    int8_eval = evaluate_retriever(int8_ret, data, progress=False)

    rng = np.random.default_rng(0)
    sample_idx = rng.choice(len(texts), size=min(args.torch_sample or len(texts), len(texts)), replace=False)
    sample = [texts[i] for i in sample_idx]
    _, onnx_sample_s = _timed(fp32.encode_documents, sample)
    eager = TextEncoder.from_pretrained()
    torch_vecs, torch_sample_s = _timed(encode_texts, eager, fp32.tokenizer, sample, fp32.max_doc_length,
                                        args.batch_size)
    torch_diff = float(np.abs(torch_vecs - doc_vecs[sample_idx]).max())

    q_vecs = fp32.encode_queries(queries)
    exact, flat_search_s = _timed(flat.index.search, q_vecs, 1000)
    four = FaissIndex.build(doc_vecs, ids, factory="Flat", shards=4, encoder=fp32.manifest)
    four_hits = four.search(q_vecs, 1000)
    identical = four_hits == exact
    exact10, flat10_s = _timed(flat.index.search, q_vecs, 10)

    approx = {}
    for label, factory, params in (("hnsw", args.hnsw, args.hnsw_params), ("ivfpq", args.ivfpq, args.ivfpq_params)):
        index, build_s = _timed(FaissIndex.build, doc_vecs, ids, factory=factory, encoder=fp32.manifest,
                                search_params=params)
        hits, search_s = _timed(index.search, q_vecs, 10)
        ndcg = evaluate_retriever(DenseRetriever(fp32, index), data, progress=False).metrics["nDCG@10"]
        approx[label] = {"factory": factory, "params": params, "build_s": round(build_s, 2),
                         "recall@10_vs_flat": round(_recall_at_10(hits, exact10), 4),
                         "qps_k10": round(len(queries) / search_s, 1), "nDCG@10": round(ndcg, 4)}

    result = {
        "dataset": "scifact/test", "documents": len(ids), "queries": len(queries), "model": fp32.manifest.name,
        "model_version": fp32.version, "threads": threads, "cpus": available_cpus(),
        **{k: round(v, 4) for k, v in flat_eval.metrics.items()},
        "mteb_nDCG@10": MTEB_NDCG10, "export_or_cache_s": round(export_s, 2),
        "encode_corpus_s_fp32": round(encode_s, 1), "docs_per_s_fp32": round(len(texts) / encode_s, 1),
        "encode_corpus_s_int8": round(int8_s, 1), "docs_per_s_int8": round(len(texts) / int8_s, 1),
        "nDCG@10_int8": round(int8_eval.metrics["nDCG@10"], 4),
        "nDCG@10_int8_delta": round(int8_eval.metrics["nDCG@10"] - flat_eval.metrics["nDCG@10"], 4),
        "sample_docs": len(sample), "sample_docs_per_s_onnx_fp32": round(len(sample) / onnx_sample_s, 1),
        "sample_docs_per_s_torch_eager": round(len(sample) / torch_sample_s, 1),
        "torch_vs_onnx_max_abs_diff": torch_diff,
        "end_to_end_qps_flat": round(len(queries) / flat_eval.seconds, 1),
        "flat_search_qps_k1000": round(len(queries) / flat_search_s, 1),
        "flat_qps_k10": round(len(queries) / flat10_s, 1),
        "four_shard_flat_identical_k1000": identical, **approx,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "machine": platform.processor() or platform.machine(),
    }

    base = fp32.manifest.config["base_model"]
    table = Table(title=f"SciFact test — zero-shot {base} (ONNX Runtime, {threads} threads)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("reference / note")
    rows = [
        ("nDCG@10 (fp32, Flat)", f"{result['nDCG@10']:.4f}", f"MTEB {MTEB_NDCG10}; target >= 0.64"),
        ("R@100", f"{result.get('R@100', float('nan')):.4f}", ""),
        ("corpus encoding fp32", f"{encode_s:.1f} s ({result['docs_per_s_fp32']} docs/s)", "target <= 240 s"),
        ("corpus encoding int8", f"{int8_s:.1f} s ({result['docs_per_s_int8']} docs/s)", ""),
        ("nDCG@10 int8 (delta)", f"{result['nDCG@10_int8']:.4f} ({result['nDCG@10_int8_delta']:+.4f})", ""),
        (f"docs/s on {len(sample)} docs: ONNX fp32 / torch eager",
         f"{result['sample_docs_per_s_onnx_fp32']} / {result['sample_docs_per_s_torch_eager']}",
         f"max |diff| {torch_diff:.1e}"),
        ("4-shard Flat == 1 Flat (k=1000)", str(identical), "ids and scores"),
        ("Flat search QPS (k=10 / k=1000)", f"{result['flat_qps_k10']} / {result['flat_search_qps_k1000']}", ""),
    ]
    for r in approx.values():
        rows.append((f"{r['factory']} ({r['params']})",
                     f"R@10 vs Flat {r['recall@10_vs_flat']:.4f}, {r['qps_k10']} QPS",
                     f"nDCG@10 {r['nDCG@10']:.4f}, build {r['build_s']} s"))
    rows.append(("load average before / after", f"{load_before[0]:.2f} / {os.getloadavg()[0]:.2f}",
                 f"{available_cpus()} CPUs; > CPUs means contended timings"))
    for row in rows:
        table.add_row(*row)
    Console(stderr=True).print(table)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
