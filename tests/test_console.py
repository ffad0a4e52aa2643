"""retrec.console.ProgressLog: plain lines when the output is not a terminal (a RayJob's log, CI, a pipe)."""

from __future__ import annotations

import io

from rich.console import Console

from retrec.console import ProgressLog


def test_progress_writes_plain_lines_when_not_a_terminal() -> None:
    buffer = io.StringIO()
    out = Console(file=buffer, force_terminal=False, width=200)
    with ProgressLog("encode", total=10, unit="documents", every_s=0.0, out=out) as progress:
        assert progress.bar is None
        progress.advance(4, note="40 docs/s")
        progress.advance(6)
    lines = buffer.getvalue().splitlines()
    assert lines[0].startswith("encode: 4/10 documents (") and lines[0].endswith("40 docs/s")
    assert lines[-1].startswith("encode: 10/10 documents (")


def test_progress_lines_are_rate_limited_but_the_first_and_last_are_always_written() -> None:
    buffer = io.StringIO()
    out = Console(file=buffer, force_terminal=False, width=200)
    with ProgressLog("prepare", total=100, every_s=3600.0, out=out) as progress:
        for _ in range(100):
            progress.advance(1)
    first, last = buffer.getvalue().splitlines()
    assert first.startswith("prepare: 1/100 (") and last.startswith("prepare: 100/100 (")
