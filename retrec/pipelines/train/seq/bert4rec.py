"""``retrec train bert4rec``: Cloze training on leave-one-out sequences, early stopping, ONNX bundle.

Flow: interactions → per-user time-ordered sequences → leave-one-out (train / valid / test) → item
ids admitted to a collisionless :class:`EmbeddingTable` (raw ids in, rows out) → BERT4Rec trained on
the train parts with the Cloze task → best-on-validation weights → bundle:

    <out>/manifest.json            kind "model/bert4rec", configs, metrics, checksums
    <out>/user_encoder.onnx        history table rows [B, T, d+1] + padding → user vector [B, d+1]
    <out>/items/                   frozen table snapshot: raw ids → rows [e, bias] (table/embedding)
    <out>/training_curve.json      loss and validation NDCG@10 per epoch

Training runs in :func:`retrec.pipelines.train.loop.run_training` (epochs, early stopping on the
validation NDCG@10, best epoch exported). Checkpoints (model + optimizer + generator + progress,
loaded with ``weights_only=True``) live beside the bundle in ``<out>.ckpt/`` so an interrupted run
resumes with ``--resume``.

Example::

    train_bert4rec("../shared/data/beauty", "artifacts/bert4rec-beauty", BERT4RecTrainConfig(mask_prob=0.6))
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from retrec.kinds import BERT4REC_MODEL
from retrec.models.bert4rec import BERT4Rec, left_pad
from retrec.models.precision import autocast
from retrec.pipelines.train.seq.config import BERT4RecTrainConfig
from retrec.pipelines.train.seq.item_softmax import ItemSoftmaxAdapter, loss_fn, train_sequence

log = logging.getLogger("retrec.train.bert4rec")
KIND = BERT4REC_MODEL
__all__ = ["BERT4RecTrainConfig", "train_bert4rec"]


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


class Bert4RecAdapter(ItemSoftmaxAdapter):
    """Cloze steps for :func:`~retrec.pipelines.train.loop.run_training`; exports the ONNX bundle."""

    name = "bert4rec"
    kind = KIND
    model_type = BERT4Rec

    def step(self, batch: np.ndarray) -> tuple[torch.Tensor, dict[str, float]]:
        chunk = [self.windows[i] for i in batch]
        rows = left_pad(chunk, max(len(w) for w in chunk), self.model.pad)
        assert isinstance(self.cfg, BERT4RecTrainConfig) and self.cfg.mask_prob is not None
        inputs, masked, targets = (t.to(self.device) for t in cloze_batch(rows, self.model, self.cfg.mask_prob,
                                                                           self.gen, self.cfg.mask_last))
        with autocast(self.precision, self.device):
            return loss_fn(self.model, self.model(inputs)[masked], targets, self.cfg, self.gen), {}


def train_bert4rec(
    data: str | Path, out: str | Path, cfg: BERT4RecTrainConfig | None = None, resume: bool = False,
    progress: bool = True, command: str | None = None,
) -> Path:
    """Train on ``data``'s interactions and write a ``model/bert4rec`` bundle to ``out``."""
    return train_sequence(Bert4RecAdapter, data, out, cfg or BERT4RecTrainConfig(), resume, progress, command)
