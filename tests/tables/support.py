"""Shared helpers for the retrec.tables tests: random rows, a populated table, the bijectivity check."""

from __future__ import annotations

import numpy as np

from retrec.tables import EmbeddingTable

DIM = 8


def random_rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def check_bijective(table: EmbeddingTable, keys: np.ndarray) -> None:
    """Every key has its own row, and the row maps back to that key."""
    rows = table.lookup(keys)
    assert (rows >= 0).all()
    assert np.unique(rows).size == keys.size == len(table)
    ekeys, erows = table.entries()
    back = np.empty(erows.max() + 1, np.int64)
    back[erows] = ekeys
    assert np.array_equal(back[rows], keys.astype(np.int64))


def populated(n: int = 3000, seed: int = 0) -> tuple[EmbeddingTable, np.ndarray]:
    rng = np.random.default_rng(seed)
    keys = np.unique(rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, size=n, dtype=np.int64))
    t = EmbeddingTable(DIM, ttl=100.0, seed=seed)
    t.observe(keys, now=0.0)
    t.update(keys[::3], random_rows(keys[::3].size, seed), now=1.0)
    return t, keys
