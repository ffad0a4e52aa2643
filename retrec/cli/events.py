"""`retrec events`: append user actions from files to an event log, read them back, see where consumers are.

A log is a folder (the embedded segment log) or a ``redis://HOST:PORT/DB?key=NAME`` URL (Redis Streams).
Files are JSON Lines (one event an object a line) or one JSON array; every event is checked before any is appended
(a bad line is named by file and line, and nothing of that file is appended).

Example::

    retrec events append --log runs/events clicks.jsonl
    retrec events read --log runs/events --from 0 --max 5
    retrec events show --log redis://127.0.0.1:6379/0?key=retrec:events
"""

from __future__ import annotations

import contextlib
import itertools
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from retrec.cli.common import JSON_HELP, _fail, events_app, print_json

LOG_HELP = "the event log: a folder, or redis://HOST:PORT/DB?key=NAME"


def _chunks(path: Path, size: int) -> Iterator[list[tuple[int, Any]]]:
    """``(line, row)`` lists of at most ``size``: a JSON Lines file streamed, a JSON array or stdin read whole."""
    name = "stdin" if str(path) == "-" else str(path)
    text = sys.stdin.read() if str(path) == "-" else None
    with contextlib.ExitStack() as stack:
        lines: Iterator[str] = iter(text.splitlines()) if text is not None else stack.enter_context(
            open(path, encoding="utf-8"))
        first = next(lines, "")
        if first.lstrip().startswith("["):  # one JSON array (line 1 for every element)
            whole = first + "".join(lines) if text is None else text
            try:
                rows = [(1, row) for row in json.loads(whole)]
            except json.JSONDecodeError as exc:
                raise ValueError(f"{name}:{exc.lineno}: not valid JSON ({exc.msg})") from None
            for start in range(0, len(rows), size):
                yield rows[start:start + size]
            return
        chunk: list[tuple[int, Any]] = []
        for number, line in enumerate(itertools.chain([first], lines), 1):
            if not line.strip():
                continue
            try:
                chunk.append((number, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{name}:{number}: not valid JSON ({exc.msg})") from None
            if len(chunk) == size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk


@events_app.command("append")
def events_append(
    files: Annotated[list[Path], typer.Argument(help="JSON Lines files or JSON arrays of events ('-': stdin)")],
    log: Annotated[str, typer.Option(help=LOG_HELP)],
    default_type: Annotated[str | None, typer.Option(help="type of events that name none (e.g. view)")] = None,
    batch: Annotated[int, typer.Option(min=1, max=10_000, help="events appended at a time")] = 1000,
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Check every event of each file (a first pass), then append them in order (a second): all of a file or none
    of it. A file is streamed, never held whole (except a JSON array, or stdin, which is read once)."""
    from retrec.events import EventError, open_log, parse_events

    def events_of(path: Path) -> Iterator[list[Any]]:
        for chunk in _chunks(path, batch):
            try:
                yield parse_events([r for _, r in chunk], max_batch=batch, default_type=default_type)
            except EventError as exc:
                line = chunk[exc.index][0] if exc.index is not None else chunk[0][0]
                raise ValueError(f"{path}:{line}: {str(exc).split(': ', 1)[-1]}") from None

    appended = []
    try:
        target = open_log(log)
        for path in files:
            if str(path) == "-":
                checked = [e for events in events_of(path) for e in events]
                passes: Iterator[list[Any]] = iter([checked[i:i + batch] for i in range(0, len(checked), batch)])
            else:
                for _ in events_of(path):  # the first pass: refuse the file before anything of it is stored
                    pass
                passes = events_of(path)
            first, count = None, 0
            for events in passes:
                offset, n = target.append(events)
                first = offset if first is None else first
                count += n
            appended.append({"path": str(path), "events": count, "first_offset": first})
            if not as_json:  # (other writers may interleave between batches: offsets need not be contiguous)
                typer.echo(f"{path}: {count} events appended, the first at offset {first}" if count
                           else f"{path}: no events")
    except (ValueError, OSError, ConnectionError) as exc:
        raise _fail(str(exc)) from exc
    if as_json:
        print_json({"files": appended})


@events_app.command("read")
def events_read(
    log: Annotated[str, typer.Option(help=LOG_HELP)],
    from_offset: Annotated[int, typer.Option("--from", min=0, help="first offset")] = 0,
    max_events: Annotated[int, typer.Option("--max", min=1, help="at most this many")] = 20,
) -> None:
    """Print events as JSON Lines with their offsets."""
    from retrec.events import open_log

    try:
        for offset, event in open_log(log).read(from_offset, max_events):
            typer.echo(json.dumps({"offset": offset, **json.loads(event.to_json())}))
    except (ValueError, OSError, ConnectionError) as exc:
        raise _fail(str(exc)) from exc


@events_app.command("show")
def events_show(log: Annotated[str, typer.Option(help=LOG_HELP)]) -> None:
    """The log's backend, first and next offsets, durability and its consumers' committed offsets (JSON)."""
    from retrec.events import open_log

    try:
        typer.echo(json.dumps(open_log(log).describe(), indent=1))
    except (ValueError, OSError, ConnectionError) as exc:
        raise _fail(str(exc)) from exc
