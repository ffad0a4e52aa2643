"""``/v1/search`` and ``/v1/search/batch``: the search path of the ingress, as a mixin of its class.

The routes themselves are declared on the ingress class (:mod:`retrec.serving.ingress`): Ray Serve ships that
class by value to its replicas, and only its own methods keep the ``self`` injection ``@serve.ingress`` gives them.

A search picks the active index version of each retriever when it starts, encodes the query once per distinct
query encoder the chosen retrievers need, scatters each retriever's payload to its shards, fuses for ``hybrid``,
optionally re-ranks, then cuts the page ``[offset, offset + k)`` and adds the asked document fields. A batch is
its queries' searches run together (they share encoder batches and shard calls): one response each, in order.

Example::

    curl -s localhost:8000/v1/search -H 'content-type: application/json' -H 'X-API-Key: KEY' \\
         -d '{"query": "what causes scurvy", "k": 5, "offset": 5, "return": ["text"], "timings": true}'
"""

# No ``from __future__ import annotations``: FastAPI reads the endpoint annotations at runtime.
import asyncio
import time
from typing import Any

import numpy as np
from ray.serve.exceptions import BackPressureError

from retrec.index.filters import EXACT, FilterError, parse_filter
from retrec.index.fusion import FUSIONS
from retrec.serving import prometheus as serving_metrics
from retrec.serving.errors import ApiError
from retrec.serving.rerankers import rerank_hits
from retrec.serving.schemas import (
    HYBRID,
    BatchSearchRequest,
    BatchSearchResponse,
    Component,
    Hit,
    QualityRequest,
    QualityResponse,
    SearchOptions,
    SearchRequest,
    SearchResponse,
)


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 3)


def components_of(rankings: dict[str, list[tuple[str, float]]], ids: list[str]) -> list[dict[str, Component]]:
    """Per document of ``ids``: each retriever's score and rank of it (1-based; retrievers that missed it absent)."""
    found = {name: {d: (r, s) for r, (d, s) in enumerate(hits, start=1)} for name, hits in rankings.items()}
    return [{name: Component(score=at[d][1], rank=at[d][0]) for name, at in found.items() if d in at} for d in ids]


