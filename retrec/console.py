"""Rich terminal rendering of results (the data itself stays plain dicts)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from rich.console import Console
from rich.table import Table

from retrec.pipelines.compare import Comparison

console = Console(stderr=False)


def metrics_table(title: str, rows: Mapping[str, Mapping[str, float]], columns: Sequence[str]) -> Table:
    table = Table(title=title)
    table.add_column("system")
    for col in columns:
        table.add_column(col, justify="right")
    for name, values in rows.items():
        table.add_row(name, *(_fmt(values.get(col)) for col in columns))
    return table


def comparison_table(comparisons: Iterable[Comparison]) -> Table:
    table = Table(title="paired comparison (two-sided paired t-test)")
    for col in ("baseline", "system", "measure", "baseline", "system", "Δ", "p", "win/tie/loss"):
        table.add_column(col, justify="right" if col not in ("baseline", "system", "measure") else "left")
    for c in comparisons:
        mark = " *" if c.p_value < 0.05 else ""
        table.add_row(c.baseline, c.system, c.measure, f"{c.baseline_mean:.4f}", f"{c.system_mean:.4f}",
                      f"{c.delta:+.4f}", f"{c.p_value:.3g}{mark}", f"{c.wins}/{c.ties}/{c.losses}")
    return table


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if float(value).is_integer() and abs(value) >= 1:
        return f"{int(value)}"
    return f"{value:.4f}"
