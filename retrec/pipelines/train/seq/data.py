"""What every sequence trainer starts from (BERT4Rec, SASRec, OneRec, DPO, fusion): one split, one rule.

Per-user time-ordered sequences → leave-one-out (train / valid / test) for a seeded set of held-out users
(:func:`held_out_users`; the rest train on everything but their test item), item ids admitted to a collisionless
table (:func:`prepare`), training windows of at most ``max_len`` items (:func:`windows`) batched by length
(:func:`length_batches`), the options left to the data (:func:`resolve_defaults`) and the loop of every sequence
trainer (:func:`loop_config`: epochs, early stopping on the validation NDCG@10). Fusion reads the same rule from
the bundles' manifests, so its weights are chosen on items no component trained on.

Example::

    seqs = user_sequences(load_interactions("../shared/data/beauty"))
    prep = prepare(seqs, EmbeddingTable(65), valid_users=10_000, valid_fraction=0.2, seed=0)
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from retrec.data.interactions import Sequences
from retrec.pipelines.train.loop import LoopConfig
from retrec.pipelines.train.seq.config import SequenceOptions
from retrec.tables import EmbeddingTable

log = logging.getLogger("retrec.train")


@dataclass
class PreparedData:
    item_keys: list[str]  # raw item id of each row
    train: list[np.ndarray]  # row sequences used for training
    eval_users: list[str]
    valid_history: list[np.ndarray]
    valid_target: np.ndarray
    stats: dict[str, int] = field(default_factory=dict)


def prepare(seqs: Sequences, table: EmbeddingTable, valid_users: int = 10_000, valid_fraction: float = 0.2,
            seed: int = 0) -> PreparedData:
    """Admit every item to the table and split by time, never training on a test item.

    Every user's last item is the test item. A seeded subset of users (``valid_fraction`` of the
    evaluable ones, at most ``valid_users``) is held out for early stopping: they train on all but
    their last two items and are validated on the second-to-last. All other users train on all but
    their last item, so that the model has seen the same kind of history at test time as in training.
    """
    flat = [i for items in seqs.items for i in items]
    table.observe(flat, now=0.0)
    keys, rows = table.entries()
    order = np.argsort(rows)
    raw = table.raw_ids(keys[order])
    if not np.array_equal(rows[order], np.arange(len(rows))):
        raise RuntimeError("embedding table rows are not compact; cannot map them onto model rows")
    row_of = dict(zip(raw, range(len(raw))))
    encoded, skipped = [], 0
    for items in seqs.items:
        r = np.array([row_of.get(i, -1) for i in items], dtype=np.int64)
        skipped += int((r < 0).sum())
        encoded.append(r[r >= 0])
    held = held_out_users([len(r) for r in encoded], valid_users, valid_fraction, seed)
    train, users, v_hist, v_tgt = [], [], [], []
    for i, (user, r) in enumerate(zip(seqs.users, encoded)):
        if len(part := training_part(r, i in held)):
            train.append(part)
        if i in held:
            users.append(user)
            v_hist.append(r[:-2])
            v_tgt.append(r[-2])
    return PreparedData(raw, train, users, v_hist, np.array(v_tgt, np.int64),
                        {"items": len(raw), "users": len(seqs), "validation_users": len(users),
                         "validation_users_sha256": users_digest(users), "skipped_not_admitted": skipped})


def training_part(sequence: Any, held: bool) -> Any:
    """What a model may train on of one user's sequence: never the test item (the last, for users with 3+ items),
    and for a held-out validation user not the validation item either. Shorter users are never evaluated."""
    if held:
        return sequence[:-2]
    return sequence[:-1] if len(sequence) >= 3 else sequence


def users_digest(users: list[str]) -> str:
    """sha256 of the validation users (sorted, one per line): what fusion checks it validates on the same ones."""
    import hashlib

    return hashlib.sha256("\n".join(sorted(map(str, users))).encode()).hexdigest()


def held_out_users(lengths: list[int], valid_users: int, valid_fraction: float, seed: int) -> set[int]:
    """Positions of the validation users: a seeded share of those with 3+ items (``prepare``'s rule)."""
    evaluable = np.flatnonzero([n >= 3 for n in lengths])
    n_valid = min(valid_users, round(valid_fraction * len(evaluable)))
    return set(np.random.default_rng(seed).permutation(evaluable)[:n_valid].tolist())


def windows(sequences: list[np.ndarray], max_len: int) -> list[np.ndarray]:
    """Training windows: the last ``max_len`` items, and earlier non-overlapping chunks of long sequences."""
    out = []
    for s in sequences:
        end = len(s)
        while end > 0:
            out.append(s[max(0, end - max_len):end])
            end -= max_len
            if end < 2:
                break
    return out


def length_batches(lengths: np.ndarray, batch_size: int, gen: torch.Generator, pool: int = 50) -> list[np.ndarray]:
    """Shuffled batches of similar length: shuffle, sort within pools of ``pool`` batches, shuffle batches.

    Each batch is padded only to its own longest sequence, which cuts the transformer's work on
    short-sequence data (Beauty averages 8.8 items against a window of 50).
    """
    order = torch.randperm(len(lengths), generator=gen).numpy()
    batches = []
    span = batch_size * pool
    for start in range(0, len(order), span):
        chunk = order[start:start + span]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    perm = torch.randperm(len(batches), generator=gen).tolist()
    return [batches[i] for i in perm]


def batch_count(n: int, batch_size: int, pool: int = 50) -> int:
    """How many batches :func:`length_batches` makes of ``n`` sequences (the same every epoch)."""
    span = batch_size * pool
    return sum(math.ceil(min(span, n - start) / batch_size) for start in range(0, n, span))


def resolve_defaults(cfg: SequenceOptions, seqs: Sequences) -> SequenceOptions:
    """Fill the options left to the data: ``max_len`` (and BERT4Rec's ``mask_prob``) from the sequence lengths."""
    lengths = np.array([len(s) for s in seqs.items]) if len(seqs) else np.array([2])
    updates: dict[str, Any] = {}
    if cfg.max_len is None:
        p99 = math.ceil(np.percentile(lengths, 99) / 10) * 10
        updates["max_len"] = int(min(cfg.max_len_cap(), max(10, p99)))
    if getattr(cfg, "mask_prob", 0.0) is None:
        updates["mask_prob"] = 0.6 if float(np.median(lengths)) < 20 else 0.2
    if updates:
        log.info("from the data (%d sequences, median length %.0f): %s", len(lengths), float(np.median(lengths)),
                 ", ".join(f"{k} {v}" for k, v in updates.items()))
    return replace(cfg, **updates)


def loop_config(cfg: SequenceOptions) -> LoopConfig:
    """Epochs with early stopping on the validation NDCG@10; the best epoch's weights are exported."""
    return LoopConfig(lr=cfg.lr, epochs=cfg.epochs, max_steps=cfg.max_steps, max_minutes=cfg.max_minutes,
                      lr_schedule=cfg.lr_schedule,
                      warmup_steps=cfg.warmup_steps, seed=cfg.seed, stop_within_epoch=False, step_curve=False,
                      monitor="valid_NDCG@10", keep_best=True, patience=cfg.patience)
