"""``retrec train bert4rec``: Cloze training on leave-one-out sequences, early stopping, ONNX bundle.

Flow: interactions → per-user time-ordered sequences → leave-one-out (train / valid / test) → item
ids admitted to a collisionless :class:`EmbeddingTable` (raw ids in, rows out) → BERT4Rec trained on
the train parts with the Cloze task → best-on-validation weights → bundle:

    <out>/manifest.json            kind "model/bert4rec", configs, metrics, checksums
    <out>/user_encoder.onnx        history table rows [B, T, d+1] + padding → user vector [B, d+1]
    <out>/items/                   frozen table snapshot: raw ids → rows [e, bias] (table/embedding)
    <out>/training_curve.json      loss and validation NDCG@10 per epoch

Training runs in :func:`retrec.pipelines.train_loop.run_training` (epochs, early stopping on the
validation NDCG@10, best epoch exported). Checkpoints (model + optimizer + generator + progress,
loaded with ``weights_only=True``) live beside the bundle in ``<out>.ckpt/`` so an interrupted run
resumes with ``--resume``.

Example::

    train_bert4rec("../shared/data/beauty", "artifacts/bert4rec-beauty", TrainConfig(mask_prob=0.6))
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from retrec.bundle import Manifest, Publication
from retrec.data.interactions import Sequences, load_interactions, user_sequences
from retrec.kinds import BERT4REC_MODEL
from retrec.models.bert4rec import BERT4Rec, BERT4RecConfig, export_user_encoder
from retrec.pipelines.metrics import mean_metrics, rec_metrics_from_ranks, target_ranks
from retrec.pipelines.train_config import TrainConfig
from retrec.pipelines.train_loop import LoopConfig, TorchAdapter, TrainRun, run_training
from retrec.tables import EmbeddingTable, FrozenTable

log = logging.getLogger("retrec.train.bert4rec")
KIND = BERT4REC_MODEL
__all__ = ["TrainConfig", "train_bert4rec"]


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
    evaluable = np.flatnonzero([len(r) >= 3 for r in encoded])
    n_valid = min(valid_users, round(valid_fraction * len(evaluable)))
    held = set(np.random.default_rng(seed).permutation(evaluable)[:n_valid].tolist())
    train, users, v_hist, v_tgt = [], [], [], []
    for i, (user, r) in enumerate(zip(seqs.users, encoded)):
        if i in held:
            train.append(r[:-2])
            users.append(user)
            v_hist.append(r[:-2])
            v_tgt.append(r[-2])
        elif len(r) >= 3:
            train.append(r[:-1])
        elif len(r):
            train.append(r)  # too short to be evaluated: no test item to protect
    return PreparedData(raw, train, users, v_hist, np.array(v_tgt, np.int64),
                        {"items": len(raw), "users": len(seqs), "validation_users": len(users),
                         "skipped_not_admitted": skipped})


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


def left_pad(seqs: list[np.ndarray], length: int, pad: int) -> torch.Tensor:
    batch = np.full((len(seqs), length), pad, dtype=np.int64)
    for i, s in enumerate(seqs):
        s = s[-length:]
        if len(s):
            batch[i, length - len(s):] = s
    return torch.from_numpy(batch)


def cloze_batch(rows: torch.Tensor, model: BERT4Rec, p: float, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Mask each real position with probability ``p`` (at least one per sequence: the last)."""
    real = rows != model.pad
    masked = (torch.rand(rows.shape, generator=gen) < p) & real
    none = ~masked.any(dim=1)
    masked[none, -1] = real[none, -1]
    inputs = rows.masked_fill(masked, model.mask)
    return inputs, masked, rows[masked]


