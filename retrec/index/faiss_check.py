"""Reading a FAISS file without letting its header decide how much memory to take.

A FAISS file says how many vectors it holds and how long its arrays are, and ``faiss.read_index`` allocates
what it says before reading — a 77-byte file claiming 2^34 elements is a ``bad_alloc``, one claiming 1 GiB is
1 GiB of zeroed pages before the read fails. Checksums do not help: they come from the bundle's own manifest,
which whoever can write the file can rewrite. :func:`check_declared_sizes` reads the header first and refuses
(``BundleError``) a file whose declared sizes exceed its own length: the vector count of every index (no
encoding takes under half a byte a vector), and exactly the code array of flat indexes (``IndexFlat``, also
inside ``IndexIDMap``/``IDMap2``), the exact search the dense default serves below its ANN threshold.

:func:`load_npy` does the same for the ``.npy`` arrays stored beside them (refine stores, token matrices).

Example::

    index = read_checked(Path("shards/000.faiss"), mmap=True)   # BundleError before FAISS allocates a lie
    vectors = load_npy(Path("shards/000.vectors.npy"), mmap=True)
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

import faiss
import numpy as np

from retrec.bundle import BundleError

HEADER = struct.Struct("<iqqq?i")  # d, ntotal, two unused int64, is_trained, metric_type (faiss/impl/index_read)
FLAT = {b"IxFI", b"IxF2", b"IxFl"}  # IndexFlatIP, IndexFlatL2, IndexFlat: a float32 code array follows
ID_MAPS = {b"IxMp", b"IxM2"}  # IndexIDMap(2): the wrapped index follows the header
MAX_DIM = 1 << 16


def check_declared_sizes(path: Path) -> None:
    """Refuse ``path`` when its header declares more vectors or codes than the file has bytes for."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        _check(f, size, path.name)


def _check(f: BinaryIO, size: int, name: str) -> None:
    fourcc = f.read(4)
    head = f.read(HEADER.size)
    if len(fourcc) < 4 or len(head) < HEADER.size:
        raise BundleError(f"{name}: truncated FAISS header ({size} bytes)")
    d, ntotal, _, _, _, metric = HEADER.unpack(head)
    if metric > 1:
        f.read(4)  # metric_arg
    if not 0 < d <= MAX_DIM or not 0 <= ntotal <= 2 * size:
        raise BundleError(f"{name}: FAISS header declares {ntotal} vectors of dim {d}, more than its {size} bytes "
                          "can hold; refused before loading")
    if fourcc in FLAT:
        raw = f.read(8)
        if len(raw) < 8:
            raise BundleError(f"{name}: truncated FAISS flat index")
        (floats,) = struct.unpack("<Q", raw)
        if floats != ntotal * d or f.tell() + 4 * floats > size:
            raise BundleError(f"{name}: FAISS flat index declares {floats} floats for {ntotal} x {d} vectors in a "
                              f"{size}-byte file; refused before loading")
    elif fourcc in ID_MAPS:
        _check(f, size, name)


def shard_files(shards: Sequence[int]) -> Callable[[str], bool]:
    """Which bundle files a reader of ``shards`` reads: theirs (``shards/NNN.*``) and every file outside
    ``shards/`` — a shard replica hashes its own files, not every shard's."""
    wanted = {f"{s:03d}" for s in shards}
    return lambda rel: not rel.startswith("shards/") or rel[len("shards/"):].split(".", 1)[0] in wanted


def read_checked(path: Path, mmap: bool) -> faiss.Index:
    """``faiss.read_index`` after :func:`check_declared_sizes`; memory-mapped where FAISS can map the type."""
    check_declared_sizes(Path(path))
    flags = [f for f in (getattr(faiss, "IO_FLAG_MMAP_IFC", None), faiss.IO_FLAG_MMAP) if f is not None] if mmap else []
    for flag in flags:
        try:
            return faiss.read_index(str(path), flag)
        except RuntimeError:
            continue
    return faiss.read_index(str(path))


def load_npy(path: Path, mmap: bool) -> np.ndarray:
    """``np.load`` (no pickles) after checking that the header's shape and dtype fit the file's length."""
    size = os.path.getsize(path)
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
            offset = f.tell()
    except (ValueError, OSError) as exc:
        raise BundleError(f"{path.name}: not a valid .npy file ({exc})") from exc
    count = int(np.prod(shape, dtype=object))
    if dtype.hasobject or offset + count * dtype.itemsize != size:
        raise BundleError(f"{path.name}: .npy header declares {shape} {dtype} in a {size}-byte file; refused before "
                          "loading")
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
