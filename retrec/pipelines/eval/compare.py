"""Paired comparison of runs on per-query values: mean delta, paired t-test, win/tie/loss, and its table.

Example::

    comparisons = compare({"bm25": per_query_a, "dense": per_query_b}, "nDCG@10")   # bm25 is the baseline
    console.print(comparison_table(comparisons))
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from rich.markup import escape
from rich.table import Table
from scipy import stats


@dataclass
class Comparison:
    baseline: str
    system: str
    measure: str
    baseline_mean: float
    system_mean: float
    p_value: float
    wins: int
    ties: int
    losses: int

    @property
    def delta(self) -> float:
        return self.system_mean - self.baseline_mean


def compare(
    per_query: Mapping[str, Mapping[str, Mapping[str, float]]], measure: str, baseline: str | None = None,
    tie_tolerance: float = 1e-9,
) -> list[Comparison]:
    """Compare every system against ``baseline`` (default: the first) on the queries they share.

    ``per_query`` is ``{system: {query_id: {measure: value}}}``. The p-value is a two-sided paired
    t-test (1.0 when the two systems agree on every query).
    """
    names = list(per_query)
    if len(names) < 2:
        raise ValueError("comparison needs at least two runs")
    base = baseline or names[0]
    out = []
    for name in names:
        if name == base:
            continue
        queries = sorted(set(per_query[base]) & set(per_query[name]))
        a = np.array([per_query[base][q][measure] for q in queries])
        b = np.array([per_query[name][q][measure] for q in queries])
        diff = b - a
        same = bool(np.all(np.abs(diff) <= tie_tolerance))
        p = 1.0 if same else float(stats.ttest_rel(b, a).pvalue)
        out.append(Comparison(base, name, measure, float(a.mean()), float(b.mean()), p,
                              int((diff > tie_tolerance).sum()), int((np.abs(diff) <= tie_tolerance).sum()),
                              int((diff < -tie_tolerance).sum())))
    return out


def comparison_table(comparisons: Iterable[Comparison]) -> Table:
    """A rich table of :func:`compare` results; p-values below 0.05 are starred."""
    table = Table(title="paired comparison (two-sided paired t-test)")
    for col in ("baseline", "system", "measure", "baseline", "system", "Δ", "p", "win/tie/loss"):
        table.add_column(col, justify="right" if col not in ("baseline", "system", "measure") else "left")
    for c in comparisons:
        mark = " *" if c.p_value < 0.05 else ""
        table.add_row(escape(c.baseline), escape(c.system), escape(c.measure), f"{c.baseline_mean:.4f}",
                      f"{c.system_mean:.4f}", f"{c.delta:+.4f}", f"{c.p_value:.3g}{mark}",
                      f"{c.wins}/{c.ties}/{c.losses}")
    return table
