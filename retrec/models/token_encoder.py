"""ColBERT-style token encoder (BERT → linear projection → L2 normalisation per token) and its export to a
``model/multivector`` ONNX bundle.

A text becomes a matrix of token vectors; a query scores a document by **MaxSim** (Chamfer similarity): the sum
over query tokens of the largest dot product with any document token (:func:`maxsim_scores`). The projection
(384 → ``dim``, default 128) starts as the top principal directions of the base model's token states over a
sample of the training corpus (:func:`pca_projection`), so the fresh model ranks about as well as the base
model's full token states before any training, and the index stores a third of the bytes.

The ONNX graph takes ``input_ids`` and ``attention_mask`` (dynamic batch and sequence axes) and returns
``token_vectors`` ``[batch, seq, dim]`` (zero on padding) and ``token_mask`` ``[batch, seq]``; which tokens a
query or a document keeps (query augmentation, the punctuation skip-list) is decided on the inputs, in
:mod:`retrec.runtime.token_encoder`, identically in training and serving.

Example::

    model = TokenEncoder.from_pretrained(dim=128)
    model.init_projection(pca_projection(model.bert, tokenizer, corpus_sample, 128))
    export_multivector(model, "artifacts/mv", config=MultivectorConfig(dim=128), name="scifact-multivector")
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from retrec.bundle import Manifest, publish
from retrec.kinds import MULTIVECTOR_MODEL
from retrec.models.hf_backbone import eager_attention, load_bert
from retrec.models.onnx_export import OPSET, example_text_inputs, export_graph, onnx_variants, text_axes
from retrec.models.precision import on_model_device
from retrec.runtime.tokenizer import MINILM_NAME, TextTokenizer, document_keep, punctuation_ids, query_batch

KIND = MULTIVECTOR_MODEL
EXPORT_FORMAT = 1
FP32_FILE = "encoder.onnx"
INT8_FILE = "encoder-int8.onnx"
TOKENIZER_DIR = "tokenizer"
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAMES = ("token_vectors", "token_mask")


@dataclass(frozen=True)
class MultivectorConfig:
    """What a ``model/multivector`` bundle records about how to use its encoder."""

    dim: int = 128
    max_query_length: int = 32
    max_doc_length: int = 256
    query_augment: bool = False
    skip_punctuation: bool = True
    base_model: str = MINILM_NAME

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ValueError(f"dim must be positive, got {self.dim}")
        if min(self.max_query_length, self.max_doc_length) < 2:
            raise ValueError("maximum lengths must leave room for the special tokens (>= 2)")


class TokenEncoder(nn.Module):
    """BERT → ``Linear(hidden, dim, bias=False)`` → L2 normalise each token → ``(vectors, mask)``."""

    def __init__(self, bert: nn.Module, dim: int = 128) -> None:
        super().__init__()
        self.bert = bert
        self.proj = nn.Linear(int(bert.config.hidden_size), dim, bias=False)

    @classmethod
    def from_pretrained(cls, folder: str | Path | None = None, dim: int = 128,
                        attn_implementation: str = "sdpa") -> TokenEncoder:
        """A BertModel from ``folder`` (default: the packaged MiniLM), offline, with a fresh projection."""
        return cls(load_bert(folder, attn_implementation), dim).eval()

    @property
    def dim(self) -> int:
        return int(self.proj.out_features)

    def init_projection(self, weight: np.ndarray) -> None:
        """Set the projection (``[dim, hidden]``), e.g. from :func:`pca_projection`."""
        with torch.no_grad():
            self.proj.weight.copy_(torch.from_numpy(np.asarray(weight, np.float32)))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        input_ids, attention_mask = on_model_device(self, input_ids, attention_mask)
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                           token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
        mask = attention_mask.to(hidden.dtype)
        vectors = nn.functional.normalize(self.proj(hidden), p=2.0, dim=-1) * mask.unsqueeze(-1)
        return vectors, mask


def maxsim_scores(queries: torch.Tensor, query_mask: torch.Tensor, docs: torch.Tensor,
                  doc_keep: torch.Tensor) -> torch.Tensor:
    """``[queries, documents]`` MaxSim: Σ over each query's kept tokens of the max dot product over a document's
    kept tokens. ``queries [Q, Lq, d]``, ``query_mask [Q, Lq]``, ``docs [D, Ld, d]``, ``doc_keep [D, Ld]`` (bool)."""
    sims = torch.einsum("qid,jtd->qjit", queries, docs)
    sims = sims.masked_fill(~doc_keep[None, :, None, :], float("-inf")).amax(dim=-1)
    sims = torch.where(torch.isfinite(sims), sims, torch.zeros_like(sims))  # a document with no kept token
    return (sims * query_mask[:, None, :].to(sims.dtype)).sum(dim=-1)


def encode_queries(model: TokenEncoder, tokenizer: TextTokenizer, texts: Sequence[str],
                   config: MultivectorConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Query token vectors ``[Q, Lq, d]`` and mask, with gradients (query augmentation as configured)."""
    feeds = query_batch(tokenizer, texts, config.max_query_length, config.query_augment)
    return model(torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"]))


def encode_documents(model: TokenEncoder, tokenizer: TextTokenizer, texts: Sequence[str], config: MultivectorConfig,
                     skip_ids: np.ndarray, chunk: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Document token vectors ``[D, Ld, d]`` (input order, padded to the longest) and the bool mask of the tokens
    MaxSim reads, with gradients; forward passes of ``chunk`` documents grouped by length (0: one pass)."""
    size = chunk if 0 < chunk < len(texts) else max(1, len(texts))
    positions, parts, keeps = [], [], []
    for rows, feeds in tokenizer.batches(texts, config.max_doc_length, size):
        vectors, _ = model(torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"]))
        positions.append(rows)
        parts.append(vectors)
        keeps.append(torch.from_numpy(document_keep(feeds["input_ids"], feeds["attention_mask"], skip_ids)))
    width = max(p.shape[1] for p in parts)
    vectors = torch.cat([nn.functional.pad(p, (0, 0, 0, width - p.shape[1])) for p in parts])
    keep = torch.cat([nn.functional.pad(k, (0, width - k.shape[1])) for k in keeps]).to(vectors.device)
    order = torch.from_numpy(np.argsort(np.concatenate(positions))).to(vectors.device)
    return vectors[order], keep[order]


@torch.inference_mode()
def pca_projection(bert: nn.Module, tokenizer: TextTokenizer, texts: Sequence[str], dim: int,
                   max_length: int = 256, batch_size: int = 16) -> np.ndarray:
    """``[dim, hidden]``: the top ``dim`` principal directions (uncentred: they keep inner products) of the
    L2-normalised token states of ``texts`` — the projection that loses the least of MaxSim's dot products."""
    hidden = int(bert.config.hidden_size)
    if dim > hidden:
        raise ValueError(f"dim {dim} exceeds the base model's hidden size {hidden}")
    second = torch.zeros(hidden, hidden, dtype=torch.float64)
    for _, feeds in tokenizer.batches(texts, max_length, batch_size):
        ids, mask = torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"])
        states = bert(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).last_hidden_state
        tokens = nn.functional.normalize(states[mask.bool()], dim=-1).double()
        second += tokens.T @ tokens
    _, vectors = torch.linalg.eigh(second)
    return vectors[:, -dim:].flip(-1).T.float().numpy()  # largest eigenvalues first


@torch.inference_mode()
def token_vectors(model: TokenEncoder, tokenizer: TextTokenizer, texts: Sequence[str], config: MultivectorConfig,
                  skip_ids: np.ndarray, *, query: bool) -> list[np.ndarray]:
    """Torch eager payloads (what :class:`~retrec.runtime.token_encoder.OnnxTokenEncoder` returns): parity checks."""
    was = model.training
    model.eval()
    try:
        if query:
            vectors, mask = encode_queries(model, tokenizer, texts, config)
            keep = mask.bool()
        else:
            vectors, keep = encode_documents(model, tokenizer, texts, config, skip_ids, chunk=16)
        return [vectors[i][keep[i]].float().cpu().numpy() for i in range(len(texts))]
    finally:
        model.train(was)


def write_multivector_files(model: TokenEncoder, out: Path, *, tokenizer: TextTokenizer, config: MultivectorConfig,
                            quantize: bool = False, opset: int = OPSET) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write ``encoder.onnx`` (+ int8) and ``tokenizer/`` into ``out``; the manifest's ``config`` and ``dims``."""
    if config.dim != model.dim:
        raise ValueError(f"config dim {config.dim} differs from the model's {model.dim}")
    tokenizer.save(out / TOKENIZER_DIR)
    export_graph(model, out / FP32_FILE, inputs=example_text_inputs(tokenizer, INPUT_NAMES), outputs=OUTPUT_NAMES,
                 dynamic_axes=text_axes((*INPUT_NAMES, *OUTPUT_NAMES)), opset=opset, padding=("attention_mask", 0),
                 context=eager_attention(model))
    variants, extra = onnx_variants(out, FP32_FILE, INT8_FILE, quantize)
    skip = punctuation_ids(tokenizer) if config.skip_punctuation else []
    config_json = {**asdict(config), "skip_ids": skip, "similarity": "maxsim", "variants": variants,
                   "inputs": list(INPUT_NAMES), "output": OUTPUT_NAMES[0], "outputs": list(OUTPUT_NAMES),
                   "opset": opset, "export_format": EXPORT_FORMAT, "tokenizer": TOKENIZER_DIR, **extra}
    return config_json, {"dim": model.dim}


def export_multivector(model: TokenEncoder, out_dir: str | Path, *, tokenizer: TextTokenizer,
                       config: MultivectorConfig | None = None, name: str = "multivector", version: str | None = None,
                       quantize: bool = False, metrics: dict[str, Any] | None = None,
                       command: str | None = None) -> Manifest:
    """Publish a ``model/multivector`` bundle atomically into a new or empty ``out_dir``."""
    config = config or MultivectorConfig(dim=model.dim)
    with publish(out_dir, replace=False) as pub:
        config_json, dims = write_multivector_files(model, pub.path, tokenizer=tokenizer, config=config,
                                                    quantize=quantize)
        pub.set_manifest(kind=KIND, name=name, version=version, dims=dims, config=config_json, metrics=metrics,
                         command=command)
    assert pub.manifest is not None
    return pub.manifest
