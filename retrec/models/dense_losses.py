"""Bi-encoder training losses over one batch of queries, their positives and one negative each.

Scores are ``[B, 2B]`` matrices: query ``i`` against the batch's ``B`` positives then ``B`` negatives,
so column ``i`` is query ``i``'s own positive and column ``B + i`` its own negative. Teacher scores come in
the same layout.

- :func:`in_batch_cross_entropy`: softmax over every document in the batch, the own positive as label
  (multiple-negatives ranking loss), other known positives of a query masked out.
- :func:`margin_mse`: pairwise Margin-MSE (Hofstätter et al.) — the student's positive−negative margin
  regresses onto the teacher's.
- :func:`in_batch_margin_mse`: the same against every in-batch document (TAS-B's in-batch teacher signal).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812


def in_batch_cross_entropy(scores: torch.Tensor, scale: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of ``scale * scores`` with query ``i``'s label at column ``i``; ``mask`` True = drop."""
    logits = scores * scale
    if mask is not None:
        logits = logits.masked_fill(mask, float("-inf"))
    return F.cross_entropy(logits, torch.arange(scores.shape[0], device=scores.device))


def margin_mse(scores: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """MSE between student and teacher margins of each query's own positive over its own negative."""
    b = scores.shape[0]
    rows = torch.arange(b, device=scores.device)
    student = scores[rows, rows] - scores[rows, rows + b]
    target = teacher[rows, rows] - teacher[rows, rows + b]
    return F.mse_loss(student, target)


def in_batch_margin_mse(scores: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """MSE of margins of each query's positive over every other in-batch document (``mask`` True = drop)."""
    b = scores.shape[0]
    rows = torch.arange(b, device=scores.device)
    student = scores[rows, rows][:, None] - scores
    target = teacher[rows, rows][:, None] - teacher
    keep = torch.ones_like(scores, dtype=torch.bool)
    keep[rows, rows] = False
    if mask is not None:
        keep &= ~mask
    if not keep.any():
        return scores.sum() * 0.0
    return F.mse_loss(student[keep], target[keep])
