"""Query encoding: a query-encoder bundle of any registered kind behind dynamic batching.

:class:`BatchingEncoder` holds one query encoder — loaded through its kind's registry loader
(``kinds.get(manifest.kind).load``; for ``model/dense`` an ONNX Runtime session) — and batches concurrent
queries with its own ``@serve.batch`` queue: queries arriving within ``batch_wait_timeout_s`` of each other
form a batch (up to ``max_batch_size``; 1 turns batching off). A query that arrives while no other is in
flight skips the queue: it neither waits nor pays for it. ``@serve.batch`` keeps one queue per decorated
function per process (and calls a batch with the ``self`` of its first request), so the batch function is
decorated per instance: several encoders (one per encoder bundle) share a process safely, each batching only
its own queries.
The encoder call runs on one dedicated worker thread (off the replica's event loop, intra-op threads capped
to the replica's CPUs); batches formed while it is busy are coalesced into the next call (still at most
``max_batch_size`` queries), so under load the batch grows to what arrived during one call instead of
queueing as many small batches. An encoder with a ``batch_size`` runs on CPU as length-sorted sub-batches
of :data:`CPU_ONNX_BATCH` queries (less padding); on a GPU as one. Each call returns the query's payload
(what ``encode_queries`` gives for one text: a dense vector, sparse term weights, a token matrix) and the
size of the batch it was encoded in (for metrics).

Where it runs is ``encoder.placement`` in the serve config (see :mod:`retrec.serving.placement`):
``ingress`` (default) builds it inside the ingress replica — no deployment hop per query; ``deployment``
serves it as a :class:`QueryEncoder` deployment per encoder bundle (scaled and placed on its own).

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

from ray import serve

from retrec.bundle import read_manifest
from retrec.kinds import call_supported
from retrec.process_env import configure_process
from retrec.serving.registry import kind_of, loader
from retrec.serving.resources import replica_threads

CPU_ONNX_BATCH = 4  # on CPU, a batch runs as length-sorted runs of 4: less padding, ~15% less time per query
MAX_FORMED_BATCHES = 8  # @serve.batch batches waiting for the ONNX worker (x max_batch_size <= max_ongoing)
Encoded = tuple[Any, int]  # (the query's payload, e.g. float32 [dim], size of the batch it was encoded in)
GPU_PROVIDERS = ("CUDA", "Tensorrt", "ROCM")


class BatchingEncoder:
    """One query encoder with its own ``@serve.batch`` queue; used inside a Serve replica."""

    def __init__(self, bundle: str, *, variant: str = "fp32", max_batch_size: int = 16,
                 batch_wait_timeout_s: float = 0.004, threads: int | None = None,
                 use_gpu: bool | None = None) -> None:
        self.threads = replica_threads(threads)
        configure_process(self.threads)
        kind = read_manifest(bundle).kind
        self.kind = kind_of(kind, "query_encoder", f"encoder bundle {bundle}")
        # spin="run": ONNX threads spinning while idle took the CPU the event loop, Ray and the shards need
        # (RESULTS.md "Serving throughput": dense c=32 +15% QPS, -25% CPU per request); never spinning cost
        # ~0.5 ms per query alone. So they spin inside a run and stop when it returns.
        self.encoder = call_supported(loader(kind), bundle, variant=variant, threads=self.threads,
                                      use_gpu=use_gpu, spin="run",
                                      providers=["CPUExecutionProvider"] if use_gpu is False else None)
        self.providers = list(getattr(self.encoder, "providers", None) or [])
        if hasattr(self.encoder, "batch_size"):
            on_gpu = any(p.startswith(GPU_PROVIDERS) for p in self.providers)
            self.encoder.batch_size = max_batch_size if on_gpu else min(CPU_ONNX_BATCH, max_batch_size)
        self.max_batch_size = max_batch_size
        self.batch_wait_timeout_s = batch_wait_timeout_s
        # One encoder call at a time (its intra-op pool is the parallelism); never on the event loop.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="query-encoder")
        self._pending: deque[tuple[list[str], asyncio.Future[list[Encoded]]]] = deque()
        self._worker: asyncio.Task[None] | None = None
        self._in_flight = 0
        # This instance's own batch queue (a method decorated once would share one queue per process).
        self.encode_batch = serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_timeout_s,
                                        max_concurrent_batches=MAX_FORMED_BATCHES)(self._enqueue)

    def info(self) -> dict[str, Any]:
        """The encoder bundle (kind, name, version, dim, similarity) and how it runs here."""
        m = self.encoder.manifest
        return {"kind": m.kind, "name": m.name, "version": m.version, "dim": m.dims.get("dim"),
                "similarity": m.config.get("similarity"), "payload": self.kind.payload,
                "providers": self.providers, "threads": self.threads, "max_batch_size": self.max_batch_size,
                "onnx_batch_size": getattr(self.encoder, "batch_size", None)}

    def encode_now(self, texts: list[str]) -> Any:
        """One payload per text (dense: ``float32 [n, dim]``); blocking — the batch path runs it on the worker."""
        return self.encoder.encode_queries(texts)

    async def _enqueue(self, texts: list[str]) -> list[Encoded]:
        """One ``@serve.batch`` batch: queued for the encoder worker, which may coalesce it with others."""
        future: asyncio.Future[list[Encoded]] = asyncio.get_running_loop().create_future()
        self._pending.append((texts, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._run_pending())
        return await future

    async def _run_pending(self) -> None:
        """Encode pending batches, as many whole batches per encoder call as fit in ``max_batch_size``."""
        loop = asyncio.get_running_loop()
        while self._pending:
            group = [self._pending.popleft()]
            size = len(group[0][0])
            while self._pending and size + len(self._pending[0][0]) <= self.max_batch_size:
                group.append(self._pending.popleft())
                size += len(group[-1][0])
            texts = [t for batch, _ in group for t in batch]
            try:
                payloads = await loop.run_in_executor(self._pool, self.encode_now, texts)
            except Exception as exc:  # every query of this call fails; the worker goes on
                for _, future in group:
                    if not future.done():
                        future.set_exception(exc)
                continue
            start = 0
            for batch, future in group:
                if not future.done():
                    future.set_result([(payloads[start + i], len(texts)) for i in range(len(batch))])
                start += len(batch)

    async def encode(self, text: str) -> Encoded:
        """``(the query's payload, size of the batch it was encoded in)``."""
        alone = not self._in_flight
        self._in_flight += 1
        try:
            if alone:  # nothing to batch with: straight to the encoder worker, past the batch queue (~0.3 ms)
                return (await self._enqueue([text]))[0]
            return await self.encode_batch(text)  # others in flight: wait up to batch_wait_timeout_s for more
        finally:
            self._in_flight -= 1


@serve.deployment
class QueryEncoder:
    """:class:`BatchingEncoder` as its own deployment (``encoder.placement: deployment``; one per bundle)."""

    def __init__(self, bundle: str, **kwargs: Any) -> None:
        self.batcher = BatchingEncoder(bundle, **kwargs)

    def info(self) -> dict[str, Any]:
        return self.batcher.info()

    async def encode(self, text: str) -> Encoded:
        """``(the query's payload, size of the batch it was encoded in)``."""
        return await self.batcher.encode(text)
