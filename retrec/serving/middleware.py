"""ASGI guard in front of the API: load shedding, body limit, API and admin keys.

In order: more than ``max_inflight`` requests in progress → 503 with ``Retry-After``; a request without
a valid key → 401; a body over ``max_body_bytes`` (declared or streamed) → 413. (A POST that is not
``application/json`` is a 415 from the routes that take a body, after routing, so an undeclared method is a
405 first.)

Keys follow routing, deny by default: the guard reads the path the way Starlette's router does (relative
to ``root_path``, which Ray Serve's ``route_prefix``, a ``Mount`` or ``--root-path`` set), so no mount point
skips it. Only :data:`PUBLIC_PATHS` (health, readiness, docs, the console's static files; ``/metrics`` unless
configured otherwise) answer without a key; ``/v1/admin/*`` needs an admin key (API keys do not open it); every
other path, unknown ones included, needs an API key — unless ``auth.mode: none``. Keys are compared with
:func:`hmac.compare_digest` and never logged. Settings live in :data:`GUARD`, set by the ingress replica
at start (one replica per process) from :func:`guard_settings`.

Probe paths (:data:`PROBE_PATHS`: health, readiness, metrics; matched on the route path, so under any
``route_prefix``) are never shed and never counted in flight — an overloaded replica still answers its probes;
the key rules above still apply to them (they are public unless ``auth.public_metrics: false`` closes
``/metrics``).

Example::

    GUARD.configure(**guard_settings(cfg))   # ValueError when auth.mode is keys and no key is found
    app.add_middleware(GuardMiddleware)
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette._utils import get_route_path
from starlette.requests import Request

from retrec.serving.config import AdminConfig, AuthConfig, ServingConfig
from retrec.serving.errors import ApiError

log = logging.getLogger("retrec.serving")
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
CONSOLE_PATHS = frozenset({"/ui", "/ui/", "/ui/console.js", "/ui/console.css"})  # static, no data (its calls need keys)
DOCS_ASSETS = frozenset(f"/docs/assets/{name}" for name in (
    "swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png"))  # retrec/serving/docs_pages.py
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/docs", "/docs/oauth2-redirect", "/openapi.json",
                          "/redoc", *CONSOLE_PATHS, *DOCS_ASSETS})
ADMIN_PREFIX = "/v1/admin/"


async def require_json(request: Request) -> None:
    """A body-taking route accepts ``application/json`` only (415); a FastAPI dependency, so it runs after
    routing and a method a path does not declare is a 405 whatever its content type."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise ApiError(415, "unsupported_media_type", f"Content-Type must be application/json, got {ctype or 'none'!r}")


GUESSABLE_BELOW = 16  # a shorter key is logged as guessable (auth.min_key_length refuses)


def _load_keys(env: str | None, file: str | None, min_length: int = 0) -> tuple[bytes, ...]:
    """Keys from the environment variable (comma-separated) and/or the file (one per line, ``#`` comments)."""
    keys: list[str] = []
    if env and os.environ.get(env):
        keys += os.environ[env].split(",")
    if file:
        lines = Path(file).read_text(encoding="utf-8").splitlines()
        keys += [line for line in lines if not line.lstrip().startswith("#")]
    found = tuple(k.strip().encode() for k in keys if k.strip())
    advice = "use long random keys, e.g. python -c 'import secrets; print(secrets.token_urlsafe(24))'"
    if any(len(k) < min_length for k in found):
        raise ValueError(f"{sum(len(k) < min_length for k in found)} key(s) in {_where(env, file)} shorter than "
                         f"auth.min_key_length ({min_length}); {advice}")
    if any(len(k) < GUESSABLE_BELOW for k in found):
        log.warning("%d key(s) in %s shorter than %d characters are guessable; %s",
                    sum(len(k) < GUESSABLE_BELOW for k in found), _where(env, file), GUESSABLE_BELOW, advice)
    return found
PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})  # never shed: cheap, answered from local state


