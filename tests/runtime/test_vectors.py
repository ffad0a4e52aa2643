"""Tests for retrec.runtime.vectors: the one L2 normalisation of dense vectors."""

from __future__ import annotations

import numpy as np
import pytest

from retrec.runtime.vectors import l2_normalize


def test_rows_become_unit_and_zero_rows_stay_zero() -> None:
    x = np.array([[3.0, 4.0], [0.0, 0.0], [1e-30, 0.0]], dtype=np.float64)
    out = l2_normalize(x)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    assert np.allclose(out[0], [0.6, 0.8]) and np.array_equal(out[1], [0.0, 0.0])
    assert np.all(np.isfinite(out))
    assert x[0, 0] == 3.0  # the input is untouched by default


def test_in_place_only_for_float32_c_arrays() -> None:
    x = np.random.default_rng(0).standard_normal((50, 16)).astype(np.float32)
    same = l2_normalize(x, copy=False)
    assert same is x and np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-6)
    strided = np.random.default_rng(1).standard_normal((16, 50)).astype(np.float32).T
    before = strided.copy()
    out = l2_normalize(strided, copy=False)
    assert out is not strided and np.array_equal(strided, before)


def test_matches_faiss_normalisation() -> None:
    faiss = pytest.importorskip("faiss")
    x = np.random.default_rng(2).standard_normal((500, 384)).astype(np.float32)
    ref = x.copy()
    faiss.normalize_L2(ref)
    assert np.abs(l2_normalize(x) - ref).max() < 1e-6


def test_refuses_non_matrix() -> None:
    with pytest.raises(ValueError, match="2-D"):
        l2_normalize(np.ones(3, np.float32))
