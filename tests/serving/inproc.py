"""The ingress FastAPI app in-process, without Ray: the real ``Ingress`` object over fake deployment handles.

``@serve.ingress`` turns each route's ``self`` into a dependency that asks Serve for the replica's object
(``serve.get_replica_context().servable_object``); :func:`ingress_app` builds the ``Ingress`` class's own
object (``Ingress.func_or_class``'s user class, without Serve's ASGI wrapper) over fake shard and recommender
handles and answers that question with it. Every byte of HTTP handling — the guard, metrics, validation, routing,
fusion, errors, OpenAPI — is the served code.

Example::

    with ingress_app() as app:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            (await client.post("/v1/search", json={"query": "q"})).json()
"""

from __future__ import annotations

import asyncio
import contextlib
import types
import zlib
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI

DOCS = [f"d{i}" for i in range(12)]


def _done(value: Any) -> asyncio.Future:
    future = asyncio.get_running_loop().create_future()
    future.set_result(value)
    return future


class _Method:
    def __init__(self, fn: Any) -> None:
        self.remote = fn


class FakeShard:
    """A text shard handle: ``search_many`` ranks a fixed document list by a query-derived score."""

    def __init__(self, shard: int, digest: str) -> None:
        self.shard, self.loaded = shard, {digest}
        self.search_many = _Method(self._search_many)
        self.versions = _Method(lambda: _done(sorted(self.loaded)))
        self.load = _Method(lambda ref: _done(self.loaded.add(ref["digest"])))

    def _search_many(self, payloads: list[str], k: int, ref: dict[str, str]) -> asyncio.Future:
        def hits(q: str) -> list[tuple[str, float]]:
            seed = zlib.crc32(q.encode("utf-8", "surrogatepass"))  # stable across processes, any JSON string
            ranked = [(d, float((seed + i * 7919 + self.shard) % 97)) for i, d in enumerate(DOCS[self.shard::2])]
            return sorted(ranked, key=lambda h: (-h[1], h[0]))[:k]
        return _done([hits(q) for q in payloads])


class FakeRecommender:
    """A recommender handle: the known items not in the history, in a fixed order."""

    def __init__(self) -> None:
        self.recommend = _Method(self._recommend)
        self.info = _Method(lambda: _done({"kind": "model/fake", "name": "fake", "version": "r1"}))

    def _recommend(self, history: list[str], k: int, exclude_seen: bool, user: str | None = None) -> asyncio.Future:
        if user is not None:  # this fake keeps one user's history
            if user != "u-known":
                return _done({"error": {"code": "no_user_histories", "message": "no history store"}})
            history = ["i1", "i2"]
        known = [f"i{i}" for i in range(20)]
        skipped = [h for h in history if h not in known]
        items = [(i, 1.0 / (r + 1)) for r, i in enumerate(known) if not (exclude_seen and i in history)][:k]
        return _done({"version": "r1", "items": items, "skipped_unknown": len(skipped),
                      "unknown_examples": skipped[:5]})


class FakeReranker:
    """A re-ranker handle: the given ids in reverse order (so a re-ranked answer is visibly different)."""

    def __init__(self, fail: bool = False, delay_s: float = 0.0) -> None:
        self.fail, self.delay_s = fail, delay_s
        self.calls: list[tuple[str, list[str]]] = []
        self.first_scores: list[list[float] | None] = []
        self.rerank = _Method(self._rerank)

    def _rerank(self, query: str, ids: list[str], first_scores: list[float] | None = None) -> asyncio.Future:
        self.calls.append((query, list(ids)))
        self.first_scores.append(first_scores)
        if self.fail:
            future = asyncio.get_running_loop().create_future()
            future.set_exception(RuntimeError("the re-ranker replica died"))
            return future
        ranked = list(reversed(ids))
        answer = {"hits": [(d, 10.0 - i) for i, d in enumerate(ranked)], "missing_texts": 0, "name": "fake-ce",
                  "version": "c1"}
        if self.delay_s:  # a slow replica: the answer comes after the delay
            async def later() -> dict:
                await asyncio.sleep(self.delay_s)
                return answer
            return asyncio.ensure_future(later())
        return _done(answer)


