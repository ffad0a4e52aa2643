"""Recommender fusion: a mixture of normalised distributions over the union catalogue."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from retrec.runtime.fused_recommender import FusedRecommender, normalise
from retrec.runtime.recommender import ScoringRecommender, SkipReport


class Fixed(ScoringRecommender):
    def __init__(self, items: list[str], scores: list[float]) -> None:
        self.name, self.item_ids, self.row = "fixed", items, np.array(scores, np.float32)

    def score(self, histories: Sequence[Sequence[str]], report: SkipReport | None = None) -> np.ndarray:
        return np.tile(self.row, (len(histories), 1))


def test_normalisations() -> None:
    p = normalise(np.array([[0.0, np.log(3.0), -np.inf]]), "softmax")
    np.testing.assert_allclose(p, [[0.25, 0.75, 0.0]])
    np.testing.assert_allclose(normalise(np.array([[1.0, 3.0, -np.inf]]), "sum"), [[0.25, 0.75, 0.0]])
    np.testing.assert_array_equal(normalise(np.array([[-np.inf, -np.inf]]), "softmax"), [[0.0, 0.0]])
    with pytest.raises(ValueError, match="unknown normalisation"):
        normalise(np.zeros((1, 2)), "zscore")


def test_mixture_over_the_union_catalogue() -> None:
    neural = Fixed(["a", "b", "c"], [0.0, 0.0, np.log(2.0)])  # softmax: .25 .25 .5
    counts = Fixed(["c", "d"], [1.0, 3.0])  # sum: c .25, d .75
    fused = FusedRecommender([neural, counts], [0.6, 0.4], ["softmax", "sum"])
    assert fused.item_ids == ["a", "b", "c", "d"]
    np.testing.assert_allclose(fused.score([["x"]])[0], [0.15, 0.15, 0.4, 0.3], rtol=1e-6)
    assert [i for i, _ in fused.recommend([["c"]], k=3)[0]] == ["d", "a", "b"]  # seen c excluded; a before b (tie)
    only_neural = FusedRecommender([neural, counts], [1.0, 0.0], ["softmax", "sum"])
    assert np.isneginf(only_neural.score([[]])[0, 3])  # no probability anywhere: never recommended
    report = SkipReport()
    fused.recommend([["a", "zz"]], k=1, report=report)
    assert report.unknown_items == 1


def test_inconsistent_fusions_are_refused() -> None:
    with pytest.raises(ValueError, match="one weight"):
        FusedRecommender([Fixed(["a"], [1.0])], [0.5, 0.5], ["sum"])
    with pytest.raises(ValueError, match="unknown normalisation"):
        FusedRecommender([Fixed(["a"], [1.0])], [1.0], ["max"])
