"""Semantic IDs: capacitated k-means levels, unique tuples, neighbours sharing prefixes; co-occurrence vectors."""

from __future__ import annotations

import numpy as np
import pytest

from retrec.models.semantic_ids import balanced_assign, cooccurrence_vectors, disambiguate, semantic_ids


def test_balanced_assignment_respects_capacity_and_prefers_the_nearest() -> None:
    dist = np.array([[0.0, 5.0], [1.0, 5.0], [2.0, 5.0], [9.0, 0.5]])
    assign = balanced_assign(dist, cap=2)
    assert assign.tolist() == [0, 0, 1, 1]  # the farthest of the three proposers to cluster 0 moves
    with pytest.raises(ValueError, match="capacity"):
        balanced_assign(dist, cap=1)


def test_ids_are_unique_balanced_and_group_neighbours() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(8, 16)) * 10
    x = np.repeat(centres, 50, axis=0) + rng.normal(size=(400, 16))
    codes = semantic_ids(x, levels=2, codes=8, seed=0)
    assert codes.shape == (400, 3) and len(np.unique(codes, axis=0)) == 400  # 400 > 8^2: a disambiguating level
    assert codes[:, 2].max() <= 6  # within a prefix at most ceil(ceil(400 / 8) / 8) = 7 items share a code
    spread = semantic_ids(np.zeros((60, 4)), levels=2, codes=8, seed=0)  # identical vectors: spread by capacity
    assert spread.shape == (60, 2) and len(np.unique(spread, axis=0)) == 60
    assert np.bincount(codes[:, 0]).max() <= 50  # capacity ceil(400 / 8)
    same_centre = [len(np.unique(codes[i * 50:(i + 1) * 50, 0])) for i in range(8)]
    assert max(same_centre) == 1  # each blob is one first-level code


def test_disambiguation_counts_within_each_group() -> None:
    codes = np.array([[1, 2], [0, 0], [1, 2], [1, 2], [0, 1]])
    assert disambiguate(codes).tolist() == [0, 0, 1, 2, 0]


def test_cooccurring_items_get_close_vectors() -> None:
    rng = np.random.default_rng(0)
    seqs = [rng.permutation(3) + 3 * (i % 2) for i in range(40)]  # items 0-2 together, 3-5 together
    v = cooccurrence_vectors(seqs, num_items=7, dim=4)
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    assert v.shape == (7, 4) and v[0] @ v[1] > v[0] @ v[4] + 0.5 and v[3] @ v[5] > v[3] @ v[2] + 0.5
