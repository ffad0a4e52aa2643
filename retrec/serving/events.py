"""``POST /v1/events``: a batch of user actions checked whole, then appended to the configured event log.

A batch is all or nothing: one bad event refuses it (422 naming the event and field, never echoing its values)
and nothing is appended; an accepted batch answers with its offsets once the log has it durably. A log that
cannot be reached is a 503 (retry) that names neither the URL's password nor the exception's text.

Example::

    intake = EventIntake(cfg)                        # cfg.events.log set
    await intake.append([{"user": "u1", "item": "i9", "timestamp": 1765000000, "type": "view"}])
    # {"accepted": 1, "first_offset": 0, "next_offset": 1}
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from retrec.events import EventError, EventLog, open_log, parse_events
from retrec.serving.config import ServingConfig
from retrec.serving.errors import ApiError

log = logging.getLogger("retrec.serving")


class Catalogue:
    """The item ids events may name, from a file (one id a line, or a Parquet ``item_id`` column), read again
    when the file changes (checked at most once a second)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._items: frozenset[str] = frozenset()
        self._stamp: tuple[float, int] | None = None
        self._checked = 0.0
        self._load()

    def _load(self) -> None:
        stat = self.path.stat()
        if self._stamp == (stat.st_mtime, stat.st_size):
            return
        if self.path.suffix == ".parquet":
            import pyarrow.parquet as pq

            items = pq.read_table(self.path, columns=["item_id"]).column("item_id").to_pylist()
        else:
            items = [line.strip() for line in self.path.read_text(encoding="utf-8").splitlines()]
        self._items = frozenset(str(i) for i in items if i)
        self._stamp = (stat.st_mtime, stat.st_size)

    def first_unknown(self, items: list[str]) -> int | None:
        """The position of the first item not in the catalogue, or None."""
        now = time.monotonic()
        if now - self._checked >= 1.0:
            self._checked = now
            try:
                self._load()
            except OSError:  # a file being replaced: keep the last good catalogue
                log.warning("events.catalogue %s could not be read; using the previous one", self.path.name)
        return next((i for i, item in enumerate(items) if item not in self._items), None)


def event_log_spec(cfg: ServingConfig) -> str:
    """The configured event log as :func:`retrec.events.open_log` takes it: a URL with ``$VAR`` expanded, or a
    folder resolved against ``base_dir``."""
    if cfg.events.log is None:
        raise ValueError("events.log is not configured")
    spec = os.path.expandvars(cfg.events.log)
    return spec if "://" in spec else cfg.resolve(spec)


class EventIntake:
    """The ingress's side of the event log: opened on first use, shared by the replica's requests."""

    def __init__(self, cfg: ServingConfig) -> None:
        self.options = cfg.events
        self.spec = event_log_spec(cfg)
        self.retry_after_s = cfg.limits.retry_after_s
        self.catalogue = Catalogue(Path(cfg.resolve(cfg.events.catalogue))) if cfg.events.catalogue else None
        self._log: EventLog | None = None
        self._lock = threading.Lock()
        self.accepted = 0

    def _open(self) -> EventLog:
        with self._lock:
            if self._log is None:
                options = {} if "://" in self.spec else {"fsync": self.options.fsync}
                self._log = open_log(self.spec, **options)
            return self._log

    def _unavailable(self, exc: BaseException) -> ApiError:
        log.error("event log unavailable: %s", exc.__class__.__name__)
        self._log = None if "://" in self.spec else self._log  # a broker connection is opened again next time
        return ApiError(503, "event_log_unavailable", "the event log cannot take events now; retry later",
                        {"Retry-After": str(self.retry_after_s)})

    async def append(self, rows: list[Any]) -> dict[str, int]:
        try:
            events = parse_events(rows, max_batch=self.options.max_batch, max_future_s=self.options.max_future_s)
        except EventError as exc:
            raise ApiError(422, "invalid_events", str(exc)) from None
        if self.catalogue is not None:
            unknown = self.catalogue.first_unknown([e.item for e in events])
            if unknown is not None:
                raise ApiError(422, "unknown_item", f"event {unknown}: item is not in the catalogue")
        try:
            first, count = await asyncio.to_thread(lambda: self._open().append(events))
        except (OSError, ConnectionError, TimeoutError) as exc:
            raise self._unavailable(exc) from None
        except Exception as exc:  # a broker's own errors (redis.RedisError, ...): the same answer
            if exc.__class__.__module__.split(".")[0] in ("redis", "retrec"):
                raise self._unavailable(exc) from None
            raise
        self.accepted += count
        return {"accepted": count, "first_offset": first, "next_offset": first + count}

    def describe(self) -> dict[str, Any]:
        """For ``/v1/models``: the backend and where (no secrets, no server path: a folder log by its name), and
        what this replica accepted."""
        where = self.spec.split("@")[-1] if "://" in self.spec else Path(self.spec).name
        return {"log": where, "accepted": self.accepted, "max_batch": self.options.max_batch}
