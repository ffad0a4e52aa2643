"""BERT4Rec: a bidirectional transformer over item sequences, trained with the Cloze task.

After Sun et al., "BERT4Rec: Sequential Recommendation with Bidirectional Encoder Representations
from Transformer" (CIKM 2019): learned item + position embeddings, post-LN transformer blocks with
GELU, an output head (dense + GELU + LayerNorm) scored against the tied item embeddings plus a
per-item bias (``block="bert"``); or SASRec's pre-LN layout (``block="sasrec"``, :class:`PaperBlock`) with
bidirectional attention. Sequences are left-padded; at inference the last position is [MASK].

Rows: items are embedding-table rows ``0..num_items-1``; ``num_items`` is PAD, ``num_items + 1`` MASK.
For export, the item embedding and bias of each row are one *table row* ``[e, b]`` of width d+1, so that
``user_vector · row`` (user vector ``[u, 1]``) is exactly the model's score — a plain inner product that
FAISS or a matmul can serve.

Example::

    model = BERT4Rec(BERT4RecConfig(num_items=1000, max_len=50))
    hidden = model(rows)                         # [B, L, d]
    scores = model.score_last(rows)              # [B, num_items]
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from retrec.models.onnx_export import BATCH_AXIS, OPSET, export_graph

HISTORY_AXES = {0: "batch", 1: "steps"}  # a history input's (or per-position output's) dynamic axes


@dataclass
class BERT4RecConfig:
    num_items: int
    max_len: int = 50
    hidden: int = 64
    layers: int = 2
    heads: int = 2
    dropout: float = 0.1
    attention_dropout: float = 0.1
    block: str = "bert"  # "bert": post-LN blocks + output head; "sasrec": Kang & McAuley's pre-LN layout (PaperBlock)

    def to_json(self) -> dict:
        return asdict(self)


class Block(nn.Module):
    """Post-LN transformer block written out in plain ops (ONNX-friendly, no fast-path kernels)."""

    def __init__(self, cfg: BERT4RecConfig) -> None:
        super().__init__()
        d = cfg.hidden
        self.heads = cfg.heads
        self.head_dim = d // cfg.heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.ff1 = nn.Linear(d, 4 * d)
        self.ff2 = nn.Linear(4 * d, d)
        self.norm1 = nn.LayerNorm(d)
        self.norm2 = nn.LayerNorm(d)
        self.drop = nn.Dropout(cfg.dropout)
        self.attn_drop = nn.Dropout(cfg.attention_dropout)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        att = (q @ k.transpose(-1, -2)) * self.scale + attn_bias  # [B, H, L, L]
        att = self.attn_drop(att.softmax(dim=-1))
        y = (att @ v).transpose(1, 2).reshape(b, n, d)
        x = self.norm1(x + self.drop(self.out(y)))
        return self.norm2(x + self.drop(self.ff2(self.drop(F.gelu(self.ff1(x))))))


class PaperBlock(nn.Module):
    """SASRec's block as in the paper's reference code (plain ops, ONNX-friendly): a layer-normalised query
    attends with its residual taken from that query, then a layer-normalised point-wise feed-forward of width d
    (ReLU) with its residual; padded positions are zeroed (``keep``)."""

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


def left_pad(seqs: list[np.ndarray], length: int, pad: int) -> torch.Tensor:
    """``[len(seqs), length]`` rows: each sequence's last ``length`` items right-aligned, ``pad`` before."""
    batch = np.full((len(seqs), length), pad, dtype=np.int64)
    for i, s in enumerate(seqs):
        s = s[-length:]
        if len(s):
            batch[i, length - len(s):] = s
    return torch.from_numpy(batch)


