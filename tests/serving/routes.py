"""Every route of the serving API, with and without keys: the walk behind acceptance 4 of issue 12, shared by the
in-process test (tests/serving/test_auth.py) and the served one (tests/serving/test_http.py).

Example::

    failures = walk_routes(send, "/api", schema, api_key="k", admin_key="a")   # [] when auth holds
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

PUBLIC = frozenset({"/healthz", "/readyz", "/metrics", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc"})
DOCS = ("/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")
BODIES: dict[str, Any] = {  # a valid body for every POST route (a new route must add one here)
    "/v1/search": {"query": "vitamin", "k": 3},
    "/v1/search/batch": {"queries": ["vitamin", "protein"], "k": 3},
    "/v1/recommend": {"history": ["1", "2"], "k": 3},
    "/v1/quality": {"retriever": "bm25", "sample": 3},
    "/v1/recommend/batch": {"histories": [["1", "2"], ["3"]], "k": 3},
    "/v1/admin/indexes": {"retriever": "bm25", "path": "bm25-v2"},
    "/v1/events": {"events": [{"user": "u1", "item": "i1", "timestamp": 1_700_000_000, "type": "view"}]},
}
# a path parameter's example, and what a route answers with a key when the example names nothing that exists
PARAMS = {"{swap_id}": "0" * 32}
ANSWERED_WITH_KEY = {"/v1/admin/swaps/{swap_id}": {(200, None), (404, "unknown_swap")},
                     "/v1/quality": {(200, None), (409, "no_texts")}}  # a version without stored texts
# send(method, path, json_body, headers) -> (status, error code or None)
Send = Callable[[str, str, Any, dict[str, str]], tuple[int, str | None]]


def http_send(base: str) -> Send:
    """A :data:`Send` over real HTTP to ``base`` (a served application's URL)."""
    import httpx

    def send(method: str, path: str, body: Any, headers: dict[str, str]) -> tuple[int, str | None]:
        r = httpx.request(method, f"{base}{path}", json=body, headers=headers, timeout=30.0)
        code = r.json().get("error", {}).get("code") if r.status_code >= 400 \
            and r.headers.get("content-type") == "application/json" else None
        return r.status_code, code

    return send


def routes(schema: dict[str, Any]) -> list[tuple[str, str]]:
    """``(METHOD, path)`` of every operation in the OpenAPI document, plus FastAPI's docs routes."""
    return [(m.upper(), p) for p, ops in schema["paths"].items() for m in ops] + [("GET", p) for p in DOCS]


def walk_routes(send: Send, prefix: str, schema: dict[str, Any], *, api_key: str, admin_key: str,
                bodies: dict[str, Any] | None = None) -> list[str]:
    """What breaks the rule "no endpoint but health, readiness, docs and metrics answers without a key, and
    every endpoint answers with one" (the admin endpoint with the admin key), as readable lines."""
    bodies = {**BODIES, **(bodies or {})}
    failures: list[str] = []
    for method, path in routes(schema):
        if method == "POST" and path not in bodies:
            failures.append(f"{method} {path}: no example body in tests/serving/routes.py")
            continue
        body = bodies.get(path) if method == "POST" else None
        key = admin_key if path.startswith("/v1/admin/") else api_key
        where, template = f"{method} {prefix}{path}", path
        for name, example in PARAMS.items():
            path = path.replace(name, example)
        anon = send(method, prefix + path, body, {})
        if path in PUBLIC:
            if anon[0] != 200:
                failures.append(f"{where}: public, answered {anon[0]} without a key")
            continue
        if anon != (401, "unauthorized"):
            failures.append(f"{where}: answered {anon} without a key")
        wrong = send(method, prefix + path, body, {"X-API-Key": key + "x"})
        if wrong[0] != 401:
            failures.append(f"{where}: answered {wrong} with a wrong key")
        for headers in ({"Authorization": f"Bearer {key}"}, {"X-API-Key": key}):
            status = send(method, prefix + path, body, headers)
            if status not in ANSWERED_WITH_KEY.get(template, ()) and status[0] != 200:
                failures.append(f"{where}: answered {status} with the key ({next(iter(headers))})")
    return failures
