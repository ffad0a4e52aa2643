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


def test_training_dispatch_equals_the_dense_experts_on_real_tokens() -> None:
    torch.manual_seed(0)
    moe = SparseMoE(8, experts=4, top_k=2)
    x = torch.randn(3, 6, 8, requires_grad=True)
    real = torch.rand(3, 6) < 0.6
    sparse = moe.train()(x, real)
    sparse_load, sparse_aux = moe.load.clone(), moe.aux_loss
    dense = moe.eval()(x, real)
    torch.testing.assert_close(sparse[real], dense[real], atol=1e-6, rtol=1e-5)
    assert float(sparse.detach()[~real].abs().sum()) == 0.0  # padding is not routed
    torch.testing.assert_close(sparse_load, moe.load)
    torch.testing.assert_close(sparse_aux, moe.aux_loss)
    params = (x, moe.w1, moe.b1, moe.w2, moe.b2, moe.router.weight)
    grads = [torch.autograd.grad(out[real].square().sum(), params)
             for out in (moe.train()(x, real), moe.eval()(x, real))]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        moe.router.weight.zero_()  # every expert tied: both paths still pick the same top_k
        moe.router.bias.zero_()
    torch.testing.assert_close(moe.train()(x, real)[real], moe.eval()(x, real)[real], atol=1e-6, rtol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed precision: the dispatch adds in one dtype
        assert torch.isfinite(moe.train()(x, real)).all()


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


def test_item_inputs_add_each_items_own_embedding() -> None:
    torch.manual_seed(0)
    model = OneRec(OneRecConfig(**{**CFG.to_json(), "items": 5})).eval()
    codes = history([[[0, 1, 0], [3, 2, 1]]])
    with_rows = torch.cat([codes, torch.tensor([[[1], [4], [0], [0], [0], [0]]])], dim=2)  # rows 0 and 3, +1
    other_row = with_rows.clone()
    other_row[0, 1, -1] = 3  # the same codes, another item
    with torch.no_grad():
        a, pad = model.encode(with_rows)
        b, _ = model.encode(other_row)
        model.items.weight.zero_()
        c, _ = model.encode(with_rows)
        no_items = OneRec(CFG).eval()
        no_items.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("items.")})
        d, _ = no_items.encode(codes)
    assert pad[0].tolist() == [False, False, True, True, True, True]
    torch.testing.assert_close(a[0, 0], b[0, 0])  # causal: the first position does not see the second item
    assert not torch.allclose(a[0, 1], b[0, 1], atol=1e-4)
    torch.testing.assert_close(c, d)  # zero item vectors: the code tokens alone
