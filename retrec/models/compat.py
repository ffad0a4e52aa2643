"""Backward-compatible encoders: a new text encoder whose vectors search an index built by an old one.

Two modes, both trained with BCT's *influence loss* (Shen et al., CVPR 2020): the new model's query vectors, in
the old space, must rank the **old model's frozen document vectors** of the batch as the old task wants (the same
in-batch cross-entropy as the main loss), so ``M(new query, old docs) > M(old query, old docs)`` can hold.

- ``bct``: the new encoder's output *is* the old space (same width; no head).
- ``bt2`` (BT², Zhou et al., ICCV 2023): the pooled vector ``h`` (width ``d``) is extended by ``extra`` learned
  dimensions and turned by a learnable orthonormal basis ``B``: ``y = B [h; W h]``. The first ``d_old`` dimensions
  of ``y`` are the old-compatible part, the rest carry what the old space cannot; since ``B`` is orthonormal,
  new/new similarities use all of ``y`` undistorted. ``B`` starts as the identity and ``W`` small, so a model
  fine-tuned from the old encoder starts with its old space exactly the old encoder's. (``W`` at zero is a saddle:
  extra dimensions that are 0 in every vector get no gradient, through ``W`` or ``B``, and stay 0.)

The compatible part of a (normalised) vector is :func:`old_space` of it: its first ``d_old`` dimensions,
normalised again. The exported ONNX graph carries ``B`` as a constant (:meth:`CompatHead.frozen`).

Example::

    head = CompatHead(384, extra=32)                # y = B [h; W h], 416 wide
    y = head(pooled)                                # [batch, 416]
    loss = influence_loss(old_space(q, 384), old_doc_vectors, scale=20.0)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from torch.nn.utils import parametrizations

from retrec.models.dense_losses import in_batch_cross_entropy

__all__ = ["COMPAT_MODES", "CompatHead", "influence_loss", "old_space"]

COMPAT_MODES = ("bt2", "bct")
GROW_INIT_STD = 0.1  # the extra dimensions start at ~10% of the old ones' scale: the old space itself is unchanged


class CompatHead(nn.Module):
    """``y = B [h; W h]``: ``extra`` new dimensions, then an orthonormal ``(d + extra)`` basis (BT²)."""

    def __init__(self, dim: int, extra: int) -> None:
        super().__init__()
        if dim < 1 or extra < 0:
            raise ValueError(f"a compatibility head needs a width >= 1 and extra >= 0, got {dim}, {extra}")
        self.dim, self.extra = dim, extra
        self.grow = nn.Linear(dim, extra, bias=False) if extra else None
        if self.grow is not None:  # small, not zero: extra dimensions that are 0 everywhere get no gradient
            nn.init.normal_(self.grow.weight, std=GROW_INIT_STD / dim ** 0.5)
        basis = nn.Linear(dim + extra, dim + extra, bias=False)
        with torch.no_grad():
            basis.weight.copy_(torch.eye(dim + extra))
        # the matrix exponential of a skew-symmetric matrix: orthonormal always, the identity at zero
        self.basis = parametrizations.orthogonal(basis, orthogonal_map="matrix_exp")

    @property
    def out_dim(self) -> int:
        return self.dim + self.extra

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = h if self.grow is None else torch.cat([h, self.grow(h)], dim=-1)
        return self.basis(z)

    def frozen(self) -> CompatHead:
        """A copy whose basis is a plain weight (for export: no parametrization in the graph)."""
        out = CompatHead(self.dim, self.extra)
        if self.grow is not None:
            out.grow.load_state_dict(self.grow.state_dict())
        plain = nn.Linear(self.out_dim, self.out_dim, bias=False)
        with torch.no_grad():
            plain.weight.copy_(self.basis.weight)
        out.basis = plain
        return out.train(self.training)


def old_space(vectors: torch.Tensor, old_dim: int) -> torch.Tensor:
    """The old-compatible part of new vectors: their first ``old_dim`` dimensions, L2-normalised."""
    if old_dim > vectors.shape[-1]:
        raise ValueError(f"the old space ({old_dim}) is wider than the vectors ({vectors.shape[-1]})")
    return F.normalize(vectors[..., :old_dim], p=2.0, dim=-1)


def influence_loss(queries: torch.Tensor, old_docs: torch.Tensor, scale: float,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """BCT's influence loss for retrieval: the new queries (in the old space) against the old model's frozen
    vectors of the batch's documents, query ``i``'s positive at column ``i`` (``mask`` True = left out)."""
    return in_batch_cross_entropy(queries @ old_docs.T, scale, mask)
