"""Offline fusion: hybrid retrievers and fused run files, with the functions serving uses.

Every fused ranking comes from :data:`retrec.index.fusion.FUSIONS` (``rrf``, ``minmax``, ``zscore``) — the same
code the Ray Serve ingress runs — over each component's top ``max(k, depth)`` hits, as serving fetches them. Weights
can be given or chosen by :func:`tune_weights`: a grid over the simplex (steps of ``step``), scored with one
measure on another split's queries (dev; train when a collection has no dev judgements).

Example::

    spec = FusionSpec(method="rrf", rrf_k=60, weights={"bm25": 0.3, "dense": 0.7})
    fused = fuse_runs({"bm25": bm25_run, "dense": dense_run}, k=1000, spec=spec)   # {qid: hits}
    best = tune_weights({"bm25": dev_bm25, "dense": dev_dense}, dev_qrels, spec, measure="nDCG@10")
    best.weights, best.value
    evaluate_hybrid({"bm25": bm25, "dense": dense}, test, spec, tune_on=dev).hybrid.metrics
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import product

from retrec.data.beir import RetrievalData
from retrec.index.fusion import FUSIONS
from retrec.index.retriever import Hits, Retriever
from retrec.pipelines.eval.ir_metrics import RETRIEVAL_MEASURES, evaluate_run
from retrec.pipelines.eval.retrieval import EvalResult, evaluate_hits, run_retriever

Run = Mapping[str, Hits]


@dataclass(frozen=True)
class FusionSpec:
    """How rankings are fused: method, RRF constant, per-component weights (None: all 1), fetch depth."""

    method: str = "rrf"
    rrf_k: float = 60.0
    weights: Mapping[str, float] | None = None
    depth: int = 100

    def __post_init__(self) -> None:
        if self.method not in FUSIONS:
            raise ValueError(f"unknown fusion {self.method!r}; choose one of {', '.join(FUSIONS)}")
        if self.depth < 1:
            raise ValueError(f"fusion depth must be >= 1, got {self.depth}")
        bad = {n: w for n, w in (self.weights or {}).items() if not w >= 0.0}
        if bad:
            raise ValueError(f"fusion weights must be >= 0, got {bad}")

    def fetch(self, k: int) -> int:
        """Hits fetched from each component for a fused top ``k`` (serving's ``max(k, depth)``)."""
        return max(k, self.depth)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"method": self.method, "depth": self.depth,
                                  "weights": dict(self.weights) if self.weights else None}
        if self.method == "rrf":
            out["rrf_k"] = self.rrf_k
        return out


def fuse(rankings: Mapping[str, Hits], k: int, spec: FusionSpec) -> Hits:
    """One query's fused top ``k`` of the components' rankings."""
    extra = {"rrf_k": spec.rrf_k} if spec.method == "rrf" else {}
    return FUSIONS[spec.method](rankings, k, weights=spec.weights, **extra)


def fuse_runs(runs: Mapping[str, Run], k: int, spec: FusionSpec) -> dict[str, Hits]:
    """Fuse whole runs query by query (a component without hits for a query contributes nothing)."""
    unknown = sorted(set(spec.weights or {}) - set(runs))
    if unknown:
        raise ValueError(f"weights name unknown components {unknown}; components: {', '.join(runs)}")
    queries = sorted({q for run in runs.values() for q in run})
    return {q: fuse({name: list(run.get(q, [])) for name, run in runs.items()}, k, spec) for q in queries}


def weight_grid(names: Sequence[str], step: float = 0.1) -> list[dict[str, float]]:
    """Every weighting of ``names`` on the simplex in multiples of ``step`` (equal weights first)."""
    if not 0.0 < step <= 1.0:
        raise ValueError(f"weight step must be in (0, 1], got {step}")
    units = round(1.0 / step)
    grid = [dict(zip(names, (u / units for u in combo)))
            for combo in product(range(units + 1), repeat=len(names)) if sum(combo) == units]
    equal = {n: 1.0 / len(names) for n in names}
    return [equal, *(g for g in grid if g != equal)]


@dataclass
class Tuned:
    """The weights :func:`tune_weights` chose, the value they reached and every weighting tried."""

    weights: dict[str, float]
    value: float
    measure: str
    tried: list[tuple[dict[str, float], float]] = field(repr=False)


def tune_weights(
    runs: Mapping[str, Run], qrels: Mapping[str, Mapping[str, int]], spec: FusionSpec, measure: str = "nDCG@10",
    k: int = 1000, step: float = 0.1,
) -> Tuned:
    """The grid weighting with the best mean ``measure`` on ``qrels`` (first one on ties)."""
    if len(runs) < 2:
        raise ValueError("tuning weights needs at least two components")
    tried = []
    for weights in weight_grid(list(runs), step):
        fused = fuse_runs(runs, k, replace(spec, weights=weights))
        mean, _ = evaluate_run(qrels, {q: dict(h) for q, h in fused.items()}, (measure,))
        tried.append((weights, next(iter(mean.values()))))
    best = max(range(len(tried)), key=lambda i: (tried[i][1], -i))
    return Tuned(weights=tried[best][0], value=tried[best][1], measure=measure, tried=tried)


@dataclass
class HybridResult:
    """The fused system's result and each component's (evaluated at ``k`` on the same queries)."""

    hybrid: EvalResult
    components: list[EvalResult]
    tuned: Tuned | None = None


def evaluate_hybrid(
    components: Mapping[str, Retriever], data: RetrievalData, spec: FusionSpec, *, k: int = 1000,
    measures: tuple[str, ...] = RETRIEVAL_MEASURES, tune_on: RetrievalData | None = None,
    tune_measure: str = "nDCG@10", progress: bool = True, name: str = "hybrid",
) -> HybridResult:
    """Run every component once at the fetch depth, fuse, evaluate; weights tuned on ``tune_on`` if given."""
    if len(components) < 2:
        raise ValueError(f"a hybrid needs at least two components, got {list(components)}")
    depth = spec.fetch(k)
    tuned = None
    if tune_on is not None:
        queries = tune_on.query_texts()
        tune_runs = {n: run_retriever(r, queries, k=depth, progress=progress) for n, r in components.items()}
        tuned = tune_weights(tune_runs, tune_on.qrels_dict(), spec, measure=tune_measure, k=k)
        spec = replace(spec, weights=tuned.weights)
    qrels = data.qrels_dict()
    runs: dict[str, dict[str, Hits]] = {}
    results = []
    for n, retriever in components.items():
        start = time.perf_counter()
        runs[n] = run_retriever(retriever, data.query_texts(), k=depth, progress=progress)
        seconds = time.perf_counter() - start
        results.append(evaluate_hits(n, {q: h[:k] for q, h in runs[n].items()}, qrels, measures, seconds))
    start = time.perf_counter()
    fused = fuse_runs(runs, k, spec)
    seconds = sum(r.seconds for r in results) + time.perf_counter() - start
    hybrid = evaluate_hits(name, fused, qrels, measures, seconds)
    hybrid.extra = {"fusion": spec.to_json(), "components": list(components)}
    if tuned is not None:
        hybrid.extra["tuned"] = {"split": tune_on.split if tune_on else None, "measure": tuned.measure,
                                 "value": tuned.value, "weights": tuned.weights, "grid": len(tuned.tried)}
    return HybridResult(hybrid, results, tuned)
