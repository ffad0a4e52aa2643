"""Recommender registry for ``retrec eval-rec --model NAME|BUNDLE``.

A builder takes the leave-one-out split and the item vocabulary and returns a scoring function
over the vocabulary. Models are fitted on the histories visible at evaluation time (train for
the validation target, train + validation item for the test target).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from retrec.data.interactions import LeaveOneOut
from retrec.models.count_recommenders import MarkovRecommender, PopularityRecommender
from retrec.pipelines.evaluate_rec import ItemVocabulary, ScoreFn


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
        raise ValueError(f"{name}: recommender bundles are not supported yet by this build")
    raise ValueError(f"unknown recommender {name!r}; available: {', '.join(sorted(BUILDERS))} or a bundle path")


def vocabulary_of(split: LeaveOneOut) -> ItemVocabulary:
    """Every item of the dataset, in sorted order (full ranking ranks against all of them)."""
    items = {i for seq in split.train for i in seq} | set(split.valid) | set(split.test)
    return ItemVocabulary(sorted(items))
