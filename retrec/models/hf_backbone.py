"""The Hugging Face BERT backbone that the text families (dense, sparse, multivector, reranker) build on.

:func:`load_bert` loads a BertModel offline and quietly (:func:`quiet_transformers`: no load report about the unused
pooler head, no progress bar); :func:`eager_attention` switches a model's ``.bert`` to eager attention for the
length of an ONNX export (:func:`retrec.models.onnx_export.export_graph`'s ``context``): its graph runs faster in
ONNX Runtime than the SDPA one.

Example::

    bert = load_bert()                                   # the packaged all-MiniLM-L6-v2, SDPA attention
    model = TokenEncoder(bert, dim=128)
    with eager_attention(model):
        ...                                              # export: model.bert attends eagerly here
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from torch import nn

from retrec.runtime.tokenizer import minilm_dir


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report (the unused pooler head) and weight-loading progress bar."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def load_bert(folder: str | Path | None = None, attn_implementation: str = "sdpa") -> nn.Module:
    """A BertModel (no pooling layer) from ``folder`` (default: the packaged MiniLM), offline, quietly."""
    from transformers import BertModel

    source = Path(folder) if folder is not None else minilm_dir()
    with quiet_transformers():
        return BertModel.from_pretrained(str(source), add_pooling_layer=False, local_files_only=True,
                                         attn_implementation=attn_implementation)


@contextlib.contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Run ``model.bert`` with eager attention inside the block (an export: its ONNX graph runs faster in ONNX
    Runtime than the SDPA one); its attention implementation is restored afterwards."""
    bert = model.bert
    previous = getattr(bert.config, "_attn_implementation", None)
    switch = previous not in (None, "eager") and hasattr(bert, "set_attn_implementation")
    if switch:
        bert.set_attn_implementation("eager")
    try:
        yield
    finally:
        if switch:
            bert.set_attn_implementation(previous)
