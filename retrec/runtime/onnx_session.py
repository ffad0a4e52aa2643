"""ONNX Runtime sessions with the project's defaults: GPU when available, threads capped."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from retrec.process_env import available_cpus


def providers(prefer_gpu: bool = True) -> list[str]:
    """CUDA first when this onnxruntime build has it (onnxruntime-gpu), CPU always last."""
    available = ort.get_available_providers()
    chosen = ["CUDAExecutionProvider"] if prefer_gpu and "CUDAExecutionProvider" in available else []
    return [*chosen, "CPUExecutionProvider"]


def create_session(path: str | Path, threads: int | None = None, prefer_gpu: bool = True) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or available_cpus()
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=opts, providers=providers(prefer_gpu))
