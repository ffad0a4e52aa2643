"""One ONNX exporter for every model family, its parity check against torch, and the int8 variant of a graph.

:func:`export_graph` writes a torch module as an ONNX graph the way every bundle of this project is written: the
TorchScript exporter (``dynamo=False``: it exports MiniLM in about a second with exact dynamic axes) at opset
:data:`OPSET`, constant folding on, in eval mode without gradients and with the tracer's warnings silenced (Python
bools in HF masking code), the module's train/eval modes restored afterwards. The example inputs name the graph's
inputs in order; ``padding`` names the input whose example must contain padding, so that the trace keeps the mask
path (a batch without padding traces a graph that ignores the mask). ``context`` wraps the export (e.g.
:func:`retrec.models.hf_backbone.eager_attention`).

:func:`onnx_parity` runs the exported file in ONNX Runtime (CPU) and compares every output with torch's: it returns
the largest absolute difference and raises :class:`OnnxParityError` over the tolerance; every export runs it on its
example inputs (:data:`PARITY_TOLERANCE`), so no family writes a graph that disagrees with its model.
:func:`onnx_variants` adds a bundle's dynamically int8-quantised copy of a graph.

Example::

    inputs = {"input_ids": ids, "attention_mask": mask}                  # an example batch with padding
    export_graph(model, out / "encoder.onnx", inputs=inputs, outputs=["embeddings"],
                 dynamic_axes={**text_axes(inputs), "embeddings": {0: "batch"}}, padding=("attention_mask", 0))
    diff = onnx_parity(out / "encoder.onnx", inputs, torch_outputs(model, inputs), tolerance=1e-4)
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from retrec.runtime.tokenizer import TextTokenizer

OPSET = 17  # every exported graph's ONNX opset (and the lowest one accepted)
SEQUENCE_AXES: dict[int, str] = {0: "batch", 1: "sequence"}  # a tokenised text input's dynamic axes
BATCH_AXIS: dict[int, str] = {0: "batch"}
# A text family's example batch: two texts of different lengths, so that the shorter row is padded.
EXAMPLE_TEXTS = ("a short query", "a longer document, padded on the other row of the example batch")
EXAMPLE_LENGTH = 32
PARITY_TOLERANCE = 1e-4  # ONNX Runtime vs torch on the export example, fp32
QUANTIZATION = {"method": "dynamic", "weight_type": "QInt8", "per_channel": True}

Tensors = torch.Tensor | np.ndarray | Sequence[torch.Tensor | np.ndarray]


class OnnxParityError(RuntimeError):
    """ONNX Runtime's outputs of an exported graph differ from torch's by more than the tolerance."""


def check_opset(opset: int) -> None:
    """Refuse an opset below :data:`OPSET`."""
    if opset < OPSET:
        raise ValueError(f"opset must be >= {OPSET}, got {opset}")


def check_padding(inputs: Mapping[str, torch.Tensor], name: str, value: float | bool) -> None:
    """The example input ``name`` must hold ``value`` (its padding) somewhere: else the trace drops the mask path."""
    if name not in inputs:
        raise ValueError(f"padding check: no input named {name!r} (inputs: {', '.join(inputs)})")
    if not bool((inputs[name] == value).any()):
        raise RuntimeError(f"the export example batch has no padding (input {name!r} never holds {value!r})")


def text_axes(names: Iterable[str]) -> dict[str, dict[int, str]]:
    """``{name: {0: "batch", 1: "sequence"}}`` for each tokenised input (or per-token output) ``name``."""
    return {name: dict(SEQUENCE_AXES) for name in names}


def example_text_inputs(tokenizer: TextTokenizer, names: Sequence[str] = ("input_ids", "attention_mask"),
                        max_length: int = EXAMPLE_LENGTH) -> dict[str, torch.Tensor]:
    """The text families' example batch (:data:`EXAMPLE_TEXTS`, one row padded) as tensors, inputs ``names``."""
    feeds = tokenizer(list(EXAMPLE_TEXTS), max_length)
    return {name: torch.from_numpy(feeds[name]) for name in names}


