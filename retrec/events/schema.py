"""One user action, and the strict check every event passes before it reaches a log.

An event is ``{user, item, timestamp, type}``: ids as strings (what the collisionless tables key on), the time in
Unix seconds, the action's type (``view``, ``click``, ``cart``, ``purchase``, ... — any short lowercase name).
:func:`parse_events` takes a decoded JSON batch (``POST /v1/events``, ``retrec events append``) and returns
:class:`Event` objects, or raises :class:`EventError` naming the first bad event and field — without echoing the
value back, so an error carries no input an attacker chose — and accepts nothing of a batch with one bad event.

Example::

    events = parse_events([{"user": "u1", "item": "B00X", "timestamp": 1733500000, "type": "purchase"}])
    events[0].to_json()            # '{"user":"u1","item":"B00X","timestamp":1733500000.0,"type":"purchase"}'
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["MAX_BATCH", "MAX_FUTURE_S", "MAX_ID_LENGTH", "Event", "EventError", "parse_events"]

MAX_BATCH = 1_000  # events a request may carry
MAX_ID_LENGTH = 256  # characters of a user or item id
MAX_FUTURE_S = 300.0  # how far ahead of this machine's clock a timestamp may be (clock skew, not the future)
MIN_TIMESTAMP = 0.0
FIELDS = ("user", "item", "timestamp", "type")
TYPE_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,31}")
SAFE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,31}")


class EventError(ValueError):
    """A batch refused whole: ``index`` is the first bad event's position (None: the batch itself)."""

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message if index is None else f"event {index}: {message}")
        self.index = index


@dataclass(frozen=True, slots=True)
class Event:
    user: str
    item: str
    timestamp: float
    type: str = "view"

    def to_json(self) -> str:
        return json.dumps({"user": self.user, "item": self.item, "timestamp": self.timestamp, "type": self.type},
                          separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> Event:
        """An event a log stored (already checked when it was appended)."""
        row = json.loads(text)
        return cls(row["user"], row["item"], float(row["timestamp"]), row["type"])


def _identifier(value: Any, field: str, index: int) -> str:
    if not isinstance(value, str):
        raise EventError(f"{field} must be a string, got {type(value).__name__}", index)
    if not value or len(value) > MAX_ID_LENGTH:
        raise EventError(f"{field} must be 1-{MAX_ID_LENGTH} characters, got {len(value)}", index)
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise EventError(f"{field} must not contain control characters", index)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate ("\ud800") JSON allows and UTF-8 cannot store
        raise EventError(f"{field} must be valid Unicode (no lone surrogates)", index) from None
    return value


def _timestamp(value: Any, index: int, now: float, max_future_s: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise EventError(f"timestamp must be a number (Unix seconds), got {type(value).__name__}", index)
    stamp = float(value)
    if not math.isfinite(stamp) or stamp < MIN_TIMESTAMP:
        raise EventError("timestamp must be a finite, non-negative number of Unix seconds", index)
    if stamp > now + max_future_s:
        raise EventError(f"timestamp is {stamp - now:.0f} s ahead of the server's clock (at most {max_future_s:.0f} s "
                         "allowed); is it in milliseconds?", index)
    return stamp


def parse_events(
    rows: Sequence[Any], *, max_batch: int = MAX_BATCH, max_future_s: float = MAX_FUTURE_S, now: float | None = None,
    default_type: str | None = None,
) -> list[Event]:
    """Every row checked as an event (exactly the fields ``user``, ``item``, ``timestamp``, ``type``; ``type`` may be
    left out when ``default_type`` is given), or :class:`EventError` for the first bad one."""
    if not isinstance(rows, Sequence) or isinstance(rows, (str, bytes)):
        raise EventError(f"events must be a list, got {type(rows).__name__}")
    if not rows:
        raise EventError("no events: send at least one")
    if len(rows) > max_batch:
        raise EventError(f"{len(rows)} events in one batch; at most {max_batch}")
    now = time.time() if now is None else now
    events = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise EventError(f"must be an object with {', '.join(FIELDS)}, got {type(row).__name__}", i)
        unknown = [k for k in row if k not in FIELDS]
        if unknown:  # named back only when it is a plain short name (an error never echoes arbitrary input)
            names = sorted(repr(k) if isinstance(k, str) and SAFE_NAME.fullmatch(k) else "(unprintable)"
                           for k in unknown)
            raise EventError(f"unknown field(s) {', '.join(names[:5])}; an event has exactly {', '.join(FIELDS)}", i)
        missing = [f for f in FIELDS if f not in row and not (f == "type" and default_type)]
        if missing:
            raise EventError(f"missing field(s) {', '.join(missing)}", i)
        kind = row.get("type", default_type)
        if not isinstance(kind, str) or not TYPE_PATTERN.fullmatch(kind):
            raise EventError("type must be a lowercase name of 1-32 letters, digits or _ starting with a letter", i)
        events.append(Event(_identifier(row["user"], "user", i), _identifier(row["item"], "item", i),
                            _timestamp(row["timestamp"], i, now, max_future_s), kind))
    return events
