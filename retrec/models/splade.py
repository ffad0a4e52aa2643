"""SPLADE learned sparse encoder (BERT → MLM-style head tied to the word embeddings → max-pooled log-saturated
term weights) and its export to a ``model/sparse`` ONNX bundle.

A text becomes a vector over the vocabulary: ``w_j = max_t log(1 + ReLU(logit_tj))`` over its attended tokens
``t``, with ``logit_tj = transform(h_t) · E_j + b_j`` (``E``: the base model's word embeddings, tied; special tokens
never get a weight). A query scores a document by the dot product of their vectors.

**The start.** The packaged MiniLM has no MLM head. Its last hidden states read through the tied embeddings
already name the input token first (median self-rank 0 on SciFact) and related words next ("sailors" → sailor,
navy, mariners), so the head starts as a scaled identity ``transform`` and a constant bias, calibrated on a
corpus sample by :func:`calibrate`: the bias sets how many terms a document starts with (``start_terms``), the
scale sets the largest weights to about ``log(1 + 10)``. Training (contrastive + FLOPS) then moves everything.

``mode``: ``siamese`` encodes queries with the same model; ``inference-free`` encodes only documents and weights
a query's tokens from a table in the bundle (IDF at the start; :mod:`retrec.runtime.sparse_encoder`).

**The lexical channel** (:meth:`SpladeEncoder.enable_lexical`, part of the ONNX graph): each of a text's own
terms gains BM25's saturated term frequency on top of its learned weight. An inference-free document then starts
as BM25 over word pieces plus the head's expansions: on SciFact, untrained, test nDCG@10 0.677 against 0.542 for
the head alone and 0.673 for the word-piece BM25 alone (benchmarks/RESULTS.md). Without it a document must learn
to repeat its own words through a head the base model was never trained for, and the FLOPS penalty drops them.

Example::

    model = SpladeEncoder.from_pretrained()
    model.calibrate(tokenizer, corpus_sample)
    export_sparse(model, "artifacts/sparse", tokenizer=tokenizer, config=SparseConfig(), name="scifact-sparse")
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors.numpy import save_file
from torch import nn

from retrec.bundle import Manifest, publish
from retrec.kinds import SPARSE_MODEL
from retrec.models.hf_backbone import eager_attention, load_bert
from retrec.models.onnx_export import BATCH_AXIS, OPSET, example_text_inputs, export_graph, onnx_variants, text_axes
from retrec.models.precision import on_model_device
from retrec.runtime.sparse_encoder import nonzeros
from retrec.runtime.tokenizer import MINILM_NAME, TextTokenizer, minilm_dir, special_ids

KIND = SPARSE_MODEL
EXPORT_FORMAT = 1
FP32_FILE = "encoder.onnx"
INT8_FILE = "encoder-int8.onnx"
QUERY_WEIGHTS_FILE = "query_weights.safetensors"
TOKENIZER_DIR = "tokenizer"
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "weights"
Mode = Literal["siamese", "inference-free"]


@dataclass(frozen=True)
class SparseConfig:
    """What a ``model/sparse`` bundle records about how to use its encoder."""

    mode: Mode = "siamese"
    max_query_length: int = 64
    max_doc_length: int = 256
    doc_top_k: int = 0  # keep a document's k largest weights (0: every non-zero)
    base_model: str = MINILM_NAME

    def __post_init__(self) -> None:
        if self.mode not in ("siamese", "inference-free"):
            raise ValueError(f"mode must be 'siamese' or 'inference-free', got {self.mode!r}")
        if min(self.max_query_length, self.max_doc_length) < 2:
            raise ValueError("maximum lengths must leave room for the special tokens (>= 2)")
        if self.doc_top_k < 0:
            raise ValueError("doc_top_k must be >= 0")


def pooled_max(flat: torch.Tensor, counts: Sequence[int], table: torch.Tensor,
               with_winners: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``[rows, vocabulary]`` max over each row's tokens of ``flat @ table.T`` (``-inf`` for a row without tokens;
    ``flat``: the rows' kept token states, concatenated, ``counts`` per row), and the winning token's index into
    ``flat`` when asked. One row at a time as ``table @ tokens.T``: the reduction then runs along contiguous memory
    (on one CPU thread 2x faster than ``(tokens @ table.T).max(dim=0)``)."""
    table = table.to(flat.dtype)
    pooled = torch.full((len(counts), table.shape[0]), float("-inf"), dtype=flat.dtype, device=flat.device)
    winners = torch.zeros(pooled.shape, dtype=torch.long, device=flat.device) if with_winners else None
    start = 0
    for row, count in enumerate(counts):
        if count:
            products = table @ flat[start:start + count].T  # [vocabulary, count]
            if winners is None:
                pooled[row] = products.amax(dim=1)
            else:
                values, where = products.max(dim=1)
                pooled[row], winners[row] = values, where + start
        start += count
    return pooled, winners


