"""Cross-encoder re-ranker (BERT over ``[CLS] query [SEP] document [SEP]``, scored from its token states) and its
export to a ``model/reranker`` ONNX bundle.

The default score (``pooling="segments"``) is ``scale * cos(mean query-token state, mean document-token state)``
plus a linear head over the mean of all tokens, the head starting at zero: a fresh model from a bi-encoder base
(all-MiniLM-L6-v2) already ranks SciFact's dev candidates at nDCG@10 0.55 where a fresh linear head ranks at
random (0.17), and 30 minutes of training on 2 cores reach 0.74 instead of 0.47 (benchmarks/RESULTS.md).
``"mean"`` and ``"cls"``: the head alone, over the mean of the tokens or over ``[CLS]``.

The query and the document are read together, so every query token attends to every document token: more
accurate than a bi-encoder's two vectors, and too slow for a whole corpus — it re-ranks a first stage's top
N (``retrec eval --rerank``) and scores (query, candidate) pairs as a distillation teacher
(``retrec train dense --teacher BUNDLE``). The ONNX graph takes ``input_ids``, ``attention_mask`` and
``token_type_ids`` (dynamic batch and sequence axes) and returns ``scores`` ``[batch]`` (a logit: higher is
more relevant). The bundle holds the fp32 model (and optionally an int8 copy), the tokenizer and a manifest
whose config records the pooling and the maximum pair length.

Example::

    model = CrossEncoder.from_pretrained()                          # packaged MiniLM + a fresh head
    scores = score_pairs(model, load_tokenizer(), [("what causes scurvy", "Scurvy is ...")], max_length=256)
    export_reranker(model, "artifacts/scifact-reranker", name="scifact-reranker")
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
from retrec.kinds import RERANKER_MODEL
from retrec.models.hf_backbone import eager_attention, load_bert
from retrec.models.onnx_export import BATCH_AXIS, OPSET, export_graph, onnx_variants, text_axes
from retrec.models.precision import on_model_device
from retrec.models.text_encoder import POOLINGS
from retrec.runtime.tokenizer import MINILM_NAME, TextTokenizer, load_tokenizer

KIND = RERANKER_MODEL
EXPORT_FORMAT = 1
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "scores"
FP32_FILE = "reranker.onnx"
INT8_FILE = "reranker-int8.onnx"
TOKENIZER_DIR = "tokenizer"
# "segments": the cosine of the query's and the document's mean token states in the joint pass, scaled, plus the
# head over all tokens (zero at the start). A fresh model then ranks about as its bi-encoder base does instead of
# at random, and training refines that.
RERANK_POOLINGS = (*POOLINGS, "segments")
SEGMENT_SCALE = 20.0  # 1 / the bi-encoder's contrastive temperature (0.05): logits of a useful spread


@dataclass(frozen=True)
class RerankerConfig:
    """What a ``model/reranker`` bundle records about how to use its model."""

    pooling: str = "segments"
    max_length: int = 256  # tokens of the (query, document) pair; the document side is cut first
    base_model: str = MINILM_NAME

    def __post_init__(self) -> None:
        if self.pooling not in RERANK_POOLINGS:
            raise ValueError(f"pooling must be one of {RERANK_POOLINGS}, got {self.pooling!r}")
        if self.max_length < 4:
            raise ValueError(f"max_length must leave room for a pair's special tokens (>= 4), got {self.max_length}")


class CrossEncoder(nn.Module):
    """BERT over a (query, document) pair → pooled hidden state → ``Linear(hidden, 1)`` → a score per pair."""

    def __init__(self, bert: nn.Module, pooling: str = "segments") -> None:
        super().__init__()
        if pooling not in RERANK_POOLINGS:
            raise ValueError(f"pooling must be one of {RERANK_POOLINGS}, got {pooling!r}")
        self.bert = bert
        self.pooling = pooling
        self.head = nn.Linear(int(bert.config.hidden_size), 1)
        nn.init.zeros_(self.head.bias)
        if pooling == "segments":
            nn.init.zeros_(self.head.weight)
            self.scale = nn.Parameter(torch.tensor(SEGMENT_SCALE))
        else:
            nn.init.normal_(self.head.weight, std=0.02)

    @classmethod
    def from_pretrained(cls, folder: str | Path | None = None, pooling: str = "segments",
                        attn_implementation: str = "sdpa") -> CrossEncoder:
        """A BertModel from ``folder`` (default: the packaged MiniLM), offline, with a fresh head; eval mode."""
        return cls(load_bert(folder, attn_implementation), pooling=pooling).eval()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> torch.Tensor:
        input_ids, attention_mask, token_type_ids = on_model_device(self, input_ids, attention_mask, token_type_ids)
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                           token_type_ids=token_type_ids).last_hidden_state
        if self.pooling == "cls":
            return self.head(hidden[:, 0]).squeeze(-1)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        score = self.head(_masked_mean(hidden, mask)).squeeze(-1)
        if self.pooling == "segments":
            doc = mask * token_type_ids.unsqueeze(-1).to(hidden.dtype)
            q = nn.functional.normalize(_masked_mean(hidden, mask - doc).float(), dim=-1)
            d = nn.functional.normalize(_masked_mean(hidden, doc).float(), dim=-1)
            score = score.float() + self.scale * (q * d).sum(dim=-1)
        return score


def _masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def pair_tensors(tokenizer: TextTokenizer, pairs: Sequence[tuple[str, str]],
                 max_length: int) -> tuple[torch.Tensor, ...]:
    """``(input_ids, attention_mask, token_type_ids)`` of the pairs, padded to the longest."""
    feeds = tokenizer.pad_pairs(tokenizer.encode_pairs(pairs, max_length))
    return tuple(torch.from_numpy(feeds[name]) for name in INPUT_NAMES)


@torch.inference_mode()
def score_pairs(model: CrossEncoder, tokenizer: TextTokenizer, pairs: Sequence[tuple[str, str]], max_length: int,
                batch_size: int = 32) -> np.ndarray:
    """Torch eager scores ``float32 [n]`` in input order (length-sorted batches, as the ONNX runtime)."""
    out = np.zeros(len(pairs), dtype=np.float32)
    for positions, feeds in tokenizer.pair_batches(pairs, max_length, batch_size):
        scores = model(*(torch.from_numpy(feeds[name]) for name in INPUT_NAMES))
        out[positions] = scores.float().cpu().numpy()
    return out


def write_reranker_files(model: CrossEncoder, out: Path, *, tokenizer: TextTokenizer, config: RerankerConfig,
                         quantize: bool = False, opset: int = OPSET) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write ``reranker.onnx`` (+ ``reranker-int8.onnx``) and ``tokenizer/`` into ``out``; no manifest. Returns the
    bundle's config and dims."""
    if config.pooling != model.pooling:
        raise ValueError(f"config pooling {config.pooling} differs from the model's {model.pooling}")
    tokenizer.save(out / TOKENIZER_DIR)
    # The example batch must contain padding and both segments: the trace keeps the mask and type paths.
    example = pair_tensors(tokenizer, [("a query", "a short document"),
                                       ("a longer query", "a longer document, padded on the other row")], 32)
    export_graph(model, out / FP32_FILE, inputs=dict(zip(INPUT_NAMES, example)), outputs=[OUTPUT_NAME],
                 dynamic_axes={**text_axes(INPUT_NAMES), OUTPUT_NAME: BATCH_AXIS}, opset=opset,
                 padding=("attention_mask", 0), context=eager_attention(model))
    variants, extra = onnx_variants(out, FP32_FILE, INT8_FILE, quantize)
    config_json = {**asdict(config), "variants": variants, "inputs": list(INPUT_NAMES), "output": OUTPUT_NAME,
                   "opset": opset, "export_format": EXPORT_FORMAT, "tokenizer": TOKENIZER_DIR, **extra}
    return config_json, {"hidden": int(model.bert.config.hidden_size)}


def export_reranker(model: CrossEncoder, out_dir: str | Path, *, tokenizer: TextTokenizer | None = None,
                    name: str = "reranker", config: RerankerConfig | None = None, quantize: bool = False,
                    metrics: dict[str, Any] | None = None, command: str | None = None) -> Manifest:
    """Publish a ``model/reranker`` bundle atomically into a new or empty ``out_dir``."""
    config = config or RerankerConfig(pooling=model.pooling)
    tok = tokenizer or load_tokenizer()
    with publish(out_dir, replace=False) as pub:
        config_json, dims = write_reranker_files(model, pub.path, tokenizer=tok, config=config, quantize=quantize)
        pub.set_manifest(kind=KIND, name=name, dims=dims, config=config_json, metrics=metrics, command=command)
    assert pub.manifest is not None
    return pub.manifest
