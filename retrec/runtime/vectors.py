"""The one L2 normalisation of dense vectors outside torch (encoders' outputs, index build and search).

Cosine similarity is an inner product of unit vectors: ONNX query/document encoders, FAISS index
building and FAISS query search all normalise through :func:`l2_normalize`, so the offline and served
paths scale vectors identically. (Inside the torch model the exported graph normalises with
``torch.nn.functional.normalize``; that is part of the model, not of this runtime.)

Example::

    unit = l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))   # [[0.6, 0.8], [0.0, 0.0]], float32
    l2_normalize(batch, copy=False)                          # in place when batch is float32, C-ordered
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["l2_normalize"]

_TINY = np.float32(1e-12)  # below this norm a row is treated as zero (and stays zero)


def l2_normalize(vectors: ArrayLike, *, copy: bool = True) -> NDArray[np.float32]:
    """Rows of a 2-D array scaled to unit L2 norm, as C-contiguous float32; all-zero rows stay zero.

    With ``copy=False`` an input that already is a C-contiguous float32 array is normalised in place
    (and returned); any other input is converted to a new array first.
    """
    arr: NDArray[Any] = np.asarray(vectors)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D array of row vectors, got shape {arr.shape}")
    if copy or arr.dtype != np.float32 or not arr.flags.c_contiguous or not arr.flags.writeable:
        arr = np.array(arr, dtype=np.float32, order="C", copy=True)
    arr /= np.maximum(np.linalg.norm(arr, axis=1, keepdims=True), _TINY)
    return arr