def loss_fn(model: BERT4Rec, hidden: torch.Tensor, targets: torch.Tensor, cfg: TrainConfig,
            gen: torch.Generator) -> torch.Tensor:
    if cfg.loss == "ce":
        return F.cross_entropy(model.logits(hidden), targets)
    if cfg.loss == "sampled":  # uniform negatives shared by the batch, positives' own logit first
        n = model.cfg.num_items
        neg = torch.randint(0, n, (cfg.negatives,), generator=gen)
        emb = model.item_matrix()
        pos_logit = (hidden * emb[targets]).sum(-1) + model.bias[targets]
        neg_logit = hidden @ emb[neg].T + model.bias[neg]
        neg_logit = neg_logit.masked_fill(neg[None, :] == targets[:, None], -1e9)
        logits = torch.cat([pos_logit[:, None], neg_logit], dim=1)
        return F.cross_entropy(logits, torch.zeros(len(targets), dtype=torch.long))
    raise ValueError(f"unknown loss {cfg.loss!r}; choose 'ce' or 'sampled'")


@torch.no_grad()
def validate(model: BERT4Rec, histories: list[np.ndarray], targets: np.ndarray, batch_size: int = 512) -> dict:
    """Full-ranking metrics of the held-out item, seen items excluded (torch path, for early stopping)."""
    model.eval()
    greater, ties = [], []
    for start in range(0, len(histories), batch_size):
        chunk = histories[start:start + batch_size]
        rows = left_pad([np.append(h[-(model.cfg.max_len - 1):], model.mask) for h in chunk],
                        model.cfg.max_len, model.pad)
        scores = model.score_last(rows).numpy().astype(np.float64)
        for i, h in enumerate(chunk):
            scores[i, h] = -np.inf
        g, t = target_ranks(scores, targets[start:start + batch_size])
        greater.append(g)
        ties.append(t)
    model.train()
    per_user = rec_metrics_from_ranks(np.concatenate(greater), np.concatenate(ties), model.cfg.num_items, (10,))
    return mean_metrics(per_user)


class Bert4RecAdapter(TorchAdapter):
    """Cloze steps for :func:`~retrec.pipelines.train_loop.run_training`; exports the ONNX bundle."""

    name = "bert4rec"

    def __init__(self, prep: PreparedData, table: EmbeddingTable, cfg: TrainConfig) -> None:
        self.prep, self.table, self.cfg = prep, table, cfg
        torch.manual_seed(cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.model = BERT4Rec(BERT4RecConfig(num_items=len(prep.item_keys), max_len=cfg.max_len, hidden=cfg.hidden,
                                             layers=cfg.layers, heads=cfg.heads, dropout=cfg.dropout,
                                             attention_dropout=cfg.dropout))
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.windows = windows(prep.train, cfg.max_len)
        self.lengths = np.array([len(w) for w in self.windows])

    def steps_per_epoch(self) -> int:
        return batch_count(len(self.windows), self.cfg.batch_size)

    def batches(self, epoch: int) -> list[np.ndarray]:
        return length_batches(self.lengths, self.cfg.batch_size, self.gen)

    def step(self, batch: np.ndarray) -> tuple[torch.Tensor, dict[str, float]]:
        chunk = [self.windows[i] for i in batch]
        rows = left_pad(chunk, max(len(w) for w in chunk), self.model.pad)
        inputs, masked, targets = cloze_batch(rows, self.model, self.cfg.mask_prob, self.gen)
        return loss_fn(self.model, self.model(inputs)[masked], targets, self.cfg, self.gen), {}

    def evaluate(self) -> dict[str, float | None]:
        metrics = validate(self.model, self.prep.valid_history, self.prep.valid_target)
        return {"valid_NDCG@10": metrics["NDCG@10"], "valid_HR@10": metrics["HR@10"]}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "rng": self.gen.get_state()}

    def load_state_dict(self, checkpoint: dict[str, Any]) -> None:
        super().load_state_dict(checkpoint)
        if "rng" in checkpoint:  # resume continues the uninterrupted run's random stream
            self.gen.set_state(checkpoint["rng"])
        else:  # checkpoints written before the generator was saved
            self.gen.manual_seed(self.cfg.seed + int(checkpoint["state"]["epoch"].item()))

    def export(self, pub: Publication, run: TrainRun) -> dict[str, Any]:
        model, prep, state = self.model, self.prep, run.state
        with torch.no_grad():
            rows = model.table_rows().numpy()
        self.table.update(prep.item_keys, rows, now=0.0)
        self.table.snapshot(pub.path / "items", name="bert4rec-items")
        export_user_encoder(model, pub.path / "user_encoder.onnx")
        bundle = {"kind": KIND, "name": "bert4rec", "config": {"model": model.cfg.to_json(), "train": asdict(self.cfg)},
                  "dims": {"hidden": model.cfg.hidden, "row_dim": model.cfg.hidden + 1, "items": model.cfg.num_items,
                           "max_len": model.cfg.max_len}}
        metrics = {"valid_NDCG@10": state.best, "best_epoch": state.best_epoch, "epochs_run": state.epoch,
                   "train_seconds": round(state.seconds, 1)}
        metrics["onnx_top10_identical"] = onnx_parity(model, pub.draft(**bundle), prep.item_keys,
                                                      prep.valid_history[:1000])
        return {**bundle, "metrics": {**metrics, **prep.stats}}


