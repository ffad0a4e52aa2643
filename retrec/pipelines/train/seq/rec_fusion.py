"""``retrec train fusion``: combine recommenders into one ``model/rec-fusion`` bundle, weights chosen on validation.

Components: bundle folders of any recommender kind (e.g. what ``retrec train sasrec`` wrote) and the count
models ``markov`` / ``cooc``, fitted here. Weights are chosen on the validation item of the held-out users that
the sequence trainers hold out (the same seeded rule and options, read from the bundles' manifests; bundles
that disagree are refused, since one could have trained on another's validation items): for those users every
component sees the history before their second-to-last item, and a count model is fitted on exactly what the
neural models trained on. Every point of a simplex grid (step ``grid_step``) is scored by full-ranking NDCG@10
(seen items excluded) and the best is kept, ties to the earlier point. A published count component is then
refitted on everything but each user's test item, as the trained bundles were.

Example::

    train_fusion("../shared/data/beauty", "artifacts/sasrec+markov", ["artifacts/sasrec", "markov"])
"""

from __future__ import annotations

import itertools
import logging
import math
import re
import shutil
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from retrec import kinds
from retrec.bundle import publish, read_manifest
from retrec.data.interactions import Sequences, load_interactions, user_sequences
from retrec.kinds import FUSION_MODEL
from retrec.pipelines.eval.ir_metrics import mean_metrics, next_item_ranks, rec_metrics_from_ranks
from retrec.pipelines.eval.recommenders import load_recommender
from retrec.pipelines.train.seq.config import FusionTrainConfig, SequenceTrainOptions
from retrec.pipelines.train.seq.counts import CPU_RUN, SPLIT_KEYS, fit_count_model, train_counts
from retrec.pipelines.train.seq.data import held_out_users, training_part, users_digest
from retrec.runtime.count_recommender import MODELS as COUNT_MODELS
from retrec.runtime.count_recommender import CountBundle
from retrec.runtime.fused_recommender import FusedRecommender
from retrec.runtime.recommender import Recommender

log = logging.getLogger("retrec.train.fusion")
MAX_GRID = 10_000  # weight vectors a search scores
MAX_COMPONENTS = 8
TEMPERATURES = (0.5, 1.0, 2.0)  # softmax temperatures tried for each neural component
Point = tuple[tuple[float, ...], tuple[float, ...]]  # (weights, temperatures)


def simplex(n: int, step: float) -> list[tuple[float, ...]]:
    """Weight vectors of ``n`` components on a grid of ``step``, each summing to 1 (at most MAX_GRID of them)."""
    if not 0 < step <= 1:
        raise ValueError(f"grid_step must be in (0, 1], got {step}")
    ticks = round(1 / step)
    if n < 1 or abs(ticks * step - 1) > 1e-9:
        raise ValueError(f"grid_step must divide 1 (e.g. 0.05, 0.1), got {step}")
    if math.comb(ticks + n - 1, n - 1) > MAX_GRID:
        raise ValueError(f"a grid step of {step} over {n} components is {math.comb(ticks + n - 1, n - 1):,} weight "
                         f"vectors (at most {MAX_GRID:,}); use a coarser --grid-step")
    return [tuple(c / ticks for c in combo) for combo in itertools.product(range(ticks + 1), repeat=n)
            if sum(combo) == ticks]


