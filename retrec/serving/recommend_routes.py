"""``/v1/recommend`` and ``/v1/recommend/batch``: the recommendation path of the ingress, as a mixin of its class
(the routes are declared on the ingress class; see :mod:`retrec.serving.search_routes`).

A request goes to the named recommender deployment (default: the first configured); a batch sends its histories
together (one response each, in order).

Example::

    curl -s localhost:8000/v1/recommend/batch -H 'content-type: application/json' -H 'X-API-Key: KEY' \\
         -d '{"histories": [["12", "7"], ["3"]], "k": 5}'
"""

# No ``from __future__ import annotations``: FastAPI reads the endpoint annotations at runtime.
import asyncio
import time
from typing import Any

from ray.serve.exceptions import BackPressureError

from retrec.serving import prometheus as serving_metrics
from retrec.serving.errors import ApiError
from retrec.serving.scatter import call_handle
from retrec.serving.schemas import (
    BatchRecommendRequest,
    BatchRecommendResponse,
    Item,
    RecommendOptions,
    RecommendRequest,
    RecommendResponse,
)


class RecommendRoutes:
    """The recommendation routes; the ingress provides ``cfg``, ``recommenders``, ``_known_models`` and
    ``_bounded``."""

    def _recommender(self, req: RecommendOptions) -> tuple[str, Any]:
        model = req.model or next(iter(self.recommenders), "")
        handle = self.recommenders.get(model)
        if handle is None:
            deployed = ", ".join(self.recommenders) or "none"
            if not self.recommenders:
                raise ApiError(400, "not_deployed", "no recommender is deployed in this application")
            if model in self._known_models:
                raise ApiError(400, "not_deployed", f"model {model!r} is not deployed in this application "
                               f"(deployed: {deployed})")
            raise ApiError(422, "unknown_model", f"unknown model {model!r}; available: {deployed}")
        return model, handle

    async def _recommend(self, req: RecommendOptions, history: list[str] | None,
                         user: str | None = None) -> RecommendResponse:
        started = time.perf_counter()
        model, handle = self._recommender(req)
        try:
            args = (history, req.k, req.exclude_seen) if user is None else ([], req.k, req.exclude_seen, user)
            try:
                extra = {"explain": True} if req.explain else {}
                out = await call_handle(handle.recommend.remote(*args, **extra), self.cfg.limits.request_timeout_s)
            except TypeError:  # a plugin kind's deployment without explain: the items alone
                if not req.explain:
                    raise
                out = await call_handle(handle.recommend.remote(*args), self.cfg.limits.request_timeout_s)
        except BackPressureError as exc:
            raise ApiError(503, "overloaded", f"recommender busy: {exc}",
                           {"Retry-After": str(self.cfg.limits.retry_after_s)}) from exc
        except TimeoutError as exc:
            raise ApiError(504, "timeout", "recommender timed out") from exc
        except Exception as exc:
            raise ApiError(503, "unavailable", f"recommender failed: {type(exc).__name__}") from exc
        if "error" in out:  # the recommender's own refusal: user histories not configured (403, as events)
            raise ApiError(403, out["error"]["code"], out["error"]["message"])
        return RecommendResponse(
            model=model, model_version=out["version"], skipped_unknown=out["skipped_unknown"],
            unknown_examples=out["unknown_examples"],
            items=[Item(item_id=i, score=s, rank=r, components=parts) for r, ((i, s), parts) in
                   enumerate(zip(out["items"], out.get("components") or [None] * len(out["items"])), start=1)],
            took_ms=round((time.perf_counter() - started) * 1000, 3))

    async def recommend_one(self, req: RecommendRequest) -> RecommendResponse:
        """``POST /v1/recommend``."""
        return await self._bounded(self._recommend(req, req.history, req.user))

    async def recommend_many(self, req: BatchRecommendRequest) -> BatchRecommendResponse:
        """``POST /v1/recommend/batch``: the histories' recommendations together, one response each, in order."""
        started = time.perf_counter()
        self._recommender(req)
        results = await self._bounded(asyncio.gather(*(self._recommend(req, h) for h in req.histories)))
        serving_metrics.METRICS.request_batch.labels(endpoint="recommend").observe(len(req.histories))
        return BatchRecommendResponse(results=results, took_ms=round((time.perf_counter() - started) * 1000, 3))
