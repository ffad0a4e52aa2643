"""SASRec: a causal transformer over item sequences that predicts the next item at every position.

After Kang & McAuley, "Self-Attentive Sequential Recommendation" (ICDM 2018), trained as in Petrov &
Macdonald's and Klenitskiy & Vasilev's reproductions (RecSys'23: many negatives or the full softmax instead of
one BCE negative). It shares :class:`~retrec.models.bert4rec.BERT4Rec`'s embeddings, tied item embeddings +
per-item bias (the ``[e, b]`` table rows that serving scores by inner product), padding and export, and differs
in the attention mask (a position sees itself and earlier ones) and the objective: every position of a training
window is an example, where BERT4Rec learns only from the masked ones. No [MASK] slot at inference: the last
history position is the user vector, so the user encoder reads ``max_len`` items.

Two block layouts (``BERT4RecConfig.block``): ``sasrec`` (the default for new models) is the paper's — item
embeddings scaled by sqrt(d) plus positions; in each block a layer-normalised query attends over the sequence
with the residual taken from that query, then a layer-normalised point-wise feed-forward of width d (ReLU) with
its residual; padded positions zeroed after each block; a final LayerNorm is the output. ``bert`` reuses
BERT4Rec's post-LN blocks and output head (models trained before the paper's layout was added).

Example::

    model = SASRec(BERT4RecConfig(num_items=1000, max_len=50, block="sasrec"))
    scores = model.score_next([np.array([3, 7, 9])])     # [1, num_items]
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from retrec.models.bert4rec import BERT4Rec, BERT4RecConfig, left_pad

SASRecConfig = BERT4RecConfig  # the same fields: items, length, width, depth, heads, dropout, block layout


class PaperBlock(nn.Module):
    """One SASRec block as in the paper's reference code (plain ops, ONNX-friendly)."""

    def __init__(self, cfg: BERT4RecConfig) -> None:
        super().__init__()
        d = cfg.hidden
        self.heads, self.head_dim = cfg.heads, d // cfg.heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.norm_q = nn.LayerNorm(d, eps=1e-8)
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.out = nn.Linear(d, d)
        self.norm_ff = nn.LayerNorm(d, eps=1e-8)
        self.ff1 = nn.Linear(d, d)
        self.ff2 = nn.Linear(d, d)
        self.drop = nn.Dropout(cfg.dropout)
        self.attn_drop = nn.Dropout(cfg.attention_dropout)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        query = self.norm_q(x)
        q = self.q(query).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(x).view(b, n, 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        att = self.attn_drop(((q @ k.transpose(-1, -2)) * self.scale + attn_bias).softmax(dim=-1))
        x = query + self.out((att @ v).transpose(1, 2).reshape(b, n, d))
        h = self.norm_ff(x)
        return (h + self.drop(self.ff2(self.drop(F.relu(self.ff1(h)))))) * keep


class SASRec(BERT4Rec):
    causal = True

    def __init__(self, cfg: BERT4RecConfig) -> None:
        super().__init__(cfg)
        if cfg.block == "sasrec":
            self.norm = nn.Identity()  # no embedding LayerNorm in the paper's layout
            self.blocks = nn.ModuleList(PaperBlock(cfg) for _ in range(cfg.layers))
            self.head = nn.LayerNorm(cfg.hidden, eps=1e-8)  # the final LayerNorm
            self.apply(self._init)
        elif cfg.block != "bert":
            raise ValueError(f"unknown block layout {cfg.block!r}; choose 'sasrec' or 'bert'")

    def encode(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        if self.cfg.block != "sasrec":
            return super().encode(x, padding)
        length = x.shape[1]
        keep = (~padding)[:, :, None].to(x.dtype)
        x = self.drop(x * math.sqrt(self.cfg.hidden) + self.positions.weight[self.cfg.max_len - length:]) * keep
        later = torch.ones(length, length, dtype=torch.bool, device=x.device).triu(1)
        attn_bias = (padding[:, None, None, :] | later).to(x.dtype) * -1e9
        for block in self.blocks:
            x = block(x, attn_bias, keep)
        return self.head(x)

    def history_len(self) -> int:
        return self.cfg.max_len

    def next_rows(self, histories: list[np.ndarray]) -> torch.Tensor:
        return left_pad(list(histories), self.cfg.max_len, self.pad)

    def shifted(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Window rows ``[B, L+1]`` → inputs ``[B, L]`` and each position's next item (``pad`` where none)."""
        inputs, targets = rows[:, :-1], rows[:, 1:]
        targets = targets.masked_fill(inputs == self.pad, self.pad)
        return inputs, targets
