"""Dense text encoder (BERT + pooling) and its export to a ``model/dense`` ONNX bundle.

One encoder serves queries and documents (shared weights). The ONNX graph takes ``input_ids`` and
``attention_mask`` (dynamic batch and sequence axes) and returns ``embeddings`` ``[batch, dim]``,
pooled and, when configured, L2-normalised inside the graph. The bundle holds the fp32 model, an
optional int8 dynamically-quantised copy, the tokenizer files and a manifest whose config records
pooling, normalisation, similarity and the maximum query/document lengths.

Example::

    encoder = TextEncoder.from_pretrained()                     # packaged all-MiniLM-L6-v2, offline
    vectors = encode_texts(encoder, load_tokenizer(), ["what causes scurvy"], max_length=64)  # (1, 384)
    export_onnx(encoder, "artifacts/minilm-onnx", name="minilm", quantize=True)
    bundle = zero_shot_bundle()   # exported once, cached under ${RETREC_CACHE:-~/.cache/retrec}/minilm-onnx
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from retrec.bundle import MANIFEST, BundleError, Manifest, load_bundle, publish, sha256_file
from retrec.kinds import DENSE_MODEL
from retrec.models.hf_backbone import eager_attention, load_bert
from retrec.models.onnx_export import (
    BATCH_AXIS,
    OPSET,
    QUANTIZATION,
    check_opset,
    example_text_inputs,
    export_graph,
    onnx_variants,
    text_axes,
)
from retrec.models.precision import on_model_device
from retrec.process_env import cache_dir
from retrec.runtime.tokenizer import MINILM_NAME, TextTokenizer, load_tokenizer, minilm_dir

KIND = DENSE_MODEL
EXPORT_FORMAT = 1  # bump when the graph's inputs/outputs or the bundle layout change
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "embeddings"
FP32_FILE = "encoder.onnx"
INT8_FILE = "encoder-int8.onnx"
TOKENIZER_DIR = "tokenizer"
POOLINGS = ("mean", "cls")
SIMILARITIES = ("cosine", "dot")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncoderConfig:
    """What a ``model/dense`` bundle records about how to use its encoder."""

    pooling: str = "mean"
    normalize: bool = True
    similarity: str = "cosine"
    max_query_length: int = 64
    max_doc_length: int = 256
    base_model: str = MINILM_NAME

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {self.similarity!r}")
        if min(self.max_query_length, self.max_doc_length) < 2:
            raise ValueError("maximum lengths must leave room for the special tokens (>= 2)")


@dataclass(frozen=True)
class BaseModel:
    """The encoder a training run starts from: its folder, name, revision and pooling."""

    folder: Path
    name: str
    revision: str  # the HF snapshot's commit, else "sha256:" of the weights file
    pooling: str


WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _st_pooling(root: Path) -> str:
    """Pooling of a sentence-transformers folder (``modules.json`` → Pooling config); mean when absent."""
    modules = root / "modules.json"
    pooling_dir = root / "1_Pooling"
    if modules.is_file():
        try:
            entries = json.loads(modules.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{modules}: unreadable ({exc})") from exc
        for entry in entries if isinstance(entries, list) else []:
            if str(entry.get("type", "")).endswith("Pooling"):
                pooling_dir = root / str(entry.get("path", "1_Pooling"))
    config = pooling_dir / "config.json"
    if not config.is_file():
        return "mean"
    settings = json.loads(config.read_text(encoding="utf-8"))
    named = settings.get("pooling_mode")  # sentence-transformers 6: "cls" / "mean" (or a list); before: booleans
    if named is not None:
        modes = {str(m).removesuffix("_tokens").removesuffix("_token") for m in
                 (named if isinstance(named, list) else [named])}
    else:
        modes = {k.removeprefix("pooling_mode_").removesuffix("_tokens").removesuffix("_token")
                 for k, v in settings.items() if k.startswith("pooling_mode") and v is True}
    if modes <= {"mean"}:
        return "mean"
    if modes == {"cls"}:
        return "cls"
    raise ValueError(f"{config}: pooling {sorted(modes)} is not supported (mean or CLS token)")


def resolve_base_model(folder: str | Path | None = None) -> BaseModel:
    """The packaged all-MiniLM-L6-v2 (``None``) or a local sentence-transformers / HF folder of a BERT encoder.

    A folder needs ``config.json`` (``model_type`` bert), ``model.safetensors`` or ``pytorch_model.bin``
    and a fast ``tokenizer.json``; anything else is refused naming the folder and what is missing.
    """
    from retrec.models.hub import model_folder

    root = minilm_dir() if folder is None else model_folder(folder)  # a Hub id: its cached snapshot
    if not root.is_dir():
        raise ValueError(f"base model {root}: not a folder (a local sentence-transformers/HF model folder)")
    config_path = root / "config.json"
    if not config_path.is_file():
        raise ValueError(f"base model {root}: not a model folder (no config.json)")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{config_path}: unreadable model config ({exc})") from exc
    if not isinstance(config, dict) or config.get("model_type") != "bert":
        kind = config.get("model_type") if isinstance(config, dict) else None
        raise ValueError(f"{config_path}: model_type {kind!r}; only BERT-architecture encoders can be fine-tuned")
    weights = next((root / w for w in WEIGHT_FILES if (root / w).is_file()), None)
    if weights is None:
        raise ValueError(f"base model {root}: no weights ({' or '.join(WEIGHT_FILES)})")
    if not (root / "tokenizer.json").is_file():
        raise ValueError(f"base model {root}: no tokenizer.json (a fast tokenizer is required)")
    resolved = root.resolve()
    commit = None
    if resolved.parent.name == "snapshots" and resolved.parent.parent.name.startswith("models--"):
        name = resolved.parent.parent.name.removeprefix("models--").replace("--", "/")  # the HF cache layout
        commit = resolved.name
    else:
        name = MINILM_NAME if folder is None else resolved.name
    revision = commit or "sha256:" + sha256_file(weights)
    return BaseModel(folder=root, name=name, revision=revision, pooling=_st_pooling(root))


class TextEncoder(nn.Module):
    """BERT + mean (or CLS) pooling [+ a backward-compatibility head] + optional L2 normalisation →
    ``[batch, dim]`` (``dim``: the hidden width, or the head's output width; :mod:`retrec.models.compat`)."""

    def __init__(self, bert: nn.Module, pooling: str = "mean", normalize: bool = True,
                 head: nn.Module | None = None) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.bert = bert
        self.pooling = pooling
        self.normalize = normalize
        self.head = head

    @classmethod
    def from_pretrained(
        cls, folder: str | Path | None = None, pooling: str = "mean", normalize: bool = True,
        attn_implementation: str = "sdpa",
    ) -> TextEncoder:
        """Load a BertModel from ``folder`` (default: the packaged MiniLM), offline, in eval mode."""
        return cls(load_bert(folder, attn_implementation), pooling=pooling, normalize=normalize).eval()

    @property
    def dim(self) -> int:
        return int(self.head.out_dim) if self.head is not None else int(self.bert.config.hidden_size)

    def for_export(self) -> TextEncoder:
        """This encoder with its head's parametrizations made plain weights (the same outputs)."""
        if self.head is None:
            return self
        return TextEncoder(self.bert, self.pooling, self.normalize, head=self.head.frozen()).train(self.training)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        input_ids, attention_mask = on_model_device(self, input_ids, attention_mask)
        hidden = self.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=torch.zeros_like(input_ids)
        ).last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        if self.head is not None:
            pooled = self.head(pooled)
        if self.normalize:
            pooled = nn.functional.normalize(pooled, p=2.0, dim=-1)
        return pooled


