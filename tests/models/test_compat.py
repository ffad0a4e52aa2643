"""Backward-compatibility pieces: the BT² head starts as the identity, stays orthonormal while it learns, and
exports as plain weights; the influence loss and the old-space projection."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from retrec.models.compat import CompatHead, influence_loss, old_space
from retrec.models.dense_losses import in_batch_cross_entropy


def test_the_head_starts_as_the_old_encoder_and_its_basis_stays_orthonormal() -> None:
    torch.manual_seed(0)
    head = CompatHead(6, extra=3)
    h = torch.randn(5, 6)
    y = head(h)
    assert y.shape == (5, 9) and torch.allclose(y[:, :6], h, atol=1e-6)  # the old space is the old encoder's
    assert 0 < y[:, 6:].norm() < 0.5 * h.norm()  # the extra dimensions start small, not at zero (a saddle)
    scores = F.normalize(head(h), dim=-1) @ F.normalize(head(h.flip(0)), dim=-1).T
    scores.diagonal().sum().backward()  # a new/new loss reaches the extra dimensions
    assert head.grow.weight.grad.abs().sum() > 0
    head.zero_grad()
    optimizer = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(20):  # pull the output anywhere: the basis moves, and stays a rotation
        optimizer.zero_grad()
        (head(h) - torch.randn(5, 9)).pow(2).sum().backward()
        optimizer.step()
    basis = head.basis.weight
    assert not torch.allclose(basis, torch.eye(9), atol=1e-3)
    assert torch.allclose(basis @ basis.T, torch.eye(9), atol=1e-5)
    a, b = torch.randn(4, 9), torch.randn(4, 9)  # a rotation keeps new/new similarities
    assert torch.allclose(head.basis(a) @ head.basis(b).T, a @ b.T, atol=1e-4)
    frozen = head.frozen()
    assert not hasattr(frozen.basis, "parametrizations") and torch.allclose(frozen(h), head(h), atol=1e-6)


def test_the_influence_loss_is_the_in_batch_loss_against_the_old_documents() -> None:
    torch.manual_seed(1)
    q, old = F.normalize(torch.randn(3, 4), dim=-1), F.normalize(torch.randn(6, 4), dim=-1)
    mask = torch.zeros(3, 6, dtype=torch.bool)
    mask[0, 4] = True
    assert torch.allclose(influence_loss(q, old, 20.0, mask), in_batch_cross_entropy(q @ old.T, 20.0, mask))
    good = influence_loss(old[:3], old, 20.0)  # queries equal to their own positives rank them first
    assert good < influence_loss(old[[1, 2, 0]], old, 20.0)


def test_the_old_space_is_the_first_dimensions_normalised() -> None:
    v = torch.tensor([[3.0, 4.0, 12.0]])
    assert torch.allclose(old_space(v, 2), torch.tensor([[0.6, 0.8]]))
    with pytest.raises(ValueError, match="wider than the vectors"):
        old_space(v, 4)
    with pytest.raises(ValueError, match="extra >= 0"):
        CompatHead(4, extra=-1)
