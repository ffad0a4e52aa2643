"""Multi-vector (token) encoder for inference: a verified ``model/multivector`` bundle run by ONNX Runtime (no torch).

The graph takes ``input_ids`` and ``attention_mask`` and returns ``token_vectors`` ``[batch, seq, dim]`` (each
token's projected, L2-normalised state; zero on padding) and ``token_mask`` ``[batch, seq]``. A text's payload is
the matrix of the vectors it keeps, ``float32 [tokens, dim]``:

- a **query** keeps every token; with ``query_augment`` (ColBERT's query augmentation) it is padded with
  ``[MASK]`` tokens to exactly ``max_query_length``, attended to like words, so the model can add soft
  expansion terms;
- a **document** keeps its tokens but those in the bundle's ``skip_ids`` (punctuation) and padding.

The same feeds are what training encodes (:func:`~retrec.runtime.tokenizer.query_batch`,
:func:`~retrec.runtime.tokenizer.document_keep`), so a trained model and its served copy see identical inputs.

Example::

    encoder = OnnxTokenEncoder("artifacts/scifact-multivector")
    q = encoder.encode_queries(["what causes scurvy"])          # [float32 [32, 128]]
    d = encoder.encode_documents(doc_texts, progress=True)      # one float32 [t_i, 128] per document
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress

from retrec.bundle import BundleError, Manifest
from retrec.contracts import strict_options
from retrec.kinds import MULTIVECTOR_MODEL
from retrec.runtime.onnx_session import BundleModel, Spin
from retrec.runtime.tokenizer import document_keep, query_batch

KIND = MULTIVECTOR_MODEL


class OnnxTokenEncoder(BundleModel):
    """``encode_queries`` / ``encode_documents`` → one ``float32 [tokens, dim]`` matrix per text."""

    @strict_options(KIND)
    def __init__(self, bundle: str | Path | Manifest, *, variant: str = "fp32", threads: int | None = None,
                 providers: Sequence[str] | None = None, batch_size: int = 32, spin: Spin = "always") -> None:
        super().__init__(bundle, KIND, variant=variant, threads=threads, providers=providers, spin=spin)
        config = self.manifest.config
        self.dim = int(self.manifest.dims["dim"])
        self.max_query_length = int(config["max_query_length"])
        self.max_doc_length = int(config["max_doc_length"])
        self.query_augment = bool(config.get("query_augment", False))
        self.skip_ids = np.asarray(config.get("skip_ids", []), dtype=np.int64)
        self.similarity = "maxsim"
        self.batch_size = batch_size

    def _run(self, batch: dict[str, np.ndarray], keep: np.ndarray) -> list[np.ndarray]:
        vectors = self.session.run([self._output], self.feeds(batch))[0]
        if vectors.ndim != 3 or vectors.shape[2] != self.dim:
            raise BundleError(f"{self.model_path}: model returned shape {vectors.shape}, manifest says dim {self.dim}")
        return [np.ascontiguousarray(vectors[row][keep[row]], dtype=np.float32) for row in range(len(vectors))]

    def encode_queries(self, texts: Sequence[str], batch_size: int | None = None) -> list[np.ndarray]:
        """Each query's token vectors (``max_query_length`` of them with query augmentation)."""
        out: list[np.ndarray] = []
        size = batch_size or self.batch_size
        for start in range(0, len(texts), size):
            batch = query_batch(self.tokenizer, texts[start:start + size], self.max_query_length, self.query_augment)
            out.extend(self._run(batch, batch["attention_mask"] > 0))
        return out

    def encode_documents(self, texts: Sequence[str], batch_size: int | None = None,
                         progress: bool = False) -> list[np.ndarray]:
        """Each document's kept token vectors, in input order (length-sorted batches)."""
        out: list[np.ndarray] = [np.zeros((0, self.dim), np.float32)] * len(texts)
        if not texts:
            return out
        batches = self.tokenizer.batches(texts, self.max_doc_length, batch_size or self.batch_size)
        with Progress(console=Console(stderr=True), transient=True, disable=not progress) as bar:
            task = bar.add_task(f"encode documents ({self.variant}, {self.threads} threads)", total=len(texts))
            for positions, batch in batches:
                keep = document_keep(batch["input_ids"], batch["attention_mask"], self.skip_ids)
                for i, vectors in zip(positions, self._run(batch, keep)):
                    out[i] = vectors
                bar.advance(task, len(positions))
        return out
