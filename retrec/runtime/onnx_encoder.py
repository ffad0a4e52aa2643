"""Dense encoder for inference: a verified ``model/dense`` bundle run by ONNX Runtime (no torch).

The session uses CUDA when ONNX Runtime offers it (CPU otherwise) and caps its intra-op threads to
the CPUs this process was given. Documents are tokenised once, sorted by length and encoded in
dynamically padded batches; vectors come back in input order as ``float32 [n, dim]``.

Example::

    encoder = OnnxEncoder("artifacts/minilm-onnx")          # checksums verified, fp32 variant
    q = encoder.encode_queries(["what causes scurvy"])       # truncated to the bundle's max_query_length
    d = encoder.encode_documents(doc_texts, progress=True)   # max_doc_length, longest-first batches
    OnnxEncoder("artifacts/minilm-onnx", variant="int8", threads=1)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress

from retrec.bundle import BundleError, Manifest
from retrec.contracts import strict_options
from retrec.kinds import DENSE_MODEL
from retrec.runtime.onnx_session import SPIN, BundleModel, Spin, default_threads, select_providers
from retrec.runtime.vectors import l2_normalize

__all__ = ["KIND", "SPIN", "OnnxEncoder", "Spin", "default_threads", "select_providers"]

KIND = DENSE_MODEL


class OnnxEncoder(BundleModel):
    """``encode_queries`` / ``encode_documents`` over one ONNX model shared by queries and documents."""

    @strict_options(KIND)
    def __init__(
        self,
        bundle: str | Path | Manifest,
        *,
        variant: str = "fp32",
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        batch_size: int = 32,
        max_query_length: int | None = None,
        max_doc_length: int | None = None,
        spin: Spin = "always",
    ) -> None:
        super().__init__(bundle, KIND, variant=variant, threads=threads, providers=providers, spin=spin)
        config = self.manifest.config
        self.dim = int(self.manifest.dims["dim"])
        self.similarity: str = config["similarity"]
        self.max_query_length = int(max_query_length or config["max_query_length"])
        self.max_doc_length = int(max_doc_length or config["max_doc_length"])
        self.batch_size = batch_size

    def encode(
        self, texts: Sequence[str], max_length: int, batch_size: int | None = None, progress: bool = False,
        description: str = "encode",
    ) -> np.ndarray:
        """Embeddings of ``texts`` truncated to ``max_length`` tokens, ``float32 [n, dim]`` in input order."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        batches = self.tokenizer.batches(texts, max_length, batch_size or self.batch_size)
        with Progress(console=Console(stderr=True), transient=True, disable=not progress) as bar:
            task = bar.add_task(f"{description} ({self.variant}, {self.threads} threads)", total=len(texts))
            for positions, batch in batches:
                vectors = self.session.run([self._output], self.feeds(batch))[0]
                if vectors.ndim != 2 or vectors.shape[1] != self.dim:
                    raise BundleError(f"{self.model_path}: model returned shape {vectors.shape}, "
                                      f"manifest says dim {self.dim}")
                out[positions] = vectors
                bar.advance(task, len(positions))
        if self.similarity == "cosine":  # idempotent when the graph already normalises
            l2_normalize(out, copy=False)
        return out

    def encode_queries(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        return self.encode(texts, self.max_query_length, batch_size, description="encode queries")

    def encode_documents(
        self, texts: Sequence[str], batch_size: int | None = None, progress: bool = False
    ) -> np.ndarray:
        return self.encode(texts, self.max_doc_length, batch_size, progress, description="encode documents")
