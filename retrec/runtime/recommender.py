"""The one recommender contract (:class:`retrec.contracts.Recommender`), shared by ``retrec eval-rec`` and
``/v1/recommend``.

A recommender knows a catalogue (``item_ids``) and, for raw-id histories, gives

- ``score(histories) -> float32 [B, len(item_ids)]``: a score for every catalogue item (``-inf``: never
  recommended) — what offline evaluation ranks;
- ``recommend(histories, k, exclude_seen) -> [[(item_id, score), ...]]``: top-k lists — what serving returns.

Models that score the catalogue implement ``score`` and inherit ``recommend`` from :class:`ScoringRecommender`.
Models that generate lists (e.g. beam search over semantic ids) implement ``generate`` and inherit ``score``
from :class:`GeneratingRecommender`: the item at list rank r scores ``-r`` (so ranks are kept), every other
item ``-inf``. Unknown ids in a history are skipped and counted in a :class:`SkipReport`, never an error.

Example::

    rec = retrec.load("artifacts/bert4rec-beauty")        # any registered recommender kind
    rec.score([["12", "7"]]).shape                        # (1, len(rec.item_ids))
    rec.recommend([["12", "7"]], k=10)                    # [[(item_id, score), ...]]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from retrec.contracts import ItemList, Recommender, SkipReport

__all__ = ["GeneratingRecommender", "ItemList", "Recommender", "ScoringRecommender", "SkipReport", "known_rows",
           "top_items"]  # the contract itself (Recommender, SkipReport, ItemList) lives in retrec.contracts


def known_rows(history: Sequence[str], rows: np.ndarray, report: SkipReport | None = None) -> np.ndarray:
    """The rows ``>= 0`` of a history's ids (``rows``: their lookup, ``-1`` unknown); the unknown ids are counted."""
    if report is not None:
        for item in np.asarray(history, dtype=object)[rows < 0].tolist():
            report.add(str(item))
    return rows[rows >= 0]


def top_items(scores: np.ndarray, item_ids: Sequence[str], k: int) -> ItemList:
    """Top ``k`` finite scores of one row: score descending, then catalogue position ascending."""
    kk = min(k, scores.shape[0])
    if kk <= 0:
        return []
    top = np.argpartition(-scores, kk - 1)[:kk]
    top = top[np.lexsort((top, -scores[top]))]
    return [(item_ids[j], float(scores[j])) for j in top if np.isfinite(scores[j])]


class ScoringRecommender:
    """``recommend`` from ``score``: seen items masked when ``exclude_seen``, then top-k."""

    name: str
    item_ids: Sequence[str]
    _positions: dict[str, int] | None = None

    def score(self, histories: Sequence[Sequence[str]], report: SkipReport | None = None) -> np.ndarray:
        raise NotImplementedError  # pragma: no cover - abstract

    def positions(self, items: Sequence[str]) -> np.ndarray:
        """Catalogue positions of raw ids (``-1`` for unknown ones)."""
        if self._positions is None:
            self._positions = {item: i for i, item in enumerate(self.item_ids)}
        return np.fromiter((self._positions.get(str(i), -1) for i in items), np.int64, count=len(items))

    def recommend(self, histories: Sequence[Sequence[str]], k: int = 10, exclude_seen: bool = True,
                  report: SkipReport | None = None) -> list[ItemList]:
        scores = self.score(histories, report)
        out = []
        for history, row in zip(histories, scores):
            if exclude_seen and len(history):
                seen = self.positions(history)
                row[seen[seen >= 0]] = -np.inf
            out.append(top_items(row, self.item_ids, k))
        return out


class GeneratingRecommender(ScoringRecommender):
    """Adapter for models that generate ranked lists: list rank → score ``-rank``, ``-inf`` elsewhere."""

    generate_k = 100  # how long a list ``score`` asks for

    def generate(self, histories: Sequence[Sequence[str]], k: int,
                 report: SkipReport | None = None) -> list[list[str]]:
        raise NotImplementedError  # pragma: no cover - abstract

    def score(self, histories: Sequence[Sequence[str]], report: SkipReport | None = None) -> np.ndarray:
        out = np.full((len(histories), len(self.item_ids)), -np.inf, dtype=np.float32)
        for row, items in zip(out, self.generate(histories, self.generate_k, report)):
            pos = self.positions(items)
            ranks = np.arange(1, len(items) + 1, dtype=np.float32)
            row[pos[pos >= 0]] = -ranks[pos >= 0]
        return out

    def recommend(self, histories: Sequence[Sequence[str]], k: int = 10, exclude_seen: bool = True,
                  report: SkipReport | None = None) -> list[ItemList]:
        if not exclude_seen:
            lists = self.generate(histories, k, report)
            return [[(item, -float(r)) for r, item in enumerate(items[:k], start=1)] for items in lists]
        return super().recommend(histories, k, exclude_seen, report)
