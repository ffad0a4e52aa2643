"""`retrec eval` (retrieval: retrievers, index versions, hybrids, run files) and `retrec eval-rec`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from retrec.bundle import BundleError, atomic_write_text
from retrec.cli.choices import fusion_choice, protocol_choice, retriever_choice
from retrec.cli.common import JSON_HELP, PARAM_HELP, _fail, app, encoder_bundle, parse_params
from retrec.data.errors import DataError

MODEL_HELP = ("the model bundle of --retriever / --index / --component: the query encoder of encoded kinds "
              "(dense; default: the kind's zero-shot encoder, or the one an index recorded) — a retrec bundle, "
              "or a sentence-transformers/HF folder or Hub id (dense: exported once, cached). bm25 has none — "
              "a built index goes to --index")


def _measures(given: list[str] | None) -> tuple[tuple[str, ...], str]:
    """Reported measures (the defaults, then any others given) and the one --compare / tuning use."""
    import ir_measures

    from retrec.pipelines.eval.ir_metrics import RETRIEVAL_MEASURES

    names = []
    for m in given or []:
        try:
            names.append(str(ir_measures.parse_measure(m)))
        except Exception as exc:  # ir-measures raises several types for a bad name
            raise _fail(f"unknown measure {m!r} (ir-measures names, e.g. nDCG@10, RR@10, R@100, AP, P@5)") from exc
    extra = tuple(n for n in dict.fromkeys(names) if n not in RETRIEVAL_MEASURES)
    return (*RETRIEVAL_MEASURES, *extra), (names[0] if names else "nDCG@10")


def _weights(given: list[str] | None) -> dict[str, float] | None:
    if not given:
        return None
    out = {}
    for item in given:
        name, sep, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise _fail(f"--weight {item!r}: expected NAME=NUMBER, e.g. bm25=0.3") from None
        if not sep or not name.strip():
            raise _fail(f"--weight {item!r}: expected NAME=NUMBER, e.g. bm25=0.3")
    return out


def _tune_collection(data: Path, split: str, strict: bool) -> Any:
    """The tuning split's collection; without dev judgements, train (the split used is reported)."""
    from retrec.data.beir import load_retrieval_data

    try:
        return load_retrieval_data(data, split=split, strict=strict)
    except DataError as exc:
        if split != "dev" or "no qrels for split" not in str(exc):
            raise
        typer.secho("note: no dev judgements; fusion weights are tuned on the train split", err=True)
        return load_retrieval_data(data, split="train", strict=strict)


