"""Scatter a query to every shard of a retriever's index version, gather and merge the shard top-k lists.

The scatter is batched (``@serve.batch`` on each :class:`Scatter`, no added wait; the only request in flight
skips the queue): the requests ready at the same moment (e.g. one encoder batch) go to each shard as one
``search_many`` call per (retriever, index version, k), their payloads packed by the retriever's payload type
(:mod:`retrec.serving.payloads`), so at high concurrency the deployment hops are paid per batch, not per
request. A shard that fails or exceeds ``shard_timeout_s`` is dropped and the result names it; when every
shard fails the request fails fast with 503 (``Retry-After``).

Example::

    scatter = Scatter({"bm25": RetrieverSpec("bm25", "index/bm25", "text", [shard0], None)},
                      shard_timeout_s=2.0, retry_after_s=1, max_batch_size=16)
    hits, failed = await scatter.retrieve("bm25", "what causes scurvy", 10, ref)   # inside a replica
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ray import serve
from ray.serve.exceptions import BackPressureError

from retrec.index.fusion import merge_hits
from retrec.index.retriever import Hits
from retrec.serving import prometheus as serving_metrics
from retrec.serving.errors import ApiError
from retrec.serving.payloads import Packer, packer

log = logging.getLogger("retrec.serving")
SCATTER_CONCURRENT_BATCHES = 8  # batched shard calls in flight per ingress replica (x max_batch_size <= max_ongoing)
IndexRef = dict[str, str]  # {"version", "digest", "path", "kind"}: see retrec.serving.shards
# One shard query of the batched scatter: (retriever, query payload, k, index version, filter or None).
ScatterItem = tuple[str, Any, int, IndexRef, str | None]


async def call_handle(response: Any, timeout: float) -> Any:
    """Await a deployment handle response, cancelling it after ``timeout`` seconds."""
    try:
        return await asyncio.wait_for(response, timeout)
    except TimeoutError:
        response.cancel()
        raise


@dataclass
class RetrieverSpec:
    """One deployed retriever: its index kind, payload type, shards (in this ingress replica or deployments, never
    mixed; built by :func:`retrec.serving.placement.retriever_spec`) and query encoder (bundle path)."""

    name: str
    kind: str
    payload: str
    shards: list[Any]  # LocalShard | RemoteShard
    encoder: str | None = None  # the encoder bundle producing its payload; None: the query text itself
    placement: str = "deployment"
    pack: Packer = field(init=False)

    def __post_init__(self) -> None:
        self.pack = packer(self.payload)


class Scatter:
    """The batched shard calls of one ingress replica and the merge of their results."""

    def __init__(self, retrievers: dict[str, RetrieverSpec], *, shard_timeout_s: float, retry_after_s: int,
                 max_batch_size: int) -> None:
        self.retrievers = retrievers
        self.shard_timeout_s, self.retry_after_s = shard_timeout_s, retry_after_s
        # This instance's own batch queue; batch what is ready, never wait for more.
        self.batch = serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=0.0,
                                 max_concurrent_batches=SCATTER_CONCURRENT_BATCHES)(self.scatter)
        self._requests = 0  # requests inside request(): what may still reach the scatter

    async def scatter(self, items: list[ScatterItem]) -> list[list[Any]]:
        """Per item, every shard's hits (or the exception of its shard call), as one call per shard and group.

        A group is the items of one retriever, index version (its digest), ``k`` and filter: its shards get one
        ``search_many``.
        """
        groups: dict[tuple[str, str, int, str | None], list[int]] = {}
        for i, (name, _, k, ref, doc_filter) in enumerate(items):
            groups.setdefault((name, ref["digest"], k, doc_filter), []).append(i)
        calls, targets = [], []
        for (name, _, k, doc_filter), rows in groups.items():
            spec, ref = self.retrievers[name], items[rows[0]][3]
            payloads = spec.pack([items[i][1] for i in rows])
            serving_metrics.METRICS.shard_batch_size.labels(retriever=name).observe(len(rows))
            for i, shard in enumerate(spec.shards):
                calls.append(shard.search_many(payloads, k, ref, self.shard_timeout_s, doc_filter))
                targets.append((rows, i))
        results = await asyncio.gather(*calls, return_exceptions=True)
        out: list[list[Any]] = [[None] * len(self.retrievers[name].shards) for name, *_ in items]
        for (rows, shard), res in zip(targets, results):
            for j, i in enumerate(rows):
                out[i][shard] = res if isinstance(res, BaseException) else res[j]
        return out

    @contextmanager
    def request(self, searches: int = 1) -> Iterator[None]:
        """Marks one request's span of ``searches`` searches (the ingress wraps each; a batch request has several):
        while it is the only search, its scatters skip the batch queue; with others in flight, they are batched."""
        self._requests += searches
        try:
            yield
        finally:
            self._requests -= searches

    async def retrieve(self, name: str, payload: Any, k: int, ref: IndexRef,
                       doc_filter: str | None = None) -> tuple[Hits, list[str]]:
        """Scatter to every shard of version ``ref``, gather, merge → (top-``k`` hits, failed shard names);
        ``doc_filter``: a filter's canonical JSON (:mod:`retrec.index.filters`), applied by every shard."""
        item: ScatterItem = (name, payload, k, ref, doc_filter)
        # The only request in flight: nothing to batch with, so no batch queue (~0.3 ms); else batched with
        # what is ready (requests of one encoder batch arrive together).
        results = (await self.scatter([item]))[0] if self._requests <= 1 else await self.batch(item)
        parts, failed, backpressure, reasons = [], [], False, set()
        for i, res in enumerate(results):
            if isinstance(res, BaseException):
                shard = f"{name}-{i}"
                failed.append(shard)
                backpressure |= isinstance(res, BackPressureError)
                reasons.add(type(res).__name__)
                serving_metrics.METRICS.shard_failures.labels(retriever=name, shard=str(i)).inc()
                log.warning("shard %s failed: %s", shard, type(res).__name__)
            else:
                parts.append(res)
        if not parts:
            retry = {"Retry-After": str(self.retry_after_s)}
            if backpressure:
                raise ApiError(503, "overloaded", f"{name} shards busy; retry later", retry)
            raise ApiError(503, "unavailable", f"every {name} shard failed or timed out "
                           f"({', '.join(sorted(reasons))})", retry)
        return merge_hits(parts, k), failed


PROBE_QUERY = "retrec probe query"


async def probe_search(scatter: Scatter, encoders: dict[str, Any], widths: Any, name: str, ref: IndexRef) -> None:
    """One search of ``ref`` through the path requests take (the retriever's encoder, then every shard): a swap's
    last check before traffic moves. Raises ``ApiError`` naming the shards that failed."""
    spec = scatter.retrievers[name]
    payload: Any = PROBE_QUERY
    if spec.encoder is not None:
        payload, _ = await encoders[spec.encoder].encode(PROBE_QUERY)
        width = widths(name, ref)
        if width is not None:
            payload = payload[..., :width]
    _, failed = await scatter.retrieve(name, payload, 1, ref)
    if failed:
        raise ApiError(503, "swap_failed", f"the probe query failed on {', '.join(failed)}")
