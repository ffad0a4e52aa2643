"""Learned sparse retrieval against BM25 (and a trained dense model, fused), one run (issue 15, acceptance 1–4).

    python benchmarks/sparse_scifact.py --data ../shared/data/scifact --model runs/sparse \
        [--inference-free runs/sparse-if] [--dense runs/dense-tasb2/default] [--threads 1] [--json out.json]

Over the library's own classes (what `retrec eval --retriever sparse` runs), on the test split:

- every sparse bundle: nDCG@10, RR@10, R@100, R@1000 (exact inverted index, uint8 impacts); sparsity (mean
  non-zeros per document and per query), FLOPS (SPLADE's Σ_j p_q(j) p_d(j): the expected multiply-adds of a
  query–document pair) and postings read per query; latency one query per call on ``--threads`` threads
  (query encoding + search, and search alone), QPS = 1000 / mean ms;
- BM25 (bm25s, the project's index) on the same corpus and queries, timed the same way: the peer of the speed;
- with ``--dense``: the dense bundle (FAISS Flat), and the **hybrid** of the first sparse bundle with it:
  min-max or z-score fusion with the sparse weight chosen on a grid (or RRF) by nDCG@10 on the sparse bundle's held-out
  dev queries (its training split's seeded held-out share, the same the trainer early-stopped on), then applied
  to test, with paired t-tests against each single retriever.

Prints a table and one JSON line (also written to ``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--data", type=Path, default=Path("../shared/data/scifact"))
ap.add_argument("--model", type=Path, required=True, help="a model/sparse bundle (siamese)")
ap.add_argument("--inference-free", type=Path, help="a model/sparse bundle in inference-free mode")
ap.add_argument("--dense", type=Path, help="a model/dense bundle: dense row and the sparse + dense hybrid")
ap.add_argument("--threads", type=int, default=1, help="threads for encoding queries and searching (latency)")
ap.add_argument("--json", type=Path)
args = ap.parse_args()
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(args.threads)

import numpy as np  # noqa: E402

from retrec.bundle import load_bundle  # noqa: E402
from retrec.data.beir import load_retrieval_data  # noqa: E402
from retrec.index.bm25_index import BM25Index  # noqa: E402
from retrec.index.fusion import FUSIONS, rrf  # noqa: E402
from retrec.index.sparse_index import assemble_index  # noqa: E402
from retrec.pipelines.eval.compare import compare  # noqa: E402
from retrec.pipelines.eval.retrieval import evaluate_hits  # noqa: E402
from retrec.runtime.sparse_encoder import OnnxSparseEncoder  # noqa: E402

GRID = [round(w, 2) for w in np.arange(0.1, 0.95, 0.1)]


def ms(values: list[float]) -> dict[str, float]:
    a = np.array(values) * 1000
    return {"p50": round(float(np.percentile(a, 50)), 3), "p95": round(float(np.percentile(a, 95)), 3),
            "mean": round(float(a.mean()), 3), "qps": round(1000 / float(a.mean()), 1)}


def timed(fn, items: list) -> tuple[list, list[float]]:
    out, seconds = [], []
    for item in items:
        t0 = time.perf_counter()
        out.append(fn(item))
        seconds.append(time.perf_counter() - t0)
    return out, seconds


def sparse_system(bundle: Path, doc_ids: list[str], texts: list[str], queries: list[str]) -> dict:
    encoder = OnnxSparseEncoder(bundle, threads=args.threads)
    t0 = time.perf_counter()
    docs = encoder.encode_documents(texts, progress=sys.stderr.isatty())
    encode_s = time.perf_counter() - t0
    index = assemble_index(doc_ids, docs, encoder=encoder)
    vectors, encode_q = timed(lambda q: encoder.encode_queries([q])[0], queries)
    hits, search_s = timed(lambda v: index.search([v], 1000)[0], vectors)
    n = len(doc_ids)
    p_doc, p_query = np.zeros(encoder.dim), np.zeros(encoder.dim)
    for ids, _ in docs:
        p_doc[ids] += 1 / n
    for ids, _ in vectors:
        p_query[ids] += 1 / len(vectors)
    df = np.zeros(encoder.dim, np.int64)
    for s in index.shards:
        df += np.diff(s.postings.indptr)
    return {"bundle": str(bundle), "mode": encoder.mode, "index": index, "encoder": encoder, "hits": hits,
            "terms_per_document": round(float(np.mean([len(i) for i, _ in docs])), 1),
            "terms_per_query": round(float(np.mean([len(i) for i, _ in vectors])), 1),
            "flops": round(float(p_query @ p_doc), 3),
            "postings_per_query": round(float(np.mean([df[i].sum() for i, _ in vectors])), 1),
            "encode_documents_s": round(encode_s, 1),
            "latency_ms": ms([a + b for a, b in zip(encode_q, search_s)]), "search_ms": ms(search_s)}


def dev_queries(bundle: Path) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    """The held-out dev queries the sparse trainer early-stopped on (its seeded split of the train queries)."""
    from retrec.pipelines.train.text.config import SparseTrainConfig
    from retrec.pipelines.train.text.data import prepare

    cfg = SparseTrainConfig(**load_bundle(bundle).config["train"])
    ts = prepare(load_retrieval_data(args.data, split="train"), None, cfg)
    return {q: ts.query_texts[q] for q in ts.dev_ids}, ts.dev_qrels


def main() -> None:
    data = load_retrieval_data(args.data, split="test")
    doc_ids, texts = data.doc_texts(with_title=True)
    qtexts = data.query_texts()
    qids, queries = list(qtexts), list(qtexts.values())
    qrels = data.qrels_dict()
    systems: dict = {}
    rows: dict = {}
    bm25 = BM25Index.build(doc_ids, texts)
    hits, seconds = timed(lambda q: bm25.search([q], 1000)[0], queries)
    systems["bm25"] = evaluate_hits("bm25", dict(zip(qids, hits)), qrels)
    rows["bm25"] = {"latency_ms": ms(seconds)}
    sparse_rows = {"sparse": args.model, "sparse-inference-free": args.inference_free}
    kept: dict = {}
    for name, bundle in sparse_rows.items():
        if bundle is None:
            continue
        res = sparse_system(bundle, doc_ids, texts, queries)
        systems[name] = evaluate_hits(name, dict(zip(qids, res["hits"])), qrels)
        kept[name] = res
        rows[name] = {k: v for k, v in res.items() if k not in ("index", "encoder", "hits")}
        print(f"{name}: nDCG@10 {systems[name].metrics['nDCG@10']:.4f}", file=sys.stderr)
    if args.dense:
        from retrec.index.faiss_index import FaissIndex
        from retrec.runtime.onnx_encoder import OnnxEncoder

        dense_enc = OnnxEncoder(args.dense, threads=args.threads)
        dense_index = FaissIndex.build(dense_enc.encode_documents(texts), doc_ids, encoder=dense_enc.manifest)
        dense_hits = dense_index.search(dense_enc.encode_queries(queries), 1000)
        systems["dense"] = evaluate_hits("dense", dict(zip(qids, dense_hits)), qrels)
        rows["dense"] = {"bundle": str(args.dense)}
        dev_text, dev_qrels = dev_queries(args.model)
        sp = kept["sparse"]
        dev_list = list(dev_text.values())
        dev_runs = {"sparse": sp["index"].search(sp["encoder"].encode_queries(dev_list), 100),
                    "dense": dense_index.search(dense_enc.encode_queries(dev_list), 100)}
        choices = [("rrf", None)] + [(method, w) for method in ("minmax", "zscore") for w in GRID]

        def fuse(runs: dict, i: int, choice: tuple) -> list:
            one = {k: v[i][:100] for k, v in runs.items()}
            if choice[0] == "rrf":
                return rrf(one, 100)
            return FUSIONS[choice[0]](one, 100, weights={"sparse": choice[1], "dense": 1 - choice[1]})

        dev_scores = {}
        for choice in choices:
            fused = {q: fuse(dev_runs, i, choice) for i, q in enumerate(dev_text)}
            dev_scores[choice] = evaluate_hits("dev", fused, dev_qrels, measures=("nDCG@10",)).metrics["nDCG@10"]
        best = max(choices, key=lambda c: (dev_scores[c], c[0] == "rrf"))
        test_runs = {"sparse": sp["hits"], "dense": dense_hits}
        fused = {q: fuse(test_runs, i, best) for i, q in enumerate(qids)}
        systems["hybrid"] = evaluate_hits("hybrid", fused, qrels)
        rows["hybrid"] = {"fusion": best[0], "sparse_weight": best[1], "dev_queries": len(dev_text),
                          "dev_nDCG@10": round(dev_scores[best], 4),
                          "dev_grid": {f"{c[0]}{'' if c[1] is None else c[1]}": round(v, 4)
                                       for c, v in dev_scores.items()}}
        paired = {}
        for single in ("sparse", "dense"):  # hybrid minus the single retriever, per test query
            (c,) = compare({single: systems[single].per_query, "hybrid": systems["hybrid"].per_query}, "nDCG@10")
            paired[single] = {"delta": c.delta, "p_value": c.p_value, "wins": c.wins, "ties": c.ties,
                              "losses": c.losses}
        rows["hybrid"]["paired_vs"] = paired
    print(f"| system | nDCG@10 | RR@10 | R@100 | terms/doc | terms/query | FLOPS | p50 ms | "
          f"QPS ({args.threads} thread) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, res in systems.items():
        m, row = res.metrics, rows.get(name, {})
        lat = row.get("latency_ms", {})
        print(f"| {name} | {m['nDCG@10']:.4f} | {m.get('RR@10', np.nan):.4f} | {m.get('R@100', np.nan):.4f} "
              f"| {row.get('terms_per_document', '')} | {row.get('terms_per_query', '')} | {row.get('flops', '')} "
              f"| {lat.get('p50', '')} | {lat.get('qps', '')} |")
    result = {"benchmark": "sparse_scifact", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "threads": args.threads, "documents": len(doc_ids), "queries": len(qids),
              "systems": {n: {**r.metrics, **rows.get(n, {})} for n, r in systems.items()}}
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