@app.command("eval")
def eval_cmd(
    data: Annotated[Path | None, typer.Option(
        help="BEIR or canonical Parquet folder (for --retriever/--index; optional with --run + --qrels)")] = None,
    retriever: Annotated[retriever_choice() | None, typer.Option(
        help="build this retriever over the collection in memory")] = None,
    model: Annotated[Path | None, typer.Option(help=MODEL_HELP)] = None,
    param: Annotated[list[str] | None, typer.Option(
        help=PARAM_HELP + " — for --retriever its build, for --index its load")] = None,
    index: Annotated[list[Path] | None, typer.Option(
        help="evaluate a built index version (`retrec index`; its kind from the manifest; repeatable: "
             "then named by folder)")] = None,
    component: Annotated[list[str] | None, typer.Option(
        help="--retriever hybrid: a retriever name or an index folder (repeatable, at least two)")] = None,
    fusion: Annotated[fusion_choice(), typer.Option(help="how --retriever hybrid combines rankings")] = "rrf",
    weight: Annotated[list[str] | None, typer.Option(
        help="fusion weight NAME=W (component name, index folder name or run file name; default 1)")] = None,
    rrf_k: Annotated[float, typer.Option(min=0.0, help="RRF constant")] = 60.0,
    depth: Annotated[int, typer.Option(min=1, help="hybrid: hits fetched per component (max(k, depth), as "
                                                   "served); --rerank: hits re-ranked per query")] = 100,
    rerank: Annotated[Path | None, typer.Option(
        help="a model/reranker bundle (`retrec train reranker`): each system's top --depth re-ranked, reported "
             "as a system of its own (FIRST>RERANKER) with its latency per query")] = None,
    rerank_weight: Annotated[float | None, typer.Option(
        min=0.0, max=1.0, help="--rerank: the first stage's share of the mixed score (0: the re-ranker alone, 1: "
                               "the first stage's order); default: the bundle's, chosen on dev in training")] = None,
    rerank_variant: Annotated[str, typer.Option(
        help="--rerank: the re-ranker's ONNX model, fp32 or int8 (when the bundle has it)")] = "fp32",
    rerank_max_length: Annotated[int | None, typer.Option(
        min=8, help="--rerank: tokens of a (query, document) pair; default: the bundle's (its training "
                     "length)")] = None,
    tune_weights: Annotated[bool, typer.Option(help="choose hybrid weights on --tune-split (grid, step 0.1)")] = False,
    tune_split: Annotated[str, typer.Option(help="split whose qrels tune the weights (no dev: train)")] = "dev",
    split: Annotated[str, typer.Option(help="qrels split")] = "test",
    qrels: Annotated[Path | None, typer.Option(
        help="qrels file (BEIR/TREC TSV or Parquet) instead of the folder's qrels/SPLIT")] = None,
    k: Annotated[int, typer.Option(min=1, help="documents retrieved per query")] = 1000,
    run: Annotated[list[Path] | None, typer.Option(help="evaluate TREC run file(s) (repeatable)")] = None,
    fuse: Annotated[fusion_choice() | None, typer.Option(help="fuse the --run files into one system")] = None,
    compare: Annotated[bool, typer.Option(
        help="paired test of every system against the first (a hybrid's components are systems too)")] = False,
    measure: Annotated[list[str] | None, typer.Option(
        help="extra measure (repeatable); the first is what --compare and --tune-weights use (nDCG@10)")] = None,
    run_out: Annotated[Path | None, typer.Option(
        help="write the TREC run of the first --index, --retriever or --fuse system here (re-ranked with "
             "--rerank)")] = None,
    per_query: Annotated[Path | None, typer.Option(help="write per-query values (JSON) here")] = None,
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
    strict: Annotated[bool, typer.Option(help="unknown ids in qrels are errors, not skips")] = False,
) -> None:
    """Evaluate retrievers, index versions, hybrids and/or TREC run files: nDCG@10, RR@10, R@100, R@1000, AP.
    With only --data (and --model): the default, BM25 fused by RRF with dense (or with the kind --model encodes).

    A judged query with no hits in a run scores 0 (trec_eval -c) and queries without judgements are ignored,
    each with a warning; a run sharing no query with the qrels is refused.
    """
    from retrec.console import console, metrics_table
    from retrec.data.beir import load_retrieval_data, qrels_to_dict, read_qrels
    from retrec.data.trec import rank_scores, read_run, write_run
    from retrec.pipelines.eval.compare import compare as paired
    from retrec.pipelines.eval.compare import comparison_table
    from retrec.pipelines.eval.hybrid import FusionSpec, evaluate_hybrid, fuse_runs
    from retrec.pipelines.eval.retrieval import QueryMismatchError, evaluate_hits, evaluate_retriever
    from retrec.pipelines.eval.retrievers import HYBRID, build_retriever, default_components, open_retriever
    from retrec.pipelines.eval.retrievers import component as make_component

    if model is not None:  # a sentence-transformers/HF folder or a Hub id: its exported encoder bundle
        model = encoder_bundle(model)
    if retriever is None and not index and not run:
        if data is None:
            raise _fail("give --data (the default: BM25 and dense fused), or --index DIR and/or --run FILE")
        try:  # the product default: every first stage available, fused by untuned RRF
            retriever, component = HYBRID, default_components(model)
        except (ValueError, OSError, BundleError) as exc:
            raise _fail(str(exc)) from exc
    if (retriever is not None or index) and data is None:
        raise _fail("--retriever and --index need --data (the collection's documents and queries)")
    if data is None and qrels is None:
        raise _fail("give --data (a collection) or --qrels FILE to evaluate run files against")
    if component and retriever != HYBRID:
        raise _fail("--component is for --retriever hybrid")
    if retriever == HYBRID and len(component or []) < 2:
        raise _fail("--retriever hybrid needs at least two --component (names or index folders)")
    if fuse and len(run or []) < 2:
        raise _fail("--fuse needs at least two --run files")
    if rerank is not None and data is None:
        raise _fail("--rerank needs --data (the documents' text)")
    if tune_weights and (retriever != HYBRID or data is None):
        raise _fail("--tune-weights is for --retriever hybrid with --data")
    measures, primary = _measures(measure)
    weights = _weights(weight)
    params = parse_params(param)
    if params and retriever in (None, HYBRID) and not index:
        raise _fail("--param is for --retriever NAME (not hybrid) or --index DIR")
    try:
        spec = FusionSpec(method=fusion, rrf_k=rrf_k, weights=weights, depth=depth)
        collection = None
        if data is not None:
            collection = load_retrieval_data(data, split=split, strict=strict, qrels_file=qrels)
            judged = collection.qrels_dict()
        else:
            judged = qrels_to_dict(read_qrels(qrels)[0])  # type: ignore[arg-type]
        results = []
        built_first = None  # what --run-out writes: the first system from --index / --retriever / --fuse
        for path in index or []:
            started = time.perf_counter()
            opened = open_retriever(path, collection, model, params)
            if len(index or []) > 1 or retriever is not None:
                opened.name = path.name  # several systems: each index version by its folder
            load_seconds = time.perf_counter() - started
            result = evaluate_retriever(opened, collection, k=k, progress=True, measures=measures)
            result.index_seconds = load_seconds
            results.append(result)
            built_first = built_first or result
        if retriever == HYBRID:
            assert collection is not None and data is not None
            parts = {}
            for spec_name in component or []:
                label, part = make_component(spec_name, collection, model)
                if label in parts:
                    raise ValueError(f"two components are called {label!r}; give index folders distinct names")
                parts[label] = part
            tune_on = _tune_collection(data, tune_split, strict) if tune_weights else None
            hybrid = evaluate_hybrid(parts, collection, spec, k=k, measures=measures, tune_on=tune_on,
                                     tune_measure=primary, progress=True)
            results += [*(hybrid.components if compare else []), hybrid.hybrid]
            built_first = built_first or hybrid.hybrid
        elif retriever is not None:
            assert collection is not None
            started = time.perf_counter()
            built = build_retriever(retriever, collection, model, progress=True, params=params)
            index_seconds = time.perf_counter() - started
            result = evaluate_retriever(built, collection, k=k, progress=True, measures=measures)
            result.index_seconds = index_seconds
            results.append(result)
            built_first = built_first or result
        read = {path.name: read_run(path) for path in run or []}
        if fuse:
            ranked = {name: {q: rank_scores(docs) for q, docs in r.items()} for name, r in read.items()}
            if compare:
                results += [evaluate_hits(name, r, judged, measures) for name, r in ranked.items()]
            run_spec = FusionSpec(method=fuse, rrf_k=rrf_k, weights=weights, depth=depth)
            fused = evaluate_hits(f"{fuse}({'+'.join(ranked)})", fuse_runs(ranked, k, run_spec), judged, measures)
            fused.extra = {"fusion": run_spec.to_json(), "components": list(ranked)}
            results.append(fused)
            built_first = built_first or fused
        else:
            results += [evaluate_hits(name, r, judged, measures) for name, r in read.items()]
        if rerank is not None:
            from retrec.pipelines.eval.rerank import rerank_result
            from retrec.runtime.reranker import OnnxReranker

            assert collection is not None
            reranker = OnnxReranker(rerank, variant=rerank_variant, max_length=rerank_max_length)
            reranked = {id(res): rerank_result(res, reranker, collection, depth, measures, progress=True,
                                               first_stage_weight=rerank_weight)
                        for res in results}
            results += list(reranked.values())
            if built_first is not None:  # --run-out writes the re-ranked run
                built_first = reranked[id(built_first)]
        if run_out and built_first is not None:
            write_run(run_out, built_first.run, tag=built_first.name)
    except QueryMismatchError as exc:
        raise _fail(f"query ids do not match the qrels of split {split!r}: {exc}") from exc
    except (DataError, BundleError, ValueError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from exc
    names = [res.name for res in results]
    if len(set(names)) != len(names):
        raise _fail(f"systems need distinct names, got {names}")
    for res in results:
        for warning in res.warnings:
            typer.secho(f"warning: {res.name}: {warning}", err=True, fg="yellow")
    comparisons = []
    if compare:
        if len(results) < 2:
            raise _fail("--compare needs at least two systems (retrievers, indexes, a hybrid, run files)")
        comparisons = paired({res.name: res.per_query for res in results}, primary)
    if per_query:
        atomic_write_text(per_query, json.dumps({res.name: res.per_query for res in results}, indent=1))
    if as_json:  # one shape for one system or several
        print(json.dumps({"systems": [res.to_json() for res in results],
                          "comparisons": [{**c.__dict__, "delta": c.delta} for c in comparisons]}))
        return
    if collection is not None:
        skipped = collection.report.skipped
        title = f"{data} [{split}] — {collection.report.summary()}" + (f" (skips: {skipped})" if skipped else "")
    else:
        title = f"qrels {qrels} — {len(judged)} judged queries"
    rows = {res.name: {**res.metrics, "queries": len(res.per_query)} for res in results}
    console.print(metrics_table(title, rows, [*measures, "queries"]))
    for res in results:
        if "fusion" in res.extra or "rerank" in res.extra:
            console.print(f"{res.name}: {json.dumps(res.extra)}", markup=False, highlight=False)
    if comparisons:
        console.print(comparison_table(comparisons))


@app.command("eval-rec")
def eval_rec_cmd(
    data: Annotated[Path, typer.Option(help="interactions: folder or file (Parquet, sequential, MovieLens)")],
    model: Annotated[list[str], typer.Option(
        help="popularity | markov | markov-decay | cooc (count baselines fitted here) or a recommender bundle "
             "folder of any kind (repeatable)")],
    protocol: Annotated[protocol_choice(), typer.Option(help="full ranking, or 100 sampled negatives")] = "full",
    split: Annotated[str, typer.Option(help="held-out item: test or valid")] = "test",
    seed: Annotated[int, typer.Option(help="seed for sampled negatives")] = 0,
    include_seen: Annotated[bool, typer.Option(help="rank already-seen items too")] = False,
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Leave-one-out evaluation of recommenders: HR@k, NDCG@k, MRR."""
    from retrec.console import console, metrics_table
    from retrec.data.interactions import leave_one_out, load_interactions, user_sequences
    from retrec.pipelines.eval.rec import evaluate_recommender
    from retrec.pipelines.eval.recommenders import build_recommender, vocabulary_of

    if split not in ("test", "valid"):
        raise _fail(f"split must be 'test' or 'valid', got {split!r}")
    exclude_seen = not include_seen
    try:
        loo = leave_one_out(user_sequences(load_interactions(data)))
        vocab = vocabulary_of(loo)
        results = {}
        for name in model:
            # the model masks seen items exactly when the evaluation ranks without them (full ranking)
            score = build_recommender(name, loo, vocab, target=split, exclude_seen=exclude_seen and protocol == "full")
            res = evaluate_recommender(score, loo, vocab, protocol=protocol, target=split, seed=seed,
                                       exclude_seen=exclude_seen, progress=True)
            results[name] = {**res.metrics, "users": int(res.metrics["users"])}
    except (DataError, BundleError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    if as_json:  # one shape for one model or several, as `retrec eval`'s
        print(json.dumps({"protocol": protocol, "items": len(vocab),
                          "systems": [{"model": name, **row} for name, row in results.items()]}))
        return
    cols = ["HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10", "NDCG@20", "MRR", "users"]
    console.print(metrics_table(f"{data} [{split}, protocol {protocol}, {len(vocab)} items]", results, cols))

