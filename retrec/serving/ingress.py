"""The HTTP ingress (FastAPI via ``@serve.ingress``): the routes, the replica's state, events, admin swaps,
introspection.

The search and recommendation code lives in mixins (:mod:`retrec.serving.search_routes`,
:mod:`retrec.serving.recommend_routes`); their routes are declared here, on the one app
(:mod:`retrec.serving.http_api`), with the console's pages (:mod:`retrec.serving.console`). A search picks the
active index version of each retriever when it starts (:mod:`retrec.serving.versions`), encodes the query once per
distinct query encoder the chosen retrievers need (encoders are keyed by their bundle;
:mod:`retrec.serving.placement`), sends each retriever its payload — the query text, or its encoder's output —
through the batched scatter (:mod:`retrec.serving.scatter`) and fuses retrievers for ``hybrid``
(:mod:`retrec.index.fusion`). A shard that fails or times out makes the response ``partial``. Recommendations go to
the named recommender deployment. Names: the configured retriever / recommender names; a registered kind's eval name
that this application does not deploy is a 400 ``not_deployed``, any other unknown name a 422.

Dynamic batching, end to end: query payloads come from encoders with their own ``@serve.batch`` queues; the shard
scatter is batched too, so the requests ready together go to each shard as one call. ``encoder.max_batch_size``
bounds both; ``1`` makes every request its own encoder call and shard call.

Example::

    curl -s localhost:8000/v1/search -H 'content-type: application/json' \\
         -d '{"query": "what causes scurvy", "k": 5, "retriever": "hybrid"}'
"""

# No ``from __future__ import annotations``: FastAPI reads the endpoint annotations at runtime.
import asyncio
import functools
import logging
from collections.abc import Awaitable
from typing import Any

from fastapi import Response
from fastapi.responses import JSONResponse, PlainTextResponse
from ray import serve

from retrec.bundle import read_manifest
from retrec.index.generic import metadata_fields
from retrec.serving import middleware as guard
from retrec.serving import prometheus as serving_metrics
from retrec.serving import schemas
from retrec.serving.admin import bundle_under_root, check_trusted, shown, shown_path
from retrec.serving.config import ServingConfig
from retrec.serving.console import routes as _console_routes  # noqa: F401  (registers /ui on api)
from retrec.serving.documents import DocumentFields
from retrec.serving.errors import ApiError
from retrec.serving.events import EventIntake
from retrec.serving.http_api import ADMIN_ERRORS, ERRORS, JSON_BODY, api
from retrec.serving.middleware import guard_settings
from retrec.serving.placement import LocalEncoder, RemoteEncoder, make_encoder, retriever_spec
from retrec.serving.readiness import ReadinessCache, any_of_each, encoders_answer
from retrec.serving.recommend_routes import RecommendRoutes
from retrec.serving.recommenders import model_info
from retrec.serving.registry import recommender_names, retriever_names
from retrec.serving.rollout import ServeRollout
from retrec.serving.scatter import Scatter, probe_search
from retrec.serving.schemas import (
    HYBRID,
    BatchRecommendRequest,
    BatchRecommendResponse,
    BatchSearchRequest,
    BatchSearchResponse,
    EventsRequest,
    EventsResponse,
    QualityRequest,
    QualityResponse,
    RecommendRequest,
    RecommendResponse,
    SearchRequest,
    SearchResponse,
    SwapRequest,
)
from retrec.serving.search_routes import SearchRoutes
from retrec.serving.swaps import SWAP_ID, RayLedger, new_swap_id
from retrec.serving.versions import IndexVersions

__all__ = ["Ingress", "api"]
log = logging.getLogger("retrec.serving")
# Ray pickles the deployment class by value, so process-wide state (metrics, guard settings, published names)
# is reached through its module (``serving_metrics.METRICS``, ``guard.GUARD``, ``schemas.PUBLISHED``).


