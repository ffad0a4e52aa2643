"""The session reward model learns held-in transitions; the DPO loss prefers the chosen session."""

from __future__ import annotations

import math

import numpy as np
import torch

from retrec.models.reward import SessionReward, dpo_loss, reward_loss


def test_dpo_loss_is_log2_at_the_reference_and_falls_as_the_chosen_gains() -> None:
    zero = torch.zeros(3)
    assert abs(float(dpo_loss(zero, zero, zero, zero, beta=0.1)) - math.log(2)) < 1e-6
    better = dpo_loss(torch.full((3,), 2.0), zero, zero, zero, beta=0.1)
    worse = dpo_loss(zero, torch.full((3,), 2.0), zero, zero, beta=0.1)
    assert float(better) < math.log(2) < float(worse)


def test_reward_model_learns_which_item_follows() -> None:
    torch.manual_seed(0)
    model = SessionReward(num_items=20, dim=8)
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(0)
    histories = [np.array([i % 10]) for i in range(64)]
    targets = np.array([i % 10 + 10 for i in range(64)])  # item i is always followed by i + 10
    for _ in range(150):
        loss = reward_loss(model, histories, targets, negatives=8, gen=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        right = model.session_reward(histories[:10], [np.array([t]) for t in targets[:10]])
        wrong = model.session_reward(histories[:10], [np.array([(t + 1) % 10 + 10]) for t in targets[:10]])
    assert bool((right > wrong).all())
