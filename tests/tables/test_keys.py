"""Tests for retrec.tables.keys: key normalisation, fingerprints and batch dedupe."""

from __future__ import annotations

import numpy as np
import pytest

from retrec.tables.keys import as_keys, dedupe, fingerprint


def test_dedupe_matches_numpy_unique() -> None:
    rng = np.random.default_rng(5)
    keys = rng.integers(0, 5000, size=100_000).astype(np.uint64)
    first, inverse = dedupe(keys)
    assert np.array_equal(np.sort(keys[first]), np.unique(keys))
    assert np.array_equal(keys[first][inverse], keys)


def test_key_normalisation() -> None:
    a, _ = as_keys(np.array([2**64 - 1, 3], dtype=np.uint64))
    b, _ = as_keys([-1, 3])
    c, _ = as_keys(np.array([-1, 3], dtype=np.int32))
    assert np.array_equal(a, b) and np.array_equal(a, c)
    k, strs = as_keys(np.array(["x", "y"]))
    assert strs == ["x", "y"] and np.array_equal(k.view(np.int64), fingerprint(["x", "y"]))
    mixed, raw = as_keys([7, "x", -1])
    assert raw == [None, "x", None]
    assert mixed.view(np.int64).tolist() == [7, int(fingerprint(["x"])[0]), -1]
    with pytest.raises(TypeError):
        as_keys(np.array([1.5]))
    with pytest.raises(TypeError):
        as_keys([1, "x", 2.5])
