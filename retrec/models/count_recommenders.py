"""Count-based recommenders: popularity and a first-order item-to-item Markov chain.

Both score a batch of histories (lists of item indices) against the whole item vocabulary and
are the baselines every learned recommender is compared with.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp


class PopularityRecommender:
    """Scores every item by its interaction count in the training histories."""

    name = "popularity"

    def __init__(self, num_items: int) -> None:
        self.num_items = num_items
        self.counts = np.zeros(num_items, dtype=np.float32)

    def fit(self, histories: Sequence[Sequence[int]]) -> PopularityRecommender:
        flat = np.fromiter((i for h in histories for i in h), dtype=np.int64)
        self.counts = np.bincount(flat, minlength=self.num_items).astype(np.float32)
        return self

    def score(self, histories: Sequence[Sequence[int]]) -> np.ndarray:
        return np.broadcast_to(self.counts, (len(histories), self.num_items)).copy()


class MarkovRecommender:
    """P(next | last item) from transition counts, backed off to popularity for unseen transitions."""

    name = "markov"

    def __init__(self, num_items: int, backoff: float = 1e-3) -> None:
        self.num_items = num_items
        self.backoff = backoff
        self.popularity = PopularityRecommender(num_items)
        self.transitions = sp.csr_matrix((num_items, num_items), dtype=np.float32)

    def fit(self, histories: Sequence[Sequence[int]]) -> MarkovRecommender:
        self.popularity.fit(histories)
        src = np.fromiter((a for h in histories for a in h[:-1]), dtype=np.int64)
        dst = np.fromiter((b for h in histories for b in h[1:]), dtype=np.int64)
        counts = sp.csr_matrix((np.ones(len(src), np.float32), (src, dst)), shape=(self.num_items,) * 2)
        counts.sum_duplicates()
        row_sums = np.asarray(counts.sum(axis=1)).ravel()
        self.transitions = sp.diags(1.0 / np.maximum(row_sums, 1.0)).astype(np.float32) @ counts
        return self

    def score(self, histories: Sequence[Sequence[int]]) -> np.ndarray:
        pop = self.popularity.counts / max(float(self.popularity.counts.sum()), 1.0)
        scores = np.tile(self.backoff * pop, (len(histories), 1))
        for row, history in enumerate(histories):
            if history:
                scores[row] += self.transitions.getrow(history[-1]).toarray().ravel()
        return scores
