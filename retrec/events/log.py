"""The event log's small interface, and :func:`open_log` choosing its backend from one string.

Offsets are contiguous integers from 0 in both backends; a consumer's committed offset is the next one it will
read (Kafka's convention), so ``commit(name, last_read + 1)`` after the work the events produced is durable means
a crash replays events and never skips one.

- a folder path: :class:`~retrec.events.segments.SegmentLog`, the embedded default (append-only segment files,
  fsync, committed offsets in files; no server);
- ``redis://HOST:PORT/DB?key=NAME``: :class:`~retrec.events.redis_log.RedisLog` over Redis Streams (a consumer
  group per consumer; the server should run with ``appendfsync always`` for no acknowledged event to be lost).

Example::

    log = open_log("runs/events")                   # or "redis://127.0.0.1:6379/0?key=retrec:events"
    first, count = log.append(parse_events(rows))
    for offset, event in log.read(log.committed("trainer"), 500): ...
    log.commit("trainer", offset + 1)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from retrec.events.schema import Event

__all__ = ["EventLog", "open_log"]


@runtime_checkable
class EventLog(Protocol):
    def append(self, events: Sequence[Event]) -> tuple[int, int]:
        """Store ``events`` durably, in order; ``(first offset, count)`` once they are (all or none)."""
        ...

    def read(self, from_offset: int, max_events: int) -> list[tuple[int, Event]]:
        """Up to ``max_events`` ``(offset, event)`` from ``from_offset`` on (fewer at the end of the log)."""
        ...

    def commit(self, consumer: str, offset: int, *, rewind: bool = False) -> None:
        """Record that ``consumer`` has done its work up to ``offset`` (exclusive), durably; never backwards unless
        ``rewind`` (to replay)."""
        ...

    def committed(self, consumer: str) -> int:
        """``consumer``'s committed offset (0 before its first commit)."""
        ...

    def end(self) -> int:
        """The offset the next appended event will get."""
        ...

    def start(self) -> int:
        """The first offset still held (:meth:`retain` removes events from the front)."""
        ...

    def retain(self, before_offset: int) -> int:
        """Remove events before ``before_offset`` (a backend may keep some: whole segments); how many went."""
        ...

    def describe(self) -> dict[str, Any]:
        """What an operator needs to know about it (backend, where, durability), secrets left out."""
        ...


def open_log(spec: str | Path, **options: Any) -> EventLog:
    """The log named by ``spec``: ``redis://``/``rediss://`` URLs open Redis Streams, anything else is a folder."""
    text = str(spec)
    if text.startswith(("redis://", "rediss://", "unix://")):
        from retrec.events.redis_log import RedisLog

        return RedisLog(text, **options)
    from retrec.events.segments import SegmentLog

    return SegmentLog(Path(text), **options)
