"""Training device and precision (a GPU when there is one; bf16 autocast where native); length-grouped passes."""

from __future__ import annotations

import pytest
import torch

from retrec.models.precision import autocast, native_bf16, resolve_device, resolve_precision
from retrec.models.text_encoder import TextEncoder, embed_grouped
from retrec.runtime.tokenizer import load_tokenizer

TEXTS = ["short", "a somewhat longer text about vitamin c and scurvy in sailors of the eighteenth century",
         "mid length text on protein folding", "x", "another long one " * 12, "gene expression in mice"]


def test_precision_resolves_to_bf16_only_where_native() -> None:
    assert resolve_precision("auto") == ("bf16" if native_bf16() else "fp32")
    assert resolve_precision("fp32") == "fp32" and resolve_precision("bf16") == "bf16"
    with pytest.raises(ValueError, match="precision must be"):
        resolve_precision("fp16")


def test_device_is_a_gpu_only_when_torch_sees_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="sees no CUDA GPU"):
        resolve_device("cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == "cuda" and resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(ValueError, match="sees 2 GPU"):
        resolve_device("cuda:2")
    for bad in ("gpu", "cuda:x", "cuda:\u0661", "cpu; rm -rf /", ""):
        with pytest.raises(ValueError, match="device must be"):
            resolve_device(bad)


def test_autocast_runs_matrix_products_in_bf16_and_fp32_is_untouched() -> None:
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with autocast("bf16"):
        assert (a @ b).dtype == torch.bfloat16
    with autocast("fp32"):
        assert (a @ b).dtype == torch.float32


def test_grouped_passes_give_the_one_pass_embeddings_in_input_order_with_gradients() -> None:
    torch.manual_seed(0)
    model, tokenizer = TextEncoder.from_pretrained().eval(), load_tokenizer()
    whole = embed_grouped(model, tokenizer, TEXTS, 64, chunk=0)
    grouped = embed_grouped(model, tokenizer, TEXTS, 64, chunk=2)  # 3 passes, longest texts first
    assert grouped.shape == whole.shape == (len(TEXTS), model.dim)
    torch.testing.assert_close(grouped, whole, atol=1e-5, rtol=0)
    grouped.sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)


def test_activation_checkpointing_gives_the_same_gradients_in_training_mode() -> None:
    """What ``--grad-checkpoint`` (the default) turns on: recomputed activations, dropout replayed — the same
    gradients as keeping them."""
    tokenizer = load_tokenizer()
    grads = []
    for checkpoint in (False, True):
        model = TextEncoder.from_pretrained().train()
        if checkpoint:
            model.bert.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            assert model.bert.is_activation_checkpointing
        torch.manual_seed(3)  # the same dropout masks
        embed_grouped(model, tokenizer, TEXTS, 32, chunk=2).pow(2).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-4)