class Started:
    """Readiness of a started replica whose shards hold the active versions."""

    def answer(self) -> tuple[bool, dict[str, Any]]:
        return True, {"bm25-0": True, "bm25-1": True}


async def _no_controller(user_configs: dict[str, Any], merge: bool = False) -> None:
    """Stands in for the Serve controller's ``user_config`` broadcast (one in-process replica)."""


def _unbatched(obj: Any) -> None:
    """``@serve.batch`` queues are tasks bound to the event loop of their first call (and left pending when it
    closes); here each shard call is its own batch of one — the same ``Scatter.scatter`` code, on any loop."""
    scatter = obj.scatter

    async def batch(item: Any) -> Any:
        return (await scatter.scatter([item]))[0]

    scatter.batch = batch


def _retriever(name: str) -> dict[str, Any]:
    ref = {"version": f"{name}-v1", "digest": f"sha256-of-{name}-v1", "path": f"/indexes/{name}-v1",
           "kind": "index/bm25"}
    return {"kind": "index/bm25", "payload": "text", "shards": [FakeShard(i, ref["digest"]) for i in range(2)],
            "ref": ref, "encoder": None}


@contextlib.contextmanager
def ingress_app(config: dict[str, Any] | None = None, reranker: Any = None) -> Iterator[FastAPI]:
    """The ingress app serving two BM25-like retrievers (``bm25``, ``bm25-title``; hybrid) and a recommender
    (and ``reranker``, a re-ranker handle, when the config has ``rerank:``)."""
    from ray import serve

    from retrec.serving import ingress, schemas
    from retrec.serving.middleware import GUARD
    from retrec.serving.swaps import LocalLedger

    user_class = ingress.Ingress.func_or_class.__mro__[1]
    assert user_class.__qualname__ == "Ingress"
    cfg = config or {"retrievers": {"bm25": {"index": "/indexes/bm25-v1"},
                                    "bm25-title": {"index": "/indexes/bm25-title-v1"}},
                     "recommenders": {"bert4rec": {"bundle": "/models/bert4rec"}},
                     "auth": {"mode": "none"}}
    obj = user_class.__new__(user_class)
    saved_guard = dict(vars(GUARD))
    saved_names = (schemas.PUBLISHED.retrievers, schemas.PUBLISHED.recommenders, schemas.PUBLISHED.swappable,
                   schemas.PUBLISHED.rerank, schemas.PUBLISHED.filter_fields)
    user_class.__init__(obj, cfg, {name: _retriever(name) for name in cfg["retrievers"]}, {},
                        {name: FakeRecommender() for name in cfg.get("recommenders", {})}, reranker)
    _unbatched(obj)
    obj.versions.publish = _no_controller  # no Serve controller here: a swap flips this replica only
    obj.versions.ledger = LocalLedger()  # nor the application's ledger actor
    obj.readiness.stop()
    obj.readiness = Started()  # a replica past its first readiness check (tests/serving/test_ops.py tests the cache)
    context = types.SimpleNamespace(servable_object=obj, app_name="retrec",  # what @serve.batch asks, too
                                    _deployment_config=types.SimpleNamespace(max_ongoing_requests=1024))
    original = serve.get_replica_context
    serve.get_replica_context = lambda: context  # type: ignore[assignment]
    ingress.api.openapi_schema = None  # the published names are this object's
    try:
        yield ingress.api
    finally:
        serve.get_replica_context = original  # type: ignore[assignment]
        ingress.api.openapi_schema = None
        vars(GUARD).update(saved_guard)
        (schemas.PUBLISHED.retrievers, schemas.PUBLISHED.recommenders, schemas.PUBLISHED.swappable,
         schemas.PUBLISHED.rerank, schemas.PUBLISHED.filter_fields) = saved_names
