"""Term-major postings filled chunk by chunk equal one global sort, with 16-bit and wider term ids."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest

from retrec.index.postings import offsets, place


@pytest.mark.parametrize("terms", [50, 2**16 - 1, 2**16 + 500_000])
def test_chunks_placed_in_row_order_equal_a_global_sort(terms: int) -> None:
    rng = np.random.default_rng(terms)
    rows = np.sort(rng.integers(0, 300, 4000))  # postings in row order, as documents are read
    term = rng.choice(np.array([0, 1, terms - 1, *rng.integers(0, terms, 40)]), len(rows))
    pairs = np.unique(np.stack([rows, term], 1), axis=0)  # one posting per (row, term)
    rows, term = pairs[:, 0].astype(np.int32), pairs[:, 1].astype(np.int32)
    values = rng.random(len(rows)).astype(np.float32)
    indptr = offsets(np.bincount(term, minlength=terms))
    cursor, data, indices = indptr[:-1].copy(), np.empty(len(rows), np.float32), np.empty(len(rows), np.int32)
    cuts = np.searchsorted(rows, [0, 37, 38, 120, 299, 301])  # uneven chunks, one empty
    for lo, hi in pairwise(cuts):
        place(term[lo:hi], rows[lo:hi], values[lo:hi], cursor, data, indices)
    order = np.lexsort((rows, term))
    assert np.array_equal(indices, rows[order]) and np.array_equal(data, values[order])
    assert np.array_equal(cursor, indptr[1:])  # every list filled exactly
