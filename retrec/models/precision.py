"""Training device and precision: a CUDA GPU when there is one; bf16 autocast where the hardware runs bf16
natively, fp32 elsewhere.

``auto`` is bf16 on a CUDA GPU that supports it and on a CPU with native bf16 instructions (AVX512-BF16 or
AMX, which oneDNN uses: matrix products at about twice the fp32 rate), else fp32 (emulated bf16 is slower
than fp32). Autocast keeps the weights, the optimizer state and the losses in fp32; only the matrix products
and what follows them inside the model run in bf16. Exports are always fp32.

Example::

    precision = resolve_precision("auto")            # "bf16" on this CPU, "fp32" on one without bf16
    with autocast(precision):
        q = model(input_ids, attention_mask)          # bf16 activations
    loss = loss_fn(q.float(), ...)                     # fp32 from here
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Literal

import torch

Precision = Literal["auto", "bf16", "fp32"]


def resolve_device(requested: str = "auto") -> str:
    """``auto`` → ``cuda`` when torch sees a GPU, else ``cpu``; ``cpu``, ``cuda`` and ``cuda:N`` as asked."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cpu":
        return requested
    if match := re.fullmatch(r"cuda(?::([0-9]{1,3}))?", requested):
        if not torch.cuda.is_available():
            raise ValueError(f"device {requested!r} asked for, but torch sees no CUDA GPU")
        if match.group(1) is not None and int(match.group(1)) >= torch.cuda.device_count():
            raise ValueError(f"device {requested!r} asked for, but torch sees {torch.cuda.device_count()} GPU(s)")
        return requested
    raise ValueError(f"device must be auto, cpu, cuda or cuda:N, not {requested!r}")


def native_bf16(device: str = "cpu") -> bool:
    """Whether ``device`` runs bf16 matrix products natively."""
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def resolve_precision(requested: str, device: str = "cpu") -> Literal["bf16", "fp32"]:
    """``auto`` → ``bf16`` where native, else ``fp32``; ``bf16`` and ``fp32`` as asked."""
    if requested not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be auto, bf16 or fp32, not {requested!r}")
    if requested == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return requested  # type: ignore[return-value]


def model_device(model: torch.nn.Module) -> str:
    """The device of ``model``'s parameters (``cpu``, ``cuda:0``); ``cpu`` for a model without any."""
    for parameter in model.parameters():
        return str(parameter.device)
    return "cpu"


def on_model_device(model: torch.nn.Module, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``tensors`` on ``model``'s device (tokenised inputs arrive on the CPU); untouched when already there, so an
    ONNX trace on the CPU records no copy."""
    device = next(model.parameters()).device
    return tuple(t if t.device == device else t.to(device) for t in tensors)


@contextlib.contextmanager
def autocast(precision: str, device: str = "cpu") -> Iterator[None]:
    """bf16 autocast on ``device`` for ``precision == "bf16"``; nothing for fp32."""
    if precision == "bf16":
        with torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16):
            yield
    else:
        yield
