"""Line-oriented reading with file:line errors for bad encodings."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from retrec.data.errors import DataError


def iter_lines(path: str | Path, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for non-blank lines, CR/LF stripped, BOM removed.

    A line that is not valid in ``encoding`` raises :class:`DataError` naming file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                text = raw.decode(encoding)
            except UnicodeDecodeError as exc:
                raise DataError(
                    path, f"not valid {encoding} ({exc.reason} at byte {exc.start}); re-encode the file", lineno
                ) from exc
            if lineno == 1:
                text = text.lstrip("\ufeff")
            text = text.rstrip("\r\n")
            if text.strip():
                yield lineno, text
