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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from retrec.bundle import Manifest, Publication
from retrec.data.interactions import Sequences, load_interactions, user_sequences
from retrec.kinds import BERT4REC_MODEL
from retrec.models.bert4rec import BERT4Rec, BERT4RecConfig, export_user_encoder, left_pad
from retrec.models.precision import autocast, resolve_device, resolve_precision
from retrec.pipelines.metrics import mean_metrics, rec_metrics_from_ranks
from retrec.pipelines.train_config import SequenceOptions, SequenceTrainOptions, TrainConfig
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


def cloze_batch(rows: torch.Tensor, model: BERT4Rec, p: float, gen: torch.Generator,
                last: float = 0.0) -> tuple[torch.Tensor, ...]:
    """Mask each real position with probability ``p`` (at least one per sequence: the last); CPU tensors.

    A share ``last`` of the rows masks only its last item instead: the task the model is served for (history, then
    ``[MASK]``), which the BERT4Rec paper adds to the Cloze samples as a fine-tuning signal (section 3.6)."""
    real = rows != model.pad
    masked = (torch.rand(rows.shape, generator=gen) < p) & real
    if last > 0.0:
        only_last = torch.rand(len(rows), generator=gen) < last
        masked[only_last] = False
        masked[only_last, -1] = real[only_last, -1]
    none = ~masked.any(dim=1)
    masked[none, -1] = real[none, -1]
    inputs = rows.masked_fill(masked, model.mask)
    return inputs, masked, rows[masked]


def loss_fn(model: BERT4Rec, hidden: torch.Tensor, targets: torch.Tensor, cfg: SequenceTrainOptions,
            gen: torch.Generator) -> torch.Tensor:
    """Next-item loss of each row of ``hidden`` (``[N, d]``) against its target item (``[N]``)."""
    if cfg.loss == "ce":
        return F.cross_entropy(model.logits(hidden), targets)
    if cfg.loss not in ("sampled", "gbce"):
        raise ValueError(f"unknown loss {cfg.loss!r}; choose 'ce', 'sampled' or 'gbce'")
    n = model.cfg.num_items  # uniform negatives shared by the batch; a target drawn as its own negative is masked
    neg = torch.randint(0, n, (min(cfg.negatives, n),), generator=gen).to(hidden.device)
    emb = model.item_matrix()
    pos_logit = (hidden * emb[targets]).sum(-1) + model.bias[targets]
    neg_logit = hidden @ emb[neg].T + model.bias[neg]
    own = neg[None, :] == targets[:, None]
    if cfg.loss == "sampled":
        logits = torch.cat([pos_logit[:, None], neg_logit.masked_fill(own, -1e9)], dim=1)
        return F.cross_entropy(logits, torch.zeros(len(targets), dtype=torch.long, device=logits.device))
    # gBCE (Petrov & Macdonald, RecSys'23): the positive's log-sigmoid raised to beta, calibrating the
    # probabilities that sampling k of n-1 negatives would otherwise overstate
    alpha = min(len(neg), n - 1) / max(n - 1, 1)
    beta = alpha * (cfg.gbce_t * (1.0 - 1.0 / alpha) + 1.0 / alpha)
    neg_terms = F.logsigmoid(-neg_logit).masked_fill(own, 0.0).sum(-1)
    return -(beta * F.logsigmoid(pos_logit) + neg_terms).mean()


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


@torch.no_grad()
def validate(model: BERT4Rec, histories: list[np.ndarray], targets: np.ndarray, batch_size: int = 512) -> dict:
    """Full-ranking metrics of the held-out item, seen items excluded, ranked on the model's device: the counts
    of :func:`~retrec.pipelines.metrics.next_item_ranks` (items scoring above the target, items tying with it; a
    target of ``-1``, an item the model does not know, ranks last), without copying ``[B, items]`` scores out."""
    model.eval()
    greater, ties = [], []
    for start in range(0, len(histories), batch_size):
        chunk = histories[start:start + batch_size]
        scores = model.score_next(chunk).float()
        seen_row = torch.from_numpy(np.repeat(np.arange(len(chunk)), [len(h) for h in chunk]))
        seen = torch.from_numpy(np.concatenate(chunk).astype(np.int64))
        scores[seen_row.to(scores.device), seen.to(scores.device)] = -torch.inf
        target = torch.from_numpy(targets[start:start + batch_size]).to(scores.device)
        missing = target < 0
        t = scores.gather(1, target.clamp(min=0)[:, None])
        greater.append(torch.where(missing, scores.shape[1], (scores > t).sum(1)).cpu().numpy())
        ties.append(torch.where(missing, 0, (scores == t).sum(1) - 1).cpu().numpy())
    model.train()
    per_user = rec_metrics_from_ranks(np.concatenate(greater), np.concatenate(ties), model.cfg.num_items, (10,))
    return mean_metrics(per_user)


