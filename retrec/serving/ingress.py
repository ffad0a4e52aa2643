"""The HTTP ingress (FastAPI via ``@serve.ingress``): validation, scatter/gather over shards, fusion, swaps.

A search picks the active index version of each retriever when it starts, sends the query (BM25) or
its vector (dense) to every shard of that version, and merges the shard top-k lists deterministically.
A shard that fails or exceeds ``shard_timeout_s`` is dropped and the response says ``partial: true``;
when every shard fails the request fails fast with 503.

Dynamic batching, end to end: query vectors come from the ONNX encoder running in this replica
(``encoder.placement: ingress``, ``@serve.batch``) or from the ``QueryEncoder`` deployment; then the
shard scatter is batched too (``@serve.batch``, no added wait): the requests ready at the same moment
(e.g. one encoder batch) go to each shard as one ``search_many`` call per (retriever, index version, k),
so at high concurrency the deployment hops are paid per batch, not per request. ``encoder.max_batch_size``
bounds both; ``1`` makes every request its own ONNX call and its own call per shard.

Index versions swap atomically: ``POST /v1/admin/indexes`` (or a new ``user_config``) loads the new
version on every shard beside the old one, then flips the active reference; requests already running
finish on the version they started with, and every response names the versions it searched.

Example::

    curl -s localhost:8000/v1/search -H 'content-type: application/json' \\
         -d '{"query": "what causes scurvy", "k": 5, "retriever": "hybrid"}'
"""

# No ``from __future__ import annotations``: FastAPI reads the endpoint annotations at runtime.
import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Any

import numpy as np
from fastapi import FastAPI, Response
from ray import serve
from ray.serve.exceptions import BackPressureError

from retrec.bundle import BundleError
from retrec.index.faiss_index import check_encoder
from retrec.index.fusion import FUSIONS, merge_hits
from retrec.serving import metrics as serving_metrics
from retrec.serving import middleware as guard
from retrec.serving.config import ServingConfig
from retrec.serving.errors import ApiError, install_error_handlers
from retrec.serving.metrics import MetricsMiddleware
from retrec.serving.middleware import GuardMiddleware, load_api_keys
from retrec.serving.schemas import (
    RESERVED_RETRIEVERS,
    ErrorResponse,
    Hit,
    Item,
    RecommendRequest,
    RecommendResponse,
    SearchRequest,
    SearchResponse,
    SwapRequest,
)
from retrec.serving.shards import IndexRef, index_ref

log = logging.getLogger("retrec.serving")
# Ray pickles the deployment class by value, so process-wide state (metrics, guard settings) is reached
# through its module (``serving_metrics.METRICS``, ``guard.GUARD``), never through a copied global.
HYBRID = "hybrid"
KNOWN_RETRIEVERS = ("bm25", "dense", HYBRID)  # part of the API even when a config does not deploy them
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 413, 415, 422, 503, 504)
}
SCATTER_CONCURRENT_BATCHES = 8  # batched shard calls in flight per ingress replica (x max_batch_size <= max_ongoing)
# One shard query of the batched scatter: (retriever, query text or vector, k, index version).
ScatterItem = tuple[str, Any, int, IndexRef]


api = FastAPI(
    title="retrec serving API", version="1.0.0",
    description="Search (BM25, dense, hybrid) and sequential recommendation over versioned index bundles.",
)
install_error_handlers(api)
api.add_middleware(GuardMiddleware)
api.add_middleware(MetricsMiddleware)  # outermost: sees the guard's 401/413/415/503 too


async def _call(response: Any, timeout: float) -> Any:
    """Await a handle response, cancelling it after ``timeout`` seconds."""
    try:
        return await asyncio.wait_for(response, timeout)
    except TimeoutError:
        response.cancel()
        raise


class _RemoteEncoder:
    """The ``QueryEncoder`` deployment behind the same two calls as :class:`BatchingEncoder`."""

    def __init__(self, handle: Any, timeout_s: float) -> None:
        self.handle, self.timeout_s = handle, timeout_s

    async def encode(self, text: str) -> tuple[np.ndarray, int]:
        return await _call(self.handle.encode.remote(text), self.timeout_s)

    async def info(self) -> dict[str, Any]:
        return await _call(self.handle.info.remote(), 30.0)