def loop_config(cfg: TrainConfig) -> LoopConfig:
    """Epochs with early stopping on the validation NDCG@10; the best epoch's weights are exported."""
    return LoopConfig(lr=cfg.lr, epochs=cfg.epochs, max_minutes=cfg.max_minutes, lr_schedule=cfg.lr_schedule,
                      warmup_steps=cfg.warmup_steps, seed=cfg.seed, stop_within_epoch=False, step_curve=False,
                      monitor="valid_NDCG@10", keep_best=True, patience=cfg.patience)


def train_bert4rec(
    data: str | Path, out: str | Path, cfg: TrainConfig | None = None, resume: bool = False,
    progress: bool = True, command: str | None = None,
) -> Path:
    """Train on ``data``'s interactions and write a ``model/bert4rec`` bundle to ``out``."""
    cfg = cfg or TrainConfig()
    loop = loop_config(cfg)  # rejects a bad configuration before any work
    seqs = user_sequences(load_interactions(data))
    table = EmbeddingTable(cfg.hidden + 1, admit_threshold=cfg.admit_threshold, seed=cfg.seed,
                           initial_capacity=2 * max(16, len({i for s in seqs.items for i in s})))
    prep = prepare(seqs, table, cfg.eval_users, cfg.valid_fraction, cfg.seed)
    return run_training(Bert4RecAdapter(prep, table, cfg), loop, out, resume=resume, progress=progress,
                        command=command)


def onnx_parity(model: BERT4Rec, bundle: Path | Manifest, item_keys: list[str], histories: list[np.ndarray],
                k: int = 10) -> float:
    """Fraction of users whose top-``k`` through the ONNX runtime equals torch's, in the same order.

    ``bundle``: a bundle folder or its (draft) manifest, for a check before publishing.
    """
    from retrec.runtime.sequence_recommender import SequenceRecommender

    if not histories:
        return 1.0
    if isinstance(bundle, Manifest):
        assert bundle.path is not None
        runtime = SequenceRecommender(bundle, FrozenTable.load(bundle.path / "items"))
    else:
        runtime = SequenceRecommender.load(bundle)
    snapshot_row = runtime.table.lookup(item_keys)  # model row → snapshot row
    with torch.no_grad():
        rows = left_pad([np.append(h[-(model.cfg.max_len - 1):], model.mask) for h in histories],
                        model.cfg.max_len, model.pad)
        torch_scores = model.score_last(rows).numpy()
    ort_scores = runtime.score_rows([snapshot_row[h] for h in histories])
    same = 0
    for i in range(len(histories)):
        top_torch = snapshot_row[np.argsort(-torch_scores[i], kind="stable")[:k]]
        top_ort = np.argsort(-ort_scores[i], kind="stable")[:k]
        same += int(np.array_equal(top_torch, top_ort))
    return same / len(histories)
