"""TAS-Balanced ablation on BEIR SciFact: each arm trained with the same budget and seed, scored on test.

    python benchmarks/dense_tasb.py --data ../shared/data/scifact --out runs/dense-tasb --minutes 12 \\
        [--arms baseline topic balanced tasb] [--json runs/dense-tasb/results.json]
    python benchmarks/dense_tasb.py --out runs/dense-tasb --arms default --reranker runs/reranker  # + re-ranking
        [--rerank-weight dev|bundle]   # the mix with the dense scores: chosen on held-out dev queries (default)

Arms add one TAS-B part at a time (every other setting is ``retrec train dense``'s default):

- ``baseline``  random batches, one uniform BM25 hard negative, in-batch cross-entropy on the judgements;
- ``topic``     + topic-aware sampling (batches from k-means clusters of the training queries);
- ``balanced``  + balanced margin sampling of negatives (BM25 ∪ zero-shot dense candidates);
- ``tasb``      + dual-teacher distillation (pairwise + in-batch Margin-MSE to the ensemble teacher);
- ``default``   ``retrec train dense`` with its defaults and full budget (``--default-minutes``), not an
                ablation arm: the acceptance run, scored in the same table.
- ``fp32-step`` the defaults with the training step as it was before issue 13 (``--precision fp32
                --doc-chunk 0 --no-grad-checkpoint --release-freed-memory``): what bf16, grouped passes and
                checkpointing change at the same budget.
- ``no-mask``   the defaults without judged-negative masking (``--no-mask-judged``).
- ``ce-teacher`` ``tasb`` with the cross-encoder ``--reranker BUNDLE`` (``retrec train reranker``) as the
                teacher of the margins and the Margin-MSE terms (``--teacher BUNDLE``), not the ensemble.

A finished arm (bundle with a manifest) is reused, so an interrupted benchmark continues where it stopped.
Each arm is evaluated through the serving path (ONNX Runtime fp32 + FAISS Flat, k=1000). The best arm is
compared with the zero-shot MiniLM and BM25 (paired t-test, win/tie/loss on nDCG@10), and TREC runs of
all systems are written under ``--out`` for ``retrec eval --run ... --compare``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from retrec.process_env import available_cpus, configure_process

ARMS: dict[str, dict[str, Any]] = {
    "baseline": {"sampling": "random", "negatives": "bm25", "distill_weight": 0.0},
    "topic": {"sampling": "topic", "negatives": "bm25", "distill_weight": 0.0},
    "balanced": {"sampling": "topic", "negatives": "balanced", "distill_weight": 0.0},
    "tasb": {"sampling": "topic", "negatives": "balanced", "distill_weight": 10.0},
    "default": {},  # `retrec train dense` as shipped, with its own (full) budget: --default-minutes
    # the defaults with the step as it was before issue 13: fp32, one padded pass, activations kept
    "fp32-step": {"precision": "fp32", "doc_chunk": 0, "grad_checkpoint": False, "keep_freed_memory": False},
    # the defaults without judged-negative masking (issue 13's ablation row)
    "no-mask": {"mask_judged": False},
    # tasb with the cross-encoder of --reranker as its teacher instead of the BM25 + zero-shot ensemble
    "ce-teacher": {"sampling": "topic", "negatives": "balanced", "distill_weight": 10.0},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/scifact")
    parser.add_argument("--out", type=Path, default=Path("runs/dense-tasb"))
    parser.add_argument("--minutes", type=float, default=12.0, help="training budget of every arm")
    parser.add_argument("--default-minutes", type=float, default=30.0, help="budget of the 'default' arm")
    parser.add_argument("--arms", nargs="+", default=["baseline", "topic", "balanced", "tasb"],
                        choices=list(ARMS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--int8", action="store_true", help="also score the best arm's int8 model")
    parser.add_argument("--reranker", type=Path, default=None,
                        help="a model/reranker bundle: the ce-teacher arm's teacher, and the best arm's test top "
                             "--rerank-depth re-ranked by it (a row with its latency per query)")
    parser.add_argument("--rerank-depth", type=int, default=100, help="0: no re-ranking row (--reranker only teaches)")
    parser.add_argument("--rerank-variant", default="fp32", choices=["fp32", "int8"])
    parser.add_argument("--rerank-weight", default="dev", choices=["dev", "bundle"],
                        help="mix of the re-ranker's and the dense scores: chosen on the held-out dev queries with "
                             "this first stage (dev), or the bundle's first_stage_weight (chosen against the "
                             "zero-shot first stage in training)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    threads = configure_process()
    load_before = os.getloadavg()

    from rich.console import Console

    from retrec.console import metrics_table
    from retrec.data.beir import load_retrieval_data
    from retrec.data.trec import write_run
    from retrec.index.bm25_index import BM25Index
    from retrec.index.dense_retriever import DenseRetriever
    from retrec.models.text_encoder import zero_shot_bundle
    from retrec.pipelines.eval.compare import compare, comparison_table
    from retrec.pipelines.eval.retrieval import EvalResult, evaluate_retriever
    from retrec.pipelines.train.text.dense import DenseTrainConfig, train_dense
    from retrec.process_env import cache_dir
    from retrec.runtime.onnx_encoder import OnnxEncoder

    console = Console()
    test = load_retrieval_data(args.data, split="test")
    ids, texts = test.doc_texts(with_title=True)
    args.out.mkdir(parents=True, exist_ok=True)

    retrievers: dict[str, DenseRetriever] = {}

    def score(name: str, bundle: Path, variant: str = "fp32") -> EvalResult:
        encoder = OnnxEncoder(bundle, variant=variant)
        retriever = DenseRetriever.build(encoder, ids, texts, factory="Flat", cache=cache_dir() / "embeddings")
        retrievers[name] = retriever
        result = evaluate_retriever(retriever, test, progress=False)
        result.name = name
        write_run(args.out / f"{name}.run", result.run, tag=name)
        return result

    rows: dict[str, dict[str, Any]] = {}
    results: dict[str, EvalResult] = {}
    for arm in args.arms:
        bundle = args.out / arm
        if not (bundle / "manifest.json").is_file():
            minutes = args.default_minutes if arm == "default" else args.minutes
            options = dict(ARMS[arm])
            if arm == "ce-teacher":
                if args.reranker is None:
                    parser.error("the ce-teacher arm needs --reranker BUNDLE")
                options["teacher"] = str(args.reranker)
            cfg = DenseTrainConfig(max_minutes=minutes, seed=args.seed, **options)
            console.print(f"[bold]{arm}[/]: {ARMS[arm]}, {minutes:g} min")
            train_dense(args.data, bundle, cfg, command=f"benchmarks/dense_tasb.py --minutes {minutes} ({arm})")
        started = time.perf_counter()
        results[arm] = score(arm, bundle)
        manifest = json.loads((bundle / "manifest.json").read_text())
        m = manifest["metrics"]
        rows[arm] = {**results[arm].metrics, "dev nDCG@10": m["dev_nDCG@10"] or 0.0, "steps": m["steps"],
                     "train min": m["train_seconds"] / 60, "eval s": time.perf_counter() - started}
    best = max(results, key=lambda a: results[a].metrics["nDCG@10"])
    results["zero-shot"] = score("zero-shot", zero_shot_bundle())
    rows["zero-shot"] = dict(results["zero-shot"].metrics)
    bm25 = evaluate_retriever(BM25Index.build(ids, texts), test, progress=False)
    bm25.name = "bm25"
    write_run(args.out / "bm25.run", bm25.run, tag="bm25")
    results["bm25"] = bm25
    rows["bm25"] = dict(bm25.metrics)
    if args.int8:
        results[f"{best}-int8"] = score(f"{best}-int8", args.out / best, variant="int8")
        rows[f"{best}-int8"] = dict(results[f"{best}-int8"].metrics)
    comparisons = compare({n: results[n].per_query for n in ("zero-shot", best, "bm25")}, "nDCG@10")
    comparisons += compare({n: results[n].per_query for n in ("bm25", best)}, "nDCG@10")
    weight_table: dict[str, Any] | None = None
    if args.reranker is not None and args.rerank_depth > 0:
        from retrec.pipelines.eval.rerank import rerank_result, tune_first_stage_weight
        from retrec.pipelines.eval.retrieval import run_retriever
        from retrec.pipelines.train.text.data import training_set
        from retrec.runtime.reranker import OnnxReranker

        reranker = OnnxReranker(args.reranker, variant=args.rerank_variant)
        weight = None  # the bundle's
        if args.rerank_weight == "dev":  # the mix with this first stage, chosen on the training split's held-out
            # dev queries (the ones both trainers held out: same seed and fraction), never on test
            ts = training_set(args.data, DenseTrainConfig(seed=args.seed))
            dev_run = run_retriever(retrievers[best], {q: ts.query_texts[q] for q in ts.dev_ids},
                                    k=args.rerank_depth, progress=False)
            weight, table = tune_first_stage_weight(dev_run, ts.query_texts, dict(zip(ts.doc_ids, ts.doc_texts)),
                                                    reranker, args.rerank_depth, ts.dev_qrels, progress=True)
            weight_table = {"dev_queries": len(ts.dev_ids), "chosen": weight, "dev_nDCG@10": table}
            console.print(f"first-stage weight on {len(ts.dev_ids)} dev queries: {weight} "
                          + " ".join(f"{w}:{v:.4f}" for w, v in table.items()))
        name = f"{best}>rerank@{args.rerank_depth}" + ("" if weight is None else f"_w{weight}")
        reranked = rerank_result(results[best], reranker, test, args.rerank_depth, progress=True,
                                 first_stage_weight=weight)
        reranked.name = name
        write_run(args.out / f"{name}.run", reranked.run, tag=name)
        results[name] = reranked
        lat = reranked.extra["rerank"]
        rows[name] = {**reranked.metrics, "rerank p50 ms": lat["p50_ms"], "rerank p95 ms": lat["p95_ms"]}
        comparisons += compare({n: results[n].per_query for n in (best, name)}, "nDCG@10")

    columns = ["nDCG@10", "R@100", "RR@10", "dev nDCG@10", "steps", "train min", "eval s",
               *(["rerank p50 ms", "rerank p95 ms"] if args.reranker is not None and args.rerank_depth > 0 else [])]
    console.print(metrics_table(f"SciFact test — TAS-B ablation, {args.minutes:g} min per arm, seed {args.seed}, "
                                f"{threads} threads", rows, columns))
    console.print(comparison_table(comparisons))
    out = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {available_cpus()} cpus",
           "threads": threads, "load_before": [round(x, 2) for x in load_before],
           "load_after": [round(x, 2) for x in os.getloadavg()], "minutes_per_arm": args.minutes,
           "seed": args.seed, "best": best, "rows": rows, "rerank_weight": weight_table,
           "comparisons": [{**c.__dict__, "delta": c.delta} for c in comparisons]}
    print(json.dumps(out))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
