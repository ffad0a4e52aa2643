"""The shared ONNX exporter (retrec/models/onnx_export.py) on a tiny torch module: names, dynamic axes on another
shape than the example's, the padding check, modes restored, and the parity helper's diff and its refusal."""

from __future__ import annotations

import ast
import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from retrec.models.hf_backbone import eager_attention
from retrec.models.onnx_export import (
    BATCH_AXIS,
    OPSET,
    OnnxParityError,
    export_graph,
    onnx_parity,
    onnx_variants,
    text_axes,
    torch_outputs,
)

INPUTS = ("input_ids", "attention_mask")
OUTPUTS = ("token_vectors", "pooled")


class Tiny(nn.Module):
    """ids + mask → per-token vectors ``[B, T, 4]`` (zero on padding) and their masked mean ``[B, 4]``."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 4)
        self.proj = nn.Linear(4, 4)
        self.drop = nn.Dropout(0.5)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = attention_mask.unsqueeze(-1).to(torch.float32)
        tokens = self.drop(torch.tanh(self.proj(self.embed(input_ids)))) * mask
        return tokens, tokens.sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def example(padded: bool = True) -> dict[str, torch.Tensor]:
    ids = torch.tensor([[1, 2, 3, 4], [5, 6, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]) if padded else torch.ones(2, 4, dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask}


def export_tiny(model: nn.Module, path: Path, **kwargs: object) -> Path:
    options: dict = {"inputs": example(), "outputs": list(OUTPUTS), "padding": ("attention_mask", 0),
                     "dynamic_axes": {**text_axes((*INPUTS, "token_vectors")), "pooled": BATCH_AXIS}, **kwargs}
    return export_graph(model, path, **options)


@pytest.fixture
def tiny() -> Tiny:
    torch.manual_seed(0)
    return Tiny()


def test_export_names_axes_and_parity_on_another_shape(tiny: Tiny, tmp_path: Path) -> None:
    path = export_tiny(tiny, tmp_path / "tiny.onnx")
    assert path == tmp_path / "tiny.onnx" and path.is_file()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [(i.name, i.shape) for i in session.get_inputs()] == [("input_ids", ["batch", "sequence"]),
                                                                ("attention_mask", ["batch", "sequence"])]
    assert [o.name for o in session.get_outputs()] == list(OUTPUTS)
    assert session.get_outputs()[0].shape == ["batch", "sequence", 4]
    assert session.get_outputs()[1].shape == ["batch", 4]
    rng = np.random.default_rng(1)
    other = {"input_ids": torch.from_numpy(rng.integers(1, 50, (3, 7))),  # 3 rows of 7 tokens, not 2 of 4
             "attention_mask": torch.from_numpy((np.arange(7)[None, :] < np.array([[7], [3], [5]])).astype(np.int64))}
    reference = torch_outputs(tiny, other)
    assert reference[0].shape == (3, 7, 4) and reference[1].shape == (3, 4)
    diff = onnx_parity(path, other, reference, tolerance=1e-5)
    assert 0.0 <= diff < 1e-5
    with pytest.raises(OnnxParityError, match="over the tolerance"):
        onnx_parity(path, other, [reference[0], reference[1] + 0.01], tolerance=1e-3)  # a mismatched reference
    with pytest.raises(OnnxParityError, match="shape"):
        onnx_parity(path, other, [reference[0][:2], reference[1]])
    with pytest.raises(OnnxParityError, match="2 outputs"):
        onnx_parity(path, other, reference[1])
    nan = reference[1].copy()
    nan[0, 0] = np.nan
    with pytest.raises(OnnxParityError):
        onnx_parity(path, other, [reference[0], nan], tolerance=1.0)


def test_modes_restored_and_export_runs_in_eval(tiny: Tiny, tmp_path: Path) -> None:
    tiny.train()
    tiny.proj.eval()  # a mixed state comes back as it was
    export_tiny(tiny, tmp_path / "tiny.onnx")
    assert tiny.training and tiny.embed.training and tiny.drop.training and not tiny.proj.training
    inputs = example()
    diff = onnx_parity(tmp_path / "tiny.onnx", inputs, torch_outputs(tiny, inputs))  # dropout off in the graph
    assert diff < 1e-5 and tiny.training


def test_padding_opset_and_axes_are_checked(tiny: Tiny, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="no padding"):
        export_tiny(tiny, tmp_path / "a.onnx", inputs=example(padded=False))
    with pytest.raises(ValueError, match="no input named"):
        export_tiny(tiny, tmp_path / "a.onnx", padding=("mask", 0))
    with pytest.raises(ValueError, match=f">= {OPSET}"):
        export_tiny(tiny, tmp_path / "a.onnx", opset=OPSET - 1)
    with pytest.raises(ValueError, match="unknown"):
        export_tiny(tiny, tmp_path / "a.onnx", dynamic_axes={"ids": BATCH_AXIS})
    assert not (tmp_path / "a.onnx").exists()


def test_context_wraps_the_export(tiny: Tiny, tmp_path: Path) -> None:
    seen: list[str] = []

    @contextlib.contextmanager
    def during() -> Iterator[None]:
        seen.append("enter")
        yield
        seen.append("exit")

    export_tiny(tiny, tmp_path / "tiny.onnx", context=during())
    assert seen == ["enter", "exit"]


def test_eager_attention_is_switched_for_the_export_only() -> None:
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16)
    config._attn_implementation = "sdpa"
    holder = nn.Module()
    holder.bert = BertModel(config, add_pooling_layer=False)
    with eager_attention(holder):
        assert holder.bert.config._attn_implementation == "eager"
    assert holder.bert.config._attn_implementation == "sdpa"


def test_int8_variant(tiny: Tiny, tmp_path: Path) -> None:
    export_tiny(tiny, tmp_path / "m.onnx")
    assert onnx_variants(tmp_path, "m.onnx", "m-int8.onnx", quantize=False) == ({"fp32": "m.onnx"}, {})
    variants, extra = onnx_variants(tmp_path, "m.onnx", "m-int8.onnx", quantize=True)
    assert variants == {"fp32": "m.onnx", "int8": "m-int8.onnx"} and extra["quantization"]["weight_type"] == "QInt8"
    assert (tmp_path / "m-int8.onnx").is_file()


def test_models_share_no_private_names() -> None:
    """Helpers one model uses from another are public (here: hf_backbone, onnx_export), never ``_private``."""
    models = Path(__file__).resolve().parents[2] / "retrec" / "models"
    private = []
    for path in sorted(models.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("retrec."):
                private += [f"{path.name}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    assert private == []


class ExportsSomethingElse(nn.Module):
    """Traces a different function than it runs eagerly: the graph disagrees with the model."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1.0 if torch.onnx.is_in_onnx_export() else x


def test_every_export_is_checked_against_torch(tmp_path: Path) -> None:
    x = torch.randn(2, 3)
    with pytest.raises(OnnxParityError, match="differ by 1 in output 'y'"):
        export_graph(ExportsSomethingElse(), tmp_path / "bad.onnx", inputs={"x": x}, outputs=["y"],
                     dynamic_axes={"x": {0: "batch"}})
    path = export_graph(ExportsSomethingElse(), tmp_path / "unchecked.onnx", inputs={"x": x}, outputs=["y"],
                        dynamic_axes={"x": {0: "batch"}}, tolerance=None)  # the check can be turned off
    assert path.is_file()