def export_graph(
    module: nn.Module,
    path: str | Path,
    *,
    inputs: Mapping[str, torch.Tensor],
    outputs: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]],
    opset: int = OPSET,
    padding: tuple[str, float | bool] | None = None,
    context: contextlib.AbstractContextManager[Any] | None = None,
    tolerance: float | None = PARITY_TOLERANCE,
) -> Path:
    """Write ``module`` as the ONNX graph ``path`` and return ``path``, checked against torch on the example.

    ``inputs``: the graph's input names, in the order of ``module.forward``'s arguments, with an example tensor
    each. ``outputs``: the output names, in the order ``forward`` returns them. ``dynamic_axes``: per input or output
    name, ``{axis: symbolic name}`` (the axes left free; the rest are fixed to the example's sizes). ``padding``:
    ``(input name, pad value)`` that the example must contain (:func:`check_padding`). ``context``: entered around
    the export. The module (and each submodule) gets its own train/eval mode back afterwards. ``tolerance``: the
    largest absolute difference :func:`onnx_parity` allows between ONNX Runtime's and torch's outputs on the
    example inputs (None: no check; a family's end-to-end parity through the runtime comes on top of this one).
    """
    check_opset(opset)
    unknown = set(dynamic_axes) - set(inputs) - set(outputs)
    if unknown:
        raise ValueError(f"dynamic axes for unknown inputs/outputs: {sorted(unknown)}")
    if padding is not None:
        check_padding(inputs, *padding)
    path = Path(path)
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with torch.no_grad(), context or contextlib.nullcontext(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings (Python bools in HF masking code, shape asserts)
            torch.onnx.export(
                module, tuple(inputs.values()), str(path), input_names=list(inputs), output_names=list(outputs),
                dynamic_axes={name: dict(axes) for name, axes in dynamic_axes.items()}, opset_version=opset,
                do_constant_folding=True, dynamo=False,
            )
    finally:
        for submodule, training in modes:
            submodule.training = training
    if tolerance is not None:
        onnx_parity(path, inputs, torch_outputs(module, inputs), tolerance=tolerance)
    return path


def _numpy(value: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _as_list(values: Tensors) -> list[np.ndarray]:
    if isinstance(values, (torch.Tensor, np.ndarray)):
        return [_numpy(values)]
    return [_numpy(v) for v in values]


def torch_outputs(module: nn.Module, inputs: Mapping[str, torch.Tensor]) -> list[np.ndarray]:
    """``module``'s outputs on ``inputs`` (positional, in order) in eval mode without gradients, as arrays; the
    modes are restored afterwards. The reference :func:`onnx_parity` compares with."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with torch.no_grad():
            result = module(*inputs.values())
    finally:
        for submodule, training in modes:
            submodule.training = training
    return _as_list(result if isinstance(result, (tuple, list)) else [result])


def onnx_parity(path: str | Path, inputs: Mapping[str, torch.Tensor | np.ndarray], reference: Tensors,
                tolerance: float = 1e-4) -> float:
    """Run the graph ``path`` in ONNX Runtime (CPU, one thread) on ``inputs`` and compare each output with
    ``reference`` (torch's outputs in the graph's output order; one tensor for a single output).

    Returns the largest absolute difference over all outputs; raises :class:`OnnxParityError` when it exceeds
    ``tolerance`` (or is NaN), when an output's shape differs, or when the output counts differ.
    """
    from retrec.runtime.onnx_session import create_session

    session = create_session(path, threads=1, prefer_gpu=False)
    names = [o.name for o in session.get_outputs()]
    got = session.run(None, {name: _numpy(value) for name, value in inputs.items()})
    expected = _as_list(reference)
    if len(expected) != len(got):
        raise OnnxParityError(f"{path}: the graph has {len(got)} outputs ({', '.join(names)}), the reference "
                              f"{len(expected)}")
    worst, where = 0.0, names[0] if names else ""
    for name, onnx_out, torch_out in zip(names, got, expected):
        onnx_out = np.asarray(onnx_out)
        if onnx_out.shape != torch_out.shape:
            raise OnnxParityError(f"{path}: output {name!r} has shape {onnx_out.shape} in ONNX Runtime and "
                                  f"{torch_out.shape} in torch")
        if onnx_out.size == 0:
            continue
        diff = float(np.abs(onnx_out.astype(np.float64) - torch_out.astype(np.float64)).max())
        if not diff <= worst:  # NaN wins
            worst, where = diff, name
    if not worst <= tolerance:
        raise OnnxParityError(f"{path}: ONNX Runtime and torch differ by {worst:.3g} in output {where!r}, over the "
                              f"tolerance {tolerance:g}")
    return worst


def quantize_int8(fp32: Path, int8: Path) -> None:
    """Write ``int8``: ``fp32`` dynamically quantised (:data:`QUANTIZATION`)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # "consider pre-processing" advice, logged on the root logger
    try:
        # Per-channel weight scales: cosine to fp32 ≈ 0.99 on MiniLM, against ≈ 0.96 per-tensor.
        quantize_dynamic(str(fp32), str(int8), weight_type=getattr(QuantType, QUANTIZATION["weight_type"]),
                         per_channel=QUANTIZATION["per_channel"])
    finally:
        root.setLevel(level)


def onnx_variants(out: Path, fp32: str, int8: str, quantize: bool) -> tuple[dict[str, str], dict[str, Any]]:
    """A bundle's ``variants`` for the exported graph ``out/fp32`` — with ``quantize``, also ``out/int8``, a
    dynamically int8-quantised copy — and the config entries that describe them."""
    if not quantize:
        return {"fp32": fp32}, {}
    quantize_int8(out / fp32, out / int8)
    return {"fp32": fp32, "int8": int8}, {"quantization": QUANTIZATION}
