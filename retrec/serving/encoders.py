"""Query encoder deployment: the bundle's ONNX model behind ``@serve.batch`` dynamic batching.

Concurrent queries arriving within ``batch_wait_timeout_s`` are encoded as one ONNX Runtime call
(up to ``max_batch_size``; 1 turns batching off). ONNX threads are capped to the replica's CPUs.
Each call returns the query vector and the size of the batch it was encoded in (for metrics).

Example::

    enc = QueryEncoder.bind("/models/minilm-onnx", variant="fp32", max_batch_size=16)
    vector, batch_size = await handle.encode.remote("what causes scurvy")
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from ray import serve

from retrec.process_env import configure_process
from retrec.serving.resources import replica_threads


@serve.deployment
class QueryEncoder:
    def __init__(self, bundle: str, *, variant: str = "fp32", max_batch_size: int = 16,
                 batch_wait_timeout_s: float = 0.004, threads: int | None = None,
                 use_gpu: bool | None = None) -> None:
        from retrec.runtime.onnx_encoder import CPU, OnnxEncoder

        self.threads = replica_threads(threads)
        configure_process(self.threads)
        providers = [CPU] if use_gpu is False else None
        self.encoder = OnnxEncoder(bundle, variant=variant, num_threads=self.threads, providers=providers)
        self.encode_batch.set_max_batch_size(max_batch_size)
        self.encode_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)

    def info(self) -> dict[str, Any]:
        """Encoder bundle facts the ingress checks index versions against (name, version, dim, similarity)."""
        m = self.encoder.manifest
        return {"name": m.name, "version": m.version, "dim": int(m.dims["dim"]),
                "similarity": m.config.get("similarity"), "providers": self.encoder.providers,
                "threads": self.threads}

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.004)
    async def encode_batch(self, texts: list[str]) -> list[tuple[np.ndarray, int]]:
        vectors = await asyncio.to_thread(self.encoder.encode_queries, texts)
        return [(vectors[i], len(texts)) for i in range(len(texts))]

    async def encode(self, text: str) -> tuple[np.ndarray, int]:
        """``(float32 [dim] vector, batch size it was encoded in)``."""
        return await self.encode_batch(text)
