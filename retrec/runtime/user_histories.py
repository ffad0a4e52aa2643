"""Users' recent items, kept current from the event log: what ``/v1/recommend`` reads when a request names a user.

Seeded from an online model snapshot's ``histories.parquet`` (the histories the trainer held at the snapshot's
``source_offset``), then every event after that offset read as it is appended — the same store the trainer reads,
so a served history is the trainer's. Without a snapshot it reads the log from its first event.

Example::

    view = UserHistories.from_snapshot(open_log("runs/events"), Path("runs/online/current"), length=50)
    view.refresh()              # events appended since: how many were read
    view.get("u1")              # ['I0001', 'I0007', ...], oldest first; [] for a user never seen
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from pathlib import Path

import pyarrow.parquet as pq

from retrec.bundle import read_manifest
from retrec.events import EventLog
from retrec.runtime.online_model import HISTORIES

__all__ = ["UserHistories"]


class UserHistories:
    def __init__(self, log: EventLog, *, length: int = 50, start: int | None = None,
                 seed: Mapping[str, Sequence[str]] | None = None, max_users: int = 1_000_000) -> None:
        if length < 1 or max_users < 1:
            raise ValueError("length and max_users must be positive")
        self.log, self.length, self.max_users = log, length, max_users
        self.offset = log.start() if start is None else start
        self._users: OrderedDict[str, deque[str]] = OrderedDict()
        self._lock = threading.Lock()
        for user, items in (seed or {}).items():
            self._users[str(user)] = deque((str(i) for i in items), maxlen=length)

    @classmethod
    def from_snapshot(cls, log: EventLog, snapshot: Path, length: int = 50,
                      max_users: int = 1_000_000) -> UserHistories:
        """Seeded from an online snapshot's histories, read on from its ``source_offset``."""
        manifest = read_manifest(snapshot)
        start = int((manifest.config.get("online") or {}).get("source_offset", 0))
        seed: dict[str, list[str]] = {}
        if HISTORIES in manifest.files:
            for row in pq.read_table(manifest.file(HISTORIES)).to_pylist():
                seed[row["user"]] = row["items"]
        return cls(log, length=length, start=start, seed=seed, max_users=max_users)

    def refresh(self, max_events: int = 100_000, batch: int = 10_000) -> int:
        """Read what was appended since the last refresh (at most ``max_events``); how many events were read."""
        read = 0
        while read < max_events:
            events = self.log.read(self.offset, min(batch, max_events - read))
            if not events:
                break
            with self._lock:
                for _, event in events:
                    items = self._users.pop(event.user, None) or deque(maxlen=self.length)
                    items.append(event.item)
                    self._users[event.user] = items  # most recently active last
                    if len(self._users) > self.max_users:
                        self._users.popitem(last=False)
            self.offset = events[-1][0] + 1
            read += len(events)
        return read

    def get(self, user: str) -> list[str]:
        with self._lock:
            return list(self._users.get(user, ()))

    def __len__(self) -> int:
        return len(self._users)