@torch.inference_mode()
def encode_texts(
    encoder: TextEncoder, tokenizer: TextTokenizer, texts: Sequence[str], max_length: int, batch_size: int = 32
) -> np.ndarray:
    """Torch eager embeddings ``float32 [n, dim]`` in input order (length-sorted batches, as ONNX serving)."""
    out = np.zeros((len(texts), encoder.dim), dtype=np.float32)
    for positions, feeds in tokenizer.batches(texts, max_length, batch_size):
        vectors = encoder(torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"]))
        out[positions] = vectors.float().cpu().numpy()
    return out


def embed_grouped(encoder: TextEncoder, tokenizer: TextTokenizer, texts: Sequence[str], max_length: int,
                  chunk: int) -> torch.Tensor:
    """Embeddings ``[n, dim]`` of ``texts`` in input order, with gradients: forward passes of ``chunk`` texts
    grouped by token length (each padded to its own longest; 0: one pass), so short texts pad little."""
    if chunk <= 0 or chunk >= len(texts):
        feeds = tokenizer(texts, max_length)
        return encoder(torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"]))
    positions, parts = [], []
    for rows, feeds in tokenizer.batches(texts, max_length, chunk):
        positions.append(rows)
        parts.append(encoder(torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"])))
    vectors = torch.cat(parts)
    return vectors[torch.from_numpy(np.argsort(np.concatenate(positions))).to(vectors.device)]


def set_attention_dropout(bert: nn.Module, p: float) -> None:
    """Set the dropout of every attention layer's probabilities to ``p`` (MiniLM's 0.1 costs a random draw per
    attention map; with SDPA it also leaves the fused kernel: benchmarks/sparse_step_cost.py)."""
    for module in bert.modules():
        if type(module).__name__.endswith("SelfAttention") and isinstance(getattr(module, "dropout", None),
                                                                          nn.Dropout):
            module.dropout.p = p


def write_onnx_files(
    encoder: TextEncoder, out: Path, *, tokenizer: TextTokenizer, config: EncoderConfig, quantize: bool = False,
    opset: int = OPSET,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write ``encoder.onnx`` (+ ``encoder-int8.onnx``) and ``tokenizer/`` into ``out``; no manifest.

    Returns the manifest ``config`` and ``dims`` of the ``model/dense`` bundle these files make.
    """
    check_opset(opset)
    if (config.pooling, config.normalize) != (encoder.pooling, encoder.normalize):
        raise ValueError(f"config pooling/normalize {config.pooling}/{config.normalize} differ from the "
                         f"encoder's {encoder.pooling}/{encoder.normalize}")
    tokenizer.save(out / TOKENIZER_DIR)
    inputs = example_text_inputs(tokenizer, INPUT_NAMES)
    encoder = encoder.for_export()
    export_graph(encoder, out / FP32_FILE, inputs=inputs, outputs=[OUTPUT_NAME],
                 dynamic_axes={**text_axes(INPUT_NAMES), OUTPUT_NAME: BATCH_AXIS}, opset=opset,
                 padding=("attention_mask", 0), context=eager_attention(encoder))
    variants, extra = onnx_variants(out, FP32_FILE, INT8_FILE, quantize)
    config_json = {**asdict(config), "variants": variants, "inputs": list(INPUT_NAMES), "output": OUTPUT_NAME,
                   "opset": opset, "export_format": EXPORT_FORMAT, "tokenizer": TOKENIZER_DIR, **extra}
    return config_json, {"dim": encoder.dim}


def export_onnx(
    encoder: TextEncoder,
    out_dir: str | Path,
    *,
    tokenizer: TextTokenizer | str | Path | None = None,
    name: str = "minilm",
    version: str | None = None,
    config: EncoderConfig | None = None,
    quantize: bool = False,
    opset: int = OPSET,
    metrics: dict[str, Any] | None = None,
    command: str | None = None,
) -> Manifest:
    """Publish a ``model/dense`` bundle: ``encoder.onnx`` (+ ``encoder-int8.onnx``), ``tokenizer/``, manifest.

    Atomically (:func:`retrec.bundle.publish`) into a new or empty ``out_dir`` (else FileExistsError); a failed
    export publishes nothing. ``config`` defaults to the encoder's pooling/normalisation with cosine similarity
    when normalised (dot product otherwise), queries truncated to 64 tokens and documents to 256.
    """
    if config is None:
        config = EncoderConfig(pooling=encoder.pooling, normalize=encoder.normalize,
                               similarity="cosine" if encoder.normalize else "dot")
    tok = tokenizer if isinstance(tokenizer, TextTokenizer) else load_tokenizer(tokenizer)
    with publish(out_dir, replace=False) as pub:
        config_json, dims = write_onnx_files(encoder, pub.path, tokenizer=tok, config=config, quantize=quantize,
                                             opset=opset)
        pub.set_manifest(kind=KIND, name=name, version=version, dims=dims, config=config_json, metrics=metrics,
                         command=command)
    assert pub.manifest is not None
    return pub.manifest


def _zero_shot_version(config: EncoderConfig, quantize: bool) -> str:
    """Content-derived version: the packaged weights, the config and the export format."""
    digest = hashlib.sha256(sha256_file(minilm_dir() / "model.safetensors").encode())
    digest.update(json.dumps({**asdict(config), "quantize": quantize and QUANTIZATION, "format": EXPORT_FORMAT},
                             sort_keys=True).encode())
    return "zs-" + digest.hexdigest()[:16]


def zero_shot_bundle(cache: str | Path | None = None, quantize: bool = True,
                     config: EncoderConfig | None = None) -> Path:
    """The packaged MiniLM as a verified ``model/dense`` bundle, exported once and cached.

    Lives at ``<cache>/minilm-onnx`` (default cache ``${RETREC_CACHE:-~/.cache/retrec}``). A cached
    bundle that fails verification or was made from other weights/config is exported again and published with
    :func:`retrec.bundle.publish` (temporary sibling, verified, fsynced, swapped in atomically), so readers and
    concurrent first uses always see a whole bundle, and an export that fails or is killed leaves the old one.
    """
    config = config or EncoderConfig()
    root = Path(cache) if cache is not None else cache_dir()
    target = root / "minilm-onnx"
    version = _zero_shot_version(config, quantize)
    if target.exists():
        try:
            if load_bundle(target, kind=KIND).version == version:
                return target
            reason = "made from other weights or settings"
        except BundleError as exc:
            reason = str(exc)
        log.warning("re-exporting the zero-shot encoder at %s: %s", target, reason)
        if not (target / MANIFEST).is_file():  # not a bundle at all (publish replaces bundles only): set it aside
            stale = Path(tempfile.mkdtemp(prefix="minilm-onnx.stale.", dir=root))
            target.rename(stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
    encoder = TextEncoder.from_pretrained(pooling=config.pooling, normalize=config.normalize)
    with publish(target) as pub:
        export_onnx(encoder, pub.path, name="minilm-zero-shot", version=version, config=config,
                    quantize=quantize, command="retrec zero-shot export (automatic)")
        pub.adopt()
    load_bundle(target, kind=KIND)
    return target
