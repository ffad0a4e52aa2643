"""ASGI guard in front of the API: load shedding, body limit, content type and API keys.

Probe paths (:data:`PROBE_PATHS`: health, readiness, metrics; matched on the route path, so under any
``route_prefix``) pass straight through: never shed, never counted, no key — an overloaded replica still
answers its probes. Other requests, in order: more than ``max_inflight`` in progress → 503 with
``Retry-After``; ``/v1/*`` without a valid API key (when keys are configured) → 401; a POST that is not
``application/json`` → 415; a body over ``max_body_bytes`` (declared or streamed) → 413. Keys are compared
with :func:`hmac.compare_digest` and never logged. Settings live in :data:`GUARD`, set by the ingress replica
at start (one replica per process).

Example::

    GUARD.configure(max_body_bytes=65536, max_inflight=64, retry_after_s=1, api_keys=load_api_keys(auth))
    app.add_middleware(GuardMiddleware)
"""

from __future__ import annotations

import hmac
import json
import logging
import os
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retrec.serving.config import AuthConfig

log = logging.getLogger("retrec.serving")
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})  # never shed: cheap, answered from local state
PUBLIC_PATHS = (*sorted(PROBE_PATHS), "/docs", "/openapi.json", "/redoc")


def route_path(scope: Scope) -> str:
    """The path the app routes on: the request path without the mount point (``root_path``, e.g. a route prefix)."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    return (path[len(root):] or "/") if root and path.startswith(root) else path


def load_api_keys(auth: AuthConfig) -> tuple[bytes, ...]:
    """Keys from the environment variable (comma-separated) and/or the file (one per line, ``#`` comments)."""
    keys: list[str] = []
    if auth.api_keys_env and os.environ.get(auth.api_keys_env):
        keys += os.environ[auth.api_keys_env].split(",")
    if auth.api_keys_file:
        lines = Path(auth.api_keys_file).read_text(encoding="utf-8").splitlines()
        keys += [line for line in lines if not line.lstrip().startswith("#")]
    return tuple(k.strip().encode() for k in keys if k.strip())


@dataclass
class GuardSettings:
    max_body_bytes: int = 64 * 1024
    max_inflight: int = 64
    retry_after_s: int = 1
    api_keys: tuple[bytes, ...] = field(default=(), repr=False)
    inflight: int = 0

    def configure(self, **values: Any) -> None:
        for key, value in values.items():
            setattr(self, key, value)

    def key_ok(self, presented: bytes | None) -> bool:
        if not self.api_keys:
            return True
        if not presented:
            return False
        ok = False
        for key in self.api_keys:  # constant time per key, no early exit
            ok |= hmac.compare_digest(presented, key)
        return ok


GUARD = GuardSettings()


def _presented_key(headers: dict[bytes, bytes]) -> bytes | None:
    if b"x-api-key" in headers:
        return headers[b"x-api-key"].strip()
    auth = headers.get(b"authorization", b"")
    if auth[:7].lower() == b"bearer ":
        return auth[7:].strip()
    return None


async def _reply(send: Send, status: int, code: str, message: str, extra: list[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class GuardMiddleware:
    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if route_path(scope) in PROBE_PATHS:
            await self.app(scope, receive, send)
            return
        g = GUARD
        path: str = scope.get("path", "")
        headers = dict(scope.get("headers") or [])
        if g.inflight >= g.max_inflight:
            await _reply(send, 503, "overloaded", f"server busy ({g.max_inflight} requests in progress); retry later",
                         [(b"retry-after", str(g.retry_after_s).encode())])
            return
        if path.startswith("/v1/") and not g.key_ok(_presented_key(headers)):
            await _reply(send, 401, "unauthorized", "missing or invalid API key (Authorization: Bearer KEY "
                         "or X-API-Key)", [(b"www-authenticate", b"Bearer")])
            return
        if scope.get("method") == "POST":
            ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
            if ctype != b"application/json":
                await _reply(send, 415, "unsupported_media_type",
                             f"Content-Type must be application/json, got {ctype.decode('latin-1') or 'none'!r}")
                return
            declared = headers.get(b"content-length")
            try:
                too_big = declared is not None and int(declared) > g.max_body_bytes
            except ValueError:
                await _reply(send, 400, "bad_request", "invalid Content-Length header")
                return
            if too_big:
                await _reply(send, 413, "body_too_large", f"request body over {g.max_body_bytes} bytes")
                return
            chunks, size = [], 0
            while True:  # read the (bounded) body before the app sees it, then replay it
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > g.max_body_bytes:
                    await _reply(send, 413, "body_too_large", f"request body over {g.max_body_bytes} bytes")
                    return
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
            body = b"".join(chunks)
            replayed = False

            async def replay() -> Message:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            receive = replay
        g.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            g.inflight -= 1