class SearchRoutes:
    """The search routes; the ingress provides ``cfg``, ``retrievers``, ``encoders``, ``scatter``, ``versions``,
    ``reranker``, ``documents``, ``_targets``, ``_encoders_for``, ``_known_retrievers`` and ``_bounded``."""

    async def _encode(self, key: str, query: str) -> Any:
        try:
            payload, batch = await self.encoders[key].encode(query)
        except BackPressureError as exc:
            raise ApiError(503, "overloaded", f"query encoder busy: {exc}",
                           {"Retry-After": str(self.cfg.limits.retry_after_s)}) from exc
        except Exception as exc:
            raise ApiError(503, "unavailable", f"query encoder failed: {type(exc).__name__}") from exc
        serving_metrics.METRICS.batch_size.observe(batch)
        return payload

    async def _retrieve(self, name: str, query: str, k: int, payloads: dict[str, asyncio.Future],
                        clock: dict[str, float], doc_filter: str | None = None) -> tuple[list, str, list]:
        """One retriever on its active version → (hits, version, failed shards); its encode and search times
        go into ``clock``."""
        spec, ref = self.retrievers[name], self.versions.active[name]
        started = time.perf_counter()
        payload = query if spec.encoder is None else await payloads[spec.encoder]
        encoded = time.perf_counter()
        width = None if spec.encoder is None else self.versions.query_width(name, ref)
        if width is not None:  # a compatible encoder on an index of the encoder it replaces: its old space
            payload = payload[..., :width]
        hits, failed = await self.scatter.retrieve(name, payload, k, ref, doc_filter)
        clock["encode_ms"] = max(clock.get("encode_ms", 0.0), round((encoded - started) * 1000, 3))
        clock[f"search_ms.{name}"] = _ms(encoded)
        return hits, ref["version"], failed

    def _targets_of(self, name: str) -> list[str]:
        targets = self._targets.get(name)
        if targets is not None:
            return targets
        deployed = ", ".join(self._targets) or "none"
        if not self._targets:
            raise ApiError(400, "not_deployed", "no retriever is deployed in this application")
        if name == HYBRID:
            raise ApiError(400, "not_deployed", f"hybrid needs at least two deployed retrievers (deployed: {deployed})")
        if name in self._known_retrievers:
            raise ApiError(400, "not_deployed", f"retriever {name!r} is not deployed in this application "
                           f"(deployed: {deployed})")
        raise ApiError(422, "unknown_retriever", f"unknown retriever {name!r}; available: {deployed}")

    def _check(self, req: SearchOptions) -> tuple[str, list[str]]:
        """The search name and its retrievers, or the request's 4xx (before any work)."""
        name = req.retriever or (HYBRID if HYBRID in self._targets else next(iter(self._targets), ""))
        names = self._targets_of(name)
        if req.fusion.weights and not self.retrievers.keys() >= req.fusion.weights.keys():
            unknown = sorted(set(req.fusion.weights) - set(self.retrievers))
            raise ApiError(422, "invalid_request", f"fusion.weights names retrievers not deployed: {unknown}")
        if req.rerank and self.reranker is None:
            raise ApiError(400, "not_deployed", "no re-ranker is deployed in this application (rerank: in the "
                           "serve config)")
        return name, names

    async def _filter(self, req: SearchOptions, names: list[str]) -> str | None:
        """The request's filter as canonical JSON for the shards, once its shape (422) and its fields (400: each
        searched version must store them) are checked; None without one."""
        spec = req.filter_spec()
        if spec is None:
            return None
        try:
            parsed = parse_filter(spec)
        except FilterError as exc:
            raise ApiError(422, "invalid_request", f"filter: {exc}") from exc
        for n in names:
            metadata = await self.documents.metadata(self.versions.active[n])
            try:
                if metadata is None:
                    raise FilterError(f"retriever {n!r}: its index version stores no document metadata to filter on")
                metadata.check(parsed)
            except FilterError as exc:
                raise ApiError(400, "invalid_filter", str(exc)) from exc
        return parsed.key

    async def _search(self, req: SearchOptions, query: str) -> SearchResponse:
        started = time.perf_counter()
        name, names = self._check(req)
        doc_filter = await self._filter(req, names)
        hybrid, end = name == HYBRID, req.offset + req.k
        rerank_depth = self.cfg.rerank.depth if req.rerank and self.cfg.rerank is not None else 0
        depth = max(end, req.fusion.depth) if hybrid else end
        depth = max(depth, rerank_depth)
        clock: dict[str, float] = {}
        payloads = {key: asyncio.ensure_future(self._encode(key, query)) for key in self._encoders_for[name]}
        outcomes = await asyncio.gather(*(self._retrieve(n, query, depth, payloads, clock, doc_filter)
                                          for n in names), return_exceptions=True)
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
        stage = time.perf_counter()
        if hybrid:
            fuse = FUSIONS[req.fusion.method]
            kwargs = {"rrf_k": req.fusion.rrf_k} if req.fusion.method == "rrf" else {}
            hits = fuse(rankings, max(end, rerank_depth), weights=req.fusion.weights, **kwargs)
            clock["fuse_ms"] = _ms(stage)
        else:
            hits = rankings[name]
        reranked_by = None
        if rerank_depth:
            stage = time.perf_counter()
            hits, reranked_by = await rerank_hits(self.reranker, self.cfg, query, hits, rerank_depth)
            clock["rerank_ms"] = _ms(stage)
        if failed:
            serving_metrics.METRICS.partial.inc()
        page = hits[req.offset:end]
        out = [Hit(doc_id=d, score=s, rank=i) for i, (d, s) in enumerate(page, start=req.offset + 1)]
        if hybrid:
            for hit, parts in zip(out, components_of(rankings, [d for d, _ in page])):
                hit.components = parts
        if req.return_fields and out:
            stage = time.perf_counter()
            refs = [self.versions.active[n] for n in names]
            active = {r["digest"] for r in self.versions.active.values()}
            rows = await self.documents.fetch(refs, [h.doc_id for h in out], req.return_fields, active)
            for hit, row in zip(out, rows):
                for key, value in row.items():
                    setattr(hit, key, value)
            clock["fields_ms"] = _ms(stage)
        took = _ms(started)
        return SearchResponse(
            retriever=name, index_versions=versions, partial=bool(failed), failed_shards=failed, hits=out,
            reranked_by=reranked_by, reranked=reranked_by is not None, took_ms=took,
            timings={"total_ms": took, **clock} if req.timings else None)

    async def search_one(self, req: SearchRequest) -> SearchResponse:
        """``POST /v1/search``."""
        with self.scatter.request():
            return await self._bounded(self._search(req, req.query))

    async def search_many(self, req: BatchSearchRequest) -> BatchSearchResponse:
        """``POST /v1/search/batch``: the queries' searches together, one response each, in order."""
        started = time.perf_counter()
        self._check(req)
        with self.scatter.request(len(req.queries)):
            results = await self._bounded(asyncio.gather(*(self._search(req, q) for q in req.queries)))
        serving_metrics.METRICS.request_batch.labels(endpoint="search").observe(len(req.queries))
        return BatchSearchResponse(results=results, took_ms=_ms(started))

    async def quality_check(self, req: QualityRequest) -> QualityResponse:
        """``POST /v1/quality``: recall@k of a retriever's search against its exact search, and both latencies, on
        a sample of its own documents' texts as queries (as Qdrant's dashboard checks ANN against exact search)."""
        if req.retriever not in self.retrievers:
            raise ApiError(422, "unknown_retriever", f"{req.retriever!r} is not a deployed retriever (hybrid has no "
                           f"exact search of its own); deployed: {', '.join(self.retrievers) or 'none'}")
        ref, spec = self.versions.active[req.retriever], self.retrievers[req.retriever]
        queries = await self.documents.sample_texts(ref, req.sample)
        if not queries:
            raise ApiError(409, "no_texts", f"index version {ref['version']!r} stores no document texts to sample "
                           "queries from")
        recalls, search_ms, exact_ms = [], [], []
        for query in queries:
            payloads = {} if spec.encoder is None else {spec.encoder: asyncio.ensure_future(
                self._encode(spec.encoder, query))}
            for future in payloads.values():
                await future  # encoded once, outside both timings
            started = time.perf_counter()
            found, _, _ = await self._retrieve(req.retriever, query, req.k, payloads, {})
            middle = time.perf_counter()
            exact, _, _ = await self._retrieve(req.retriever, query, req.k, payloads, {}, EXACT)
            search_ms.append((middle - started) * 1000)
            exact_ms.append((time.perf_counter() - middle) * 1000)
            truth = {d for d, _ in exact}
            recalls.append(len(truth & {d for d, _ in found}) / len(truth) if truth else 1.0)

        def summary(values: list[float]) -> dict[str, float]:
            p50, p99 = np.percentile(values, [50, 99])
            return {"p50": round(float(p50), 3), "p99": round(float(p99), 3), "mean": round(float(np.mean(values)), 3)}
        return QualityResponse(retriever=req.retriever, index_version=ref["version"], queries=len(queries), k=req.k,
                               recall=round(float(np.mean(recalls)), 4), search_ms=summary(search_ms),
                               exact_ms=summary(exact_ms))
