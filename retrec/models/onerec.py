"""OneRec: an encoder–decoder that generates the next session of items as semantic-ID tokens.

After Deng et al., "OneRec: Unifying Retrieve and Rank with Generative Recommender and Iterative Preference
Alignment" (2025), with TIGER's semantic IDs (Rajput et al., 2023). The encoder reads the user's history, one
position per item (the sum of the item's code-token embeddings, its own embedding when ``items`` is set, plus
its position), causally (each position sees
the items up to it, so that one pass over a training window serves every cut of it); the decoder generates the
next session, ``session`` items of ``depth`` codes each, one token at a time (causal self-attention, attention
over the encoder's output), and its feed-forward layers are a sparse mixture of experts: a router sends each
token to its ``top_k`` of ``experts`` feed-forward networks, weighted by the renormalised router probabilities,
with the Switch Transformer's load-balancing loss (``experts · Σ_e share_e · mean_prob_e``).

Tokens: ``0`` PAD, ``1`` BOS, then each level's codes at its offset (as :class:`retrec.runtime.semantic_ids.CodeTree`
numbers them). Output position ``j`` predicts a code of level ``j mod depth``: the other levels' tokens are masked
out of its softmax. Blocks are pre-LN and written in plain ops (ONNX-friendly). Training dispatches each real
(non-padding) token to its ``top_k`` experts only (Beauty, one thread: 1.8x faster steps than computing every
expert); evaluation and export compute every expert and combine them with the same sparse gate (static shapes
for ONNX, the same outputs).

Example::

    model = OneRec(OneRecConfig(level_sizes=[256, 256, 256, 4], max_len=50, session=5))
    memory, pad = model.encode(history_tokens)            # [B, T, depth] (oldest first) → [B, T, d], [B, T]
    logp = model.step(memory, pad, tokens)                # [B, vocab]: the next token's log-probabilities
    export_onnx(model, bundle_dir)                        # encoder.onnx, decoder_step.onnx
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from retrec.models.bert4rec import HISTORY_AXES, BERT4Rec
from retrec.models.onnx_export import BATCH_AXIS, OPSET, export_graph

PAD, BOS = 0, 1


@dataclass
class OneRecConfig:
    level_sizes: list[int] = field(default_factory=lambda: [256, 256, 256, 1])  # codes per level (depth levels)
    max_len: int = 50  # history items the encoder reads
    session: int = 5  # items a generated session holds at most
    hidden: int = 64
    layers: int = 2  # encoder layers and decoder layers, each
    heads: int = 2
    experts: int = 4
    top_k: int = 2
    dropout: float = 0.1
    items: int = 0  # catalogue rows the encoder embeds besides their code tokens (0: code tokens only)

    @property
    def depth(self) -> int:
        return len(self.level_sizes)

    @property
    def vocab(self) -> int:
        return BOS + 1 + sum(self.level_sizes)

    def offsets(self) -> list[int]:
        return [BOS + 1 + sum(self.level_sizes[:i]) for i in range(self.depth)]

    def to_json(self) -> dict:
        return asdict(self)


class Attention(nn.Module):
    def __init__(self, d: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, d // heads
        self.q, self.k, self.v, self.out = (nn.Linear(d, d) for _ in range(4))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, bias: torch.Tensor,
                index: torch.Tensor | None = None) -> torch.Tensor:
        """``index``: the ``memory`` row of each row of ``x`` (keys and values projected once per memory row)."""
        b, n, d = x.shape
        m = memory.shape[1]
        q = self.q(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        k, v = self.k(memory), self.v(memory)
        if index is not None:
            k, v = k[index], v[index]
        k = k.view(b, m, self.heads, self.head_dim).transpose(1, 2)
        v = v.view(b, m, self.heads, self.head_dim).transpose(1, 2)
        att = self.drop(((q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim) + bias).softmax(dim=-1))
        return self.out((att @ v).transpose(1, 2).reshape(b, n, d))


class FeedForward(nn.Module):
    def __init__(self, d: int, dropout: float) -> None:
        super().__init__()
        self.ff1, self.ff2, self.drop = nn.Linear(d, 4 * d), nn.Linear(4 * d, d), nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ff2(self.drop(F.gelu(self.ff1(x))))


class SparseMoE(nn.Module):
    """Top-k routed experts; ``aux_loss`` and ``load`` (each expert's share of the routed slots) of the last call."""

    def __init__(self, d: int, experts: int, top_k: int) -> None:
        super().__init__()
        if not 1 <= top_k <= experts:
            raise ValueError("top_k must be in 1..experts")
        self.top_k = top_k
        self.router = nn.Linear(d, experts)
        self.w1 = nn.Parameter(torch.randn(experts, d, 2 * d) * 0.02)
        self.b1 = nn.Parameter(torch.zeros(experts, 1, 2 * d))
        self.w2 = nn.Parameter(torch.randn(experts, 2 * d, d) * 0.02)
        self.b2 = nn.Parameter(torch.zeros(experts, 1, d))
        self.aux_loss = torch.zeros(())
        self.load = torch.zeros(experts)

    def forward(self, x: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``[B, n, d]``; ``real``: the tokens that count (``[B, n]``; padding is neither routed nor balanced).

        Training dispatches each real token to its ``top_k`` experts only (half the dense cost at 2 of 4 experts,
        over the real tokens alone); evaluation and export compute every expert densely (static shapes for ONNX)
        and keep the same ``top_k`` (ties broken alike), so both give the same outputs."""
        b, n, d = x.shape
        if self.training:
            return self._dispatch(x, real)
        probs = self.router(x).softmax(dim=-1)  # [B, n, E]
        top, chosen = probs.topk(self.top_k, dim=-1)
        gate = torch.zeros_like(probs).scatter(-1, chosen, top / top.sum(-1, keepdim=True))
        flat = x.reshape(1, b * n, d)
        hidden = F.gelu(flat @ self.w1 + self.b1)  # [E, B*n, 2d]: no dropout inside (the block's output has it;
        # a Bernoulli mask over every expert's hidden units was a quarter of a CPU step)
        out = (hidden @ self.w2 + self.b2).permute(1, 0, 2)  # [B*n, E, d]
        y = (gate.reshape(b * n, -1, 1) * out).sum(1).reshape(b, n, d)
        if real is not None:
            weight = real.reshape(-1, 1).float()
            self._balance(probs.reshape(b * n, -1).float(), (gate > 0).reshape(b * n, -1).float() * weight, weight)
        return y

    def _dispatch(self, x: torch.Tensor, real: torch.Tensor | None) -> torch.Tensor:
        b, n, d = x.shape
        flat = x.reshape(b * n, d)
        rows = None if real is None else real.reshape(-1).nonzero().squeeze(1)
        xs = flat if rows is None else flat[rows]
        probs = self.router(xs).softmax(dim=-1)  # [R, E]
        top, chosen = probs.topk(self.top_k, dim=-1)
        gate = top / top.sum(-1, keepdim=True)
        out = torch.zeros_like(xs)
        for e in range(self.w1.shape[0]):
            token, slot = (chosen == e).nonzero(as_tuple=True)
            if len(token):
                h = F.gelu(xs[token] @ self.w1[e] + self.b1[e]) @ self.w2[e] + self.b2[e]
                out = out.index_add(0, token, (h * gate[token, slot, None]).to(out.dtype))
        routed = torch.zeros_like(probs, dtype=torch.float32).scatter_(1, chosen, 1.0)
        self._balance(probs.float(), routed, torch.ones(len(xs), 1, device=x.device))
        y = out if rows is None else torch.zeros_like(flat).index_copy(0, rows, out)
        return y.reshape(b, n, d)

    def _balance(self, probs: torch.Tensor, routed: torch.Tensor, weight: torch.Tensor) -> None:
        """Switch-Transformer load balancing: ``E x sum_e share_e x mean_prob_e`` (1 when balanced)."""
        share = routed.sum(0) / routed.sum().clamp(min=1)
        mean_prob = (probs * weight).sum(0) / weight.sum().clamp(min=1)
        self.aux_loss = probs.shape[-1] * (share.detach() * mean_prob).sum()
        self.load = share.detach()


class EncoderBlock(nn.Module):
    def __init__(self, cfg: OneRecConfig) -> None:
        super().__init__()
        d = cfg.hidden
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn, self.ff = Attention(d, cfg.heads, cfg.dropout), FeedForward(d, cfg.dropout)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.drop(self.attn(h, h, bias))
        return x + self.drop(self.ff(self.norm2(x)))


class DecoderBlock(nn.Module):
    def __init__(self, cfg: OneRecConfig) -> None:
        super().__init__()
        d = cfg.hidden
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.self_attn = Attention(d, cfg.heads, cfg.dropout)
        self.cross_attn = Attention(d, cfg.heads, cfg.dropout)
        self.moe = SparseMoE(d, cfg.experts, cfg.top_k)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, self_bias: torch.Tensor, cross_bias: torch.Tensor,
                real: torch.Tensor | None = None, index: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.drop(self.self_attn(h, h, self_bias))
        x = x + self.drop(self.cross_attn(self.norm2(x), memory, cross_bias, index))
        return x + self.drop(self.moe(self.norm3(x), real))


class OneRec(nn.Module):
    def __init__(self, cfg: OneRecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, steps = cfg.hidden, cfg.session * cfg.depth + 1
        self.tokens = nn.Embedding(cfg.vocab, d, padding_idx=PAD)
        self.items = nn.Embedding(cfg.items + 1, d, padding_idx=0) if cfg.items else None  # row + 1; 0: none
        self.history_pos = nn.Embedding(cfg.max_len, d)
        self.session_pos = nn.Embedding(steps, d)
        self.drop = nn.Dropout(cfg.dropout)
        self.encoder = nn.ModuleList(EncoderBlock(cfg) for _ in range(cfg.layers))
        self.decoder = nn.ModuleList(DecoderBlock(cfg) for _ in range(cfg.layers))
        self.enc_norm, self.dec_norm = nn.LayerNorm(d), nn.LayerNorm(d)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab))
        level = torch.full((cfg.vocab,), -1, dtype=torch.long)
        for i, (start, size) in enumerate(zip(cfg.offsets(), cfg.level_sizes)):
            level[start:start + size] = i
        allowed = level[None, :] == (torch.arange(steps) % cfg.depth)[:, None]
        self.register_buffer("level_mask", torch.where(allowed, 0.0, -1e9), persistent=False)  # [steps, vocab]
        self.apply(BERT4Rec._init)  # BERT's truncated-normal initialisation

    def encode(self, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """History code tokens ``[B, T, depth]`` (oldest item first, PAD rows after the last; with ``cfg.items``
        one more column, each item's row + 1) → memory ``[B, T, d]`` and its padding ``[B, T]``. Attention is
        causal: position ``t``'s state depends on items ``0..t`` only, so one pass over a window gives the memory
        of each of its prefixes (training decodes many cuts per window). An empty history attends to its padding
        only: a valid, uninformed memory."""
        t = history.shape[1]
        padding = history[:, :, 0] == PAD
        x = self.tokens(history[:, :, :self.cfg.depth]).sum(2) + self.history_pos.weight[:t]
        if self.items is not None:
            x = x + self.items(history[:, :, self.cfg.depth])
        x = self.drop(x)
        later = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        bias = (padding[:, None, None, :] | later).to(x.dtype) * -1e9
        for block in self.encoder:
            x = block(x, bias)
        return self.enc_norm(x), padding

    def decode(self, memory: torch.Tensor, padding: torch.Tensor, tokens: torch.Tensor,
               real: torch.Tensor | None = None, index: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder inputs ``[B, n]`` (BOS first) → log-probabilities ``[B, n, vocab]`` of each next token.

        ``padding``: ``[B, T]``, the memory positions each row may not see. ``index``: each row's ``memory`` row when
        several rows decode from one memory (training cuts of one window); else ``memory`` is ``[B, T, d]``."""
        n = tokens.shape[1]
        x = self.drop(self.tokens(tokens) + self.session_pos.weight[:n])
        later = torch.ones(n, n, dtype=torch.bool, device=x.device).triu(1)
        self_bias = later.to(x.dtype) * -1e9
        cross_bias = padding[:, None, None, :].to(x.dtype) * -1e9
        for block in self.decoder:
            x = block(x, memory, self_bias, cross_bias, real, index)
        logits = self.dec_norm(x) @ self.tokens.weight.T + self.bias + self.level_mask[:n]
        return logits.log_softmax(dim=-1)

    def step(self, memory: torch.Tensor, padding: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """The next token's log-probabilities ``[B, vocab]`` after ``tokens`` ``[B, n]``."""
        return self.decode(memory, padding, tokens)[:, -1]

    def aux_loss(self) -> torch.Tensor:
        return torch.stack([block.moe.aux_loss for block in self.decoder]).mean()

    def expert_load(self) -> list[list[float]]:
        """Each decoder layer's share of routed slots per expert (the last forward pass)."""
        return [[round(float(v), 4) for v in block.moe.load] for block in self.decoder]


class Encoder(nn.Module):
    """Export wrapper: history ``[B, T, depth (+1: item rows)]`` → memory ``[B, T, d]``, padding ``[B, T]``."""

    def __init__(self, model: OneRec) -> None:
        super().__init__()
        self.model = model

    def forward(self, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.encode(history)


class DecoderStep(nn.Module):
    """Export wrapper: memory, padding, tokens ``[B, n]`` → the next token's log-probabilities ``[B, vocab]``."""

    def __init__(self, model: OneRec) -> None:
        super().__init__()
        self.model = model

    def forward(self, memory: torch.Tensor, padding: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.step(memory, padding, tokens)


def export_onnx(model: OneRec, directory: Path, opset: int = OPSET) -> None:
    """``encoder.onnx`` and ``decoder_step.onnx`` with dynamic batch, history and token axes; leaves ``model`` in
    eval mode."""
    depth = model.cfg.depth
    history = torch.full((2, 3, depth + (model.cfg.items > 0)), PAD, dtype=torch.long)  # the first item: padding
    history[:, 1:, :depth] = torch.tensor(model.cfg.offsets())
    if model.cfg.items:
        history[:, 1:, depth] = 1
    export_graph(Encoder(model).eval(), directory / "encoder.onnx", inputs={"history": history},
                 outputs=["memory", "padding"],
                 dynamic_axes={"history": HISTORY_AXES, "memory": HISTORY_AXES, "padding": HISTORY_AXES},
                 opset=opset, padding=("history", PAD))
    with torch.no_grad():
        memory, padding = model.encode(history)
    tokens = torch.tensor([[BOS, model.cfg.offsets()[0]]] * 2)
    export_graph(DecoderStep(model).eval(), directory / "decoder_step.onnx",
                 inputs={"memory": memory, "padding": padding, "tokens": tokens}, outputs=["logp"],
                 dynamic_axes={"memory": HISTORY_AXES, "padding": HISTORY_AXES, "tokens": {0: "batch", 1: "length"},
                               "logp": BATCH_AXIS},
                 opset=opset, padding=("padding", True))
