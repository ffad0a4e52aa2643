"""Recommender registry for ``retrec eval-rec --model NAME|BUNDLE``.

A builder takes the leave-one-out split and the item vocabulary and returns a scoring function
over the vocabulary. Models are fitted on the histories visible at evaluation time (train for
the validation target, train + validation item for the test target).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from retrec.data.interactions import LeaveOneOut
from retrec.models.count_recommenders import MarkovRecommender, PopularityRecommender
from retrec.pipelines.evaluate_rec import ItemVocabulary, ScoreFn
from retrec.runtime.sequence_recommender import SequenceRecommender


def _histories(split: LeaveOneOut, vocab: ItemVocabulary, target: str) -> list[list[int]]:
    if target == "test":
        return [vocab.encode([*t, v]) for t, v in zip(split.train, split.valid)]
    return [vocab.encode(t) for t in split.train]


def _popularity(split: LeaveOneOut, vocab: ItemVocabulary, target: str) -> ScoreFn:
    return PopularityRecommender(len(vocab)).fit(_histories(split, vocab, target)).score


def _markov(split: LeaveOneOut, vocab: ItemVocabulary, target: str) -> ScoreFn:
    return MarkovRecommender(len(vocab)).fit(_histories(split, vocab, target)).score


BUILDERS: dict[str, Callable[[LeaveOneOut, ItemVocabulary, str], ScoreFn]] = {
    "popularity": _popularity,
    "markov": _markov,
}


def build_recommender(name: str, split: LeaveOneOut, vocab: ItemVocabulary, target: str = "test") -> ScoreFn:
    if name in BUILDERS:
        return BUILDERS[name](split, vocab, target)
    if Path(name).is_dir():
        return bundle_scorer(SequenceRecommender.load(name), vocab)
    raise ValueError(f"unknown recommender {name!r}; available: {', '.join(sorted(BUILDERS))} or a bundle path")


def bundle_scorer(rec: SequenceRecommender, vocab: ItemVocabulary) -> ScoreFn:
    """Adapt a bundle's row space to the evaluation vocabulary (items it lacks score -inf)."""
    row_of_vocab = rec.table.lookup(vocab.items)
    known = row_of_vocab >= 0

    def score(histories: Sequence[Sequence[int]]) -> np.ndarray:
        rows = [row_of_vocab[np.asarray(h, dtype=np.int64)] for h in histories]
        row_scores = rec.score_rows([r[r >= 0] for r in rows])
        out = np.full((len(histories), len(vocab)), -np.inf, dtype=np.float32)
        out[:, known] = row_scores[:, row_of_vocab[known]]
        return out

    return score


def vocabulary_of(split: LeaveOneOut) -> ItemVocabulary:
    """Every item of the dataset, in sorted order (full ranking ranks against all of them)."""
    items = {i for seq in split.train for i in seq} | set(split.valid) | set(split.test)
    return ItemVocabulary(sorted(items))
