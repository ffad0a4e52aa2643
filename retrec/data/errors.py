"""Errors and load reports shared by every reader: nothing is dropped silently."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("retrec.data")


class DataError(ValueError):
    """Bad input data; the message names the file and, where there is one, the line."""

    def __init__(self, path: str | Path, message: str, line: int | None = None) -> None:
        self.path = str(path)
        self.line = line
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")


@dataclass
class LoadReport:
    """Counts of rows read and rows skipped on purpose, with the reason for each skip."""

    rows: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, reason: str, example: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        bucket = self.examples.setdefault(reason, [])
        if len(bucket) < 3:
            bucket.append(example)

    def log(self) -> None:
        for reason, count in self.skipped.items():
            log.warning("skipped %d rows: %s (e.g. %s)", count, reason, ", ".join(self.examples[reason]))

    def summary(self) -> str:
        parts = [f"{name}={n}" for name, n in self.rows.items()]
        parts += [f"skipped[{reason}]={n}" for reason, n in self.skipped.items()]
        return ", ".join(parts)
