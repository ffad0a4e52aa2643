"""Count models (``retrec train markov|markov-decay|cooc``), their parameters chosen on the validation item.

A count model has no training loop; what it has to learn from the data is a parameter or two. Each candidate in
:data:`CHOICES` is fitted on the training histories and scored by full-ranking NDCG@10 of the validation items
(seen items excluded); the best is kept (ties: the first listed, the simpler model). Fitted on Beauty and
MovieLens-100k, the best decays differ (0.3-ish vs 0.6-ish): a fixed value would be tuned to one of them.

Example::

    rec = fit_count_model("markov-decay", train, (valid_histories, valid_targets))   # raw item ids
    rec.model.decay                                                                 # the chosen one
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from retrec.bundle import publish
from retrec.data.interactions import load_interactions, user_sequences
from retrec.pipelines.eval.ir_metrics import mean_metrics, next_item_ranks, rec_metrics_from_ranks
from retrec.pipelines.train.seq.config import CountTrainConfig, SequenceTrainOptions
from retrec.pipelines.train.seq.data import held_out_users, training_part
from retrec.runtime.count_recommender import MODELS as COUNT_MODELS
from retrec.runtime.count_recommender import CountBundle

log = logging.getLogger("retrec.count_models")
CHOICES: dict[str, dict[str, tuple[float, ...]]] = {"markov-decay": {"decay": (0.0, 0.2, 0.4, 0.6, 0.8)}}
MAX_USERS = 10_000  # validation users scored per candidate


def validation_ndcg(rec: CountBundle, histories: Sequence[Sequence[str]], targets: Sequence[str],
                    batch_size: int = 1000) -> float:
    """Full-ranking NDCG@10 of ``targets`` after ``histories`` (seen items excluded; unknown targets rank last)."""
    n = len(rec.item_ids)
    tgt = rec.positions(list(targets))
    greater, ties = [], []
    for start in range(0, len(histories), batch_size):
        chunk = histories[start:start + batch_size]
        g, r = next_item_ranks(rec.score(chunk).astype(np.float64), [rec.positions(list(h)) for h in chunk],
                               tgt[start:start + batch_size])
        greater.append(g)
        ties.append(r)
    return mean_metrics(rec_metrics_from_ranks(np.concatenate(greater), np.concatenate(ties), n, (10,)))["NDCG@10"]


def choose_params(model: str, train: Sequence[Sequence[str]],
                  valid: tuple[Sequence[Sequence[str]], Sequence[str]]) -> dict[str, float]:
    """The parameters of ``model`` (from :data:`CHOICES`) best on ``valid``; ``{}`` when it has none to choose."""
    choices = CHOICES.get(model)
    if not choices or not len(valid[0]):
        return {}
    (param, values), = choices.items()
    histories, targets = list(valid[0])[:MAX_USERS], list(valid[1])[:MAX_USERS]
    found = {v: validation_ndcg(CountBundle.fit(model, train, **{param: v}), histories, targets) for v in values}
    best = max(values, key=lambda v: (found[v], -values.index(v)))
    log.info("%s: %s %s on %d validation users (NDCG@10 %s)", model, param, best, len(histories),
             ", ".join(f"{v}: {s:.4f}" for v, s in found.items()))
    return {param: best}


def fit_count_model(model: str, train: Sequence[Sequence[str]],
                    valid: tuple[Sequence[Sequence[str]], Sequence[str]] | None = None,
                    refit: Sequence[Sequence[str]] | None = None) -> CountBundle:
    """``model`` with its parameters chosen on ``valid`` (when it has any), fitted on ``refit`` (default
    ``train``): choose on the validation item, then fit on everything the final model may see."""
    params = choose_params(model, train, valid) if valid is not None else {}
    return CountBundle.fit(model, train if refit is None else refit, **params)


SPLIT_KEYS = ("eval_users", "valid_fraction", "seed")


CPU_RUN = {"device": "cpu", "precision": "fp32"}  # what counting and fusion run on, recorded


def train_counts(model: str, data: str | Path, out: str | Path, command: str | None = None,
                 split: dict[str, Any] | None = None, run: dict[str, Any] | None = None) -> Path:
    """Fit a count model (``markov``, ``markov-decay``, ``cooc``) on every history but each user's test item (as the
    sequence trainers hold it out), its parameters chosen first on the validation item of the users they hold out
    (``split``: theirs; default: the trainers' defaults), and publish it as a bundle."""
    seqs = user_sequences(load_interactions(data))
    split = split or {k: getattr(SequenceTrainOptions(), k) for k in SPLIT_KEYS}
    held = held_out_users([len(s) for s in seqs.items], split["eval_users"], split["valid_fraction"], split["seed"])
    train = [training_part(s, i in held) for i, s in enumerate(seqs.items)]
    valid = ([list(seqs.items[i][:-2]) for i in sorted(held)], [seqs.items[i][-2] for i in sorted(held)])
    fitted = fit_count_model(model, train, valid, refit=[training_part(s, False) for s in seqs.items])
    with publish(out) as pub:
        saved = fitted.save(pub.path)
        pub.set_manifest(command=command, **{**saved, "config": {**saved["config"], "train": run or CPU_RUN}},
                         metrics=dict(CPU_RUN))
    return Path(out)


def train_count_kind(data: str | Path, out: str | Path, cfg: CountTrainConfig | None = None, *, kind: str,
                     resume: bool = False, command: str | None = None) -> Path:
    """The registry's trainer of the count kinds (``model/markov``, ``model/markov-decay``, ``model/cooc``): a fit
    takes seconds, so ``resume`` starts it again."""
    cfg = cfg or CountTrainConfig()
    model = kind.partition("/")[2]
    if model not in COUNT_MODELS:
        raise ValueError(f"{kind}: not a count model kind ({', '.join(COUNT_MODELS)})")
    return train_counts(model, data, out, command=command, run={**asdict(cfg), **CPU_RUN})
