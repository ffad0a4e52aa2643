"""SASRec: a causal transformer over item sequences that predicts the next item at every position.

After Kang & McAuley, "Self-Attentive Sequential Recommendation" (ICDM 2018), trained as in Petrov &
Macdonald's and Klenitskiy & Vasilev's reproductions (RecSys'23: many negatives or the full softmax instead of
one BCE negative). It shares :class:`~retrec.models.bert4rec.BERT4Rec`'s embeddings, tied item embeddings +
per-item bias (the ``[e, b]`` table rows that serving scores by inner product), padding and export, and differs
in the attention mask (a position sees itself and earlier ones) and the objective: every position of a training
window is an example, where BERT4Rec learns only from the masked ones. No [MASK] slot at inference: the last
history position is the user vector, so the user encoder reads ``max_len`` items.

Two block layouts (``BERT4RecConfig.block``, shared with BERT4Rec): ``sasrec`` (the default here) is the paper's — item
embeddings scaled by sqrt(d) plus positions; in each block a layer-normalised query attends over the sequence
with the residual taken from that query, then a layer-normalised point-wise feed-forward of width d (ReLU) with
its residual; padded positions zeroed after each block; a final LayerNorm is the output. ``bert`` reuses
BERT4Rec's post-LN blocks and output head (models trained before the paper's layout was added).

Example::

    model = SASRec(BERT4RecConfig(num_items=1000, max_len=50, block="sasrec"))
    scores = model.score_next([np.array([3, 7, 9])])     # [1, num_items]
"""

from __future__ import annotations

import numpy as np
import torch

from retrec.models.bert4rec import BERT4Rec, BERT4RecConfig, left_pad

SASRecConfig = BERT4RecConfig  # the same fields: items, length, width, depth, heads, dropout, block layout


class SASRec(BERT4Rec):
    causal = True

    def history_len(self) -> int:
        return self.cfg.max_len

    def next_rows(self, histories: list[np.ndarray]) -> torch.Tensor:
        return left_pad(list(histories), self.cfg.max_len, self.pad)

    def shifted(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Window rows ``[B, L+1]`` → inputs ``[B, L]`` and each position's next item (``pad`` where none)."""
        inputs, targets = rows[:, :-1], rows[:, 1:]
        targets = targets.masked_fill(inputs == self.pad, self.pad)
        return inputs, targets
