"""Term-major posting lists filled chunk by chunk: no global sort, no copy of every posting at once.

An inverted index ``[terms, rows]`` in CSR form (``indptr``, ``indices`` = rows, ``data`` = values) is filled in
two steps: the offsets from each term's posting count, then the postings of each chunk of rows, chunks in row
order, each written at its terms' next free slots. Rows then ascend within every posting list, as a sorted CSR
matrix's do, and only one chunk is ever sorted (by term).

Example::

    indptr = offsets(np.array([2, 1]))                         # term 0: 2 postings, term 1: 1
    cursor, data, rows = indptr[:-1].copy(), np.empty(3, np.float32), np.empty(3, np.int32)
    place(np.array([1, 0]), np.array([0, 0]), np.array([.5, .1], np.float32), cursor, data, rows)   # row 0
    place(np.array([0]), np.array([1]), np.array([.2], np.float32), cursor, data, rows)            # row 1
    rows.tolist(), cursor.tolist()   # [0, 1, 0] (term 0: rows 0, 1; term 1: row 0), [2, 3]
"""

from __future__ import annotations

import numpy as np


def offsets(counts: np.ndarray) -> np.ndarray:
    """CSR offsets (int64, ``len(counts) + 1``) of posting lists holding ``counts`` postings each."""
    indptr = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return indptr


def place(terms: np.ndarray, rows: np.ndarray, values: np.ndarray, cursor: np.ndarray, data: np.ndarray,
          indices: np.ndarray) -> None:
    """Write one chunk's postings (``terms[i]`` holds row ``rows[i]`` with ``values[i]``) at each term's next free
    slot, ``cursor[term]``, which advances. The chunk's rows must follow every row placed before, and ascend for
    each term within the chunk (e.g. postings ordered by row)."""
    if not len(terms):
        return
    small = int(terms.max()) < 2**16 and int(terms.min()) >= 0  # 16-bit keys: numpy's stable sort is a radix sort
    order = np.argsort(terms.astype(np.uint16) if small else terms, kind="stable")  # rows keep their order
    by_term = terms[order]
    starts = np.flatnonzero(np.concatenate(([True], by_term[1:] != by_term[:-1])))
    sizes = np.diff(np.append(starts, len(by_term)))
    slot = cursor[by_term] + (np.arange(len(by_term)) - np.repeat(starts, sizes))
    data[slot] = values[order]
    indices[slot] = rows[order]
    cursor[by_term[starts]] += sizes
