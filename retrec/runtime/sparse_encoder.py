"""Learned sparse encoder for inference: a verified ``model/sparse`` bundle run by ONNX Runtime (no torch).

The graph takes ``input_ids`` and ``attention_mask`` and returns ``weights`` ``[batch, vocabulary]`` (SPLADE's
max-pooled, log-saturated term weights; zero for special tokens). A text's payload is its non-zeros as
``(int64 term ids, float32 weights)``, ids ascending — a document's ``doc_top_k`` largest when the bundle sets it.

- ``siamese`` bundles encode queries with the same graph (truncated to ``max_query_length``).
- ``inference-free`` bundles encode only documents with the graph; a query is its distinct tokens (special
  tokens left out) weighted by the bundle's query weight table (``query_weights.safetensors``): no model runs
  for a query, a tokenizer and a lookup.

Empty, punctuation-only and out-of-vocabulary texts are fine: the tokenizer gives ``[CLS] [SEP]`` or ``[UNK]``,
which carry no weight, and an empty vector matches nothing.

Example::

    encoder = OnnxSparseEncoder("artifacts/scifact-sparse")
    [(ids, weights)] = encoder.encode_queries(["what causes scurvy"])
    docs = encoder.encode_documents(doc_texts, progress=True)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress

from retrec.bundle import BundleError, Manifest, load_arrays
from retrec.contracts import SparseVector, strict_options
from retrec.kinds import SPARSE_MODEL
from retrec.runtime.onnx_session import BundleModel, Spin

KIND = SPARSE_MODEL
CPU_BATCH_TOKENS = 1024  # on CPU, documents per batch x max_doc_length: the graph's [batch, tokens, vocabulary]
# logits block (4 B each) stays ~125 MB; SciFact-length documents at 256 tokens, int8, 2 threads: 34.4 docs/s in
# batches of 4 against 29.5 in batches of 32 (smaller blocks stay in cache; less padding)


def nonzeros(weights: np.ndarray, top_k: int = 0) -> list[SparseVector]:
    """Rows of ``[batch, vocabulary]`` weights as their non-zeros (the ``top_k`` largest when set; ties by id)."""
    out = []
    for row in np.asarray(weights, np.float32):
        ids = np.flatnonzero(row > 0)
        if 0 < top_k < len(ids):
            ids = np.sort(ids[np.lexsort((ids, -row[ids]))[:top_k]])
        out.append((ids.astype(np.int64), row[ids].astype(np.float32)))
    return out


class OnnxSparseEncoder(BundleModel):
    """``encode_queries`` / ``encode_documents`` → one ``(term ids, weights)`` pair per text."""

    @strict_options(KIND)
    def __init__(self, bundle: str | Path | Manifest, *, variant: str = "fp32", threads: int | None = None,
                 providers: Sequence[str] | None = None, batch_size: int = 32, spin: Spin = "always") -> None:
        super().__init__(bundle, KIND, variant=variant, threads=threads, providers=providers, spin=spin)
        config = self.manifest.config
        self.dim = int(self.manifest.dims["dim"])
        self.mode = str(config["mode"])
        self.max_query_length = int(config["max_query_length"])
        self.max_doc_length = int(config["max_doc_length"])
        self.doc_top_k = int(config.get("doc_top_k", 0))
        self.similarity = "dot"
        self.batch_size = batch_size
        self.query_weights: np.ndarray | None = None
        if self.mode == "inference-free":
            table = load_arrays(str(self.manifest.file(config["query_weights"])))["weights"]
            if table.shape != (self.dim,) or table.dtype != np.float32 or not np.isfinite(table).all() \
                    or (table < 0).any():
                raise BundleError(f"{self.manifest.path}: query weights of shape {table.shape} {table.dtype}, "
                                  f"expected float32 [{self.dim}], finite and non-negative")
            self.query_weights = table
        elif self.mode != "siamese":
            raise BundleError(f"{self.manifest.path}: unknown sparse mode {self.mode!r}")

    @property
    def document_batch_size(self) -> int:
        """Documents per batch when none is given: ``batch_size``, on CPU at most :data:`CPU_BATCH_TOKENS` tokens."""
        if self.providers[0] != "CPUExecutionProvider":
            return self.batch_size
        return max(1, min(self.batch_size, CPU_BATCH_TOKENS // self.max_doc_length))

    def _run(self, batch: dict[str, np.ndarray], top_k: int) -> list[SparseVector]:
        weights = self.session.run([self._output], self.feeds(batch))[0]
        if weights.ndim != 2 or weights.shape[1] != self.dim:
            raise BundleError(f"{self.model_path}: model returned shape {weights.shape}, manifest says "
                              f"vocabulary {self.dim}")
        return nonzeros(weights, top_k)

    def encode_queries(self, texts: Sequence[str], batch_size: int | None = None) -> list[SparseVector]:
        """Each query's term weights (the model's, or the weight table's for inference-free bundles)."""
        if self.query_weights is not None:
            out = []
            for ids in self.tokenizer.encode(list(texts), self.max_query_length):
                terms = np.unique(np.asarray(ids, np.int64))
                weights = self.query_weights[terms]
                keep = weights > 0
                out.append((terms[keep], weights[keep].astype(np.float32)))
            return out
        result: list[SparseVector] = []
        size = batch_size or self.batch_size
        for start in range(0, len(texts), size):
            result.extend(self._run(self.tokenizer(list(texts[start:start + size]), self.max_query_length), 0))
        return result

    def encode_documents(self, texts: Sequence[str], batch_size: int | None = None,
                         progress: bool = False) -> list[SparseVector]:
        """Each document's term weights, in input order (length-sorted batches)."""
        empty = (np.zeros(0, np.int64), np.zeros(0, np.float32))
        out: list[SparseVector] = [empty] * len(texts)
        if not texts:
            return out
        batches = self.tokenizer.batches(texts, self.max_doc_length, batch_size or self.document_batch_size)
        with Progress(console=Console(stderr=True), transient=True, disable=not progress) as bar:
            task = bar.add_task(f"encode documents ({self.variant}, {self.threads} threads)", total=len(texts))
            for positions, batch in batches:
                for i, vector in zip(positions, self._run(batch, self.doc_top_k)):
                    out[i] = vector
                bar.advance(task, len(positions))
        return out
