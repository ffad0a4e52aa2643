"""`retrec eval` (retrieval) and `retrec eval-rec` (recommendation)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from retrec.bundle import BundleError
from retrec.cli.common import _fail, app
from retrec.data.errors import DataError


@app.command("eval")
def eval_cmd(
    data: Annotated[Path, typer.Option(help="BEIR folder or canonical Parquet folder")],
    retriever: Annotated[str | None, typer.Option(help="retriever name, e.g. bm25")] = None,
    model: Annotated[Path | None, typer.Option(help="model or index bundle for the retriever")] = None,
    split: Annotated[str, typer.Option(help="qrels split")] = "test",
    k: Annotated[int, typer.Option(min=1, help="documents retrieved per query")] = 1000,
    run: Annotated[list[Path] | None, typer.Option(help="evaluate TREC run file(s) (repeatable)")] = None,
    compare: Annotated[bool, typer.Option(help="paired test of every system against the first")] = False,
    measure: Annotated[str, typer.Option(help="measure used by --compare")] = "nDCG@10",
    run_out: Annotated[Path | None, typer.Option(help="write the retriever's TREC run here")] = None,
    per_query: Annotated[Path | None, typer.Option(help="write per-query values (JSON) here")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    strict: Annotated[bool, typer.Option(help="unknown ids in qrels are errors, not skips")] = False,
) -> None:
    """Evaluate a retriever and/or TREC run files: nDCG@10, RR@10, R@100, R@1000, AP (ir-measures)."""
    from retrec.console import console, metrics_table
    from retrec.data.beir import load_retrieval_data
    from retrec.data.trec import read_run, write_run
    from retrec.pipelines.compare import compare as paired
    from retrec.pipelines.compare import comparison_table
    from retrec.pipelines.evaluate import QueryMismatchError, evaluate_hits, evaluate_retriever
    from retrec.pipelines.metrics import RETRIEVAL_MEASURES
    from retrec.pipelines.retrievers import build_retriever

    if retriever is None and not run:
        raise _fail("give --retriever NAME and/or --run FILE")
    measures = RETRIEVAL_MEASURES if measure in RETRIEVAL_MEASURES else (*RETRIEVAL_MEASURES, measure)
    try:
        collection = load_retrieval_data(data, split=split, strict=strict)
        results = []
        if retriever is not None:
            started = time.perf_counter()
            r = build_retriever(retriever, collection, model)
            index_seconds = time.perf_counter() - started
            result = evaluate_retriever(r, collection, k=k, progress=not as_json, measures=measures)
            result.index_seconds = index_seconds
            results.append(result)
            if run_out:
                write_run(run_out, result.run, tag=retriever)
        qrels = collection.qrels_dict()
        for path in run or []:
            results.append(evaluate_hits(path.name, read_run(path), qrels, measures))
    except QueryMismatchError as exc:
        raise _fail(f"query ids do not match the qrels of split {split!r}: {exc}") from exc
    except (DataError, BundleError, ValueError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from exc
    names = [res.name for res in results]
    if len(set(names)) != len(names):
        raise _fail(f"systems need distinct names, got {names}")
    comparisons = []
    if compare:
        if len(results) < 2:
            raise _fail("--compare needs at least two systems (a retriever and/or --run files)")
        comparisons = paired({res.name: res.per_query for res in results}, measure)
    if per_query:
        per_query.write_text(json.dumps({res.name: res.per_query for res in results}, indent=1))
    if as_json:
        if len(results) == 1 and not compare:
            out: dict = results[0].to_json()
        else:
            out = {"systems": {res.name: res.to_json() for res in results},
                   "comparisons": [{**c.__dict__, "delta": c.delta} for c in comparisons]}
        print(json.dumps(out))
        return
    skipped = collection.report.skipped
    title = f"{data} [{split}] — {collection.report.summary()}" + (f" (skips: {skipped})" if skipped else "")
    rows = {res.name: {**res.metrics, "queries": len(res.per_query)} for res in results}
    console.print(metrics_table(title, rows, [*measures, "queries"]))
    if comparisons:
        console.print(comparison_table(comparisons))


@app.command("eval-rec")
def eval_rec_cmd(
    data: Annotated[Path, typer.Option(help="interactions: folder or file (Parquet, sequential, MovieLens)")],
    model: Annotated[list[str], typer.Option(help="recommender name or bundle (repeatable)")],
    protocol: Annotated[str, typer.Option(help="full | pop100 | uni100")] = "full",
    split: Annotated[str, typer.Option(help="held-out item: test or valid")] = "test",
    seed: Annotated[int, typer.Option(help="seed for sampled negatives")] = 0,
    include_seen: Annotated[bool, typer.Option(help="rank already-seen items too")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Leave-one-out evaluation of recommenders: HR@k, NDCG@k, MRR."""
    from retrec.console import console, metrics_table
    from retrec.data.interactions import leave_one_out, load_interactions, user_sequences
    from retrec.pipelines.evaluate_rec import PROTOCOLS, evaluate_recommender
    from retrec.pipelines.recommenders import build_recommender, vocabulary_of

    if protocol not in PROTOCOLS:
        raise _fail(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    if split not in ("test", "valid"):
        raise _fail(f"split must be 'test' or 'valid', got {split!r}")
    try:
        loo = leave_one_out(user_sequences(load_interactions(data)))
        vocab = vocabulary_of(loo)
        results = {}
        for name in model:
            score = build_recommender(name, loo, vocab, target=split)
            res = evaluate_recommender(score, loo, vocab, protocol=protocol, target=split, seed=seed,
                                       exclude_seen=not include_seen, progress=not as_json)
            results[name] = {**res.metrics, "users": int(res.metrics["users"])}
    except (DataError, BundleError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    if as_json:
        out = {"protocol": protocol, "items": len(vocab), **next(iter(results.values()))} if len(results) == 1 \
            else {"protocol": protocol, "items": len(vocab), "models": results}
        print(json.dumps(out))
        return
    cols = ["HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10", "NDCG@20", "MRR", "users"]
    console.print(metrics_table(f"{data} [{split}, protocol {protocol}, {len(vocab)} items]", results, cols))
