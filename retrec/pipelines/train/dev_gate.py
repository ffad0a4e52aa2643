"""The training gate: a trained model is exported only when its dev gain over the starting model is significant.

A dev gain at noise level is not a reason to ship (a dense run whose dev nDCG@10 rose 0.302 → 0.309 scored 0.301
against its start's 0.316 on test, p = 0.025). The loop keeps each dev query's value of the monitored metric for
the start and for the best evaluated weights (an adapter's ``evaluate()`` returns them under :data:`PER_QUERY`);
at the end :func:`paired_gain` bootstraps the mean paired difference over the dev queries, and the trained
weights are exported only when its one-sided lower bound at :data:`LEVEL` is above zero (the question is one-sided:
is the trained model better?) — otherwise the starting weights are, and the manifest says so (``dev_gate``). The
two-sided interval is reported beside it. (A two-sided 95% interval is a 97.5% one-sided test: on SciFact it
refused the default sparse run's dev gain of +0.029, [-0.002, +0.061], whose test gain was +0.068.)

Example::

    paired_gain({"q1": 0.5, "q2": 0.4}, {"q1": 0.6, "q2": 0.5})
    # {"queries": 2, "gain": 0.1, "interval": [0.1, 0.1], "lower_bound": 0.1, "level": 0.95, "significant": True}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["LEVEL", "PER_QUERY", "RESAMPLES", "dev_result", "paired_gain"]

PER_QUERY = "dev_per_query"  # an evaluate() key: {dev query id: value of the monitored metric}
LEVEL = 0.95
RESAMPLES = 10_000


def dev_result(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]], key: str,
               measure: str = "nDCG@10") -> dict[str, Any]:
    """An adapter's ``evaluate()`` result from a dev run: ``{key: mean, PER_QUERY: {query id: value}}``."""
    from retrec.pipelines.eval.ir_metrics import evaluate_run

    mean, per_query = evaluate_run(qrels, run, [measure])  # type: ignore[arg-type]
    return {key: mean[measure], PER_QUERY: {q: v[measure] for q, v in per_query.items()}}


def paired_gain(start: Mapping[str, float], trained: Mapping[str, float], *, level: float = LEVEL,
                resamples: int = RESAMPLES, seed: int = 0) -> dict[str, Any]:
    """The mean per-query gain of ``trained`` over ``start`` on the queries both scored, its percentile bootstrap
    interval at ``level`` (two-sided, seeded), its one-sided lower bound at ``level`` and whether that bound is above
    zero. Fewer than 2 queries: not significant.

    >>> paired_gain({"a": 0.0, "b": 0.0, "c": 0.0}, {"a": 0.5, "b": 0.4, "c": 0.6})["significant"]
    True
    >>> paired_gain({"a": 0.5, "b": 0.2}, {"a": 0.2, "b": 0.6})["significant"]
    False
    """
    queries = sorted(set(start) & set(trained))
    diffs = np.array([trained[q] - start[q] for q in queries], dtype=np.float64)
    if diffs.size < 2:
        return {"queries": int(diffs.size), "gain": float(diffs.mean()) if diffs.size else None,
                "interval": None, "lower_bound": None, "level": level, "significant": False}
    picks = np.random.default_rng(seed).integers(0, diffs.size, size=(resamples, diffs.size))
    means = diffs[picks].mean(axis=1)
    low, high, bound = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2, 1 - level])
    return {"queries": int(diffs.size), "gain": round(float(diffs.mean()), 6),
            "interval": [round(float(low), 6), round(float(high), 6)], "lower_bound": round(float(bound), 6),
            "level": level, "significant": bool(bound > 0)}