def check_bundles(bundles: Sequence[Path], seqs: Sequences) -> tuple[dict[str, Any], set[int]]:
    """The validation split the bundle components share, and its held-out users in ``seqs``.

    Refused: a bundle that is not a recommender or records no split (count models go by name: they are fitted
    here on the right histories), bundles with different splits, and bundles validated on other users than
    this data gives (other data, or items the table did not admit).
    """
    splits = {}
    for b in bundles:
        m = read_manifest(b)
        try:
            kind = kinds.get(m.kind)
        except kinds.UnknownKindError as exc:
            raise ValueError(f"component {b}: {exc}") from exc
        train = m.config.get("train", {})
        if kind.role != "recommender" or m.kind == FUSION_MODEL or not all(k in train for k in SPLIT_KEYS):
            raise ValueError(f"component {b}: a {m.kind} bundle that records no validation split; give a bundle of "
                             f"`retrec train sasrec|bert4rec`, or a count model by name ({', '.join(COUNT_MODELS)})")
        splits[b] = (m, tuple(train[k] for k in SPLIT_KEYS))
    values = {v for _, v in splits.values()}
    if len(values) > 1:
        raise ValueError("components were trained with different validation splits "
                         f"({', '.join(f'{b}: {v}' for b, (_, v) in splits.items())}); retrain them with the same "
                         "--eval-users/--valid-fraction/--seed")
    defaults = SequenceTrainOptions()
    split = dict(zip(SPLIT_KEYS, next(iter(values), tuple(getattr(defaults, k) for k in SPLIT_KEYS))))
    held = held_out_users([len(s) for s in seqs.items], split["eval_users"], split["valid_fraction"], split["seed"])
    digest = users_digest([seqs.users[i] for i in held])
    for b, (m, _) in splits.items():
        recorded = m.metrics.get("validation_users_sha256")
        older_ok = recorded is None and m.config["train"].get("admit_threshold", 1) == 1 \
            and m.metrics.get("users") == len(seqs)
        if recorded != digest and not older_ok:
            raise ValueError(f"component {b} was validated on other users than these interactions give (trained on "
                             "other data, or with --admit-threshold above 1): its validation items could leak")
    return split, held


def grid_search(fused: FusedRecommender, histories: list[list[str]], targets: list[str], step: float,
                batch_size: int = 500) -> tuple[Point, dict[Point, float]]:
    """Validation NDCG@10 of every (weights, temperatures) point; the best one (ties: the earlier).

    Weights: the simplex grid of ``step``; temperatures: :data:`TEMPERATURES` for each softmax component
    (count components keep 1). A target no component knows ranks last."""
    weights = simplex(len(fused.components), step)
    choices = [TEMPERATURES if how == "softmax" else (1.0,) for how in fused.normalisations]
    grid = [(w, t) for t in itertools.product(*choices) for w in weights]
    n_items = len(fused.item_ids)
    target_pos = fused.positions(targets)
    greater: list[list[np.ndarray]] = [[] for _ in grid]
    ties: list[list[np.ndarray]] = [[] for _ in grid]
    for start in range(0, len(histories), batch_size):
        chunk = histories[start:start + batch_size]
        raw = [rec.score(chunk) for rec in fused.components]
        seen = [fused.positions(h) for h in chunk]
        probs, current = None, None
        for i, (w, t) in enumerate(grid):
            if t != current:
                probs, current = fused.distributions(raw, t), t
            g, r = next_item_ranks(fused.combine(probs, w).astype(np.float64), seen,
                                   target_pos[start:start + batch_size])
            greater[i].append(g)
            ties[i].append(r)
    scores_of = [mean_metrics(rec_metrics_from_ranks(np.concatenate(g), np.concatenate(r), n_items, (10,)))["NDCG@10"]
                 for g, r in zip(greater, ties)]
    best = max(range(len(grid)), key=lambda i: (scores_of[i], -i))
    return grid[best], dict(zip(grid, scores_of))


def normalisation_of(rec: Recommender) -> str:
    return "sum" if isinstance(rec, CountBundle) else "softmax"


