"""Offline retrieval evaluation: run a retriever over a split's queries, score with ir-measures."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from retrec.console import ProgressLog
from retrec.data.beir import RetrievalData
from retrec.data.trec import rank_scores
from retrec.index.retriever import Hits, Retriever
from retrec.pipelines.eval.ir_metrics import RETRIEVAL_MEASURES, evaluate_run


class QueryMismatchError(ValueError):
    """A run that shares no query id with the qrels (most likely another split's or collection's run)."""


def check_query_ids(qrels: Mapping[str, object], run: Mapping[str, object]) -> list[str]:
    """Warnings for a run whose queries differ from the judged ones, as trec_eval -c treats them.

    A judged query missing from the run scores 0 on every measure; a run query without judgements is
    ignored. A run with no judged query at all is refused (:class:`QueryMismatchError`).
    """
    extra = sorted(set(run) - set(qrels))
    missing = sorted(set(qrels) - set(run))
    if run and len(extra) == len(run):
        raise QueryMismatchError(f"none of the run's {len(run)} queries is judged in the qrels "
                                 f"(e.g. {', '.join(extra[:3])})")
    warnings = []
    if missing:
        warnings.append(f"{len(missing)} judged queries have no hits in the run and score 0 "
                        f"(e.g. {', '.join(missing[:3])})")
    if extra:
        warnings.append(f"{len(extra)} run queries are not in the qrels and are ignored (e.g. {', '.join(extra[:3])})")
    return warnings


def run_retriever(
    retriever: Retriever, queries: Mapping[str, str], k: int = 1000, batch_size: int = 64, progress: bool = True
) -> dict[str, Hits]:
    """Ranked hits per query id, in batches with a progress bar."""
    ids = list(queries)
    run: dict[str, Hits] = {}
    batches = range(0, len(ids), batch_size)
    with ProgressLog(f"search {retriever.name}", total=len(ids), unit="queries", enabled=progress) as bar:
        for start in batches:  # a bar on a terminal, else a line every 10 s (a log shows it too)
            chunk = ids[start:start + batch_size]
            for qid, hits in zip(chunk, retriever.search([queries[q] for q in chunk], k)):
                run[qid] = hits
            bar.advance(len(chunk))
    return run


@dataclass
class EvalResult:
    name: str
    metrics: dict[str, float]
    per_query: dict[str, dict[str, float]]
    run: dict[str, Hits] = field(repr=False)
    seconds: float = 0.0
    index_seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    extra: dict[str, object] = field(default_factory=dict)  # e.g. a hybrid's fusion settings

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "retriever": self.name, **self.metrics, "queries": len(self.per_query),
            "index_seconds": round(self.index_seconds, 4), "search_seconds": round(self.seconds, 4),
            "qps": round(len(self.per_query) / self.seconds, 2) if self.seconds else 0.0, **self.extra}
        if self.warnings:
            out["warnings"] = self.warnings
        return out


def evaluate_retriever(
    retriever: Retriever, data: RetrievalData, k: int = 1000, progress: bool = True,
    measures: tuple[str, ...] = RETRIEVAL_MEASURES,
) -> EvalResult:
    start = time.perf_counter()
    run = run_retriever(retriever, data.query_texts(), k=k, progress=progress)
    seconds = time.perf_counter() - start
    return evaluate_hits(retriever.name, run, data.qrels_dict(), measures, seconds)


def evaluate_hits(
    name: str, run: Mapping[str, Hits] | Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]], measures: tuple[str, ...] = RETRIEVAL_MEASURES,
    seconds: float = 0.0,
) -> EvalResult:
    """Score ranked hits or ``{qid: {doc_id: score}}`` (as read from a run file) against qrels.

    Judged queries missing from the run score 0 and unjudged run queries are ignored, each with a warning
    in the result (see :func:`check_query_ids`).
    """
    warnings = check_query_ids(qrels, run)
    hits = {q: rank_scores(v) if isinstance(v, Mapping) else list(v) for q, v in run.items()}
    mean, per_query = evaluate_run(qrels, {q: dict(h) for q, h in hits.items()}, measures)
    return EvalResult(name, mean, per_query, hits, seconds, warnings=warnings)
