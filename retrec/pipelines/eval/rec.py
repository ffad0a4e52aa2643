"""Leave-one-out evaluation of recommenders: full ranking or 100 sampled negatives.

Protocols:
- ``full``: the held-out item is ranked against every item in the vocabulary.
- ``uni100`` / ``pop100``: against 100 negatives the user never interacted with, sampled
  uniformly or in proportion to item popularity (BERT4Rec's protocol), with a fixed seed.

Items the user already saw are excluded from the ranking when ``exclude_seen`` (the default);
a held-out item that the user had seen before then ranks last — no leak, no special case.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from rich.progress import track

from retrec.data.errors import LoadReport
from retrec.data.interactions import LeaveOneOut
from retrec.pipelines.eval.ir_metrics import mean_metrics, rec_metrics_from_ranks, target_ranks

PROTOCOLS = ("full", "pop100", "uni100")
ScoreFn = Callable[[Sequence[Sequence[int]]], np.ndarray]


@dataclass
class ItemVocabulary:
    """Raw item ids ↔ dense indices (the column order of every score matrix)."""

    items: list[str]
    index: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.index = {item: i for i, item in enumerate(self.items)}

    def __len__(self) -> int:
        return len(self.items)

    def encode(self, history: Sequence[str], report: LoadReport | None = None) -> list[int]:
        """Indices of known items; unknown ones are skipped and counted in ``report``."""
        out = []
        for item in history:
            idx = self.index.get(item)
            if idx is None:
                if report is not None:
                    report.skip("unknown item id in history", item)
            else:
                out.append(idx)
        return out


def sample_negatives(
    seen: Sequence[set[int]], num_items: int, n: int, popularity: np.ndarray | None, seed: int
) -> np.ndarray:
    """``n`` distinct unseen items per user, uniformly or by popularity (rejection sampling)."""
    rng = np.random.default_rng(seed)
    cdf = None if popularity is None else np.cumsum(popularity / popularity.sum())
    out = np.empty((len(seen), n), dtype=np.int64)
    for row, exclude in enumerate(seen):
        if num_items - len(exclude) < n:
            raise ValueError(f"only {num_items - len(exclude)} unseen items for a user; need {n} negatives")
        chosen: list[int] = []
        taken = set(exclude)
        while len(chosen) < n:
            draw = rng.integers(num_items, size=2 * n) if cdf is None else np.searchsorted(cdf, rng.random(2 * n))
            for item in draw.tolist():
                if item not in taken and item < num_items:
                    taken.add(item)
                    chosen.append(item)
                    if len(chosen) == n:
                        break
        out[row] = chosen
    return out


@dataclass
class RecEvalResult:
    metrics: dict[str, float]
    per_user: dict[str, np.ndarray]
    users: list[str]
    report: LoadReport


def evaluate_recommender(
    score: ScoreFn,
    split: LeaveOneOut,
    vocab: ItemVocabulary,
    *,
    protocol: str = "full",
    target: str = "test",
    exclude_seen: bool = True,
    seed: int = 0,
    batch_size: int = 256,
    popularity: np.ndarray | None = None,
    progress: bool = True,
) -> RecEvalResult:
    """Rank each user's held-out item (``target``: "test" or "valid") and average the metrics.

    The history is train (+ the validation item when evaluating on test).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    report = LoadReport()
    users, histories, targets = [], [], []
    for u, train, valid, test in zip(split.users, split.train, split.valid, split.test):
        history = [*train, valid] if target == "test" else list(train)
        goal = test if target == "test" else valid
        if goal not in vocab.index:
            report.skip("held-out item not in the vocabulary", goal)
            continue
        users.append(u)
        histories.append(vocab.encode(history, report))
        targets.append(vocab.index[goal])
    if not users:
        raise ValueError("no user has a held-out item in the vocabulary")
    n_items = len(vocab)
    negatives = None
    if protocol != "full":
        seen = [set(h) | {t} for h, t in zip(histories, targets)]
        weights = None
        if protocol == "pop100":
            weights = popularity if popularity is not None else np.bincount(
                np.fromiter((i for h in seen for i in h), dtype=np.int64), minlength=n_items
            ).astype(np.float64)
        negatives = sample_negatives(seen, n_items, 100, weights, seed)
    greater = np.empty(len(users), dtype=np.int64)
    ties = np.empty(len(users), dtype=np.int64)
    starts = range(0, len(users), batch_size)
    for start in track(starts, description=f"eval-rec {protocol}", disable=not progress, transient=True):
        stop = min(start + batch_size, len(users))
        scores = np.asarray(score(histories[start:stop]), dtype=np.float64)
        if scores.shape != (stop - start, n_items):
            raise ValueError(f"recommender returned scores of shape {scores.shape}, "
                             f"expected {(stop - start, n_items)}")
        tgt = np.asarray(targets[start:stop])
        if negatives is None:
            if exclude_seen:
                for row, history in enumerate(histories[start:stop]):
                    scores[row, history] = -np.inf
            g, t = target_ranks(scores, tgt)
        else:
            cand = np.concatenate([tgt[:, None], negatives[start:stop]], axis=1)
            g, t = target_ranks(np.take_along_axis(scores, cand, axis=1), np.zeros(stop - start, np.int64))
        greater[start:stop] = g
        ties[start:stop] = t
    per_user = rec_metrics_from_ranks(greater, ties, n_items if negatives is None else 101)
    metrics = mean_metrics(per_user)
    metrics["users"] = float(len(users))
    return RecEvalResult(metrics=metrics, per_user=per_user, users=users, report=report)
