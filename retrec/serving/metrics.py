"""Prometheus metrics of one ingress replica (own registry, text format at ``GET /metrics``).

Example::

    m = ServingMetrics()
    m.requests.labels(endpoint="/v1/search", status="200").inc()
    m.render()      # (bytes, content type)
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServingMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("retrec_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("retrec_request_latency_seconds", "HTTP request latency",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("retrec_encoder_batch_size", "query-encoder batch size each request was in",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.shard_batch_size = Histogram("retrec_shard_batch_size", "queries per batched shard call",
                                          ["retriever"], buckets=BATCH_BUCKETS, registry=self.registry)
        self.shard_failures = Counter("retrec_shard_failures", "shard calls that failed or timed out",
                                      ["retriever", "shard"], registry=self.registry)
        self.partial = Counter("retrec_partial_responses", "search responses flagged partial",
                               registry=self.registry)
        self.index_version = Gauge("retrec_index_version_info", "active index version (value 1)",
                                   ["retriever", "version"], registry=self.registry)
        self.swaps = Counter("retrec_index_swaps", "completed index version swaps", ["retriever"],
                             registry=self.registry)

    def set_version(self, retriever: str, version: str) -> None:
        """Mark ``version`` as the active one of ``retriever`` (older labels are removed)."""
        for labels in list(self.index_version._metrics):  # (retriever, version) tuples
            if labels[0] == retriever:
                self.index_version.remove(*labels)
        self.index_version.labels(retriever=retriever, version=version).set(1)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


METRICS = ServingMetrics()  # one per ingress replica process
ENDPOINTS = {"/v1/search", "/v1/recommend", "/v1/models", "/v1/admin/indexes", "/healthz", "/readyz", "/metrics"}


class MetricsMiddleware:
    """Counts requests and observes latency per endpoint (unknown paths share one label)."""

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = scope.get("path", "") if scope.get("path", "") in ENDPOINTS else "other"
        status = {"code": 500}

        async def capture(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, capture)
        finally:
            METRICS.requests.labels(endpoint=endpoint, status=str(status["code"])).inc()
            METRICS.latency.labels(endpoint=endpoint).observe(time.perf_counter() - started)