def train_fusion(data: str | Path, out: str | Path, components: Sequence[str], grid_step: float = 0.05,
                 command: str | None = None, run: dict[str, Any] | None = None) -> Path:
    """Choose the weights of ``components`` (bundle folders and/or count models by name) and publish the fusion.

    ``run``: the run's options as recorded in the manifest (``config.train``; default: device cpu, fp32)."""
    if not 2 <= len(components) <= MAX_COMPONENTS:
        raise ValueError(f"fusion takes 2 to {MAX_COMPONENTS} components (e.g. --component BUNDLE --component markov)")
    grid_size = len(simplex(len(components), grid_step)) * len(TEMPERATURES) ** sum(c not in COUNT_MODELS
                                                                                  for c in components)
    if grid_size > MAX_GRID:  # a bad step or too large a search fails before any work
        raise ValueError(f"{grid_size:,} weight and temperature points to score (at most {MAX_GRID:,}); use a "
                         "coarser --grid-step or fewer components")
    bundles = [Path(c) for c in components if c not in COUNT_MODELS]
    for b in bundles:
        if not (b / "manifest.json").is_file():
            raise ValueError(f"component {b}: not a bundle folder (or one of {', '.join(COUNT_MODELS)})")
    seqs = user_sequences(load_interactions(data))
    split, held = check_bundles(bundles, seqs)
    if not held:
        raise ValueError(f"{data}: no user with 3+ items to choose fusion weights on")
    train = [training_part(s, i in held) for i, s in enumerate(seqs.items)]
    order = sorted(held)
    histories, targets = [list(seqs.items[i][:-2]) for i in order], [seqs.items[i][-2] for i in order]
    valid = (histories, targets)
    valid_parts = [fit_count_model(c, train, valid) if c in COUNT_MODELS else load_recommender(c) for c in components]
    norms = [normalisation_of(r) for r in valid_parts]
    probe = FusedRecommender(valid_parts, [1.0] * len(components), norms)
    log.info("choosing weights of %d components on %d validation users (grid step %s)", len(components),
             len(order), grid_step)
    best, ndcg = grid_search(probe, histories, targets, grid_step)
    weights, temps = best
    names = _names(components)
    unit = tuple(1.0 for _ in names)
    alone = {n: ndcg[(tuple(float(i == j) for j in range(len(names))), unit)] for i, n in enumerate(names)}
    log.info("validation NDCG@10: fused %.4f at weights %s, temperatures %s; alone %s", ndcg[best],
             dict(zip(names, weights)), dict(zip(names, temps)), alone)
    with publish(out) as pub:
        specs = []
        for name, comp, w, how, t in zip(names, components, weights, norms, temps):
            target = pub.path / "components" / name
            if comp in COUNT_MODELS:
                train_counts(comp, data, target, split=split)
            else:
                shutil.copytree(comp, target)
            specs.append({"name": name, "weight": w, "normalise": how, "temperature": t})
        pub.set_manifest(kind=FUSION_MODEL, name="+".join(names), command=command,
                         config={"components": specs, "grid_step": grid_step, "temperatures": list(TEMPERATURES),
                                 "split": split, "train": run or CPU_RUN},
                         metrics={"valid_NDCG@10": ndcg[best], "valid_users": len(order), **CPU_RUN,
                                  **{f"valid_NDCG@10 {n} alone": v for n, v in alone.items()}})
        FusedRecommender.from_manifest(pub.draft())  # what is published loads
    return Path(out)


def train_fusion_kind(data: str | Path, out: str | Path, cfg: FusionTrainConfig, *, resume: bool = False,
                      command: str | None = None) -> Path:
    """The registry's trainer of ``model/rec-fusion``: :func:`train_fusion` with the config's components."""
    return train_fusion(data, out, cfg.component, cfg.grid_step, command=command,
                        run={**asdict(cfg), **CPU_RUN})


def _names(components: Sequence[str]) -> list[str]:
    names: list[str] = []
    for c in components:
        base = c if c in COUNT_MODELS else read_manifest(c).name or "model"
        base = re.sub(r"[^A-Za-z0-9_.-]", "-", base).lstrip("_.-")[:48] or "model"
        name, n = base, 2
        while name in names:
            name, n = f"{base}-{n}", n + 1
        names.append(name)
    return names

