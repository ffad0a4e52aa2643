"""SASRec: a causal transformer over item sequences that predicts the next item at every position.

After Kang & McAuley, "Self-Attentive Sequential Recommendation" (ICDM 2018), trained as in Petrov &
Macdonald's reproductions ("gSASRec", RecSys'23: many negatives or gBCE instead of one BCE negative). It shares
:class:`~retrec.models.bert4rec.BERT4Rec`'s layers (item + position embeddings, post-LN blocks, output head,
tied item embeddings + per-item bias as the ``[e, b]`` table rows that serving scores by inner product) and
differs in the attention mask (a position sees itself and earlier ones) and the objective: every position of
a training window is an example, where BERT4Rec learns only from the masked ones. No [MASK] slot at
inference: the last history position is the user vector, so the user encoder reads ``max_len`` items.

Example::

    model = SASRec(BERT4RecConfig(num_items=1000, max_len=50))
    scores = model.score_next([np.array([3, 7, 9])])     # [1, num_items]
"""

from __future__ import annotations

import numpy as np
import torch

from retrec.models.bert4rec import BERT4Rec, BERT4RecConfig, left_pad

SASRecConfig = BERT4RecConfig  # the same fields: items, length, width, depth, heads, dropout


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