class BERT4Rec(nn.Module):
    causal = False  # SASRec (retrec/models/sasrec.py) sets it: each position sees itself and earlier ones

    def __init__(self, cfg: BERT4RecConfig) -> None:
        super().__init__()
        if cfg.block not in ("bert", "sasrec"):
            raise ValueError(f"unknown block layout {cfg.block!r}; choose 'bert' or 'sasrec'")
        self.cfg = cfg
        d = cfg.hidden
        self.pad = cfg.num_items
        self.mask = cfg.num_items + 1
        self.items = nn.Embedding(cfg.num_items + 2, d, padding_idx=self.pad)
        self.positions = nn.Embedding(cfg.max_len, d)
        self.drop = nn.Dropout(cfg.dropout)
        if cfg.block == "sasrec":  # no embedding LayerNorm; a final LayerNorm is the output
            self.norm: nn.Module = nn.Identity()
            self.blocks = nn.ModuleList(PaperBlock(cfg) for _ in range(cfg.layers))
            self.head: nn.Module = nn.LayerNorm(d, eps=1e-8)
        else:
            self.norm = nn.LayerNorm(d)
            self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
            self.head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d))
        self.bias = nn.Parameter(torch.zeros(cfg.num_items))
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.trunc_normal_(module.weight, std=0.02, a=-0.04, b=0.04)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def encode(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        """Item vectors ``[B, L, d]`` (right-aligned) + padding mask → head outputs ``[B, L, d]``."""
        length = x.shape[1]
        pos = self.positions.weight[self.cfg.max_len - length:]
        hidden = padding[:, None, None, :]
        if self.causal:
            hidden = hidden | torch.ones(length, length, dtype=torch.bool, device=x.device).triu(1)
        attn_bias = hidden.to(x.dtype) * -1e9
        if self.cfg.block == "sasrec":  # item embeddings scaled by sqrt(d); padding zeroed after every block
            keep = (~padding)[:, :, None].to(x.dtype)
            x = self.drop(x * math.sqrt(self.cfg.hidden) + pos) * keep
            for block in self.blocks:
                x = block(x, attn_bias, keep)
        else:
            x = self.drop(self.norm(x + pos))
            for block in self.blocks:
                x = block(x, attn_bias)
        return self.head(x)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        """Rows ``[B, L]`` (PAD/MASK ids allowed) → head outputs ``[B, L, d]``."""
        return self.encode(self.items(rows), rows == self.pad)

    def item_matrix(self) -> torch.Tensor:
        return self.items.weight[: self.cfg.num_items]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden @ self.item_matrix().T + self.bias

    def score_last(self, rows: torch.Tensor) -> torch.Tensor:
        """Scores over all items for the last position (which should hold MASK)."""
        return self.logits(self(rows)[:, -1])

    def history_len(self) -> int:
        """History items the user encoder reads (BERT4Rec keeps the last slot for [MASK])."""
        return self.cfg.max_len - 1

    def next_rows(self, histories: list[np.ndarray]) -> torch.Tensor:
        """Model input whose last position predicts each history's next item."""
        return left_pad([np.append(h[-self.history_len():], self.mask) for h in histories], self.cfg.max_len,
                        self.pad)

    def score_next(self, histories: list[np.ndarray]) -> torch.Tensor:
        """Scores ``[B, num_items]`` of the next item after each row history (on the model's device)."""
        return self.score_last(self.next_rows(histories).to(self.bias.device))

    def table_rows(self) -> torch.Tensor:
        """``[num_items, d+1]``: item embedding with its output bias appended."""
        return torch.cat([self.item_matrix(), self.bias[:, None]], dim=1)


class UserEncoder(nn.Module):
    """Export wrapper: history table rows ``[B, T, d+1]`` + padding ``[B, T]`` → user vectors ``[B, d+1]``.

    The [MASK] slot is appended inside; ``user · table_row`` equals :meth:`BERT4Rec.score_last`.
    """

    def __init__(self, model: BERT4Rec) -> None:
        super().__init__()
        self.model = model

    def forward(self, history: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        b = history.shape[0]
        d = self.model.cfg.hidden
        if self.model.causal:  # the last history position predicts the next item
            user = self.model.encode(history[:, :, :d], padding)[:, -1]
            return torch.cat([user, torch.ones(b, 1, dtype=user.dtype)], dim=1)
        mask_vec = self.model.items.weight[self.model.mask].expand(b, 1, d)
        x = torch.cat([history[:, :, :d], mask_vec], dim=1)
        pad = torch.cat([padding, torch.zeros(b, 1, dtype=torch.bool)], dim=1)
        user = self.model.encode(x, pad)[:, -1]
        return torch.cat([user, torch.ones(b, 1, dtype=user.dtype)], dim=1)


def export_user_encoder(model: BERT4Rec, path: str | Path, opset: int = OPSET) -> Path:
    """Write the user encoder as ONNX with dynamic batch and history axes; leaves ``model`` in eval mode."""
    wrapper = UserEncoder(model).eval()
    d = model.cfg.hidden
    history = torch.randn(2, model.history_len(), d + 1)
    padding = torch.zeros(2, model.history_len(), dtype=torch.bool)
    padding[1, :3] = True
    return export_graph(wrapper, path, inputs={"history": history, "padding": padding}, outputs=["user"],
                        dynamic_axes={"history": HISTORY_AXES, "padding": HISTORY_AXES, "user": BATCH_AXIS},
                        opset=opset, padding=("padding", True))