@serve.deployment
@serve.ingress(api)
class Ingress(SearchRoutes, RecommendRoutes):
    """Routes ``/v1`` requests to shard and recommender deployments (handles given by ``build_app``); encodes
    queries with one encoder per encoder bundle, in-process or through ``QueryEncoder`` deployments."""

    def __init__(self, config: dict[str, Any], retrievers: dict[str, dict[str, Any]],
                 encoders: dict[str, dict[str, Any]], recommenders: dict[str, Any], reranker: Any = None) -> None:
        self.cfg = ServingConfig.model_validate(config)
        serving_metrics.METRICS.export_to_ray()  # inside the replica: series tagged with its deployment/replica
        limits = self.cfg.limits
        guard.GUARD.configure(**guard_settings(self.cfg),  # fails closed: keys mode without keys does not start
                              reload=functools.partial(guard.reloaded_keys, self.cfg))
        if self.cfg.auth.mode == "none":
            log.warning("auth.mode is 'none': every endpoint answers without an API key")
        # retrievers: name -> {"kind", "payload", "shards": [handles], "ref": IndexRef, "encoder": bundle | None}
        self.retrievers = {name: retriever_spec(name, r) for name, r in retrievers.items()}
        # encoders: bundle path -> {"placement": "ingress", "bundle", "kwargs"} | {"placement": "deployment", ...}
        self.encoders: dict[str, LocalEncoder | RemoteEncoder] = {
            key: make_encoder(spec, limits.encoder_timeout_s) for key, spec in encoders.items()}
        self.scatter = Scatter(self.retrievers, shard_timeout_s=limits.shard_timeout_s,
                               retry_after_s=limits.retry_after_s, max_batch_size=self.cfg.encoder.max_batch_size)
        self.versions = IndexVersions(self.retrievers, {name: r["ref"] for name, r in retrievers.items()},
                                      {key: read_manifest(key) for key in encoders}, self.cfg.resolve,
                                      publish=ServeRollout().publish, ledger=RayLedger(),
                                      drain_s=limits.swap_drain_s)
        self.versions.probe = functools.partial(probe_search, self.scatter, self.encoders, self.versions.query_width)
        self.recommenders = recommenders
        self.reranker = reranker  # a Reranker deployment handle (rerank: in the config), else None
        self.documents = DocumentFields()  # hits' stored fields ("return"), read on first use
        self.events = EventIntake(self.cfg) if self.cfg.events.log else None
        # Resolved once: what each search name needs (no registry or config lookups per request).
        names = list(self.retrievers)
        self._targets: dict[str, list[str]] = {name: [name] for name in names}
        if len(names) > 1:
            self._targets[HYBRID] = names
        self._encoders_for = {name: list(dict.fromkeys(self.retrievers[n].encoder for n in targets
                                                       if self.retrievers[n].encoder is not None))
                              for name, targets in self._targets.items()}
        self._known_retrievers = frozenset([*retriever_names(), HYBRID])
        self._known_models = frozenset(recommender_names())
        self._encoder_info: dict[str, dict[str, Any]] = {}
        self._model_info: dict[str, dict[str, Any]] = {}
        schemas.PUBLISHED.retrievers = list(self._targets)
        schemas.PUBLISHED.swappable = names
        fields = [set(metadata_fields(r["ref"]["path"]) or ()) for r in retrievers.values()]
        schemas.PUBLISHED.filter_fields = sorted(set.intersection(*fields)) if fields else []
        schemas.PUBLISHED.recommenders = list(recommenders)
        schemas.PUBLISHED.rerank = reranker is not None
        # Ready while each retriever has a shard answering (the others' loss: partial results, /readyz degraded).
        shard_checks = {name: [f"{name}-{i}" for i in range(len(spec.shards))]
                        for name, spec in self.retrievers.items()}
        self.readiness = ReadinessCache(self._readiness_checks, period_s=1.0, verdict=any_of_each(shard_checks))
        self.readiness.start()  # on the replica's loop when there is one; else with the first probe

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """``user_config: {"indexes": {retriever: path}}``: those index versions are the active ones on this
        replica (every shard replica loads them first); Serve applies it to every ingress replica, and again
        to each one it restarts (see :mod:`retrec.serving.versions`)."""
        user_config = user_config or {}
        await self.versions.apply(user_config.get("indexes") or {}, user_config.get("digests"))

    def check_health(self) -> None:
        """Serve's health check: a replica that could not load an index version the other ingress replicas
        flipped to (in-ingress shards; :mod:`retrec.serving.versions`) fails it, and Serve replaces it with one
        that loads the published version before it takes traffic."""
        self.versions.raise_if_stale()

    def available(self) -> list[str]:
        return list(self._targets)

    async def _bounded(self, work: Awaitable[Any]) -> Any:
        try:
            return await asyncio.wait_for(work, self.cfg.limits.request_timeout_s)
        except TimeoutError as exc:
            raise ApiError(504, "timeout", f"request exceeded {self.cfg.limits.request_timeout_s} s") from exc

    # ---- search and recommendation (their code: search_routes.py, recommend_routes.py) --------------------
    @api.post("/v1/search", response_model=SearchResponse, responses=ERRORS, dependencies=JSON_BODY)
    async def search(self, req: SearchRequest) -> SearchResponse:
        """Top-k documents for a query from a deployed retriever or ``hybrid`` (fused), with the versions used;
        ``offset`` pages, ``return`` adds stored document fields, ``timings`` per-stage times."""
        return await self.search_one(req)

    @api.post("/v1/search/batch", response_model=BatchSearchResponse, responses=ERRORS, dependencies=JSON_BODY)
    async def search_batch(self, req: BatchSearchRequest) -> BatchSearchResponse:
        """Several queries with the same options: one search response each, in the order of ``queries`` (any
        query's error fails the batch)."""
        return await self.search_many(req)

    @api.post("/v1/quality", response_model=QualityResponse, responses=ERRORS, dependencies=JSON_BODY)
    async def quality(self, req: QualityRequest) -> QualityResponse:
        """Recall@k of a retriever's search against its exact search, with both latencies, on a sample of its
        documents' texts as queries (the console's quality panel)."""
        return await self._bounded(self.quality_check(req))

    @api.post("/v1/recommend", response_model=RecommendResponse, responses=ERRORS, dependencies=JSON_BODY)
    async def recommend(self, req: RecommendRequest) -> RecommendResponse:
        """Next items for a history of raw item ids (or a ``user`` the event log knows); unknown ids are skipped
        and counted."""
        return await self.recommend_one(req)

    @api.post("/v1/recommend/batch", response_model=BatchRecommendResponse, responses=ERRORS,
              dependencies=JSON_BODY)
    async def recommend_batch(self, req: BatchRecommendRequest) -> BatchRecommendResponse:
        """Several histories with the same options: one response each, in the order of ``histories`` (any
        history's error fails the batch)."""
        return await self.recommend_many(req)

    # ---- index versions --------------------------------------------------------------------------------
    @api.post("/v1/events", response_model=EventsResponse, responses=ERRORS, dependencies=JSON_BODY)
    async def post_events(self, req: EventsRequest) -> EventsResponse:
        """Append user actions to the event log, all or none (403 when no ``events.log`` is configured)."""
        if self.events is None:
            raise ApiError(403, "forbidden", "events are not taken here (events.log is not configured)")
        return EventsResponse(**await self._bounded(self.events.append(req.events)))

    async def swap(self, name: str, path: str) -> dict[str, Any]:
        """Load the index version at ``path`` (an operator's path: the config's resolution) on every shard of
        ``name``, then make it the active one."""
        return await self.versions.swap(name, self.cfg.resolve(path), label=path)

    @api.post("/v1/admin/indexes", responses={**ADMIN_ERRORS, 202: {"description": "still running: poll "
                                                                        "/v1/admin/swaps/{swap_id}"}},
              dependencies=JSON_BODY)
    async def admin_swap(self, req: SwapRequest) -> Any:
        """Swap a retriever to a published index version named relative to ``admin.models_root`` (every shard
        loads it first; then traffic moves). Needs an admin key; off unless ``admin.enabled``. A swap slower than
        ``limits.swap_timeout_s`` answers 202 with its ``swap_id`` and goes on to the end (a 200 names it in
        ``X-Swap-Id``)."""
        self._admin_enabled()
        if req.retriever not in self.retrievers:
            raise ApiError(422, "unknown_retriever", f"retriever {req.retriever!r} is not deployed")
        path = bundle_under_root(self.cfg.resolve(self.cfg.admin.models_root or ""), req.path)
        check_trusted(self.cfg, path, req.path)
        swap_id, timeout = new_swap_id(), self.cfg.limits.swap_timeout_s
        task = asyncio.ensure_future(self.versions.swap(req.retriever, path, label=shown(req.path), swap_id=swap_id))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # a late failure: in its record and log
        try:
            done = await asyncio.wait_for(asyncio.shield(task), timeout)
            return JSONResponse(content=done, headers={"X-Swap-Id": swap_id})
        except TimeoutError:  # the swap goes on; its record says how it ends
            return JSONResponse(status_code=202, content={
                "swap_id": swap_id, "status": "pending", "retriever": req.retriever,
                "status_url": f"/v1/admin/swaps/{swap_id}",
                "message": f"index swap not finished within {timeout:g} s (limits.swap_timeout_s); it goes on"})

    @api.get("/v1/admin/swaps/{swap_id}", responses=ADMIN_ERRORS)
    async def admin_swap_status(self, swap_id: str) -> dict[str, Any]:
        """How a swap went: ``pending``, ``done`` (its version and the previous one) or ``failed`` (its error),
        from any ingress replica."""
        self._admin_enabled()
        found = await self.versions.ledger.get(swap_id) if SWAP_ID.match(swap_id) else None
        if found is None:
            raise ApiError(404, "unknown_swap", "no swap with this id (ids are 32 hex digits; the last 1000 swaps "
                           "are kept)")
        return found

    @api.get("/v1/admin/swaps", responses=ADMIN_ERRORS)
    async def admin_swaps(self) -> dict[str, Any]:
        """The application's last swaps, newest first (their ``swap_id``, retriever, status, versions)."""
        self._admin_enabled()
        return {"swaps": await self.versions.ledger.recent()}

    def _admin_enabled(self) -> None:
        if not self.cfg.admin.enabled or self.cfg.admin.models_root is None:
            raise ApiError(403, "forbidden", "admin endpoints are disabled (admin.enabled: false)")

    # ---- introspection ---------------------------------------------------------------------------------
    async def encoder_info(self) -> dict[str, dict[str, Any]]:
        """Per encoder bundle: its kind, name, version, dim, how it runs, and its placement."""
        for key, encoder in self.encoders.items():
            if key not in self._encoder_info:
                self._encoder_info[key] = {**await encoder.info(), "bundle": key, "placement": encoder.placement}
        return self._encoder_info

    @api.get("/v1/models")
    async def models(self) -> dict[str, Any]:
        """Versions loaded: index version per retriever, the encoder bundles, recommender bundles."""
        for name, handle in self.recommenders.items():
            self._model_info[name] = await model_info(name, handle, self._model_info.get(name))
        root = self.cfg.resolve(self.cfg.admin.models_root) if self.cfg.admin.models_root else None
        show = functools.partial(shown_path, root=root)  # relative to the models root: no server paths
        retrievers = {n: {**d, "index_path": show(d["index_path"]), "encoder": show(d["encoder"])}
                      for n, d in self.versions.describe().items()}
        encoders = {show(k): {**v, "bundle": show(k)} for k, v in (await self.encoder_info()).items()}
        return {"retrievers": retrievers, "hybrid": HYBRID in self._targets, "rerank": self.reranker is not None,
                "encoders": encoders, "recommenders": self._model_info,
                "registered": {"retrievers": retriever_names(), "recommenders": recommender_names()},
                **({"events": self.events.describe()} if self.events else {})}

    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        """Liveness of this replica: it answers (no other call; never shed by the guard)."""
        return {"status": "ok"}

    async def _readiness_checks(self) -> dict[str, bool]:
        """Every shard has its retriever's active version loaded; every encoder answers (run in the background).
        Encoders are named by their bundle's name (``/readyz`` answers without a key: no filesystem path)."""
        return {**await self.versions.readiness(), **await encoders_answer(self.encoders, self.versions.encoders)}

    @api.get("/readyz", responses=ERRORS)
    async def readyz(self) -> Any:
        """Readiness from the cache that a background task refreshes every second (a probe never fans out):
        ``degraded`` (200) while some shards are down but each retriever has one answering (partial results)."""
        ready, checks = self.readiness.answer()
        down = [k for k, ok in checks.items() if ok is False]
        if not ready:
            reason = checks.get("reason") or ", ".join(down)
            raise ApiError(503, "not_ready", f"not ready: {reason}")
        if down:
            return {"status": "degraded", "checks": checks, "unavailable": down}
        return {"status": "ready", "checks": checks}

    @api.get("/metrics", response_class=PlainTextResponse)
    async def metrics(self) -> Response:
        """Prometheus text: requests, latency, encoder batch sizes, shard failures, index versions."""
        body, ctype = serving_metrics.METRICS.render()
        return Response(content=body, media_type=ctype)
