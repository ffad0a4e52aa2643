"""The ingress app in-process (no Ray, :mod:`tests.serving.inproc`): methods, content types, strict JSON types."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from tests.serving.inproc import ingress_app


def _call(requests: list[tuple[str, str, dict[str, Any]]], config: dict[str, Any] | None = None
          ) -> list[httpx.Response]:
    async def run() -> list[httpx.Response]:
        with ingress_app(config) as app:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
                return [await client.request(method, path, **kw) for method, path, kw in requests]
    return asyncio.run(run())


@pytest.mark.parametrize(("method", "path"), [("POST", "/readyz"), ("POST", "/healthz"), ("POST", "/metrics"),
                                              ("POST", "/v1/models"), ("GET", "/v1/search"), ("PUT", "/v1/search"),
                                              ("DELETE", "/v1/recommend"), ("GET", "/v1/admin/indexes")])
def test_undeclared_methods_are_405_with_allow(method: str, path: str) -> None:
    for kw in ({}, {"content": b"x", "headers": {"content-type": "text/plain"}}):
        r, = _call([(method, path, kw)])
        assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed", r.text
        assert r.headers["allow"]


def test_body_routes_still_want_json() -> None:
    good = json.dumps({"query": "q"}).encode()
    form_type = {"content-type": "application/x-www-form-urlencoded"}
    form, none, ok, malformed = _call([
        ("POST", "/v1/search", {"content": b"query=x", "headers": form_type}),
        ("POST", "/v1/search", {"content": good, "headers": {"content-type": ""}}),
        ("POST", "/v1/search", {"content": good, "headers": {"content-type": "application/json; charset=utf-8"}}),
        ("POST", "/v1/search", {"content": b"{", "headers": {"content-type": "application/json"}})])
    assert form.status_code == 415 and form.json()["error"]["code"] == "unsupported_media_type"
    assert none.status_code == 415 and ok.status_code == 200
    assert malformed.status_code == 400 and malformed.json()["error"]["code"] == "malformed_json"


def test_strict_types_over_http_and_whole_numbers() -> None:
    bodies = [{"query": "q", "k": True}, {"query": "q", "fusion": {"rrf_k": False}, "retriever": "hybrid"},
              {"query": "q", "k": "3"}, {"query": "q", "k": 2.5}, {"query": "q", "fusion": {"weights": {"x": 1}}}]
    *bad, whole = _call([("POST", "/v1/search", {"json": b}) for b in bodies] +
                        [("POST", "/v1/search", {"json": {"query": "q", "k": 3.0, "fusion": {"rrf_k": 60}}})])
    assert [r.status_code for r in bad] == [422] * len(bodies), [r.text for r in bad]
    assert whole.status_code == 200 and len(whole.json()["hits"]) == 3


def test_openapi_declares_content_types_and_published_names() -> None:
    r, = _call([("GET", "/openapi.json", {})])
    doc = r.json()
    assert list(doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    props = doc["components"]["schemas"]["SearchRequest"]["properties"]
    assert props["retriever"]["anyOf"] == [{"type": "string", "enum": ["bm25", "bm25-title", "hybrid"]},
                                           {"type": "null"}]
    weights = doc["components"]["schemas"]["FusionOptions"]["properties"]["weights"]["anyOf"][0]
    assert weights["propertyNames"] == {"type": "string", "enum": ["bm25", "bm25-title"]}
    metrics, = _call([("GET", "/metrics", {})])
    assert metrics.headers["content-type"].startswith("text/plain")


@pytest.mark.parametrize("manifest", ["[]", '{"schema_version": 1}', '{"schema_version": 1, "kind": "index/bm25", '
                                      '"name": "x", "version": "v", "created": "c", "command": "c", "files": []}'])
def test_a_malformed_manifest_is_a_400_not_a_500(tmp_path: Any, manifest: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "v2").mkdir()
    (tmp_path / "v2" / "manifest.json").write_text(manifest)
    monkeypatch.setenv("TEST_ADMIN_KEYS", "admin-key-0123456789")
    config = {"retrievers": {"bm25": {"index": "/indexes/bm25-v1"}}, "auth": {"mode": "none"},
              "admin": {"enabled": True, "keys_env": "TEST_ADMIN_KEYS", "models_root": str(tmp_path)}}
    r, = _call([("POST", "/v1/admin/indexes", {"json": {"retriever": "bm25", "path": "v2"},
                                                "headers": {"X-API-Key": "admin-key-0123456789"}})], config)
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_bundle", r.text
    assert "malformed manifest" in r.json()["error"]["message"]
