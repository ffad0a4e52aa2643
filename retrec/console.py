"""Generic rich terminal rendering of results (the data itself stays plain dicts).

Tables specific to one concept live beside it (e.g. the paired comparison table in
:mod:`retrec.pipelines.compare`).

Example::

    console.print(metrics_table("SciFact test", {"bm25": {"nDCG@10": 0.6762}}, ["nDCG@10"]))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rich.console import Console
from rich.table import Table

console = Console(stderr=False)


def metrics_table(title: str, rows: Mapping[str, Mapping[str, float]], columns: Sequence[str]) -> Table:
    table = Table(title=title)
    table.add_column("system")
    for col in columns:
        table.add_column(col, justify="right")
    for name, values in rows.items():
        table.add_row(name, *(_fmt(values.get(col)) for col in columns))
    return table


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if float(value).is_integer() and abs(value) >= 1:
        return f"{int(value)}"
    return f"{value:.4f}"