def route_path(scope: Scope) -> str:
    """The path the app routes on (relative to ``root_path``: a route prefix or mount), as Starlette's router
    computes it — what the guard's key rules and the metrics' endpoint labels use."""
    return get_route_path(scope)


def load_api_keys(auth: AuthConfig) -> tuple[bytes, ...]:
    """The API keys of ``auth`` (``api_keys_env`` and/or ``api_keys_file``)."""
    return _load_keys(auth.api_keys_env, auth.api_keys_file, auth.min_key_length)


def load_admin_keys(admin: AdminConfig, min_length: int = 0) -> tuple[bytes, ...]:
    """The admin keys of ``admin`` (``keys_env`` and/or ``keys_file``)."""
    return _load_keys(admin.keys_env, admin.keys_file, min_length)


def _where(env: str | None, file: str | None) -> str:
    return " or ".join([*([f"${env}"] if env else []), *(["the keys file"] if file else [])]) or "nowhere"


def reloaded_keys(cfg: ServingConfig) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    """``(api_keys, admin_keys)`` read again as ``cfg`` says (``ValueError`` when they would not start a server)."""
    settings = guard_settings(cfg)
    return settings["api_keys"], settings["admin_keys"]


def guard_settings(cfg: ServingConfig) -> dict[str, Any]:
    """:data:`GUARD` settings for ``cfg``; fails closed: keys mode without an API key, or an enabled admin
    plane without an admin key (or sharing one with the API), is a ``ValueError`` naming where keys were
    looked for (never their values)."""
    auth, admin, limits = cfg.auth, cfg.admin, cfg.limits
    api_keys = load_api_keys(auth) if auth.mode == "keys" else ()
    if auth.mode == "keys" and not api_keys:
        where = _where(auth.api_keys_env, auth.api_keys_file)
        raise ValueError(f"auth.mode is 'keys' but no API key was found in {where}; set keys, or "
                         "auth: {mode: none} to serve without them")
    admin_keys = load_admin_keys(admin, auth.min_key_length) if admin.enabled else ()
    if admin.enabled and not admin_keys:
        raise ValueError(f"admin is enabled but no admin key was found in {_where(admin.keys_env, admin.keys_file)}")
    if set(admin_keys) & set(api_keys):
        raise ValueError("an admin key is also an API key; admin keys must be separate")
    public = PUBLIC_PATHS if auth.public_metrics else PUBLIC_PATHS - {"/metrics"}
    return {"max_body_bytes": limits.max_body_bytes, "max_inflight": limits.max_inflight,
            "max_inflight_per_key": limits.max_inflight_per_key,
            "retry_after_s": limits.retry_after_s, "require_keys": auth.mode == "keys", "api_keys": api_keys,
            "admin_keys": admin_keys, "public_paths": public,
            "body_limits": {"/v1/events": cfg.events.max_body_bytes} if cfg.events.log else {}}


