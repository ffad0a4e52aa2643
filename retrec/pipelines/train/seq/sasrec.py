"""``retrec train sasrec``: next-item training at every position, the BERT4Rec pipeline otherwise.

The same data flow as :mod:`retrec.pipelines.train.seq.bert4rec` (leave-one-out, a held-out validation-user
subset, the collisionless item table, the shared training loop with early stopping on validation NDCG@10,
the best epoch exported, ONNX parity checked before publishing) and the same bundle layout
(``user_encoder.onnx`` + ``items/``), kind ``model/sasrec``. What differs: causal attention, and every
position of a training window predicts the item after it (windows hold ``max_len + 1`` items), with the
sampled softmax, full cross-entropy or gBCE of :func:`~retrec.pipelines.train.seq.bert4rec.loss_fn`.

Example::

    train_sasrec("../shared/data/beauty", "artifacts/sasrec-beauty")       # the measured defaults
    train_sasrec("data/ml", "artifacts/sasrec-ml", SASRecTrainConfig(loss="gbce", negatives=256))
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from retrec.kinds import SASREC_MODEL
from retrec.models.bert4rec import left_pad
from retrec.models.precision import autocast
from retrec.models.sasrec import SASRec
from retrec.pipelines.train.seq.config import SASRecTrainConfig
from retrec.pipelines.train.seq.item_softmax import ItemSoftmaxAdapter, loss_fn, train_sequence

__all__ = ["SASRecTrainConfig", "train_sasrec"]


class SASRecAdapter(ItemSoftmaxAdapter):
    name = "sasrec"
    kind = SASREC_MODEL
    model_type = SASRec
    window_extra = 1

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.windows = [w for w in self.windows if len(w) >= 2]  # one item: nothing to predict
        self.lengths = np.array([len(w) for w in self.windows])

    def step(self, batch: np.ndarray) -> tuple[torch.Tensor, dict[str, float]]:
        model = self.model
        assert isinstance(model, SASRec)
        chunk = [self.windows[i] for i in batch]
        inputs, targets = model.shifted(left_pad(chunk, max(len(w) for w in chunk), model.pad).to(self.device))
        real = targets != model.pad
        with autocast(self.precision, self.device):
            return loss_fn(model, model(inputs)[real], targets[real], self.cfg, self.gen), {}


def train_sasrec(
    data: str | Path, out: str | Path, cfg: SASRecTrainConfig | None = None, resume: bool = False,
    progress: bool = True, command: str | None = None,
) -> Path:
    """Train on ``data``'s interactions and write a ``model/sasrec`` bundle to ``out``."""
    return train_sequence(SASRecAdapter, data, out, cfg or SASRecTrainConfig(), resume, progress, command)
