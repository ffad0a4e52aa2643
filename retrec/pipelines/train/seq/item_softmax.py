"""The item-softmax trainers' shared parts (BERT4Rec, SASRec): loss, validation, adapter, export.

:func:`loss_fn` is the next-item loss (full softmax ``ce``, ``sampled`` softmax over uniform negatives shared by
the batch, or ``gbce``); :func:`validate` ranks the held-out item over the whole catalogue; :class:`ItemSoftmaxAdapter`
runs the shared loop and exports the user encoder (ONNX) and the item table, checked by :func:`onnx_parity`. A
family subclasses the adapter with its model type and its ``step`` (BERT4Rec: Cloze masks; SASRec: shifted
targets).

Example::

    train_sequence(SASRecAdapter, "../shared/data/beauty", "artifacts/sasrec", SASRecTrainConfig())
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from retrec.bundle import Manifest, Publication
from retrec.data.interactions import load_interactions, user_sequences
from retrec.models.bert4rec import BERT4Rec, BERT4RecConfig, export_user_encoder
from retrec.models.precision import resolve_device
from retrec.models.seq_weights import save_weights
from retrec.pipelines.eval.ir_metrics import mean_metrics, rec_metrics_from_ranks
from retrec.pipelines.train.loop import TorchAdapter, TrainRun, run_training
from retrec.pipelines.train.seq.config import SequenceTrainOptions
from retrec.pipelines.train.seq.data import (
    PreparedData,
    batch_count,
    length_batches,
    loop_config,
    prepare,
    resolve_defaults,
    windows,
)
from retrec.tables import EmbeddingTable, FrozenTable

log = logging.getLogger("retrec.train")


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


@torch.no_grad()
def validate(model: BERT4Rec, histories: list[np.ndarray], targets: np.ndarray, batch_size: int = 512) -> dict:
    """Full-ranking metrics of the held-out item, seen items excluded, ranked on the model's device: the counts
    of :func:`~retrec.pipelines.eval.ir_metrics.next_item_ranks` (items scoring above the target, items tying with it; a
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


class ItemSoftmaxAdapter(TorchAdapter):
    """An item-softmax model's steps for :func:`~retrec.pipelines.train.loop.run_training`; exports the ONNX user
    encoder and the item table. A subclass sets ``name``, ``kind``, ``model_type`` and :meth:`step`."""

    name: str
    kind: str
    model_type: type[BERT4Rec] = BERT4Rec
    window_extra = 0  # items a training window holds beyond max_len (SASRec: the last position's target)

    def __init__(self, prep: PreparedData, table: EmbeddingTable, cfg: SequenceTrainOptions) -> None:
        assert cfg.max_len is not None, "resolve_defaults() first"
        self.prep, self.table, self.cfg = prep, table, cfg
        torch.manual_seed(cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed)  # CPU: masks and negatives, the same on every device
        self.place(cfg.device, cfg.precision)
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
        raise NotImplementedError  # the family's training objective

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
        save_weights(model, prep.item_keys, pub.path)  # what an online trainer continues from
        bundle = {"kind": self.kind, "name": self.name,
                  "config": {"model": model.cfg.to_json(), "train": asdict(self.cfg)},
                  "dims": {"hidden": model.cfg.hidden, "row_dim": model.cfg.hidden + 1, "items": model.cfg.num_items,
                           "max_len": model.cfg.max_len, "history_len": model.history_len()}}
        metrics = {"valid_NDCG@10": state.best, "best_epoch": state.best_epoch, "epochs_run": state.epoch,
                   "train_seconds": round(state.seconds, 1), "device": self.device, "precision": self.precision}
        metrics["onnx_top10_identical"] = onnx_parity(model, pub.draft(**bundle), prep.item_keys,
                                                      prep.valid_history[:1000])
        return {**bundle, "metrics": {**metrics, **prep.stats}}


def train_sequence(
    adapter_type: type[ItemSoftmaxAdapter], data: str | Path, out: str | Path, cfg: SequenceTrainOptions,
    resume: bool = False, progress: bool = True, command: str | None = None,
) -> Path:
    """Train a sequential recommender on ``data``'s interactions and write its bundle to ``out``."""
    loop_config(cfg)  # rejects a bad configuration before any work
    resolve_device(cfg.device)  # and a GPU that is not there
    seqs = user_sequences(load_interactions(data))
    cfg = resolve_defaults(cfg, seqs)
    table = EmbeddingTable(cfg.hidden + 1, admit_threshold=cfg.admit_threshold, seed=cfg.seed,
                           initial_capacity=2 * max(16, len({i for s in seqs.items for i in s})))
    prep = prepare(seqs, table, cfg.eval_users, cfg.valid_fraction, cfg.seed)
    return run_training(adapter_type(prep, table, cfg), loop_config(cfg), out, resume=resume, progress=progress,
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
        torch_scores = model.score_next(histories).numpy()
    ort_scores = runtime.score_rows([snapshot_row[h] for h in histories])
    same = 0
    for i in range(len(histories)):
        top_torch = snapshot_row[np.argsort(-torch_scores[i], kind="stable")[:k]]
        top_ort = np.argsort(-ort_scores[i], kind="stable")[:k]
        same += int(np.array_equal(top_torch, top_ort))
    return same / len(histories)
