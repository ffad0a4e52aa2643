"""Whole-file writes that a reader, a crash or a killed writer never sees half done: temporary sibling, fsync,
rename, fsync the folder. Whole bundles (folders with a manifest) are published by :func:`retrec.bundle.publish`,
which builds on these; :mod:`retrec.bundle` re-exports them, so ``from retrec.bundle import atomic_write_text``
keeps working.

Example::

    atomic_write_text("run.ckpt/curve.json", "[]")          # a reader sees the old file or the new one
    with atomic_path("cache/emb.safetensors") as tmp:     # for writers that take a file name
        save_file({"embeddings": vectors}, str(tmp))
    with atomic_open("runs/bm25.trec", "w", encoding="utf-8") as fh:
        fh.write(lines)
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], durable: bool = True) -> Iterator[Path]:
    """A hidden temporary sibling of ``path`` for writers that take a file name (safetensors, parquet, FAISS):
    on leaving, it is fsynced and renamed onto ``path`` and the folder fsynced; on an exception it is removed
    and ``path`` is left as it was. ``durable=False`` skips both fsyncs: readers still never see a half-written
    file, but a power cut may lose the write (for files whose content is checked on reading, e.g. by a digest)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{secrets.token_hex(4)}")
    try:
        yield tmp
        if durable:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        _fsync_dir(target.parent)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb", encoding: str | None = None) -> Iterator[IO[Any]]:
    """Write ``path`` through a hidden temporary sibling (:func:`atomic_path`): fsync, ``os.replace``, fsync the
    folder. On an exception the temporary file is removed and ``path`` is left as it was.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open writes whole files: mode 'wb' or 'w', not {mode!r}")
    with atomic_path(path) as tmp, open(tmp, mode, encoding=encoding if mode == "w" else None) as fh:
        yield fh


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, durable: bool = True) -> Path:
    """Replace ``path`` with ``data`` atomically (a reader sees the old or the new content); ``durable``: see
    :func:`atomic_path`."""
    with atomic_path(path, durable) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Replace ``path`` with ``text`` atomically (a reader sees the old or the new content)."""
    return atomic_write_bytes(path, text.encode(encoding))


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under ``root`` (deepest first), ``root`` included."""
    for folder, _, names in os.walk(root, topdown=False):
        for name in names:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(folder))


def atomic_parquet(table: Any, path: str | os.PathLike[str]) -> Path:
    """Write a pyarrow ``table`` to ``path`` through :func:`atomic_path`: readers see the old file or the new one,
    and a writer that dies half-way leaves the old one."""
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return Path(path)
