"""ONNX Runtime sessions with the project's defaults, and the base of the runtimes that run a bundle's model.

A session uses CUDA when ONNX Runtime offers it (onnxruntime-gpu; CPU always last), caps its intra-op threads
to the CPUs this process was given (``$RETREC_NUM_THREADS`` overrides), runs sequentially with every graph
optimisation, and spins its threads as told (:data:`Spin`). :class:`BundleModel` opens one variant of a
verified bundle's ONNX model with its tokenizer: what :class:`~retrec.runtime.onnx_encoder.OnnxEncoder` and
:class:`~retrec.runtime.reranker.OnnxReranker` share.

Example::

    session = inference_session(Path("model.onnx"), threads=2, spin="run")
    model = BundleModel("artifacts/minilm-onnx", "model/dense", variant="int8")   # model.session, model.tokenizer
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import onnxruntime as ort

from retrec.bundle import BundleError, Manifest, load_bundle
from retrec.process_env import available_cpus
from retrec.runtime.tokenizer import TextTokenizer, load_tokenizer

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
# When ONNX Runtime's intra-op threads busy-wait for work: always, only inside a run, never.
Spin = Literal["always", "run", "never"]
SPIN: tuple[str, ...] = get_args(Spin)


def select_providers(available: Sequence[str] | None = None) -> list[str]:
    """CUDA first when ONNX Runtime has it (onnxruntime-gpu), always with the CPU fallback."""
    available = list(ort.get_available_providers() if available is None else available)
    return [CUDA, CPU] if CUDA in available else [CPU]


def default_threads(threads: int | None = None) -> int:
    """``threads``, else ``$RETREC_NUM_THREADS``, else the CPUs this process may use."""
    return threads or int(os.environ.get("RETREC_NUM_THREADS", 0) or 0) or available_cpus()


def inference_session(path: str | Path, threads: int | None = None, spin: Spin = "always",
                      providers: Sequence[str] | None = None) -> ort.InferenceSession:
    """A session with the serving defaults: ``threads`` intra-op threads (:func:`default_threads`), sequential,
    every graph optimisation, quiet logs; CUDA first when available.

    ``spin``: when the intra-op threads busy-wait for work. "always" is the lowest latency alone, but idle
    spinning takes the CPU of whatever shares the cores; "run" spins inside a run and stops when it returns (a
    server: :class:`retrec.serving.encoders.BatchingEncoder`); "never" saves CPU at ~0.5 ms per call.
    """
    if spin not in SPIN:
        raise ValueError(f"spin must be one of {SPIN}, not {spin!r}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = default_threads(threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0" if spin == "never" else "1")
    options.add_session_config_entry("session.force_spinning_stop", "1" if spin == "run" else "0")
    return ort.InferenceSession(str(path), options, providers=list(providers) if providers else select_providers())


def create_session(path: str | Path, threads: int | None = None, prefer_gpu: bool = True) -> ort.InferenceSession:
    """:func:`inference_session` on the CPU alone unless ``prefer_gpu``."""
    return inference_session(path, threads, providers=None if prefer_gpu else [CPU])


class BundleModel:
    """One variant of a ``kind`` bundle's ONNX model (``config.variants``) with the bundle's tokenizer.

    ``bundle``: a bundle folder (verified here) or an already verified :class:`~retrec.bundle.Manifest` (e.g. a
    draft before publishing).
    """

    def __init__(self, bundle: str | Path | Manifest, kind: str, *, variant: str = "fp32",
                 threads: int | None = None, providers: Sequence[str] | None = None,
                 spin: Spin = "always") -> None:
        self.manifest: Manifest = bundle if isinstance(bundle, Manifest) else load_bundle(bundle, kind=kind)
        if self.manifest.kind != kind or self.manifest.path is None:
            raise BundleError(f"{self.manifest.path}: bundle kind is {self.manifest.kind!r}, expected {kind!r}")
        config = self.manifest.config
        variants = config.get("variants", {})
        if variant not in variants:
            raise BundleError(f"{self.manifest.path}: no {variant!r} model in this bundle (has {sorted(variants)})")
        self.variant = variant
        tokenizer_dir = config.get("tokenizer", "tokenizer")
        self.manifest.file(f"{tokenizer_dir}/tokenizer.json")  # listed, hence verified
        self.tokenizer: TextTokenizer = load_tokenizer(self.manifest.path / tokenizer_dir)
        self.threads = default_threads(threads)
        self.model_path = self.manifest.file(variants[variant])
        self.session = inference_session(self.model_path, self.threads, spin, providers)
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

    def feeds(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The model's inputs from a tokenised batch (``token_type_ids`` zeros when the graph takes them)."""
        feeds = {}
        for name in self._inputs:
            if name in batch:
                feeds[name] = batch[name]
            elif name == "token_type_ids":
                feeds[name] = np.zeros_like(batch["input_ids"])
            else:
                raise BundleError(f"{self.model_path}: unexpected model input {name!r}")
        return feeds
