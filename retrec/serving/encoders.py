"""Query encoding: the bundle's ONNX model behind ``@serve.batch`` dynamic batching.

:class:`BatchingEncoder` holds one ONNX Runtime session and batches concurrent queries with
``@serve.batch``: queries arriving within ``batch_wait_timeout_s`` of each other form a batch (up to
``max_batch_size``; 1 turns batching off). A query that arrives while no other is in flight does not wait.
The ONNX call runs on one dedicated worker thread (off the replica's event loop, intra-op threads capped to
the replica's CPUs); batches formed while it is busy are coalesced into the next call (still at most
``max_batch_size`` queries), so under load the batch grows to what arrived during one ONNX call instead of
queueing as many small batches. On CPU a batch runs as length-sorted sub-batches of
:data:`CPU_ONNX_BATCH` queries (less padding); on a GPU as one. Each call returns the query vector and the
size of the batch it was encoded in (for metrics).

Where it runs is ``encoder.placement`` in the serve config: ``ingress`` (default) builds it inside the
ingress replica — no deployment hop per query; ``deployment`` serves it as the :class:`QueryEncoder`
deployment (scaled and placed on its own, e.g. on a GPU node).

Example::

    enc = BatchingEncoder("/models/minilm-onnx", variant="fp32", max_batch_size=16)
    vector, batch_size = await enc.encode("what causes scurvy")      # inside a replica's event loop

    QueryEncoder.bind("/models/minilm-onnx", max_batch_size=16)        # or: as a deployment
    vector, batch_size = await handle.encode.remote("what causes scurvy")
"""

from __future__ import annotations

import asyncio
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from ray import serve

from retrec.process_env import configure_process
from retrec.serving.resources import replica_threads

CPU_ONNX_BATCH = 4  # on CPU, a batch runs as length-sorted runs of 4: less padding, ~15% less time per query
MAX_FORMED_BATCHES = 8  # @serve.batch batches waiting for the ONNX worker (x max_batch_size <= max_ongoing)
Encoded = tuple[np.ndarray, int]  # (float32 [dim] query vector, size of the ONNX batch it was encoded in)


class BatchingEncoder:
    """One ONNX query encoder with ``@serve.batch`` batching; used inside a Serve replica.

    ``@serve.batch`` keeps one queue per decorated method in a process, so a process holds one of these.
    """

    def __init__(self, bundle: str, *, variant: str = "fp32", max_batch_size: int = 16,
                 batch_wait_timeout_s: float = 0.004, threads: int | None = None,
                 use_gpu: bool | None = None) -> None:
        from retrec.runtime.onnx_encoder import CPU, OnnxEncoder

        self.threads = replica_threads(threads)
        configure_process(self.threads)
        providers = [CPU] if use_gpu is False else None
        self.encoder = OnnxEncoder(bundle, variant=variant, num_threads=self.threads, providers=providers)
        on_cpu = not any(p.startswith(("CUDA", "Tensorrt", "ROCM")) for p in self.encoder.providers)
        self.encoder.batch_size = min(CPU_ONNX_BATCH, max_batch_size) if on_cpu else max_batch_size
        self.max_batch_size = max_batch_size
        self.batch_wait_timeout_s = batch_wait_timeout_s
        # One ONNX call at a time (its intra-op pool is the parallelism); never on the event loop.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnx-encoder")
        self._pending: deque[tuple[list[str], asyncio.Future[list[Encoded]]]] = deque()
        self._worker: asyncio.Task[None] | None = None
        self._in_flight = 0
        self.encode_batch.set_max_batch_size(max_batch_size)
        self.encode_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)

    def info(self) -> dict[str, Any]:
        """Encoder bundle facts the ingress checks index versions against (name, version, dim, similarity)."""
        m = self.encoder.manifest
        return {"name": m.name, "version": m.version, "dim": int(m.dims["dim"]),
                "similarity": m.config.get("similarity"), "providers": self.encoder.providers,
                "threads": self.threads, "max_batch_size": self.max_batch_size,
                "onnx_batch_size": self.encoder.batch_size}

    def encode_now(self, texts: list[str]) -> np.ndarray:
        """``float32 [n, dim]`` for ``texts`` (blocking; the batch path runs it on the ONNX worker thread)."""
        return self.encoder.encode_queries(texts)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.004, max_concurrent_batches=MAX_FORMED_BATCHES)
    async def encode_batch(self, texts: list[str]) -> list[Encoded]:
        """One ``@serve.batch`` batch: queued for the ONNX worker, which may coalesce it with others."""
        future: asyncio.Future[list[Encoded]] = asyncio.get_running_loop().create_future()
        self._pending.append((texts, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._run_pending())
        return await future

    async def _run_pending(self) -> None:
        """Encode pending batches, as many whole batches per ONNX call as fit in ``max_batch_size``."""
        loop = asyncio.get_running_loop()
        while self._pending:
            group = [self._pending.popleft()]
            size = len(group[0][0])
            while self._pending and size + len(self._pending[0][0]) <= self.max_batch_size:
                group.append(self._pending.popleft())
                size += len(group[-1][0])
            texts = [t for batch, _ in group for t in batch]
            try:
                vectors = await loop.run_in_executor(self._pool, self.encode_now, texts)
            except Exception as exc:  # every query of this call fails; the worker goes on
                for _, future in group:
                    if not future.done():
                        future.set_exception(exc)
                continue
            start = 0
            for batch, future in group:
                if not future.done():
                    future.set_result([(vectors[start + i], len(texts)) for i in range(len(batch))])
                start += len(batch)

    async def encode(self, text: str) -> Encoded:
        """``(float32 [dim] vector, size of the ONNX batch it was encoded in)``."""
        # Alone: go now. With other queries in flight: wait up to batch_wait_timeout_s to batch with more.
        self.encode_batch.set_batch_wait_timeout_s(self.batch_wait_timeout_s if self._in_flight else 0.0)
        self._in_flight += 1
        try:
            return await self.encode_batch(text)
        finally:
            self._in_flight -= 1


@serve.deployment
class QueryEncoder:
    """:class:`BatchingEncoder` as its own deployment (``encoder.placement: deployment``)."""

    def __init__(self, bundle: str, **kwargs: Any) -> None:
        self.batcher = BatchingEncoder(bundle, **kwargs)

    def info(self) -> dict[str, Any]:
        return self.batcher.info()

    async def encode(self, text: str) -> Encoded:
        """``(float32 [dim] vector, size of the ONNX batch it was encoded in)``."""
        return await self.batcher.encode(text)
