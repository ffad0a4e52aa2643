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

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from retrec.cli.common import _fail, events_app

LOG_HELP = "the event log: a folder, or redis://HOST:PORT/DB?key=NAME"


def _rows(path: Path) -> list[tuple[int, Any]]:
    """``(line, row)`` of a JSON Lines file or a JSON array (line 1 for every element); DataError-like messages."""
    text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    name = "stdin" if str(path) == "-" else str(path)
    if text.lstrip().startswith("["):
        try:
            return [(1, row) for row in json.loads(text)]
        except json.JSONDecodeError as exc:
            raise ValueError(f"{name}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append((number, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{name}:{number}: not valid JSON ({exc.msg})") from None
    return rows


@events_app.command("append")
def events_append(
    files: Annotated[list[Path], typer.Argument(help="JSON Lines files or JSON arrays of events ('-': stdin)")],
    log: Annotated[str, typer.Option(help=LOG_HELP)],
    default_type: Annotated[str | None, typer.Option(help="type of events that name none (e.g. view)")] = None,
    batch: Annotated[int, typer.Option(min=1, help="events appended at a time")] = 1000,
) -> None:
    """Check every event of each file, then append them in order (all of a file, or none of it)."""
    from retrec.events import EventError, open_log, parse_events

    try:
        target = open_log(log)
        for path in files:
            rows = _rows(path)
            events = []
            for start in range(0, len(rows), batch):
                chunk = rows[start:start + batch]
                try:
                    events += parse_events([r for _, r in chunk], max_batch=batch, default_type=default_type)
                except EventError as exc:
                    line = chunk[exc.index][0] if exc.index is not None else chunk[0][0]
                    raise ValueError(f"{path}:{line}: {str(exc).split(': ', 1)[-1]}") from None
            first = target.end()
            for start in range(0, len(events), batch):
                first_offset, _ = target.append(events[start:start + batch])
                first = min(first, first_offset)
            typer.echo(f"{path}: {len(events)} events appended (offsets {first}-{first + len(events) - 1})"
                       if events else f"{path}: no events")
    except (ValueError, OSError, ConnectionError) as exc:
        raise _fail(str(exc)) from exc


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
