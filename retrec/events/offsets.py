"""Offsets and consumer names, checked alike by every event-log backend."""

from __future__ import annotations

import re

__all__ = ["CONSUMER_NAME", "LogUnavailableError", "OffsetError", "check_commit", "check_consumer"]

CONSUMER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class OffsetError(ValueError):
    """An offset outside what the log holds (beyond its end, or removed by retention), or a commit backwards."""


class LogUnavailableError(ConnectionError):
    """The log cannot be reached now (a broker restarting, a network away): retry later; nothing was changed
    by the call that raised it, or — for an append — its events may be stored but were not acknowledged."""


def check_consumer(name: str) -> str:
    if not isinstance(name, str) or not CONSUMER_NAME.fullmatch(name):
        raise ValueError("a consumer name is 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit")
    return name


def check_commit(offset: int, committed: int, end: int, rewind: bool) -> int:
    """The offset a commit may record: a whole number in [0, end], and not behind ``committed`` unless ``rewind``."""
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise OffsetError(f"a committed offset is a non-negative integer, got {offset!r}")
    if offset > end:
        raise OffsetError(f"offset {offset} is beyond the log's end ({end})")
    if offset < committed and not rewind:
        raise OffsetError(f"offset {offset} is behind the committed {committed}; pass rewind=True to replay")
    return offset
