"""A session reward model for OneRec's preference alignment, and the DPO loss.

:class:`SessionReward` scores how well items fit a history: the user vector is a projection of the mean of the
history's item embeddings and of its last item's; an item's score is ``sigmoid(user · item + bias)``; a session's
reward is the mean score of its items. It is trained on held-in interactions only (each training-window position
against uniform negatives, binary cross-entropy), so it never sees a validation or test item.

:func:`dpo_loss` is Rafailov et al.'s Direct Preference Optimization over sequence log-probabilities: ``-log
sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))`` for a chosen session ``c`` and a rejected ``r``.

Example::

    reward = SessionReward(num_items=1000, dim=32)
    r = reward.session_reward(histories, sessions)       # [B] in (0, 1)
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn


class SessionReward(nn.Module):
    def __init__(self, num_items: int, dim: int = 32, history: int = 20) -> None:
        super().__init__()
        self.num_items, self.history = num_items, history
        self.items = nn.Embedding(num_items + 1, dim, padding_idx=num_items)  # the last row: padding
        self.bias = nn.Parameter(torch.zeros(num_items))
        self.user = nn.Linear(2 * dim, dim)
        nn.init.normal_(self.items.weight, std=0.05)

    def users(self, histories: list[np.ndarray]) -> torch.Tensor:
        """User vectors ``[B, dim]`` of item-row histories (the last ``history`` items)."""
        rows = np.full((len(histories), self.history), self.num_items, np.int64)
        for i, h in enumerate(histories):
            h = np.asarray(h, np.int64)[-self.history:]
            rows[i, self.history - len(h):] = h
        emb = self.items(torch.from_numpy(rows).to(self.bias.device))
        real = (torch.from_numpy(rows) != self.num_items).to(emb.device)
        mean = (emb * real[..., None]).sum(1) / real.sum(1, keepdim=True).clamp(min=1)
        return self.user(torch.cat([mean, emb[:, -1]], dim=1))

    def logits(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``users [B, dim]`` × ``items [B, n]`` → ``[B, n]``."""
        return (users[:, None, :] * self.items(items)).sum(-1) + self.bias[items]

    def session_reward(self, histories: list[np.ndarray], sessions: list[np.ndarray]) -> torch.Tensor:
        """Mean item score of each session ``[B]`` (sessions of equal length)."""
        items = torch.from_numpy(np.asarray(sessions, np.int64).reshape(len(sessions), -1)).to(self.bias.device)
        return torch.sigmoid(self.logits(self.users(histories), items)).mean(1)


def reward_loss(model: SessionReward, histories: list[np.ndarray], targets: np.ndarray, negatives: int,
                gen: torch.Generator) -> torch.Tensor:
    """Binary cross-entropy of each history's next item against ``negatives`` uniform items."""
    users = model.users(histories)
    device = users.device
    pos = torch.from_numpy(np.asarray(targets, np.int64))[:, None]
    neg = torch.randint(0, model.num_items, (len(targets), negatives), generator=gen)
    logits = model.logits(users, torch.cat([pos, neg], dim=1).to(device))
    labels = torch.zeros_like(logits)
    labels[:, 0] = 1.0
    return F.binary_cross_entropy_with_logits(logits, labels)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO over sequence log-probabilities ``[B]``."""
    return -F.logsigmoid(beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))).mean()
