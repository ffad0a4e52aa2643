"""Dense encoder for inference: a verified ``model/dense`` bundle run by ONNX Runtime (no torch).

The session uses CUDA when ONNX Runtime offers it (CPU otherwise) and caps its intra-op threads to
the CPUs this process was given. Documents are tokenised once, sorted by length and encoded in
dynamically padded batches; vectors come back in input order as ``float32 [n, dim]``.

Example::

    encoder = OnnxEncoder("artifacts/minilm-onnx")          # checksums verified, fp32 variant
    q = encoder.encode_queries(["what causes scurvy"])       # truncated to the bundle's max_query_length
    d = encoder.encode_documents(doc_texts, progress=True)   # max_doc_length, longest-first batches
    OnnxEncoder("artifacts/minilm-onnx", variant="int8", num_threads=1)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import onnxruntime as ort
from rich.console import Console
from rich.progress import Progress

from retrec.bundle import BundleError, Manifest, load_bundle
from retrec.kinds import DENSE_MODEL
from retrec.process_env import available_cpus
from retrec.runtime.tokenizer import load_tokenizer
from retrec.runtime.vectors import l2_normalize

KIND = DENSE_MODEL
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
# When ONNX Runtime's intra-op threads busy-wait for work: always, only inside a run, never.
Spin = Literal["always", "run", "never"]
SPIN: tuple[str, ...] = get_args(Spin)


def select_providers(available: Sequence[str] | None = None) -> list[str]:
    """CUDA first when ONNX Runtime has it (onnxruntime-gpu), always with the CPU fallback."""
    available = list(ort.get_available_providers() if available is None else available)
    return [CUDA, CPU] if CUDA in available else [CPU]


def default_threads(num_threads: int | None = None) -> int:
    """``num_threads``, else ``$RETREC_NUM_THREADS``, else the CPUs this process may use."""
    return num_threads or int(os.environ.get("RETREC_NUM_THREADS", 0) or 0) or available_cpus()


class OnnxEncoder:
    """``encode_queries`` / ``encode_documents`` over one ONNX model shared by queries and documents."""

    def __init__(
        self,
        bundle: str | Path | Manifest,
        *,
        variant: str = "fp32",
        num_threads: int | None = None,
        providers: Sequence[str] | None = None,
        batch_size: int = 32,
        max_query_length: int | None = None,
        max_doc_length: int | None = None,
        spin: Spin = "always",
    ) -> None:
        # A Manifest (already verified, e.g. a draft before publishing) or a bundle folder to verify.
        self.manifest: Manifest = bundle if isinstance(bundle, Manifest) else load_bundle(bundle, kind=KIND)
        if self.manifest.kind != KIND or self.manifest.path is None:
            raise BundleError(f"{self.manifest.path}: bundle kind is {self.manifest.kind!r}, expected {KIND!r}")
        config = self.manifest.config
        variants = config.get("variants", {})
        if variant not in variants:
            raise BundleError(f"{bundle}: no {variant!r} model in this bundle (has {sorted(variants)})")
        self.variant = variant
        self.dim = int(self.manifest.dims["dim"])
        self.similarity: str = config["similarity"]
        self.max_query_length = int(max_query_length or config["max_query_length"])
        self.max_doc_length = int(max_doc_length or config["max_doc_length"])
        self.batch_size = batch_size
        tokenizer_dir = config.get("tokenizer", "tokenizer")
        self.manifest.file(f"{tokenizer_dir}/tokenizer.json")  # listed, hence verified
        self.tokenizer = load_tokenizer(self.manifest.path / tokenizer_dir)
        self.threads = default_threads(num_threads)
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        # Intra-op threads spin for work ("always"): lowest latency alone, but idle spinning takes the CPU of
        # whatever shares the cores. "run": spin inside a run, stop when it returns (a server: BatchingEncoder).
        if spin not in SPIN:
            raise ValueError(f"spin must be one of {SPIN}, not {spin!r}")
        options.add_session_config_entry("session.intra_op.allow_spinning", "0" if spin == "never" else "1")
        options.add_session_config_entry("session.force_spinning_stop", "1" if spin == "run" else "0")
        self.model_path = self.manifest.file(variants[variant])
        self.session = ort.InferenceSession(
            str(self.model_path), options, providers=list(providers) if providers else select_providers()
        )
        self._inputs = [i.name for i in self.session.get_inputs()]
        self._output = config.get("output", self.session.get_outputs()[0].name)

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def providers(self) -> list[str]:
        """Execution providers the session actually uses, in priority order."""
        return self.session.get_providers()

    def _feeds(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = {}
        for name in self._inputs:
            if name in batch:
                feeds[name] = batch[name]
            elif name == "token_type_ids":
                feeds[name] = np.zeros_like(batch["input_ids"])
            else:
                raise BundleError(f"{self.model_path}: unexpected model input {name!r}")
        return feeds

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
                vectors = self.session.run([self._output], self._feeds(batch))[0]
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
