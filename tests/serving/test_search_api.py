"""Batch requests, offset paging, document fields, timings, hybrid components, the declared API key and the console's
static pages — on the ingress app in-process (:mod:`tests.serving.inproc`: the served code over fake shards)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.serving.inproc import ingress_app

QUERIES = ["vitamin c", "scurvy", "protein folding", "a", "what causes fever", "b c d"]


def _calls(requests: list[tuple[str, str, dict[str, Any] | None]], config: dict[str, Any] | None = None,
           headers: dict[str, str] | None = None, setup: Any = None) -> list[httpx.Response]:
    async def run() -> list[httpx.Response]:
        with ingress_app(config) as app:
            if setup is not None:
                from ray import serve

                setup(serve.get_replica_context().servable_object)
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t",
                                         headers=headers or {}) as client:
                out = []
                for method, path, body in requests:
                    out.append(await client.request(method, path, json=body) if body is not None
                               else await client.request(method, path))
                return out
    return asyncio.run(run())


def _without_times(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in ("took_ms", "timings")}


@pytest.mark.parametrize("retriever", ["bm25", "hybrid"])
def test_a_batch_equals_its_single_requests(retriever: str) -> None:
    options = {"k": 4, "retriever": retriever}
    batch, *singles = _calls([("POST", "/v1/search/batch", {"queries": QUERIES, **options})] +
                             [("POST", "/v1/search", {"query": q, **options}) for q in QUERIES])
    assert batch.status_code == 200, batch.text
    results = batch.json()["results"]
    assert [_without_times(r) for r in results] == [_without_times(s.json()) for s in singles]


def test_a_recommend_batch_equals_its_single_requests() -> None:
    histories = [["i1", "i2"], ["i3"], ["x-unknown", "i4"]]
    batch, *singles = _calls([("POST", "/v1/recommend/batch", {"histories": histories, "k": 5})] +
                             [("POST", "/v1/recommend", {"history": h, "k": 5}) for h in histories])
    assert batch.status_code == 200, batch.text
    assert [_without_times(r) for r in batch.json()["results"]] == [_without_times(s.json()) for s in singles]
    assert batch.json()["results"][2]["skipped_unknown"] == 1


@pytest.mark.parametrize("retriever", ["bm25", "hybrid"])
def test_offset_pages_are_slices_of_one_deep_request(retriever: str) -> None:
    deep, *pages = _calls([("POST", "/v1/search", {"query": "scurvy", "k": 9, "retriever": retriever})] +
                          [("POST", "/v1/search", {"query": "scurvy", "k": 3, "offset": o, "retriever": retriever})
                           for o in (0, 3, 6)])
    hits = deep.json()["hits"]
    assert len(hits) == 9
    assert [h for p in pages for h in p.json()["hits"]] == hits  # ids, scores, ranks (offset+1...) and components


def test_limits_on_batch_size_and_depth_are_4xx() -> None:
    too_many, too_deep, too_far, empty, bad_field = _calls([
        ("POST", "/v1/search/batch", {"queries": ["q"] * 65}),
        ("POST", "/v1/search", {"query": "q", "k": 1001}),
        ("POST", "/v1/search", {"query": "q", "offset": 1001}),
        ("POST", "/v1/recommend/batch", {"histories": []}),
        ("POST", "/v1/search", {"query": "q", "return": ["password"]})])
    for r in (too_many, too_deep, too_far, empty, bad_field):
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request", r.text


def test_a_batch_naming_an_unknown_retriever_fails_whole_before_any_search() -> None:
    r, = _calls([("POST", "/v1/search/batch", {"queries": ["a", "b"], "retriever": "nope"})])
    assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_retriever"


def test_timings_and_components() -> None:
    plain, timed, hybrid, bm25, title = _calls([
        ("POST", "/v1/search", {"query": "scurvy", "k": 5, "retriever": "bm25"}),
        ("POST", "/v1/search", {"query": "scurvy", "k": 5, "retriever": "hybrid", "timings": True}),
        ("POST", "/v1/search", {"query": "scurvy", "k": 5, "retriever": "hybrid", "fusion": {"depth": 5}}),
        ("POST", "/v1/search", {"query": "scurvy", "k": 5, "retriever": "bm25"}),
        ("POST", "/v1/search", {"query": "scurvy", "k": 5, "retriever": "bm25-title"})])
    assert plain.json()["timings"] is None and "components" not in plain.json()["hits"][0]
    times = timed.json()["timings"]
    assert {"total_ms", "encode_ms", "search_ms.bm25", "search_ms.bm25-title", "fuse_ms"} <= set(times)
    assert all(v >= 0 for v in times.values()) and times["total_ms"] >= times["fuse_ms"]
    ranks = {name: {h["doc_id"]: (h["rank"], h["score"]) for h in r.json()["hits"]}
             for name, r in (("bm25", bm25), ("bm25-title", title))}
    for hit in hybrid.json()["hits"]:
        for name, part in hit["components"].items():
            assert (part["rank"], part["score"]) == ranks[name][hit["doc_id"]]


def test_returned_fields_come_from_the_versions_documents(tmp_path: Path) -> None:
    from retrec.index.bm25_index import BM25Index
    from retrec.index.generic import publish_index
    from tests.serving.inproc import DOCS

    texts = [f"text of {d} <b>not markup</b>" for d in DOCS]
    version = publish_index(BM25Index.build(DOCS, texts), tmp_path / "bm25-v1", name="bm25", texts=(DOCS, texts))

    def point_at_real_version(ingress: Any) -> None:
        ingress.versions.active["bm25"]["path"] = str(version)  # the fake shards answer; fields come from here

    with_text, without = _calls([("POST", "/v1/search", {"query": "q", "k": 4, "retriever": "bm25",
                                                          "return": ["text", "title"]}),
                                 ("POST", "/v1/search", {"query": "q", "k": 4, "retriever": "bm25-title",
                                                          "return": ["text"]})], setup=point_at_real_version)
    hits = with_text.json()["hits"]
    assert [h["text"] for h in hits] == [texts[DOCS.index(h["doc_id"])] for h in hits]
    assert all("title" not in h for h in hits)  # this version stores no titles: left out
    assert all("text" not in h for h in without.json()["hits"])  # a version without documents: the ids alone


def test_the_openapi_document_declares_the_key_and_docs_can_send_it(tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("console-key-0123456789\n")
    config = {"retrievers": {"bm25": {"index": "/indexes/bm25-v1"}, "bm25-title": {"index": "/indexes/t-v1"}},
              "auth": {"mode": "keys", "api_keys_env": None, "api_keys_file": str(keys)}}
    doc, docs_page = _calls([("GET", "/openapi.json", None), ("GET", "/docs", None)], config)
    schema = doc.json()
    scheme = schema["components"]["securitySchemes"]["ApiKey"]
    assert (scheme["type"], scheme["in"], scheme["name"]) == ("apiKey", "header", "X-API-Key")
    assert {"ApiKey": []} in schema["security"]
    assert schema["paths"]["/healthz"]["get"]["security"] == []
    assert "security" not in schema["paths"]["/v1/search"]["post"]  # the document's default: a key
    assert docs_page.status_code == 200 and "swagger" in docs_page.text.lower()


def test_the_console_pages_are_public_static_and_locked_down(tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("console-key-0123456789\n")
    config = {"retrievers": {"bm25": {"index": "/indexes/bm25-v1"}},
              "auth": {"mode": "keys", "api_keys_env": None, "api_keys_file": str(keys)}}
    bare, page, script, style, models, keyed, traversal = _calls([
        ("GET", "/ui", None), ("GET", "/ui/", None), ("GET", "/ui/console.js", None), ("GET", "/ui/console.css", None),
        ("GET", "/v1/models", None), ("GET", "/ui/../v1/models", None), ("GET", "/ui/..%2fkinds.py", None)], config)
    assert bare.status_code == 307 and bare.headers["location"] == "ui/"
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="console.js"' in page.text and "http" not in page.text.split("<body>")[0]  # nothing remote
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert script.headers["content-type"].startswith("text/javascript") and "innerHTML" not in script.text
    assert style.status_code == 200
    assert models.status_code == 401  # the data needs the key
    assert keyed.status_code == 401  # a dotted path is not a way around it
    assert traversal.status_code in (401, 404)  # no file is read from a request's path
