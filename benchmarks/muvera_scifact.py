"""MUVERA against exact MaxSim with one trained multi-vector model (issue 16, acceptance 2, 3 and 4), one run.

    python benchmarks/muvera_scifact.py --data ../shared/data/scifact --model runs/mv-scifact \
        [--dense runs/dense-tasb2/default] [--settings 20:4:32,20:5:16] [--factories "auto;Flat;PQ640x8np"] \
        [--candidates 20,50,100,200] [--json out.json] [--plot out.png]

Encodes the test corpus's documents and queries once with the bundle's ONNX token encoder, then, over the
library's own index classes (what `retrec eval --retriever maxsim|muvera` runs):

- **exact MaxSim** (``index/maxsim``: brute force over every document's tokens): nDCG@10 etc. and per-query latency;
- **MUVERA** (``index/muvera``) for every FDE setting (``repetitions:simhash_bits:projection_dim``) × FAISS factory
  × candidate count: the share of exact MaxSim's top 10 it returns (re-ranking is exact, so a document it finds
  keeps its exact score), nDCG@10, per-query latency (p50/p95, one query per call: FDE encoding, FAISS search,
  re-ranking) and bytes per document (FDE raw, FDE as indexed, token store);
- with ``--dense``, the trained dense bi-encoder on the same queries (acceptance 3's peer), with a paired test.

Both searches use the same threads (``--threads``: BLAS and FAISS). ``--plot`` draws recall against latency per
setting (matplotlib: ``pip install -c requirements.txt -c requirements-plot.txt ".[plot]"``).
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
ap.add_argument("--model", type=Path, required=True, help="a model/multivector bundle")
ap.add_argument("--dense", type=Path, help="a model/dense bundle to compare with (same queries, same run)")
ap.add_argument("--settings", default="20:4:32,20:5:16,10:4:32", help="FDE repetitions:bits:projection_dim")
ap.add_argument("--factories", default="auto;Flat",
                help="FAISS factories for the FDE index, ';'-separated (auto: the kind's default, default_factory)")
ap.add_argument("--candidates", default="20,50,100,200")
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--json", type=Path)
ap.add_argument("--plot", type=Path)
args = ap.parse_args()
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(args.threads)  # before numpy is imported: brute force and MUVERA share these threads

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from retrec.data.beir import load_retrieval_data  # noqa: E402
from retrec.index.multivector import assemble_maxsim, assemble_muvera  # noqa: E402
from retrec.pipelines.eval.compare import compare  # noqa: E402
from retrec.pipelines.eval.retrieval import evaluate_hits  # noqa: E402
from retrec.runtime.fde import encode_documents as fde_documents  # noqa: E402
from retrec.runtime.fde import encode_queries as fde_queries  # noqa: E402
from retrec.runtime.token_encoder import OnnxTokenEncoder  # noqa: E402


def timed_search(index, queries: list[np.ndarray], k: int, **kw) -> tuple[list, np.ndarray]:
    hits, seconds = [], []
    for q in queries:
        t0 = time.perf_counter()
        hits.append(index.search([q], k, **kw)[0])
        seconds.append(time.perf_counter() - t0)
    return hits, np.array(seconds) * 1000


def ms(values: np.ndarray) -> dict[str, float]:
    return {"p50": round(float(np.percentile(values, 50)), 2), "p95": round(float(np.percentile(values, 95)), 2),
            "mean": round(float(values.mean()), 2)}


def dense_run(bundle: Path, doc_texts: list[str], doc_ids: list[str], qtexts: list[str]) -> list:
    from retrec.index.faiss_index import FaissIndex
    from retrec.runtime.onnx_encoder import OnnxEncoder

    encoder = OnnxEncoder(bundle, threads=args.threads)
    index = FaissIndex.build(encoder.encode_documents(doc_texts), doc_ids, encoder=encoder.manifest)
    return index.search(encoder.encode_queries(qtexts), 1000)


def main() -> None:
    faiss.omp_set_num_threads(args.threads)
    data = load_retrieval_data(args.data, split="test")
    doc_ids, texts = data.doc_texts(with_title=True)
    qids, qtexts = list(data.query_texts()), list(data.query_texts().values())
    qrels = data.qrels_dict()
    encoder = OnnxTokenEncoder(args.model, threads=args.threads)
    t0 = time.perf_counter()
    docs = encoder.encode_documents(texts, progress=sys.stderr.isatty())
    queries = encoder.encode_queries(qtexts)
    encode_s = time.perf_counter() - t0
    print(f"encoded {len(docs)} documents ({sum(map(len, docs))} tokens) and {len(queries)} queries in "
          f"{encode_s:.0f} s", file=sys.stderr)
    exact = assemble_maxsim(doc_ids, docs, encoder=encoder)
    exact_hits = exact.search(queries, 1000)  # for the measures (the float32 copy of the store made here)
    _, exact_ms = timed_search(exact, queries, 10)  # timed as MUVERA is: top 10, one query per call
    exact_top = [{d for d, _ in h[:10]} for h in exact_hits]
    exact_scores = np.stack([exact._exact(0, q) for q in queries])  # [queries, documents], the store's order
    systems = {"maxsim": evaluate_hits("maxsim", dict(zip(qids, exact_hits)), qrels)}
    result = {"benchmark": "muvera_scifact", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "model": str(args.model), "threads": args.threads, "documents": len(docs), "queries": len(queries),
              "doc_tokens_mean": round(float(np.mean([len(d) for d in docs])), 1), "encode_seconds": round(encode_s, 1),
              "maxsim": {**systems["maxsim"].metrics, "latency_ms": ms(exact_ms)}, "muvera": []}
    print(f"exact MaxSim: nDCG@10 {systems['maxsim'].metrics['nDCG@10']:.4f}, p50 {ms(exact_ms)['p50']} ms",
          file=sys.stderr)
    candidates = [int(c) for c in args.candidates.split(",")]
    for setting in args.settings.split(","):
        reps, bits, proj = (int(x) for x in setting.split(":"))
        correlation = None
        for factory in args.factories.split(";"):
            t0 = time.perf_counter()
            index = assemble_muvera(doc_ids, docs, encoder=encoder, factory=None if factory == "auto" else factory,
                                    repetitions=reps, simhash_bits=bits, projection_dim=proj)
            build_s = time.perf_counter() - t0
            shard = index.shards[0]
            if correlation is None:  # how well FDE inner products track exact MaxSim (acceptance 1)
                approx = fde_queries(queries, index.fde) @ fde_documents(docs, index.fde).T
                per_query = [np.corrcoef(a, e)[0, 1] for a, e in zip(approx, exact_scores)]
                pearson = float(np.corrcoef(approx.ravel(), exact_scores.ravel())[0, 1])
                correlation = {"pearson_all_pairs": round(pearson, 4),
                               "pearson_per_query_mean": round(float(np.mean(per_query)), 4)}
            fde_bytes = len(faiss.serialize_index(shard.fde)) / len(doc_ids)
            token_bytes = len(shard.tokens) * index.dim * 2 / len(doc_ids)
            for c in candidates:
                index.search(queries[:2], 10, candidates=c)
                hits, lat = timed_search(index, queries, 10, candidates=c)
                recall = float(np.mean([len({d for d, _ in h} & e) / max(1, len(e)) for h, e in zip(hits, exact_top)]))
                name = f"muvera R{reps} b{bits} p{proj} {factory} c{c}"
                res = evaluate_hits(name, dict(zip(qids, hits)), qrels, measures=("nDCG@10",))
                systems[name] = res
                row = {"repetitions": reps, "simhash_bits": bits, "projection_dim": proj,
                       "factory": shard.fde_factory + (" (default)" if factory == "auto" else ""),
                       "fde_dim": index.fde.output_dim, "candidates": c, "recall_of_exact_top10": round(recall, 4),
                       "nDCG@10": res.metrics["nDCG@10"], "latency_ms": ms(lat),
                       "speedup_p50": round(float(np.percentile(exact_ms, 50) / np.percentile(lat, 50)), 1),
                       "build_seconds": round(build_s, 1), **correlation,
                       "bytes_per_document": {"fde_raw": index.fde.output_dim * 4, "fde_indexed": round(fde_bytes, 1),
                                              "tokens_float16": round(token_bytes, 1)}}
                result["muvera"].append(row)
                print(json.dumps(row), file=sys.stderr)
    if args.dense:
        dense = dense_run(args.dense, texts, doc_ids, qtexts)
        systems["dense"] = evaluate_hits("dense", dict(zip(qids, dense)), qrels)
        result["dense"] = {"bundle": str(args.dense), **systems["dense"].metrics}
        (cmp,) = compare({"dense": systems["dense"].per_query, "maxsim": systems["maxsim"].per_query}, "nDCG@10")
        result["maxsim_vs_dense"] = {"delta": cmp.delta, "p_value": cmp.p_value, "wins": cmp.wins, "ties": cmp.ties,
                                     "losses": cmp.losses}
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if args.plot:
        plot(result, args.plot)


def plot(result: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    groups: dict[str, list[dict]] = {}
    for row in result["muvera"]:
        label = f"R={row['repetitions']} bits={row['simhash_bits']} proj={row['projection_dim']} {row['factory']}"
        groups.setdefault(label, []).append(row)
    for label, rows in groups.items():
        xs = [r["latency_ms"]["p50"] for r in rows]
        ys = [r["recall_of_exact_top10"] for r in rows]
        ax.plot(xs, ys, marker="o", label=f"{label} ({rows[0]['fde_dim']}-d)")
        for r, x, y in zip(rows, xs, ys):
            ax.annotate(str(r["candidates"]), (x, y), textcoords="offset points", xytext=(3, -10), fontsize=7)
    exact = result["maxsim"]["latency_ms"]["p50"]
    ax.axvline(exact, color="grey", linestyle="--", label=f"exact MaxSim brute force ({exact:.0f} ms)")
    ax.axhline(0.95, color="red", linestyle=":", linewidth=1, label="95% of the exact top 10")
    ax.set_xscale("log")
    ax.set_xlabel("p50 latency per query, ms (log; labels: re-ranked candidates)")
    ax.set_ylabel("share of exact MaxSim's top 10 returned")
    ax.set_title(f"MUVERA vs exact MaxSim, SciFact test ({result['queries']} queries, {result['threads']} threads)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=120)


if __name__ == "__main__":
    main()
