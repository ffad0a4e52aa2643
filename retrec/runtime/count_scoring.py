"""Count-based recommenders: popularity, a first-order item-to-item Markov chain, item co-occurrence.

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


def recency_rows(histories: Sequence[Sequence[int]], num_items: int, decay: float, window: int) -> sp.csr_matrix:
    """``[B, num_items]``: each history's last ``window`` items weighted ``decay^age`` (the last item: age 0, 1)."""
    rows, cols, weights = [], [], []
    for row, history in enumerate(histories):
        recent = list(history)[-window:]
        rows += [row] * len(recent)
        cols += recent
        weights += [decay ** (len(recent) - 1 - k) for k in range(len(recent))]
    return sp.csr_matrix((np.asarray(weights, np.float32), (rows, cols)), shape=(len(histories), num_items))


class ItemToItemRecommender:
    """An item × item table (``matrix``) read by a history's recent items, backed off to popularity: a history
    scores ``j`` by ``sum_k decay^age(k) * matrix[h_k, j]`` over its last ``window`` items (the last has age 0)."""

    def __init__(self, num_items: int, backoff: float, decay: float, window: int) -> None:
        self.num_items, self.backoff, self.decay, self.window = num_items, backoff, decay, window
        self.popularity = PopularityRecommender(num_items)
        self.matrix = sp.csr_matrix((num_items, num_items), dtype=np.float32)  # what a bundle stores

    def score(self, histories: Sequence[Sequence[int]]) -> np.ndarray:
        pop = self.popularity.counts / max(float(self.popularity.counts.sum()), 1.0)
        window = self.window if self.decay > 0 else 1
        h = recency_rows(histories, self.num_items, self.decay, window)
        return (h @ self.matrix).toarray() + self.backoff * pop


class MarkovRecommender(ItemToItemRecommender):
    """P(next | last item) from transition counts, backed off to popularity for unseen transitions.

    With ``decay > 0`` the earlier items of the history vote too: ``sum_k decay^age(k) * P(next | h_k)`` over the
    last ``window`` items (the last item has age 0); ``decay = 0`` is the first-order chain.
    """

    name = "markov"

    def __init__(self, num_items: int, backoff: float = 1e-3, decay: float = 0.0, window: int = 10) -> None:
        super().__init__(num_items, backoff, decay, window)

    def fit(self, histories: Sequence[Sequence[int]]) -> MarkovRecommender:
        self.popularity.fit(histories)
        src = np.fromiter((a for h in histories for a in h[:-1]), dtype=np.int64)
        dst = np.fromiter((b for h in histories for b in h[1:]), dtype=np.int64)
        counts = sp.csr_matrix((np.ones(len(src), np.float32), (src, dst)), shape=(self.num_items,) * 2)
        counts.sum_duplicates()
        row_sums = np.asarray(counts.sum(axis=1)).ravel()
        self.matrix = (sp.diags(1.0 / np.maximum(row_sums, 1.0)).astype(np.float32) @ counts).tocsr()
        return self


class CooccurrenceRecommender(ItemToItemRecommender):
    """Item-to-item co-occurrence in users' histories, cosine-normalised, summed over the history by recency.

    The item-kNN / session-kNN family's simplest member: ``sim(i, j) = |users with i and j| / sqrt(|i| |j|)``, and a
    history scores ``j`` by ``sum_k decay^age(k) * sim(h_k, j)`` over its last ``window`` items (the last item has
    age 0), backed off to popularity. Unlike :class:`MarkovRecommender` it sees the whole history and either order.
    """

    name = "cooc"

    def __init__(self, num_items: int, decay: float = 0.5, window: int = 20, backoff: float = 1e-6) -> None:
        super().__init__(num_items, backoff, decay, window)

    def fit(self, histories: Sequence[Sequence[int]]) -> CooccurrenceRecommender:
        self.popularity.fit(histories)
        users = np.repeat(np.arange(len(histories)), [len(h) for h in histories])
        items = np.fromiter((i for h in histories for i in h), dtype=np.int64, count=len(users))
        x = sp.csr_matrix((np.ones(len(items), np.float32), (users, items)), shape=(len(histories), self.num_items))
        x.data[:] = 1.0  # binary: a repeat of an item counts once per user
        counts = (x.T @ x).tocsr()
        counts.setdiag(0)
        counts.eliminate_zeros()
        users_of = np.asarray(x.sum(axis=0)).ravel()
        norm = sp.diags((1.0 / np.sqrt(np.maximum(users_of, 1.0))).astype(np.float32))
        self.matrix = (norm @ counts @ norm).tocsr().astype(np.float32)
        return self
