"""Count baselines: item co-occurrence (cosine, recency-weighted) against hand-computed scores."""

from __future__ import annotations

import numpy as np

from retrec.runtime.count_scoring import CooccurrenceRecommender


def test_cooccurrence_is_cosine_over_users_weighted_by_recency() -> None:
    # items 0..3; users: [0,1], [0,1,2], [1,2], [3, 3]
    rec = CooccurrenceRecommender(4, decay=0.5, window=20, backoff=0.0).fit([[0, 1], [0, 1, 2], [1, 2], [3, 3]])
    users_of = np.array([2, 3, 2, 1])
    both = np.array([[0, 2, 1, 0], [2, 0, 2, 0], [1, 2, 0, 0], [0, 0, 0, 0]])  # repeats count once, no self
    sim = both / np.sqrt(np.outer(users_of, users_of))
    np.testing.assert_allclose(rec.matrix.toarray(), sim, rtol=1e-6)
    # history [2, 0]: the last item (0) weighs 1, the one before (2) weighs 0.5
    np.testing.assert_allclose(rec.score([[2, 0]])[0], sim[0] + 0.5 * sim[2], rtol=1e-6)
    np.testing.assert_allclose(CooccurrenceRecommender(4, window=1, backoff=0.0).fit([[0, 1], [0, 1, 2]])
                               .score([[2, 0]])[0][:3], [0.0, 2 / np.sqrt(2 * 2), 1 / np.sqrt(2 * 1)], rtol=1e-6)


def test_an_empty_history_falls_back_to_popularity() -> None:
    rec = CooccurrenceRecommender(3).fit([[0, 1], [1], [1, 2]])
    scores = rec.score([[]])[0]
    assert scores.argmax() == 1 and np.all(scores > 0)