@dataclass
class GuardSettings:
    max_body_bytes: int = 64 * 1024
    max_inflight: int = 64
    retry_after_s: int = 1
    require_keys: bool = True  # False only for auth.mode: none
    api_keys: tuple[bytes, ...] = field(default=(), repr=False)
    admin_keys: tuple[bytes, ...] = field(default=(), repr=False)
    public_paths: frozenset[str] = PUBLIC_PATHS
    body_limits: dict[str, int] = field(default_factory=dict)  # route -> its own max_body_bytes
    inflight: int = 0
    max_inflight_per_key: int | None = None  # limits.max_inflight_per_key: one key cannot take every slot
    per_key: dict[bytes, int] = field(default_factory=dict, repr=False)
    # re-reads (api_keys, admin_keys) from where the config says, at most every reload_every_s: a key added to
    # or revoked from a keys file (a mounted Secret) takes effect without a restart
    reload: Callable[[], tuple[tuple[bytes, ...], tuple[bytes, ...]]] | None = field(default=None, repr=False)
    reload_every_s: float = 10.0
    reloaded_at: float = 0.0

    def refresh(self) -> None:
        """Reload the keys when ``reload_every_s`` has passed; keys that no longer load keep the previous ones."""
        if self.reload is None or time.monotonic() - self.reloaded_at < self.reload_every_s:
            return
        self.reloaded_at = time.monotonic()
        try:
            self.api_keys, self.admin_keys = self.reload()
        except (OSError, ValueError) as exc:
            log.error("API keys not reloaded, the previous ones stay: %s", exc)

    def configure(self, **values: Any) -> None:
        """Set the given settings; keys given without a ``reload`` are fixed (no reload of an older config)."""
        values.setdefault("reload", None)
        values.setdefault("reloaded_at", time.monotonic())
        for key, value in values.items():
            setattr(self, key, value)

    def allowed(self, route: str, presented: bytes | None) -> bool:
        """May a request to ``route`` (the path as routing sees it) with key ``presented`` go on?

        Public paths: yes. ``/v1/admin/*``: an admin key when admin keys are configured (the admin plane is
        on), else as any other path (the endpoint then answers 403). Any other path: an API key, unless
        keys are off. No keys configured while required: nothing but public paths.
        """
        if route in self.public_paths:
            return True
        self.refresh()
        if self.admin_keys and route.startswith(ADMIN_PREFIX):
            return _match(presented, self.admin_keys)
        return not self.require_keys or _match(presented, self.api_keys)


def _match(presented: bytes | None, keys: tuple[bytes, ...]) -> bool:
    if not presented or not keys:
        return False
    ok = False
    for key in keys:  # constant time per key, no early exit
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
        kind = scope["type"]
        if kind not in ("http", "websocket"):  # lifespan
            await self.app(scope, receive, send)
            return
        g = GUARD
        headers = dict(scope.get("headers") or [])
        route = route_path(scope)
        if kind == "websocket":  # none are served; still, no key, no connection
            if not g.allowed(route, _presented_key(headers)):
                await send({"type": "websocket.close", "code": 1008})
                return
            await self.app(scope, receive, send)
            return
        probe = route in PROBE_PATHS
        if not probe and g.inflight >= g.max_inflight:
            await _reply(send, 503, "overloaded", f"server busy ({g.max_inflight} requests in progress); retry later",
                         [(b"retry-after", str(g.retry_after_s).encode())])
            return
        if not g.allowed(route, _presented_key(headers)):
            await _reply(send, 401, "unauthorized", "missing or invalid API key (Authorization: Bearer KEY "
                         "or X-API-Key)", [(b"www-authenticate", b"Bearer")])
            return
        if probe:  # not counted in flight: probes never shed, nor make others shed
            await self.app(scope, receive, send)
            return
        if scope.get("method") == "POST":  # the content type is checked by the routes (after routing: 405 first)
            limit = g.body_limits.get(route, g.max_body_bytes)
            declared = headers.get(b"content-length")
            try:
                too_big = declared is not None and int(declared) > limit
            except ValueError:
                await _reply(send, 400, "bad_request", "invalid Content-Length header")
                return
            if too_big:
                await _reply(send, 413, "body_too_large", f"request body over {limit} bytes")
                return
            chunks, size = [], 0
            while True:  # read the (bounded) body before the app sees it, then replay it
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    await _reply(send, 413, "body_too_large", f"request body over {limit} bytes")
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
        key = _presented_key(headers) if g.max_inflight_per_key else None
        if key is not None and g.per_key.get(key, 0) >= (g.max_inflight_per_key or 0):
            await _reply(send, 429, "too_many_requests", f"this key has {g.max_inflight_per_key} requests in "
                         "progress (limits.max_inflight_per_key); retry later",
                         [(b"retry-after", str(g.retry_after_s).encode())])
            return
        g.inflight += 1
        if key is not None:
            g.per_key[key] = g.per_key.get(key, 0) + 1
        try:
            await self.app(scope, receive, send)
        finally:
            g.inflight -= 1
            if key is not None:
                g.per_key[key] -= 1
                if not g.per_key[key]:
                    del g.per_key[key]