class MaxPooledProduct(torch.autograd.Function):
    """``pooled[b, j] = max over kept t of states[b, t] · table[j]`` (``-inf`` where a row keeps nothing).

    The same value as masking and max-pooling ``states @ table.T``, but the ``[batch, seq, vocabulary]`` products
    live only inside the forward pass: the backward pass needs just the winning token of each (row, term), and only
    where the incoming gradient is non-zero — after SPLADE's ReLU, a row's active terms (hundreds of 30,522).
    Autograd through the full product kept it and walked it back: on one CPU thread the casts, masking and the
    max's backward pass over an [8, 256, 30,522] block cost 3× its matrix product (profiled).
    """

    @staticmethod
    def forward(ctx: Any, states: torch.Tensor, table: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        flat = states[keep]  # [kept tokens, hidden]
        pooled, winners = pooled_max(flat, keep.sum(dim=1).tolist(), table, with_winners=True)
        ctx.save_for_backward(flat, table, keep, winners)
        return pooled

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        flat, table, keep, winners = ctx.saved_tensors
        rows, terms = grad.nonzero(as_tuple=True)  # only the winning token of each (row, term) gets a gradient
        g = grad[rows, terms].float().unsqueeze(1)
        tokens = winners[rows, terms]
        grad_flat = torch.zeros(flat.shape, dtype=torch.float32, device=flat.device)
        grad_flat.index_add_(0, tokens, g * table[terms].float())
        grad_table = torch.zeros(table.shape, dtype=torch.float32, device=table.device)
        grad_table.index_add_(0, terms, g * flat[tokens].float())
        grad_states = torch.zeros((*keep.shape, flat.shape[1]), dtype=flat.dtype, device=flat.device)
        grad_states[keep] = grad_flat.to(flat.dtype)
        return grad_states, grad_table.to(table.dtype), None


class SpladeEncoder(nn.Module):
    """``(input_ids, attention_mask) -> [batch, vocabulary]`` max-pooled log-saturated term weights."""

    def __init__(self, bert: nn.Module, excluded: Sequence[int] = ()) -> None:
        super().__init__()
        self.bert = bert
        hidden = int(bert.config.hidden_size)
        self.transform = nn.Linear(hidden, hidden)
        vocab = int(bert.embeddings.word_embeddings.weight.shape[0])
        self.bias = nn.Parameter(torch.zeros(vocab))
        allowed = torch.ones(vocab)
        allowed[torch.as_tensor(list(excluded), dtype=torch.long)] = 0.0
        self.register_buffer("allowed", allowed)
        self.lexical: dict[str, float] | None = None
        self.set_head(1.0, 0.0)

    @classmethod
    def from_pretrained(cls, folder: str | Path | None = None, attn_implementation: str = "sdpa") -> SpladeEncoder:
        """A BertModel from ``folder`` (default: the packaged MiniLM), offline; special tokens excluded."""
        from retrec.runtime.tokenizer import load_tokenizer

        source = Path(folder) if folder is not None else minilm_dir()
        return cls(load_bert(source, attn_implementation), special_ids(load_tokenizer(source))).eval()

    @property
    def vocabulary(self) -> int:
        return int(self.bias.shape[0])

    def enable_lexical(self, avg_length: float, k1: float = 1.2, b: float = 0.75) -> None:
        """Add a lexical channel to every vector: each of the text's own terms gains BM25's saturated term frequency
        ``tf·(k1+1) / (tf + k1·(1 - b + b·length/avg_length))`` (length: the text's pooled tokens). An
        inference-free document then starts as BM25 over the vocabulary's word pieces (its queries are IDF-weighted
        tokens) and training learns the expansions and re-weighting on top (:func:`lexical_weights`)."""
        if avg_length <= 0 or k1 <= 0 or not 0.0 <= b <= 1.0:
            raise ValueError("lexical channel: avg_length and k1 must be positive and b in [0, 1]")
        self.lexical = {"k1": float(k1), "b": float(b), "avg_length": float(avg_length)}

    def set_head(self, scale: float, threshold: float) -> None:
        """``transform = scale · I`` and ``bias = -scale · threshold``: term j is active where ``h · E_j`` exceeds
        ``threshold``, with weight ``log(1 + scale · (h · E_j - threshold))``."""
        with torch.no_grad():
            self.transform.weight.copy_(torch.eye(self.transform.in_features) * scale)
            self.transform.bias.zero_()
            self.bias.fill_(-scale * threshold)

    def states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``[batch, seq, hidden]``: the transformed token states that are read through the tied embeddings."""
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                           token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
        return self.transform(hidden)

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.states(input_ids, attention_mask) @ self.bert.embeddings.word_embeddings.weight.T + self.bias

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # max_t log(1 + ReLU(s_t · E_j + b_j)) = log(1 + ReLU(max_t (s_t · E_j) + b_j)): the bias is added after
        # pooling, and with gradients the [batch, seq, vocab] products are never kept (MaxPooledProduct)
        input_ids, attention_mask = on_model_device(self, input_ids, attention_mask)
        keep = self.pooled_positions(input_ids, attention_mask).bool()
        states = self.states(input_ids, attention_mask)
        table = self.bert.embeddings.word_embeddings.weight
        if torch.is_grad_enabled() and (states.requires_grad or table.requires_grad):
            pooled = MaxPooledProduct.apply(states, table, keep)
        elif torch.onnx.is_in_onnx_export():  # the plain graph: batched product, masked max
            products = states @ table.T.to(states.dtype)
            pooled = products.masked_fill(~keep.unsqueeze(-1), float("-inf")).amax(dim=1)
        else:
            pooled, _ = pooled_max(states[keep], keep.sum(dim=1).tolist(), table)
        weights = torch.log1p(torch.relu(pooled.float() + self.bias)) * self.allowed
        if self.lexical is not None:
            weights = weights + lexical_weights(input_ids, keep, self.vocabulary, **self.lexical)
        return weights

    def pooled_positions(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``float [batch, seq]``: the tokens whose expansions are pooled — attended and not special (``[CLS]``,
        ``[SEP]``, ``[UNK]``...), so an empty or out-of-vocabulary text has an empty vector."""
        return attention_mask.float() * self.allowed[input_ids]

    @torch.inference_mode()
    def calibrate(self, tokenizer: TextTokenizer, texts: Sequence[str], start_terms: int = 256,
                  top_weight: float = 10.0, max_length: int = 256, batch_size: int = 16) -> dict[str, float]:
        """Set the head (:meth:`set_head`) from ``texts`` so that the median document starts with ``start_terms``
        active terms and its largest weight near ``log(1 + top_weight)``; returns the chosen values."""
        self.set_head(1.0, 0.0)
        was = self.training
        self.eval()
        kth, top = [], []
        try:
            for _, feeds in tokenizer.batches(texts, max_length, batch_size):
                ids, mask = torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"])
                keep = self.pooled_positions(ids, mask).bool().unsqueeze(-1)
                raw = self.logits(ids, mask).masked_fill(~keep, float("-inf")).amax(dim=1)
                raw = raw.masked_fill(self.allowed == 0, float("-inf"))
                values = raw.topk(min(start_terms, raw.shape[1]), dim=1).values
                kth.append(values[:, -1])
                top.append(values[:, 0])
        finally:
            self.train(was)
        kth_all, top_all = torch.cat(kth), torch.cat(top)
        usable = torch.isfinite(kth_all) & torch.isfinite(top_all)  # a text with no word pools nothing
        if not usable.any():
            raise ValueError("calibration texts have no word to pool (empty or special tokens only)")
        threshold = float(kth_all[usable].median())
        spread = max(float((top_all[usable] - threshold).median()), 1e-3)
        scale = top_weight / spread
        self.set_head(scale, threshold)
        return {"scale": scale, "threshold": threshold, "start_terms": float(start_terms)}


def lexical_weights(input_ids: torch.Tensor, keep: torch.Tensor, vocabulary: int, *, k1: float, b: float,
                    avg_length: float) -> torch.Tensor:
    """``[batch, vocabulary]`` BM25 saturated term frequencies of each row's kept tokens (0 for absent terms)."""
    tf = torch.zeros(input_ids.shape[0], vocabulary, device=input_ids.device)
    tf = tf.scatter_add(1, input_ids.long(), keep.float())
    length = keep.float().sum(dim=1, keepdim=True)
    return tf * (k1 + 1.0) / (tf + k1 * (1.0 - b + b * length / avg_length))


def mean_pooled_length(model: SpladeEncoder, tokenizer: TextTokenizer, texts: Sequence[str],
                       max_length: int) -> float:
    """Mean count of pooled (non-special) tokens of ``texts`` at ``max_length``: the lexical channel's average
    document length."""
    allowed = model.allowed.cpu().numpy()
    lengths = [float(allowed[np.asarray(ids, np.int64)].sum()) for ids in tokenizer.encode(list(texts), max_length)]
    return max(float(np.mean(lengths)), 1.0) if lengths else 1.0


def flops(weights: torch.Tensor) -> torch.Tensor:
    """FLOPS regulariser (SPLADE): Σ_j (mean_i w_ij)², the expected cost of a posting-list product."""
    return weights.abs().mean(dim=0).pow(2).sum()


def idf_weights(tokenizer: TextTokenizer, texts: Sequence[str], max_length: int = 256) -> np.ndarray:
    """``float32 [vocabulary]``: ``log(1 + (N - df + 0.5) / (df + 0.5))`` (BM25's IDF) of each token over ``texts``;
    the inference-free query weights at the start."""
    vocab = int(max(tokenizer._base.get_vocab().values()) + 1)
    df = np.zeros(vocab, np.int64)
    for ids in tokenizer.encode(texts, max_length):
        df[np.unique(np.asarray(ids, np.int64))] += 1
    n = len(texts)
    idf = np.log1p((n - df + 0.5) / (df + 0.5)).astype(np.float32)
    idf[special_ids(tokenizer)] = 0.0
    return idf


@torch.inference_mode()
def sparse_vectors(model: SpladeEncoder, tokenizer: TextTokenizer, texts: Sequence[str], max_length: int,
                   top_k: int = 0, batch_size: int = 16) -> list[tuple[np.ndarray, np.ndarray]]:
    """Torch eager sparse vectors in input order (what the ONNX runtime returns: parity checks, dev scoring)."""
    was = model.training
    model.eval()
    out: list[Any] = [None] * len(texts)
    try:
        for rows, feeds in tokenizer.batches(texts, max_length, batch_size):
            weights = model(torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"]))
            for row, vector in zip(rows, nonzeros(weights.float().cpu().numpy(), top_k)):
                out[row] = vector
    finally:
        model.train(was)
    return out


def write_sparse_files(model: SpladeEncoder, out: Path, *, tokenizer: TextTokenizer, config: SparseConfig,
                       query_weights: np.ndarray | None = None, quantize: bool = False,
                       opset: int = OPSET) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write ``encoder.onnx`` (+ int8), ``tokenizer/`` and, inference-free, the query weight table into ``out``;
    the manifest's ``config`` and ``dims``."""
    if (config.mode == "inference-free") != (query_weights is not None):
        raise ValueError("an inference-free bundle needs its query weight table; a siamese one has none")
    tokenizer.save(out / TOKENIZER_DIR)
    export_graph(model, out / FP32_FILE, inputs=example_text_inputs(tokenizer, INPUT_NAMES), outputs=[OUTPUT_NAME],
                 dynamic_axes={**text_axes(INPUT_NAMES), OUTPUT_NAME: BATCH_AXIS}, opset=opset,
                 padding=("attention_mask", 0), context=eager_attention(model))
    variants, extra = onnx_variants(out, FP32_FILE, INT8_FILE, quantize)
    if query_weights is not None:
        table = np.asarray(query_weights, np.float32)
        if table.shape != (model.vocabulary,) or not np.isfinite(table).all() or (table < 0).any():
            raise ValueError(f"query weights: expected {model.vocabulary} finite non-negative values")
        table = table * model.allowed.cpu().numpy()  # special tokens never weigh
        save_file({"weights": table}, str(out / QUERY_WEIGHTS_FILE))
        extra["query_weights"] = QUERY_WEIGHTS_FILE
    config_json = {**asdict(config), "similarity": "dot", "variants": variants, "inputs": list(INPUT_NAMES),
                   "output": OUTPUT_NAME, "opset": opset, "export_format": EXPORT_FORMAT, "tokenizer": TOKENIZER_DIR,
                   "excluded_ids": np.flatnonzero(model.allowed.cpu().numpy() == 0).tolist(), "lexical": model.lexical,
                   **extra}
    return config_json, {"dim": model.vocabulary}


def export_sparse(model: SpladeEncoder, out_dir: str | Path, *, tokenizer: TextTokenizer,
                  config: SparseConfig | None = None, query_weights: np.ndarray | None = None,
                  name: str = "sparse", version: str | None = None, quantize: bool = False,
                  metrics: dict[str, Any] | None = None, command: str | None = None) -> Manifest:
    """Publish a ``model/sparse`` bundle atomically into a new or empty ``out_dir``."""
    config = config or SparseConfig()
    with publish(out_dir, replace=False) as pub:
        config_json, dims = write_sparse_files(model, pub.path, tokenizer=tokenizer, config=config,
                                               query_weights=query_weights, quantize=quantize)
        pub.set_manifest(kind=KIND, name=name, version=version, dims=dims, config=config_json, metrics=metrics,
                         command=command)
    assert pub.manifest is not None
    return pub.manifest
