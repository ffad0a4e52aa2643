"""The embedded event log: append-only segment files in one folder, no server needed.

Layout: ``FOLDER/{first offset:020d}.seg`` segments, each a run of records ``<length u32><crc32 u32><JSON event>``
(little-endian), a new segment once the last one passes ``segment_bytes``; ``FOLDER/consumers/NAME.json`` holds a
consumer's committed offset (written atomically); ``FOLDER/append.lock`` serialises writers across processes.

Crash safety, as Kafka's log recovery does it: an append is acknowledged only after ``fsync``; a writer that died
mid-append leaves an invalid record at the end of the last segment, and the next writer truncates the segment at
its first invalid record (logged) before appending. Readers never lock: they stop at the first record that is not
whole yet. Offsets are positions in the log, contiguous from 0; :meth:`SegmentLog.retain` deletes whole segments
that every consumer has passed.

Example::

    log = SegmentLog(Path("runs/events"))
    log.append(parse_events(rows))          # (first offset, count), durable when it returns
    log.read(0, 100)                        # [(0, Event(...)), ...]
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import itertools
import json
import logging
import os
import struct
import threading
import zlib
from array import array
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from retrec.atomic import atomic_write_bytes
from retrec.events.offsets import OffsetError, check_commit, check_consumer
from retrec.events.schema import Event

__all__ = ["SEGMENT_BYTES", "SegmentLog"]

log = logging.getLogger(__name__)
HEADER = struct.Struct("<II")
SEGMENT_BYTES = 64 << 20
SUFFIX = ".seg"
MIN_PAYLOAD = 2  # "{}": a zero-filled tail (length 0, crc 0) is not a record


class SegmentLog:
    """The :class:`~retrec.events.log.EventLog` of a folder (created when missing)."""

    def __init__(self, folder: Path, *, fsync: bool = True, segment_bytes: int = SEGMENT_BYTES) -> None:
        if segment_bytes < 1024:
            raise ValueError(f"segment_bytes must be at least 1024, got {segment_bytes}")
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise ValueError(f"{self.folder}: not a folder (an event log is a folder of segments)")
        (self.folder / "consumers").mkdir(parents=True, exist_ok=True)
        self.fsync, self.segment_bytes = fsync, segment_bytes
        self._positions: dict[int, array] = {}  # segment's first offset -> byte positions of its known records
        self._scanned: dict[int, int] = {}  # segment's first offset -> end of its last known whole record
        self._mutex = threading.Lock()

    # -- segments -------------------------------------------------------------------------------------------
    def _path(self, first: int) -> Path:
        return self.folder / f"{first:020d}{SUFFIX}"

    def _segments(self) -> list[int]:
        names = (p.name[: -len(SUFFIX)] for p in self.folder.glob(f"*{SUFFIX}"))
        return sorted(int(n) for n in names if len(n) == 20 and n.isdigit())

    def _scan(self, first: int) -> array:
        """The byte positions of segment ``first``'s whole records, extended from where the last scan stopped."""
        positions = self._positions.setdefault(first, array("q"))
        pos = self._scanned.get(first, 0)
        try:
            with open(self._path(first), "rb") as fh:
                fh.seek(pos)
                data = fh.read()
        except FileNotFoundError:  # removed by retention since the listing
            return positions
        at = 0
        while at + HEADER.size <= len(data):
            length, crc = HEADER.unpack_from(data, at)
            end = at + HEADER.size + length
            if length < MIN_PAYLOAD or end > len(data) or zlib.crc32(data[at + HEADER.size:end]) != crc:
                break
            positions.append(pos + at)
            at = end
        self._scanned[first] = pos + at
        return positions

    @contextlib.contextmanager
    def _writer(self) -> Iterator[None]:
        with self._mutex, open(self.folder / "append.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _sync_folder(self) -> None:
        if self.fsync:
            fd = os.open(self.folder, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    # -- the interface --------------------------------------------------------------------------------------
    def append(self, events: Sequence[Event]) -> tuple[int, int]:
        payloads = [e.to_json().encode("utf-8") for e in events]
        if not payloads:
            return self.end(), 0
        data = b"".join(HEADER.pack(len(p), zlib.crc32(p)) + p for p in payloads)
        with self._writer():
            segments = self._segments() or [0]
            first = segments[-1]
            path = self._path(first)
            path.touch(exist_ok=True)
            positions = self._scan(first)
            good = self._scanned[first]
            size = path.stat().st_size
            if size > good:  # a writer died mid-append: its records were never acknowledged
                log.warning("%s: truncating %d bytes of an interrupted append at byte %d", path.name, size - good,
                            good)
                with open(path, "r+b") as fh:
                    fh.truncate(good)
                    if self.fsync:
                        os.fsync(fh.fileno())
            if good >= self.segment_bytes and positions:
                first += len(positions)
                path = self._path(first)
                path.touch()
                self._sync_folder()
                positions, good = self._scan(first), 0
            with open(path, "ab") as fh:
                fh.write(data)
                fh.flush()
                if self.fsync:
                    os.fsync(fh.fileno())
            offset = first + len(positions)
            at = good
            for p in payloads:
                positions.append(at)
                at += HEADER.size + len(p)
            self._scanned[first] = at
            return offset, len(payloads)

    def end(self) -> int:
        with self._mutex:
            segments = self._segments()
            return segments[-1] + len(self._scan(segments[-1])) if segments else 0

    def start(self) -> int:
        """The first offset still held (retention removes whole segments from the front)."""
        segments = self._segments()
        return segments[0] if segments else 0

    def read(self, from_offset: int, max_events: int) -> list[tuple[int, Event]]:
        if isinstance(from_offset, bool) or not isinstance(from_offset, int) or from_offset < 0:
            raise OffsetError(f"an offset is a non-negative integer, got {from_offset!r}")
        if max_events < 1:
            raise ValueError(f"max_events must be positive, got {max_events}")
        with self._mutex:
            segments = self._segments()
            if not segments:
                if from_offset:
                    raise OffsetError(f"offset {from_offset} is beyond the log's end (0)")
                return []
            if from_offset < segments[0]:
                raise OffsetError(f"offset {from_offset} was removed by retention (the log starts at {segments[0]})")
            out: list[tuple[int, Event]] = []
            i = bisect.bisect_right(segments, from_offset) - 1
            offset = from_offset
            for first in segments[i:]:
                positions = self._scan(first)
                j = offset - first
                if j >= len(positions):
                    continue
                take = positions[j: j + max_events - len(out)]
                stop = positions[j + len(take)] if j + len(take) < len(positions) else self._scanned[first]
                with open(self._path(first), "rb") as fh:
                    fh.seek(take[0])
                    data = fh.read(stop - take[0])
                for pos in take:
                    at = pos - take[0]
                    length, _ = HEADER.unpack_from(data, at)
                    out.append((offset, Event.from_json(data[at + HEADER.size: at + HEADER.size + length])))
                    offset += 1
                if len(out) >= max_events:
                    break
            end = segments[-1] + len(self._positions.get(segments[-1], ()))
            if not out and from_offset > end:
                raise OffsetError(f"offset {from_offset} is beyond the log's end ({end})")
            return out

    def _consumer_path(self, consumer: str) -> Path:
        return self.folder / "consumers" / f"{check_consumer(consumer)}.json"

    def committed(self, consumer: str) -> int:
        path = self._consumer_path(consumer)
        try:
            offset = json.loads(path.read_text())["offset"]
        except FileNotFoundError:
            return 0
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: not a committed-offset file ({exc.__class__.__name__})") from None
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise ValueError(f"{path}: the committed offset is not a non-negative integer")
        return offset

    def commit(self, consumer: str, offset: int, *, rewind: bool = False) -> None:
        path = self._consumer_path(consumer)
        check_commit(offset, self.committed(consumer), self.end(), rewind)
        atomic_write_bytes(path, (json.dumps({"offset": offset}) + "\n").encode(), durable=self.fsync)

    def consumers(self) -> dict[str, int]:
        return {p.stem: self.committed(p.stem) for p in sorted((self.folder / "consumers").glob("*.json"))}

    def retain(self, before_offset: int) -> int:
        """Delete the segments whose every event lies before ``before_offset`` (the last segment stays); the
        number of events removed. Pass the smallest committed offset of the consumers that matter."""
        removed = 0
        with self._writer():
            segments = self._segments()
            for first, following in itertools.pairwise(segments):
                if following > before_offset:
                    break
                self._path(first).unlink()
                self._positions.pop(first, None)
                self._scanned.pop(first, None)
                removed += following - first
            if removed:
                self._sync_folder()
        return removed

    def describe(self) -> dict[str, Any]:
        segments = self._segments()
        return {"backend": "segments", "path": str(self.folder), "fsync": self.fsync, "start": self.start(),
                "end": self.end(), "segments": len(segments), "consumers": self.consumers()}
