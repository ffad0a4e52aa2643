"""One check of a CSR matrix read from a bundle: the arrays agree with each other and with the shape.

Example::

    csr_fits(indptr, indices, rows=3, cols=10, values=len(data))    # True when every row's slice is valid
"""

from __future__ import annotations

import numpy as np


def csr_fits(indptr: np.ndarray, indices: np.ndarray, *, rows: int, cols: int, values: int) -> bool:
    """``indptr`` has ``rows + 1`` non-decreasing entries from 0 to ``values`` (= ``len(indices)``), and every
    column index lies in ``[0, cols)``."""
    if indptr.ndim != 1 or indices.ndim != 1 or indptr.dtype.kind not in "iu" or indices.dtype.kind not in "iu":
        return False
    if indptr.shape != (rows + 1,) or len(indices) != values or (rows + 1 and int(indptr[0]) != 0):
        return False
    if int(indptr[-1]) != values or bool(np.any(np.diff(indptr) < 0)):
        return False
    return not len(indices) or (int(indices.min()) >= 0 and int(indices.max()) < cols)
