"""Recommenders for ``retrec eval-rec --model NAME|BUNDLE``: fitted baselines by name, any bundle by its kind.

- ``popularity`` / ``markov`` / ``markov-decay`` / ``cooc``: count baselines fitted on the histories visible at
  evaluation time (train for the validation target, train + validation item for the test target;
  ``markov-decay``'s decay is chosen on the validation item).
- a bundle folder: its manifest's kind → the registry's loader → a
  :class:`~retrec.runtime.recommender.Recommender`, adapted to the evaluation vocabulary by
  :func:`catalogue_scorer` (one adapter for every kind; items the model lacks score ``-inf``).

Both give a :data:`~retrec.pipelines.eval.rec.ScoreFn` over the vocabulary's dense indices.

Example::

    loo = leave_one_out(user_sequences(load_interactions("../shared/data/beauty")))
    vocab = vocabulary_of(loo)
    score = build_recommender("artifacts/bert4rec-beauty", loo, vocab)     # or "markov"
    evaluate_recommender(score, loo, vocab, protocol="full")
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retrec import kinds
from retrec.bundle import BundleError, read_manifest
from retrec.contracts import call_hook
from retrec.data.interactions import LeaveOneOut
from retrec.pipelines.eval.rec import ItemVocabulary, ScoreFn
from retrec.runtime.count_scoring import CooccurrenceRecommender, MarkovRecommender, PopularityRecommender
from retrec.runtime.recommender import Recommender, SkipReport

log = logging.getLogger(__name__)


def _histories(split: LeaveOneOut, vocab: ItemVocabulary, target: str) -> list[list[int]]:
    if target == "test":
        return [vocab.encode([*t, v]) for t, v in zip(split.train, split.valid)]
    return [vocab.encode(t) for t in split.train]


def _popularity(split: LeaveOneOut, vocab: ItemVocabulary, target: str) -> ScoreFn:
    return PopularityRecommender(len(vocab)).fit(_histories(split, vocab, target)).score


def _markov(split: LeaveOneOut, vocab: ItemVocabulary, target: str) -> ScoreFn:
    return MarkovRecommender(len(vocab)).fit(_histories(split, vocab, target)).score


def _markov_decay(split: LeaveOneOut, vocab: ItemVocabulary, target: str) -> ScoreFn:
    """The decay chosen on the validation item (history: train), then fitted on what ``target`` may see (with
    ``target="valid"`` the choice has seen the evaluated items: an optimistic figure, for development only)."""
    from retrec.pipelines.train.seq.counts import fit_count_model

    train = [list(t) for t in split.train]
    rec = fit_count_model("markov-decay", train, (train, list(split.valid)),
                          refit=[[*t, v] for t, v in zip(split.train, split.valid)] if target == "test" else train)
    return catalogue_scorer(rec, vocab, exclude_seen=False)  # evaluation masks seen items for these


def _cooc(split: LeaveOneOut, vocab: ItemVocabulary, target: str) -> ScoreFn:
    return CooccurrenceRecommender(len(vocab)).fit(_histories(split, vocab, target)).score


BASELINES: dict[str, Callable[[LeaveOneOut, ItemVocabulary, str], ScoreFn]] = {
    "popularity": _popularity,
    "markov": _markov,
    "markov-decay": _markov_decay,
    "cooc": _cooc,
}
BUILDERS = BASELINES  # the fitted-by-name recommenders (older name)


def load_recommender(path: str | Path, **options: Any) -> Recommender:
    """A recommender bundle of any registered kind, through the registry's loader (``options``, e.g. ``threads``,
    refused when it takes no such one)."""
    manifest = read_manifest(path)
    try:
        kind = kinds.get(manifest.kind)
    except kinds.UnknownKindError as exc:
        raise BundleError(f"{path}: {exc}") from exc
    if kind.role != "recommender" or kind.load is None:
        raise BundleError(f"{path}: a {kind.kind} bundle ({kind.role}), not a recommender")
    return call_hook(kind.kind, kinds.resolve(kind.load), path, options=options)


def build_recommender(
    name: str, split: LeaveOneOut, vocab: ItemVocabulary, target: str = "test", exclude_seen: bool = True,
) -> ScoreFn:
    """A baseline by name, or a bundle folder of any recommender kind, as scores over ``vocab``."""
    if name in BASELINES:
        return BASELINES[name](split, vocab, target)  # evaluation masks seen items for these
    if Path(name).is_dir():
        return catalogue_scorer(load_recommender(name), vocab, exclude_seen=exclude_seen)
    bundle_kinds = [k.kind for k in kinds.by_role("recommender")]
    if any(name in k.eval_names or name == k.kind for k in kinds.by_role("recommender")):
        raise ValueError(f"{name!r} is a bundle kind: give the bundle's folder (e.g. one `retrec train` wrote)")
    raise ValueError(f"unknown recommender {name!r}; available: {', '.join(BASELINES)}, or a bundle folder of kind "
                     f"{', '.join(bundle_kinds)}")


def catalogue_scorer(rec: Recommender, vocab: ItemVocabulary, exclude_seen: bool = True) -> ScoreFn:
    """Adapt a recommender's catalogue scores to the evaluation vocabulary (items it lacks score -inf).

    Histories go to the model as raw ids; with ``exclude_seen`` the model's own seen items are masked as its
    ``recommend(..., exclude_seen=True)`` masks them. History ids the model does not know are counted and
    logged once per call.
    """
    catalogue = {str(item): j for j, item in enumerate(rec.item_ids)}
    column = np.fromiter((catalogue.get(item, -1) for item in vocab.items), np.int64, count=len(vocab))
    known = column >= 0

    def score(histories: Sequence[Sequence[int]]) -> np.ndarray:
        raw = [[vocab.items[i] for i in h] for h in histories]
        report = SkipReport()
        scores = np.asarray(rec.score(raw, report), dtype=np.float32)
        if scores.shape != (len(raw), len(catalogue)):
            raise ValueError(f"{rec.name}: score() gave shape {scores.shape}, expected {(len(raw), len(catalogue))}")
        if exclude_seen:
            scores = scores.copy()
            for row, history in enumerate(histories):
                seen = column[np.asarray(history, dtype=np.int64)] if len(history) else column[:0]
                scores[row, seen[seen >= 0]] = -np.inf
        if report.unknown_items:
            log.info("%s: %d history items not in its catalogue (e.g. %s)", rec.name, report.unknown_items,
                     ", ".join(report.examples))
        out = np.full((len(raw), len(vocab)), -np.inf, dtype=np.float32)
        out[:, known] = scores[:, column[known]]
        return out

    return score


def vocabulary_of(split: LeaveOneOut) -> ItemVocabulary:
    """Every item of the dataset, in sorted order (full ranking ranks against all of them)."""
    items = {i for seq in split.train for i in seq} | set(split.valid) | set(split.test)
    return ItemVocabulary(sorted(items))