class _LocalEncoder:
    """A :class:`BatchingEncoder` inside this ingress replica (``encoder.placement: ingress``)."""

    def __init__(self, bundle: str, kwargs: dict[str, Any], timeout_s: float) -> None:
        from retrec.serving.encoders import BatchingEncoder

        self.batcher, self.timeout_s = BatchingEncoder(bundle, **kwargs), timeout_s
        self.batcher.encode_now(["warm up"])  # first ONNX run allocates; keep it out of the first request

    async def encode(self, text: str) -> tuple[np.ndarray, int]:
        return await asyncio.wait_for(self.batcher.encode(text), self.timeout_s)

    async def info(self) -> dict[str, Any]:
        return self.batcher.info()


@serve.deployment
@serve.ingress(api)
class Ingress:
    """Routes ``/v1`` requests to shard and recommender deployments (handles given by ``build_app``); encodes
    queries in-process or through the ``QueryEncoder`` deployment (``encoder.placement``)."""

    def __init__(self, config: dict[str, Any], retrievers: dict[str, dict[str, Any]],
                 encoder: dict[str, Any] | None, recommenders: dict[str, Any]) -> None:
        self.cfg = ServingConfig.model_validate(config)
        limits = self.cfg.limits
        guard.GUARD.configure(max_body_bytes=limits.max_body_bytes, max_inflight=limits.max_inflight,
                        retry_after_s=limits.retry_after_s, api_keys=load_api_keys(self.cfg.auth))
        # retrievers: name -> {"input": "text" | "vector", "kind": bundle kind, "shards": [handles], "ref": IndexRef}
        self.retrievers = retrievers
        self.active: dict[str, IndexRef] = {name: r["ref"] for name, r in retrievers.items()}
        # encoder: {"placement": "ingress", "bundle", "kwargs"} | {"placement": "deployment", "handle"} | None
        self.encoder: _LocalEncoder | _RemoteEncoder | None = None
        if encoder is not None and encoder["placement"] == "ingress":
            self.encoder = _LocalEncoder(encoder["bundle"], encoder["kwargs"], limits.encoder_timeout_s)
        elif encoder is not None:
            self.encoder = _RemoteEncoder(encoder["handle"], limits.encoder_timeout_s)
        self._scatter_batch.set_max_batch_size(self.cfg.encoder.max_batch_size)
        self._scatter_batch.set_batch_wait_timeout_s(0.0)  # batch what is ready; never wait for more
        self.recommenders = recommenders
        self._swap_lock = asyncio.Lock()
        self._encoder_info: dict[str, Any] | None = None
        self._model_info: dict[str, dict[str, Any]] = {}
        for name, ref in self.active.items():
            serving_metrics.METRICS.set_version(name, ref["version"])

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """``user_config: {"indexes": {retriever: path}}`` swaps to those index versions (see ``swap``)."""
        for name, path in (user_config or {}).get("indexes", {}).items():
            await self.swap(name, path)

    # ---- searching -------------------------------------------------------------------------------------
    async def _encode(self, query: str) -> Any:
        if self.encoder is None:
            raise ApiError(503, "unavailable", "no query encoder deployed")
        try:
            vector, batch = await self.encoder.encode(query)
        except BackPressureError as exc:
            raise ApiError(503, "overloaded", f"query encoder busy: {exc}",
                           {"Retry-After": str(self.cfg.limits.retry_after_s)}) from exc
        except Exception as exc:
            raise ApiError(503, "unavailable", f"query encoder failed: {type(exc).__name__}") from exc
        serving_metrics.METRICS.batch_size.observe(batch)
        return vector

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0, max_concurrent_batches=SCATTER_CONCURRENT_BATCHES)
    async def _scatter_batch(self, items: list[ScatterItem]) -> list[list[Any]]:
        """Per item, every shard's hits (or the exception of its shard call), as one call per shard and group.

        A group is the items of one retriever, index version and ``k``: its shards get one ``search_many``.
        """
        groups: dict[tuple[str, str, str, int], list[int]] = {}
        for i, (name, _, k, ref) in enumerate(items):
            groups.setdefault((name, ref["version"], ref["path"], k), []).append(i)
        timeout = self.cfg.limits.shard_timeout_s
        calls, targets = [], []
        for (name, _, _, k), rows in groups.items():
            spec, ref = self.retrievers[name], items[rows[0]][3]
            payloads: Any = [items[i][1] for i in rows]
            if spec["input"] == "vector":
                payloads = np.stack(payloads).astype(np.float32, copy=False)
            serving_metrics.METRICS.shard_batch_size.labels(retriever=name).observe(len(rows))
            for shard, handle in enumerate(spec["shards"]):
                calls.append(_call(handle.search_many.remote(payloads, k, ref), timeout))
                targets.append((rows, shard))
        results = await asyncio.gather(*calls, return_exceptions=True)
        out: list[list[Any]] = [[None] * len(self.retrievers[name]["shards"]) for name, *_ in items]
        for (rows, shard), res in zip(targets, results):
            for j, i in enumerate(rows):
                out[i][shard] = res if isinstance(res, BaseException) else res[j]
        return out

    async def _retrieve(self, name: str, query: str, k: int, vector: asyncio.Task | None) -> tuple[list, str, list]:
        """Scatter to every shard of the active version, gather, merge → (hits, version, failed shards)."""
        spec, ref = self.retrievers[name], self.active[name]
        payload: Any = query if spec["input"] == "text" else await vector  # type: ignore[misc]
        results = await self._scatter_batch((name, payload, k, ref))
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
            if backpressure:
                raise ApiError(503, "overloaded", f"{name} shards busy; retry later",
                               {"Retry-After": str(self.cfg.limits.retry_after_s)})
            raise ApiError(503, "unavailable", f"every {name} shard failed or timed out "
                           f"({', '.join(sorted(reasons))})", {"Retry-After": str(self.cfg.limits.retry_after_s)})
        return merge_hits(parts, k), ref["version"], failed

    async def _search(self, req: SearchRequest) -> SearchResponse:
        started = time.perf_counter()
        name = req.retriever
        if name in RESERVED_RETRIEVERS or (name in KNOWN_RETRIEVERS and name not in self.available()):
            raise ApiError(400, "not_deployed", f"retriever {name!r} is not deployed in this application "
                           f"(deployed: {', '.join(self.available())})")
        if name != HYBRID and name not in self.retrievers:
            raise ApiError(422, "unknown_retriever", f"unknown retriever {name!r}; available: "
                           f"{', '.join(self.available())}")
        names = list(self.retrievers) if name == HYBRID else [name]
        if name == HYBRID and len(names) < 2:
            raise ApiError(400, "not_deployed", "hybrid needs at least two deployed retrievers "
                           f"(deployed: {', '.join(self.retrievers)})")
        if name == HYBRID and req.fusion.weights:
            unknown = sorted(set(req.fusion.weights) - set(names))
            if unknown:
                raise ApiError(422, "invalid_request", f"fusion.weights names unknown retrievers {unknown}")
        depth = max(req.k, req.fusion.depth) if name == HYBRID else req.k
        vector = None
        if any(self.retrievers[n]["input"] == "vector" for n in names):
            vector = asyncio.ensure_future(self._encode(req.query))
        outcomes = await asyncio.gather(*(self._retrieve(n, req.query, depth, vector) for n in names),
                                        return_exceptions=True)
        rankings, versions, failed = {}, {}, []
        for n, out in zip(names, outcomes):
            if isinstance(out, BaseException):
                if not isinstance(out, ApiError) or len(names) == 1:
                    raise out
                failed.append(n)
                continue
            rankings[n], versions[n], shard_failures = out
            failed += shard_failures
        if not rankings:
            raise ApiError(503, "unavailable", f"every retriever failed: {', '.join(failed)}")
        if name == HYBRID:
            fuse = FUSIONS[req.fusion.method]
            kwargs = {"rrf_k": req.fusion.rrf_k} if req.fusion.method == "rrf" else {}
            hits = fuse(rankings, req.k, weights=req.fusion.weights, **kwargs)
        else:
            hits = rankings[name]
        if failed:
            serving_metrics.METRICS.partial.inc()
        return SearchResponse(
            retriever=name, index_versions=versions, partial=bool(failed), failed_shards=failed,
            hits=[Hit(doc_id=d, score=s, rank=i) for i, (d, s) in enumerate(hits, start=1)],
            took_ms=round((time.perf_counter() - started) * 1000, 3))

    def available(self) -> list[str]:
        return [*self.retrievers, *([HYBRID] if len(self.retrievers) > 1 else [])]

    async def _bounded(self, work: Awaitable[Any]) -> Any:
        try:
            return await asyncio.wait_for(work, self.cfg.limits.request_timeout_s)
        except TimeoutError as exc:
            raise ApiError(504, "timeout", f"request exceeded {self.cfg.limits.request_timeout_s} s") from exc

    @api.post("/v1/search", response_model=SearchResponse, responses=_ERRORS)
    async def search(self, req: SearchRequest) -> SearchResponse:
        """Top-k documents for a query: ``bm25``, ``dense`` or ``hybrid`` (fused), with the index versions used."""
        return await self._bounded(self._search(req))

    # ---- recommending ----------------------------------------------------------------------------------
    async def _recommend(self, req: RecommendRequest) -> RecommendResponse:
        started = time.perf_counter()
        handle = self.recommenders.get(req.model)
        if handle is None:
            raise ApiError(422, "unknown_model", f"unknown model {req.model!r}; available: "
                           f"{', '.join(sorted(self.recommenders)) or 'none'}")
        try:
            out = await _call(handle.recommend.remote(req.history, req.k, req.exclude_seen),
                              self.cfg.limits.request_timeout_s)
        except BackPressureError as exc:
            raise ApiError(503, "overloaded", f"recommender busy: {exc}",
                           {"Retry-After": str(self.cfg.limits.retry_after_s)}) from exc
        except TimeoutError as exc:
            raise ApiError(504, "timeout", "recommender timed out") from exc
        except Exception as exc:
            raise ApiError(503, "unavailable", f"recommender failed: {type(exc).__name__}") from exc
        return RecommendResponse(
            model=req.model, model_version=out["version"], skipped_unknown=out["skipped_unknown"],
            unknown_examples=out["unknown_examples"],
            items=[Item(item_id=i, score=s, rank=r) for r, (i, s) in enumerate(out["items"], start=1)],
            took_ms=round((time.perf_counter() - started) * 1000, 3))

    @api.post("/v1/recommend", response_model=RecommendResponse, responses=_ERRORS)
    async def recommend(self, req: RecommendRequest) -> RecommendResponse:
        """Next items for a history of raw item ids; unknown ids are skipped and counted."""
        return await self._bounded(self._recommend(req))

    # ---- index versions --------------------------------------------------------------------------------
    async def swap(self, name: str, path: str) -> dict[str, Any]:
        """Load the index version at ``path`` on every shard of ``name``, then make it the active one."""
        if name not in self.retrievers:
            raise ApiError(422, "unknown_retriever", f"retriever {name!r} is not deployed")
        spec = self.retrievers[name]
        resolved = self.cfg.resolve(path)
        try:
            ref = index_ref(resolved)
        except BundleError as exc:
            raise ApiError(400, "bad_bundle", str(exc)) from exc
        if ref["kind"] != spec["kind"]:
            raise ApiError(400, "bad_bundle", f"{resolved}: kind {ref['kind']!r}, {name} needs {spec['kind']!r}")
        if spec["kind"] == "index/dense":
            from retrec.bundle import read_manifest

            manifest = read_manifest(resolved)
            if int(manifest.config["shards"]) != len(spec["shards"]):
                raise ApiError(400, "bad_bundle", f"{resolved}: {manifest.config['shards']} shards, this "
                               f"deployment has {len(spec['shards'])}; redeploy to change the shard count")
            enc = manifest.config.get("encoder") or {}
            try:
                check_encoder({"dim": manifest.dims["dim"], "similarity": manifest.config["similarity"],
                               "encoder_name": enc.get("name"), "encoder_version": enc.get("version")},
                              await self.encoder_info(), where=resolved)
            except BundleError as exc:
                raise ApiError(400, "bad_bundle", str(exc)) from exc
        async with self._swap_lock:
            previous = self.active[name]
            if previous["version"] == ref["version"] and previous["path"] == ref["path"]:
                return {"retriever": name, "version": ref["version"], "previous": previous["version"]}
            try:
                await asyncio.gather(*(h.load.remote(ref) for h in spec["shards"]))
            except Exception as exc:
                raise ApiError(503, "swap_failed", f"loading {resolved} failed on a shard ({exc}); "
                               f"still serving {previous['version']}") from exc
            self.active = {**self.active, name: ref}  # the flip: new requests see the new version
            serving_metrics.METRICS.set_version(name, ref["version"])
            serving_metrics.METRICS.swaps.labels(retriever=name).inc()
            log.info("retriever %s: index version %s -> %s", name, previous["version"], ref["version"])
        return {"retriever": name, "version": ref["version"], "previous": previous["version"]}

    @api.post("/v1/admin/indexes", responses=_ERRORS)
    async def admin_swap(self, req: SwapRequest) -> dict[str, Any]:
        """Swap a retriever to a published index version (every shard loads it first; then traffic moves)."""
        if not self.cfg.admin:
            raise ApiError(403, "forbidden", "admin endpoints are disabled (admin: false)")
        return await self.swap(req.retriever, req.path)

    # ---- introspection ---------------------------------------------------------------------------------
    async def encoder_info(self) -> dict[str, Any]:
        if self._encoder_info is None and self.encoder is not None:
            self._encoder_info = {**await self.encoder.info(), "placement": self.cfg.encoder.placement}
        return self._encoder_info or {}

    @api.get("/v1/models")
    async def models(self) -> dict[str, Any]:
        """Versions loaded: index version per retriever, the encoder bundle, recommender bundles."""
        for name, handle in self.recommenders.items():
            if name not in self._model_info:
                try:
                    self._model_info[name] = await _call(handle.info.remote(), 5.0)
                except Exception as exc:
                    raise ApiError(503, "unavailable", f"recommender {name} failed: {type(exc).__name__}") from exc
        retrievers = {name: {"index_version": ref["version"], "index_path": ref["path"], "kind": ref["kind"],
                             "shards": len(self.retrievers[name]["shards"])} for name, ref in self.active.items()}
        return {"retrievers": retrievers, "hybrid": len(retrievers) > 1, "reserved": list(RESERVED_RETRIEVERS),
                "encoder": await self.encoder_info() if self.encoder is not None else None,
                "recommenders": self._model_info}

    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        """Liveness: the ingress answers."""
        return {"status": "ok"}

    @api.get("/readyz", responses=_ERRORS)
    async def readyz(self) -> Any:
        """Readiness: every shard has the active index version loaded (and the encoder answers)."""
        checks: dict[str, bool] = {}

        async def shard_ok(handle: Any, version: str) -> bool:
            try:
                return version in await _call(handle.versions.remote(), 2.0)
            except Exception:
                return False

        for name, spec in self.retrievers.items():
            version = self.active[name]["version"]
            oks = await asyncio.gather(*(shard_ok(h, version) for h in spec["shards"]))
            checks.update({f"{name}-{i}": ok for i, ok in enumerate(oks)})
        if self.encoder is not None:
            try:
                await asyncio.wait_for(self.encoder.info(), 2.0)
                checks["encoder"] = True
            except Exception:
                checks["encoder"] = False
        ready = all(checks.values())
        if not ready:
            raise ApiError(503, "not_ready", "not ready: " + ", ".join(k for k, ok in checks.items() if not ok))
        return {"status": "ready", "checks": checks}

    @api.get("/metrics")
    async def metrics(self) -> Response:
        """Prometheus text: requests, latency, encoder batch sizes, shard failures, index versions."""
        body, ctype = serving_metrics.METRICS.render()
        return Response(content=body, media_type=ctype)
