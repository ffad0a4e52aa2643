"""OneRec's iterative preference alignment: a reward model on held-in interactions, then DPO rounds.

1. :func:`train_reward`: a :class:`~retrec.models.reward.SessionReward` fitted on the training windows only (each
   position's next item against uniform negatives) — it never sees a validation or test item.
2. :func:`align`, each round: for a seeded sample of training users (never the validation users), the current
   model's beam search proposes ``dpo_candidates`` sessions of ``dpo_session`` items; the reward model scores them;
   the best and the worst form a preference pair; DPO (:func:`~retrec.models.reward.dpo_loss`, ``dpo_beta``)
   fine-tunes the model for ``dpo_steps`` steps against a frozen copy of itself from the start of the round.
   Before and after each round, on the held-out validation users: the mean reward of the generated sessions (best
   beam) and the validation NDCG@10 of the generated list — both recorded per round.

Example::

    reward = train_reward(prep, cfg, device="cpu")
    rounds = align(model, tree, prep, cfg, reward)        # [{"round": 1, "reward_before": ..., ...}]
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from retrec.models.onerec import BOS, OneRec
from retrec.models.reward import SessionReward, dpo_loss, reward_loss
from retrec.pipelines.train.seq.config import OneRecTrainConfig
from retrec.pipelines.train.seq.data import PreparedData
from retrec.pipelines.train.seq.generation import generate, list_metrics, model_history
from retrec.runtime.semantic_ids import CodeTree

log = logging.getLogger("retrec.train.onerec")


def train_reward(prep: PreparedData, cfg: OneRecTrainConfig, device: str = "cpu") -> SessionReward:
    """The reward model, fitted for ``reward_steps`` steps of 256 (history, next item) positions."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = SessionReward(len(prep.item_keys)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    seq = np.repeat(np.arange(len(prep.train)), [max(0, len(s) - 1) for s in prep.train])
    cut = np.concatenate([np.arange(1, len(s)) for s in prep.train if len(s) > 1] or [np.zeros(0, np.int64)])
    if not len(seq):
        return model.eval()
    for step in range(cfg.reward_steps):
        pick = torch.randint(0, len(seq), (256,), generator=gen).numpy()
        histories = [prep.train[seq[i]][:cut[i]] for i in pick]
        targets = np.array([prep.train[seq[i]][cut[i]] for i in pick])
        loss = reward_loss(model, histories, targets, negatives=32, gen=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 100 == 0:
            log.info("onerec reward model: step %d/%d loss %.4f", step + 1, cfg.reward_steps, float(loss.detach()))
    return model.eval()


def session_logp(model: OneRec, tree: CodeTree, histories: list[np.ndarray], sessions: np.ndarray) -> torch.Tensor:
    """Sum of the token log-probabilities of each session ``[B, items]`` after its history (teacher forcing)."""
    device = next(model.parameters()).device
    assert model.cfg.max_len is not None
    memory, padding = model.encode(torch.from_numpy(model_history(model, tree, histories)).to(device))
    tokens = torch.from_numpy(tree.tokens(sessions).reshape(len(sessions), -1)).to(device)
    inputs = torch.cat([torch.full_like(tokens[:, :1], BOS), tokens[:, :-1]], dim=1)
    return model.decode(memory, padding, inputs).gather(-1, tokens[..., None]).squeeze(-1).sum(1)


def report(model: OneRec, tree: CodeTree, prep: PreparedData, cfg: OneRecTrainConfig,
           reward: SessionReward) -> dict[str, float]:
    """Mean reward of the validation users' generated sessions, and the validation NDCG@10 of the generated list."""
    histories = prep.valid_history
    sessions = generate(model, tree, histories, cfg.beam, cfg.dpo_session)
    best = [(h, s[0]) for h, s in zip(histories, sessions) if len(s)]
    with torch.no_grad():
        rewards = reward.session_reward([h for h, _ in best], [s for _, s in best]) if best else torch.zeros(1)
    lists = generate(model, tree, histories, max(10, cfg.list_beam))
    ndcg = list_metrics(lists, prep.valid_target, len(prep.item_keys))["NDCG@10"]
    return {"reward": float(rewards.mean()), "valid_NDCG@10": ndcg}


def align(model: OneRec, tree: CodeTree, prep: PreparedData, cfg: OneRecTrainConfig,
          reward: SessionReward) -> list[dict[str, Any]]:
    """``dpo_rounds`` rounds of DPO on reward-ranked beam candidates; per round the figures before and after."""
    rng = np.random.default_rng(cfg.seed)
    rounds = []
    for number in range(1, cfg.dpo_rounds + 1):
        before = report(model, tree, prep, cfg, reward)
        held = {tuple(h.tolist()) for h in prep.valid_history}  # a validation user's training part is its history
        pool = np.array([i for i, s in enumerate(prep.train) if tuple(s.tolist()) not in held], np.int64)
        users = rng.choice(pool, size=min(cfg.dpo_users, len(pool)), replace=False)
        histories = [prep.train[i] for i in users]
        candidates = generate(model, tree, histories, cfg.dpo_candidates, cfg.dpo_session)
        pairs = []
        with torch.no_grad():
            for history, sessions in zip(histories, candidates):
                if len(sessions) >= 2:
                    r = reward.session_reward([history] * len(sessions), list(sessions)).cpu().numpy()
                    if r.max() > r.min():
                        pairs.append((history, sessions[int(r.argmax())], sessions[int(r.argmin())]))
        reference = OneRec(model.cfg).to(next(model.parameters()).device).eval()
        reference.load_state_dict(model.state_dict())
        for p in reference.parameters():
            p.requires_grad_(False)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.dpo_lr, weight_decay=0.0)
        model.eval()  # no dropout: the policy's log-probabilities are compared with the reference's
        losses = []
        gen = torch.Generator().manual_seed(cfg.seed + number)
        for _ in range(cfg.dpo_steps if pairs else 0):
            pick = torch.randint(0, len(pairs), (min(64, len(pairs)),), generator=gen).tolist()
            hist = [pairs[i][0] for i in pick]
            chosen, rejected = np.stack([pairs[i][1] for i in pick]), np.stack([pairs[i][2] for i in pick])
            with torch.no_grad():
                ref_c = session_logp(reference, tree, hist, chosen)
                ref_r = session_logp(reference, tree, hist, rejected)
            loss = dpo_loss(session_logp(model, tree, hist, chosen), session_logp(model, tree, hist, rejected),
                            ref_c, ref_r, cfg.dpo_beta)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        after = report(model, tree, prep, cfg, reward)
        rounds.append({"round": number, "pairs": len(pairs), "dpo_loss_first": losses[0] if losses else None,
                       "dpo_loss_last": losses[-1] if losses else None,
                       "reward_before": before["reward"], "reward_after": after["reward"],
                       "valid_NDCG@10_before": before["valid_NDCG@10"],
                       "valid_NDCG@10_after": after["valid_NDCG@10"]})
        log.info("onerec DPO round %d: %d pairs, reward %.4f → %.4f, validation NDCG@10 %.4f → %.4f", number,
                 len(pairs), before["reward"], after["reward"], before["valid_NDCG@10"], after["valid_NDCG@10"])
    return rounds
