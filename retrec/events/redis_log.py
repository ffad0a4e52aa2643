"""The event log on Redis Streams: one stream, contiguous integer offsets, a consumer group per consumer.

An append runs as one Lua script (atomic on the server): it takes the next offsets from a counter key and adds
each event with the explicit stream ID ``0-(offset + 1)``, so offsets are contiguous across any number of writers
and ``read(offset)`` is one ``XRANGE``. A consumer's commit moves its consumer group's last-delivered ID
(``XGROUP SETID``), which is what ``XINFO GROUPS`` shows operators. Durability is the server's: with
``appendonly yes`` and ``appendfsync always`` an acknowledged append survives a restart; anything weaker is
named in :meth:`RedisLog.describe` and logged once when the log opens.

URL: ``redis://[:PASSWORD@]HOST:PORT/DB?key=NAME`` (``key`` default ``retrec:events``; the counter is
``NAME:next``). The password never appears in errors or :meth:`describe`.

Example::

    log = RedisLog("redis://127.0.0.1:6379/0?key=retrec:events")
    log.append(events); log.read(0, 100); log.commit("trainer", 100)
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

from retrec.events.offsets import LogUnavailableError, OffsetError, check_commit, check_consumer
from retrec.events.schema import Event

__all__ = ["RedisLog"]

log = logging.getLogger(__name__)
DEFAULT_KEY = "retrec:events"
APPEND = """
local n = tonumber(redis.call('GET', KEYS[2]) or '0')
for i, event in ipairs(ARGV) do
  redis.call('XADD', KEYS[1], '0-' .. (n + i), 'e', event)
end
redis.call('SET', KEYS[2], n + #ARGV)
return n
"""


def _offset_of(stream_id: bytes | str) -> int:
    """The offset of stream ID ``0-(offset + 1)``."""
    text = stream_id.decode() if isinstance(stream_id, bytes) else stream_id
    ms, _, seq = text.partition("-")
    if ms != "0" or not seq.isdigit():
        raise ValueError("the stream holds an entry retrec did not write (its IDs are 0-N)")
    return int(seq) - 1


class RedisLog:
    """The :class:`~retrec.events.log.EventLog` of a Redis stream (``redis`` package; server 5.0 or later)."""

    def __init__(self, url: str, *, key: str | None = None, timeout_s: float = 5.0) -> None:
        import redis

        parts = urlsplit(url)
        query = parse_qs(parts.query)
        self.key = key or query.pop("key", [DEFAULT_KEY])[0]
        if not self.key or len(self.key) > 200:
            raise ValueError("the stream key must be 1-200 characters")
        self.where = f"{parts.scheme}://{parts.hostname or ''}:{parts.port or 6379}{parts.path or ''}"
        clean = parts._replace(query="").geturl()
        self.client = redis.Redis.from_url(clean, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        try:
            self._append = self.client.register_script(APPEND)
            self.durability = self._durability()
        except redis.RedisError as exc:
            raise LogUnavailableError(f"event log at {self.where}: {exc.__class__.__name__}") from None
        if self.durability != "appendfsync always":
            log.warning("event log at %s: the server runs with %s; an acknowledged event may be lost if it crashes "
                        "(set appendonly yes and appendfsync always)", self.where, self.durability)

    def _durability(self) -> str:
        import redis

        try:
            aof = self.client.config_get("appendonly").get("appendonly")
            fsync = self.client.config_get("appendfsync").get("appendfsync")
        except redis.ResponseError:  # CONFIG disabled (managed services): say so, do not guess
            self.client.ping()
            return "an unknown persistence setting (CONFIG is disabled)"
        if aof != "yes":
            return "appendonly no"
        return f"appendfsync {fsync}"

    @contextlib.contextmanager
    def _reach(self) -> Iterator[None]:
        """The server away, restarting or still loading its data: :class:`LogUnavailableError` (no URL, no secret)."""
        import redis

        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError) as exc:  # BusyLoadingError is a ConnectionError
            raise LogUnavailableError(f"event log at {self.where}: {exc.__class__.__name__}") from None

    def append(self, events: Sequence[Event]) -> tuple[int, int]:
        if not events:
            return self.end(), 0
        with self._reach():
            first = self._append(keys=[self.key, f"{self.key}:next"], args=[e.to_json() for e in events])
        return int(first), len(events)

    def end(self) -> int:
        with self._reach():
            return int(self.client.get(f"{self.key}:next") or 0)

    def start(self) -> int:
        with self._reach():
            first = self.client.xrange(self.key, "-", "+", count=1)
        return _offset_of(first[0][0]) if first else self.end()

    def read(self, from_offset: int, max_events: int) -> list[tuple[int, Event]]:
        if isinstance(from_offset, bool) or not isinstance(from_offset, int) or from_offset < 0:
            raise OffsetError(f"an offset is a non-negative integer, got {from_offset!r}")
        if max_events < 1:
            raise ValueError(f"max_events must be positive, got {max_events}")
        with self._reach():
            rows = self.client.xrange(self.key, f"0-{from_offset + 1}", "+", count=max_events)
        if not rows:  # at the end — or behind what retention removed; events appended since are read next time
            end = self.end()
            if from_offset > end:
                raise OffsetError(f"offset {from_offset} is beyond the log's end ({end})")
            start = self.start()
            if from_offset < start:
                raise OffsetError(f"offset {from_offset} was removed by retention (the log starts at {start})")
            return []
        first = _offset_of(rows[0][0])
        if first != from_offset:
            raise OffsetError(f"offset {from_offset} was removed by retention (the log starts at {first})")
        return [(_offset_of(stream_id), Event.from_json(fields[b"e"])) for stream_id, fields in rows]

    def _group(self, consumer: str) -> dict[str, Any] | None:
        import redis

        try:
            with self._reach():
                groups = self.client.xinfo_groups(self.key)
        except redis.ResponseError:  # no stream yet
            return None
        name = check_consumer(consumer).encode()
        return next((g for g in groups if g["name"] in (name, consumer)), None)

    def committed(self, consumer: str) -> int:
        group = self._group(consumer)
        return 0 if group is None else _offset_of(group["last-delivered-id"]) + 1

    def commit(self, consumer: str, offset: int, *, rewind: bool = False) -> None:
        import redis

        check_commit(offset, self.committed(consumer), self.end(), rewind)
        with self._reach():
            try:
                self.client.xgroup_create(self.key, check_consumer(consumer), id=f"0-{offset}", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
                self.client.xgroup_setid(self.key, consumer, id=f"0-{offset}")

    def consumers(self) -> dict[str, int]:
        import redis

        try:
            with self._reach():
                groups = self.client.xinfo_groups(self.key)
        except redis.ResponseError:
            return {}
        return {(g["name"].decode() if isinstance(g["name"], bytes) else g["name"]):
                _offset_of(g["last-delivered-id"]) + 1 for g in groups}

    def retain(self, before_offset: int) -> int:
        """Trim the events before ``before_offset``; the number removed."""
        with self._reach():
            return int(self.client.xtrim(self.key, minid=f"0-{before_offset + 1}", approximate=False))

    def describe(self) -> dict[str, Any]:
        return {"backend": "redis-streams", "where": self.where, "key": self.key, "durability": self.durability,
                "start": self.start(), "end": self.end(), "consumers": self.consumers()}
