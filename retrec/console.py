"""Generic rich terminal rendering of results (the data itself stays plain dicts).

Tables specific to one concept live beside it (e.g. the paired comparison table in
:mod:`retrec.pipelines.eval.compare`).

Example::

    console.print(metrics_table("SciFact test", {"bm25": {"nDCG@10": 0.6762}}, ["nDCG@10"]))
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.rule import Rule
from rich.table import Table


def make_console(stderr: bool = False) -> Console:
    """A console for stdout (or stderr); piped or redirected, it prints tables and lines at their full width,
    never cut or wrapped at 80 columns ($COLUMNS still sets a width)."""
    out = Console(stderr=stderr)
    return out if out.is_terminal or "COLUMNS" in os.environ else Console(stderr=stderr, width=10_000)


console = make_console()


def metrics_table(title: str, rows: Mapping[str, Mapping[str, float]], columns: Sequence[str]) -> Table:
    """Systems by measures; names and title printed as given (``[test]`` is text, not markup)."""
    table = Table(title=escape(title))
    table.add_column("system")
    for col in columns:
        table.add_column(escape(col), justify="right")
    for name, values in rows.items():
        table.add_row(escape(name), *(_fmt(values.get(col)) for col in columns))
    return table


def rule(title: str) -> None:
    """A titled horizontal line, at most 100 columns wide (also in a log, where the console is unbounded)."""
    console.print(Rule(title), width=min(console.width, 100))


def plain_table(columns: Sequence[str], rows: Sequence[Sequence[object]], title: str | None = None,
                numeric: Sequence[str] = ()) -> Table:
    """A table of text cells, the ``numeric`` columns right-aligned."""
    table = Table(title=escape(title) if title else None)
    for col in columns:
        table.add_column(escape(col), justify="right" if col in numeric else "left")
    for row in rows:
        table.add_row(*(escape(str(cell)) for cell in row))
    return table


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if float(value).is_integer() and abs(value) >= 1:
        return f"{int(value)}"
    return f"{value:.4f}"


class ProgressLog:
    """Progress of long work: a rich bar on a terminal, otherwise a plain line every ``every_s`` seconds (and at
    the first and last update), so a non-interactive log (a RayJob, CI, ``| tee``) shows it too.

    ``columns`` and ``fields`` replace the bar's default look (name, bar, count, note, times); :meth:`set` moves
    it to a position with a line of one's own for the log.

    Example::

        with ProgressLog("encode", total=len(docs), unit="documents") as progress:
            for part in parts:
                ...
                progress.advance(len(part), note=f"{docs_per_s:.0f} docs/s")
    """

    def __init__(self, name: str, total: int, *, unit: str = "", enabled: bool = True, every_s: float = 10.0,
                 out: Console | None = None, columns: Sequence[ProgressColumn | str] | None = None,
                 fields: Mapping[str, object] | None = None, transient: bool = True) -> None:
        import time

        self._clock = time.monotonic
        self.console = out or make_console(stderr=True)
        self.name, self.total, self.unit, self.every_s = name, total, unit, every_s
        self.done = 0
        self.started = self._clock()
        self._last = float("-inf")  # the first update is always logged: the work has started
        self.lines = enabled and not self.console.is_terminal
        self.bar: Progress | None = None
        if enabled and self.console.is_terminal:
            look = columns or (TextColumn(f"[bold]{name}[/]"), BarColumn(), MofNCompleteColumn(),
                               TextColumn("{task.fields[note]}"), TimeElapsedColumn(), TimeRemainingColumn())
            self.bar = Progress(*look, console=self.console, transient=transient)
            self.task = self.bar.add_task(name, total=total, **(dict(fields) if fields is not None else {"note": ""}))

    def __enter__(self) -> ProgressLog:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def set(self, done: int, line: str, **fields: object) -> None:
        """Move to ``done``; the bar shows ``fields``, the log gets ``line`` when one is due (or at the end)."""
        self.done = done
        if self.bar is not None:
            self.bar.update(self.task, completed=done, **fields)
            return
        now = self._clock()
        if self.lines and (now - self._last >= self.every_s or done >= self.total):
            self._last = now
            self.say(line)

    def advance(self, n: int = 1, note: str = "") -> None:
        """``n`` more done; the log line counts them, with the time so far and an estimate of the time left."""
        done = self.done + n
        elapsed = self._clock() - self.started
        eta = f"{elapsed / done * (self.total - done):.0f}" if done else "?"
        unit = f" {self.unit}" if self.unit else ""
        self.set(done, f"{self.name}: {done}/{self.total}{unit} ({elapsed:.0f} s, about {eta} s left)"
                       f"{' ' + note if note else ''}", note=note)

    def say(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False)
