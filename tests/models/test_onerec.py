"""OneRec's encoder–decoder: level-masked outputs, causal decoding, padding-free encoding, routed experts."""

from __future__ import annotations

import pytest
import torch

from retrec.models.onerec import BOS, PAD, OneRec, OneRecConfig, SparseMoE

CFG = OneRecConfig(level_sizes=[4, 3, 2], max_len=6, session=2, hidden=16, layers=1, heads=2, experts=3, top_k=2,
                   dropout=0.0)


def history(rows: list[list[int]], length: int = 6) -> torch.Tensor:
    """Code-token histories of item code tuples (oldest first, PAD rows after)."""
    offsets = CFG.offsets()
    out = torch.full((len(rows), length, CFG.depth), PAD)
    for i, items in enumerate(rows):
        for j, codes in enumerate(items):
            out[i, j] = torch.tensor([o + c for o, c in zip(offsets, codes)])
    return out


def test_each_position_predicts_its_level_only() -> None:
    torch.manual_seed(0)
    model = OneRec(CFG).eval()
    memory, pad = model.encode(history([[[0, 1, 0], [3, 2, 1]]]))
    tokens = torch.tensor([[BOS, 2, 6, 9, 3]])
    with torch.no_grad():
        logp = model.decode(memory, pad, tokens)[0]
    for j in range(5):
        level = j % CFG.depth
        start = CFG.offsets()[level]
        inside = logp[j, start:start + CFG.level_sizes[level]].exp().sum()
        assert float(inside) == pytest.approx(1.0, abs=1e-5)
    torch.testing.assert_close(model.step(memory, pad, tokens[:, :3]), logp[2][None])  # causal


def test_padding_changes_nothing_and_a_prefix_is_its_own_memory() -> None:
    """Trailing padding is invisible; the causal encoder's states of a prefix equal encoding the prefix alone, so a
    training cut (the window's memory, positions from the cut on hidden) decodes as inference on that history."""
    torch.manual_seed(0)
    model = OneRec(CFG).eval()
    items = [[0, 1, 0], [3, 2, 1], [1, 0, 1], [2, 2, 0]]
    tokens = torch.tensor([[BOS, 2]])
    with torch.no_grad():
        a = model.step(*model.encode(history([items], 4)), tokens)
        b = model.step(*model.encode(history([items], 6)), tokens)
        memory, pad = model.encode(history([items], 6))
        prefix = model.step(*model.encode(history([items[:2]], 2)), tokens)
        cut = torch.arange(6)[None, :] >= 2
        from_window = model.step(memory, pad | cut, tokens)
        indexed = model.decode(memory, (pad | cut).expand(2, -1), tokens.expand(2, -1), index=torch.tensor([0, 0]))
        empty = model.step(*model.encode(history([[]])), tokens)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    torch.testing.assert_close(prefix, from_window, atol=1e-5, rtol=0)
    torch.testing.assert_close(indexed[:, -1], from_window.expand(2, -1), atol=1e-5, rtol=0)
    assert not torch.allclose(prefix, a)
    assert torch.isfinite(empty).any() and not torch.isnan(empty).any()


def test_experts_are_routed_top_k_with_a_balancing_loss() -> None:
    torch.manual_seed(0)
    moe = SparseMoE(8, experts=4, top_k=1).train()
    x = torch.randn(2, 5, 8)
    y = moe(x)
    probs = moe.router(x).softmax(-1)
    top = probs.argmax(-1)
    hidden = torch.nn.functional.gelu(x[0, 0] @ moe.w1[top[0, 0]] + moe.b1[top[0, 0], 0])
    torch.testing.assert_close(y[0, 0], hidden @ moe.w2[top[0, 0]] + moe.b2[top[0, 0], 0])  # one expert's output
    assert float(moe.load.sum()) == pytest.approx(1.0) and float(moe.aux_loss.detach()) >= 0.99  # 1 when balanced
    moe.aux_loss.backward()
    assert moe.router.weight.grad is not None and moe.router.weight.grad.abs().sum() > 0
