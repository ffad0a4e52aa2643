"""Serving metrics, recorded once per event into Ray's metrics API and this replica's own registry.

**Monitoring** reads Ray's copy: :meth:`ServingMetrics.export_to_ray` (called by each ingress replica at start)
creates every metric with :mod:`ray.serve.metrics`, which tags each series with its ``deployment``,
``replica`` and ``application``; Ray's metrics agent on each node exports them on the node's metrics port
(``ray_`` prefixed, e.g. ``ray_retrec_requests_total``), scraped by ``k8s/podmonitor.yaml``. Sum over
``replica`` for cluster totals. ``GET /metrics`` answers the replica that received the scrape (unprefixed
names): a local view for debugging and benchmarks, not for monitoring — behind two ingress replicas its
counters jump between scrapes. Recording costs a few microseconds (one labelled child per label set, cached).

Example::

    m = ServingMetrics()
    m.export_to_ray()                      # inside a Serve replica
    m.requests.labels(endpoint="/v1/search", status="200").inc()
    m.render()                             # (bytes, content type) of this replica's registry
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from retrec.serving.middleware import route_path

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
_LOCAL = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}


class _Series:
    """One label set of a metric: the local child and, once exported, the Ray metric with its tags."""

    __slots__ = ("_local", "_ray", "_tags")

    def __init__(self, local: Any, ray_metric: Any, tags: dict[str, str]) -> None:
        self._local, self._ray, self._tags = local, ray_metric, tags

    def inc(self, value: float = 1.0) -> None:
        self._local.inc(value)
        if self._ray is not None:
            self._ray.inc(value, self._tags)

    def observe(self, value: float) -> None:
        self._local.observe(value)
        if self._ray is not None:
            self._ray.observe(value, self._tags)

    def set(self, value: float) -> None:
        self._local.set(value)
        if self._ray is not None:
            self._ray.set(value, self._tags)


class _Metric:
    """A metric under one name in both sinks; ``labels(**tags)`` → a cached :class:`_Series`."""

    def __init__(self, registry: CollectorRegistry, kind: str, name: str, doc: str, labels: tuple[str, ...] = (),
                 buckets: tuple[float, ...] | None = None) -> None:
        self.kind, self.name, self.doc, self.labelnames, self.buckets = kind, name, doc, labels, buckets
        extra = {"buckets": buckets} if buckets else {}
        self.local = _LOCAL[kind](name, doc, list(labels), registry=registry, **extra)
        self.ray: Any = None
        self._series: dict[tuple[str, ...], _Series] = {}

    def export_to_ray(self) -> None:
        from ray.serve import metrics as ray_metrics

        if self.kind == "histogram":
            self.ray = ray_metrics.Histogram(self.name, self.doc, boundaries=list(self.buckets or ()),
                                             tag_keys=self.labelnames)
        else:
            self.ray = getattr(ray_metrics, self.kind.capitalize())(self.name, self.doc, tag_keys=self.labelnames)
        self._series = {}

    def labels(self, **tags: str) -> _Series:
        key = tuple(tags[k] for k in self.labelnames)
        series = self._series.get(key)
        if series is None:
            local = self.local.labels(**tags) if self.labelnames else self.local
            series = self._series[key] = _Series(local, self.ray, dict(tags))
        return series

    def inc(self, value: float = 1.0) -> None:
        self.labels().inc(value)

    def observe(self, value: float) -> None:
        self.labels().observe(value)

    def remove(self, key: tuple[str, ...]) -> None:
        """Drop a label set from the local registry; Ray's series is set to 0 (Ray cannot remove one)."""
        series = self._series.pop(key, None)
        if series is not None and series._ray is not None:
            series._ray.set(0.0, series._tags)
        if key in self.local._metrics:
            self.local.remove(*key)


class ServingMetrics:
    """Every serving metric (see the metrics table in docs/serving.md)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = _Metric(r, "counter", "retrec_requests", "HTTP requests by endpoint and status",
                                ("endpoint", "status"))
        self.latency = _Metric(r, "histogram", "retrec_request_latency_seconds", "HTTP request latency",
                               ("endpoint",), LATENCY_BUCKETS)
        self.batch_size = _Metric(r, "histogram", "retrec_encoder_batch_size",
                                  "query-encoder batch size each request was in", (), BATCH_BUCKETS)
        self.shard_batch_size = _Metric(r, "histogram", "retrec_shard_batch_size", "queries per batched shard call",
                                        ("retriever",), BATCH_BUCKETS)
        self.request_batch = _Metric(r, "histogram", "retrec_request_batch_size",
                                     "queries or histories per batch request", ("endpoint",), BATCH_BUCKETS)
        self.shard_failures = _Metric(r, "counter", "retrec_shard_failures", "shard calls that failed or timed out",
                                      ("retriever", "shard"))
        self.partial = _Metric(r, "counter", "retrec_partial_responses", "search responses flagged partial")
        self.index_version = _Metric(r, "gauge", "retrec_index_version_info", "active index version (value 1)",
                                     ("retriever", "version"))
        self.swaps = _Metric(r, "counter", "retrec_index_swaps", "completed index version swaps", ("retriever",))

    def _metrics(self) -> list[_Metric]:
        return [m for m in vars(self).values() if isinstance(m, _Metric)]

    def names(self) -> list[str]:
        """The metric names (counters are exposed with ``_total``, histograms with ``_bucket/_sum/_count``)."""
        return [m.name for m in self._metrics()]

    def export_to_ray(self) -> None:
        """Also record into Ray's metrics API from now on (call inside the replica, once; idempotent)."""
        for m in self._metrics():
            if m.ray is None:
                m.export_to_ray()

    def set_version(self, retriever: str, version: str) -> None:
        """Mark ``version`` as the active one of ``retriever`` (older versions' series are removed / zeroed)."""
        gauge = self.index_version
        for key in {*gauge._series, *gauge.local._metrics}:  # (retriever, version) tuples
            if key[0] == retriever and key[1] != version:
                gauge.remove(key)
        gauge.labels(retriever=retriever, version=version).set(1)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class OnlineMetrics:
    """An online recommender replica's freshness (set on each poll of its delta folder, exported to Ray's metrics
    by the replica): the seq applied, and the staleness — seconds since the trainer published the delta held (it
    grows while the trainer publishes nothing: alert when it passes a few sync intervals)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.seq = _Metric(self.registry, "gauge", "retrec_online_seq", "online model: delta seq applied", ("model",))
        self.staleness = _Metric(self.registry, "gauge", "retrec_online_staleness_seconds",
                                 "online model: age of the newest delta applied", ("model",))

    def export_to_ray(self) -> None:
        for m in (self.seq, self.staleness):
            if m.ray is None:
                m.export_to_ray()

    def record(self, model: str, described: dict[str, Any]) -> None:
        """From :meth:`retrec.runtime.online_model.DeltaFollower.describe`."""
        self.seq.labels(model=model).set(float(described["seq"]))
        if described.get("last_delta_age_s") is not None:
            self.staleness.labels(model=model).set(float(described["last_delta_age_s"]))


METRICS = ServingMetrics()  # one per ingress replica process
ENDPOINTS = {"/v1/search", "/v1/search/batch", "/v1/recommend", "/v1/recommend/batch", "/v1/events", "/v1/models",
             "/v1/quality", "/v1/admin/indexes", "/healthz", "/readyz", "/metrics"}


class MetricsMiddleware:
    """Counts requests and observes latency per endpoint (unknown paths share one label)."""

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = route_path(scope)
        endpoint = path if path in ENDPOINTS else "other"
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
