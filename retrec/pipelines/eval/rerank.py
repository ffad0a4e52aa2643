"""Re-rank a first stage's run with a cross-encoder (``retrec eval --rerank BUNDLE --depth N``).

Each query's top ``depth`` hits are scored by the re-ranker against the documents' text (title + text, as
it was trained), mixed with their first-stage scores by the bundle's ``first_stage_weight``, and re-ordered;
hits below ``depth`` keep their order after them. The result carries the
re-ranking latency per query (mean, p50, p95 in ms) beside the metrics.

Example::

    first = evaluate_retriever(dense, collection)
    reranked = rerank_result(first, OnnxReranker("artifacts/scifact-reranker"), collection, depth=100)
    reranked.metrics["nDCG@10"], reranked.extra["rerank"]["p50_ms"]
"""

from __future__ import annotations

import time

import numpy as np
from rich.progress import track

from retrec.data.beir import RetrievalData
from retrec.index.retriever import Hits
from retrec.pipelines.eval.ir_metrics import RETRIEVAL_MEASURES
from retrec.pipelines.eval.retrieval import EvalResult, evaluate_hits
from retrec.runtime.reranker import OnnxReranker


def rerank_run(run: dict[str, Hits], queries: dict[str, str], texts: dict[str, str], reranker: OnnxReranker,
               depth: int, progress: bool = False,
               first_stage_weight: float | None = None) -> tuple[dict[str, Hits], list[float]]:
    """The re-ranked run and the seconds each query's re-ranking took (``first_stage_weight``: instead of the
    bundle's)."""
    out: dict[str, Hits] = {}
    seconds: list[float] = []
    for qid in track(list(run), description=f"rerank top {depth}", disable=not progress, transient=True):
        hits = run[qid]
        if qid not in queries:
            out[qid] = hits
            continue
        ids = [doc for doc, _ in hits]
        started = time.perf_counter()
        ranked, scores = reranker.rerank(queries[qid], ids, lambda d: texts.get(d, ""), depth=depth,
                                         first_scores=[s for _, s in hits], first_stage_weight=first_stage_weight)
        seconds.append(time.perf_counter() - started)
        out[qid] = [(d, float(s)) for d, s in zip(ranked, scores)]
    return out, seconds


def sweep_first_stage_weight(docs: dict[str, list[str]], model: dict[str, np.ndarray],
                             first: dict[str, np.ndarray],
                             qrels: dict[str, dict[str, int]]) -> tuple[float, dict[float, float]]:
    """nDCG@10 of each query's ``docs`` ordered by :func:`~retrec.runtime.reranker.interpolate` of the re-ranker's
    (``model``) and the first stage's (``first``) scores at every weight 0, 0.1, ..., 1, and the best weight (the
    smallest on ties)."""
    from retrec.pipelines.eval.ir_metrics import evaluate_run
    from retrec.runtime.reranker import interpolate

    table: dict[float, float] = {}
    for w in [round(0.1 * i, 1) for i in range(11)]:
        mixed = {q: dict(zip(docs[q], interpolate(model[q], first[q], w).tolist())) for q in docs}
        table[w] = evaluate_run({q: qrels[q] for q in docs}, mixed, ["nDCG@10"])[0]["nDCG@10"]
    best = max(table.values())
    return min(w for w, v in table.items() if v >= best - 1e-9), table


def tune_first_stage_weight(run: dict[str, Hits], queries: dict[str, str], texts: dict[str, str],
                            reranker: OnnxReranker, depth: int, qrels: dict[str, dict[str, int]],
                            progress: bool = False) -> tuple[float, dict[float, float]]:
    """The first-stage weight whose mix of ``run``'s top ``depth`` scores and the re-ranker's best ranks the
    judged queries of ``run`` (:func:`sweep_first_stage_weight`), and nDCG@10 at every weight.

    For a first stage other than the one the re-ranker's training chose its weight against: run it on
    held-out queries (never the test queries), then re-rank the test run with the weight found."""
    judged = [q for q in run if q in queries and q in qrels and run[q]]
    if not judged:
        raise ValueError("no judged query in the run to choose the first-stage weight on")
    heads = {q: run[q][:depth] for q in judged}
    model = {q: reranker.score(queries[q], [texts.get(d, "") for d, _ in heads[q]])
             for q in track(judged, description="first-stage weight", disable=not progress, transient=True)}
    return sweep_first_stage_weight({q: [d for d, _ in heads[q]] for q in judged}, model,
                                    {q: np.array([s for _, s in heads[q]]) for q in judged}, qrels)


def rerank_result(first: EvalResult, reranker: OnnxReranker, collection: RetrievalData, depth: int,
                  measures: tuple[str, ...] = RETRIEVAL_MEASURES, progress: bool = False,
                  first_stage_weight: float | None = None) -> EvalResult:
    """``first`` re-ranked (named ``FIRST>RERANKER``), scored against the collection's qrels
    (``first_stage_weight``: instead of the bundle's)."""
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    doc_ids, doc_texts = collection.doc_texts(with_title=True)
    texts = dict(zip(doc_ids, doc_texts))
    run, seconds = rerank_run(first.run, collection.query_texts(), texts, reranker, depth, progress,
                              first_stage_weight)
    result = evaluate_hits(f"{first.name}>{reranker.name}", run, collection.qrels_dict(), measures,
                           first.seconds + sum(seconds))
    ms = np.array(seconds) * 1e3 if seconds else np.zeros(1)
    result.extra = {"rerank": {"bundle": reranker.name, "version": reranker.version, "depth": depth,
                               "variant": reranker.variant, "max_length": reranker.max_length,
                               "first_stage_weight": reranker.first_stage_weight if first_stage_weight is None
                               else first_stage_weight,
                               "threads": reranker.threads, "mean_ms": round(float(ms.mean()), 1),
                               "p50_ms": round(float(np.percentile(ms, 50)), 1),
                               "p95_ms": round(float(np.percentile(ms, 95)), 1)}}
    result.index_seconds = first.index_seconds
    warning = reranker.dev_warning()
    if warning:
        result.warnings.append(warning)
    return result