class Bert4RecAdapter(TorchAdapter):
    """Cloze steps for :func:`~retrec.pipelines.train_loop.run_training`; exports the ONNX bundle."""

    name = "bert4rec"
    kind = KIND
    model_type: type[BERT4Rec] = BERT4Rec
    window_extra = 0  # items a training window holds beyond max_len (SASRec: the last position's target)

    def __init__(self, prep: PreparedData, table: EmbeddingTable, cfg: SequenceTrainOptions) -> None:
        assert cfg.max_len is not None, "resolve_defaults() first"
        self.prep, self.table, self.cfg = prep, table, cfg
        torch.manual_seed(cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed)  # CPU: masks and negatives, the same on every device
        self.device = resolve_device(cfg.device)
        self.precision = resolve_precision(cfg.precision, self.device)
        log.info("%s: training on %s, %s", self.name, self.device, self.precision)
        self.model = self.model_type(BERT4RecConfig(
            num_items=len(prep.item_keys), max_len=cfg.max_len, hidden=cfg.hidden, layers=cfg.layers, heads=cfg.heads,
            dropout=cfg.dropout, attention_dropout=cfg.dropout, block=cfg.block)).to(self.device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.windows = windows(prep.train, cfg.max_len + self.window_extra)
        self.lengths = np.array([len(w) for w in self.windows])

    def steps_per_epoch(self) -> int:
        return batch_count(len(self.windows), self.cfg.batch_size)

    def batches(self, epoch: int) -> list[np.ndarray]:
        return length_batches(self.lengths, self.cfg.batch_size, self.gen)

    def step(self, batch: np.ndarray) -> tuple[torch.Tensor, dict[str, float]]:
        chunk = [self.windows[i] for i in batch]
        rows = left_pad(chunk, max(len(w) for w in chunk), self.model.pad)
        assert isinstance(self.cfg, TrainConfig) and self.cfg.mask_prob is not None
        inputs, masked, targets = (t.to(self.device) for t in cloze_batch(rows, self.model, self.cfg.mask_prob,
                                                                           self.gen, self.cfg.mask_last))
        with autocast(self.precision, self.device):
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
        model, prep, state = self.model.cpu(), self.prep, run.state  # exports and parity run on the CPU
        with torch.no_grad():
            rows = model.table_rows().numpy()
        self.table.update(prep.item_keys, rows, now=0.0)
        self.table.snapshot(pub.path / "items", name=f"{self.name}-items")
        export_user_encoder(model, pub.path / "user_encoder.onnx")
        bundle = {"kind": self.kind, "name": self.name,
                  "config": {"model": model.cfg.to_json(), "train": asdict(self.cfg)},
                  "dims": {"hidden": model.cfg.hidden, "row_dim": model.cfg.hidden + 1, "items": model.cfg.num_items,
                           "max_len": model.cfg.max_len, "history_len": model.history_len()}}
        metrics = {"valid_NDCG@10": state.best, "best_epoch": state.best_epoch, "epochs_run": state.epoch,
                   "train_seconds": round(state.seconds, 1), "device": self.device, "precision": self.precision}
        metrics["onnx_top10_identical"] = onnx_parity(model, pub.draft(**bundle), prep.item_keys,
                                                      prep.valid_history[:1000])
        return {**bundle, "metrics": {**metrics, **prep.stats}}


def loop_config(cfg: SequenceOptions) -> LoopConfig:
    """Epochs with early stopping on the validation NDCG@10; the best epoch's weights are exported."""
    return LoopConfig(lr=cfg.lr, epochs=cfg.epochs, max_steps=cfg.max_steps, max_minutes=cfg.max_minutes,
                      lr_schedule=cfg.lr_schedule,
                      warmup_steps=cfg.warmup_steps, seed=cfg.seed, stop_within_epoch=False, step_curve=False,
                      monitor="valid_NDCG@10", keep_best=True, patience=cfg.patience)


def train_sequence(
    adapter_type: type[Bert4RecAdapter], data: str | Path, out: str | Path, cfg: SequenceTrainOptions,
    resume: bool = False, progress: bool = True, command: str | None = None,
) -> Path:
    """Train a sequential recommender on ``data``'s interactions and write its bundle to ``out``."""
    loop_config(cfg)  # rejects a bad configuration before any work
    seqs = user_sequences(load_interactions(data))
    cfg = resolve_defaults(cfg, seqs)
    table = EmbeddingTable(cfg.hidden + 1, admit_threshold=cfg.admit_threshold, seed=cfg.seed,
                           initial_capacity=2 * max(16, len({i for s in seqs.items for i in s})))
    prep = prepare(seqs, table, cfg.eval_users, cfg.valid_fraction, cfg.seed)
    return run_training(adapter_type(prep, table, cfg), loop_config(cfg), out, resume=resume, progress=progress,
                        command=command)


def train_bert4rec(
    data: str | Path, out: str | Path, cfg: TrainConfig | None = None, resume: bool = False,
    progress: bool = True, command: str | None = None,
) -> Path:
    """Train on ``data``'s interactions and write a ``model/bert4rec`` bundle to ``out``."""
    return train_sequence(Bert4RecAdapter, data, out, cfg or TrainConfig(), resume, progress, command)


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
        torch_scores = model.score_next(histories).numpy()
    ort_scores = runtime.score_rows([snapshot_row[h] for h in histories])
    same = 0
    for i in range(len(histories)):
        top_torch = snapshot_row[np.argsort(-torch_scores[i], kind="stable")[:k]]
        top_ort = np.argsort(-ort_scores[i], kind="stable")[:k]
        same += int(np.array_equal(top_torch, top_ort))
    return same / len(histories)
