"""Authentication and the admin plane, in-process (no Ray): the real ingress FastAPI app with a real ``Ingress``
instance whose deployment handles are fakes.

- every route of the OpenAPI document (and FastAPI's docs routes) needs a key unless it is health, readiness,
  docs or metrics — under "/" and under a mount prefix (``root_path``, what Ray Serve's ``route_prefix`` sets);
- the admin plane is off unless configured, has its own credential, and names bundles relative to a models root;
- a failed swap answers a code, a short message and a request id (the remote error is logged, not returned);
- "no auth" is explicit: keys mode without keys refuses to start, and ``none`` refuses a non-loopback bind.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi import WebSocket  # at module level: FastAPI resolves the endpoint's string annotations here
from starlette.applications import Starlette
from starlette.routing import Mount

from retrec.bundle import write_manifest
from retrec.serving import middleware
from retrec.serving.config import ServingConfig
from retrec.serving.swaps import LocalLedger
from tests.serving.inproc import Started
from tests.serving.routes import BODIES, walk_routes

API_KEY = "api-key-0123456789"
ADMIN_KEY = "admin-key-9876543210"
SECRET = "s3cret-value-in-env"
def _future(value: Any = None, error: BaseException | None = None) -> asyncio.Future:
    future = asyncio.get_running_loop().create_future()
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
    return future


class _Call:
    def __init__(self, fn: Any) -> None:
        self.remote = fn


class FakeShard:
    """The calls the ingress makes on an ``IndexShard`` handle; ``fail_load`` makes ``load`` raise."""

    def __init__(self) -> None:
        self.loaded: list[str] = []
        self.fail_load: BaseException | None = None
        self.search_many = _Call(lambda payloads, k, ref: _future([[("d1", 1.0)] for _ in payloads]))
        self.load = _Call(self._load)
        self.digests: list[str] = []
        self.versions = _Call(lambda: _future(list(self.digests)))  # shards report the digests they hold

    def _load(self, ref: dict[str, str]) -> asyncio.Future:
        if self.fail_load is not None:
            return _future(error=self.fail_load)
        self.loaded.append(ref["version"])
        self.digests.append(ref["digest"])
        return _future(None)


class FakeRecommender:
    def __init__(self) -> None:
        self.recommend = _Call(lambda history, k, exclude: _future(
            {"version": "r1", "items": [("i1", 1.0)], "skipped_unknown": 0, "unknown_examples": []}))
        self.info = _Call(lambda: _future({"kind": "recommender/bert4rec", "version": "r1"}))


def _bundle(path: Path, version: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    write_manifest(path, kind="index/bm25", name="bm25", version=version, config={"shards": 1})
    return path


@pytest.fixture
def models_root(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    _bundle(root / "bm25-v1", "bm25-v1")
    _bundle(root / "bm25-v2", "bm25-v2")
    _bundle(tmp_path / "outside", "outside")
    (root / "current").symlink_to("bm25-v2")                    # a symlink inside the root: allowed
    (root / "escape").symlink_to(tmp_path / "outside")          # a symlink out of the root: refused
    return root


def _args(models_root: Path, **overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "retrievers": {"bm25": {"index": str(models_root / "bm25-v1")}},
        "recommenders": {"bert4rec": {"bundle": str(models_root / "bm25-v1")}},
        "auth": {"mode": "keys", "api_keys_env": "TEST_RETREC_API_KEYS"},
        "admin": {"enabled": True, "keys_env": "TEST_RETREC_ADMIN_KEYS", "models_root": str(models_root)},
        "events": {"log": str(models_root.parent / "events")},
    }
    return {**args, **overrides}


def _ingress_class() -> type:
    from retrec.serving.ingress import Ingress

    return Ingress.func_or_class.__mro__[1]  # the user class under Serve's ASGI wrapper


@pytest.fixture
def keys_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_RETREC_API_KEYS", API_KEY)
    monkeypatch.setenv("TEST_RETREC_ADMIN_KEYS", ADMIN_KEY)
    monkeypatch.setenv("RETREC_API_KEYS", SECRET)  # what an attacker wants echoed


@pytest.fixture
def guard_state() -> Iterator[None]:
    saved = dict(vars(middleware.GUARD))
    yield
    vars(middleware.GUARD).update(saved)


def make_ingress(args: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> tuple[Any, dict[str, FakeShard]]:
    """A real ``Ingress`` (the user class) with fake shard / recommender handles, routed to by the ingress app
    (Serve's class-based view finds its instance through ``serve.get_replica_context()``)."""
    from ray import serve

    from retrec.serving.shards import index_ref

    cls = _ingress_class()
    shard = FakeShard()
    ref = index_ref(args["retrievers"]["bm25"]["index"])
    shard.loaded.append(ref["version"])
    shard.digests.append(ref["digest"])
    retrievers = {"bm25": {"kind": "index/bm25", "payload": "text", "shards": [shard], "ref": ref, "encoder": None}}
    ingress = cls(args, retrievers, {}, {"bert4rec": FakeRecommender()})

    async def no_controller(user_configs: dict[str, Any], merge: bool = False) -> None:  # the Serve broadcast
        return None

    ingress.versions.publish = no_controller
    ingress.versions.ledger = LocalLedger()  # in Ray: the application's ledger actor
    ingress.readiness.stop()
    ingress.readiness = Started()  # past its first readiness check (the cache is tested in test_ops.py)
    monkeypatch.setattr(serve, "get_replica_context", lambda: SimpleNamespace(
        servable_object=ingress, app_name="retrec", _deployment_config=SimpleNamespace(max_ongoing_requests=128)))
    return ingress, {"bm25": shard}


@pytest.fixture
def ingress(models_root: Path, keys_env: None, guard_state: None,
            monkeypatch: pytest.MonkeyPatch) -> tuple[Any, dict[str, FakeShard]]:
    return make_ingress(_args(models_root), monkeypatch)


def _run(app: Any, calls: list[tuple[str, str, Any, dict[str, str]]]) -> list[httpx.Response]:
    async def go() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            return [await c.request(m, p, json=b, headers=h) for m, p, b, h in calls]

    return asyncio.run(go())


def _mounted(prefix: str) -> Any:
    from retrec.serving.ingress import api

    return api if prefix == "" else Starlette(routes=[Mount(prefix, app=api)])


# ---- 1 + acceptance 4: auth follows routing --------------------------------------------------------------

@contextmanager
def _sender(app: Any) -> Iterator[Any]:
    """``send(method, path, body, headers) -> (status, error code)`` on one event loop (the ingress's batch
    queues belong to the loop that first used them)."""
    loop = asyncio.new_event_loop()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")

    def send(method: str, path: str, body: Any, headers: dict[str, str]) -> tuple[int, str | None]:
        r = loop.run_until_complete(client.request(method, path, json=body, headers=headers))
        code = r.json().get("error", {}).get("code") if r.headers.get("content-type") == "application/json" \
            and r.status_code >= 400 else None
        return r.status_code, code

    try:
        yield send
    finally:
        loop.run_until_complete(client.aclose())
        pending = asyncio.all_tasks(loop)  # the batch queues' workers, if any
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()


@pytest.mark.parametrize("prefix", ["", "/api", "/a/b"])
def test_every_route_needs_a_key_except_health_readiness_docs_metrics(ingress: Any, prefix: str) -> None:
    """Acceptance 4 in-process: the ingress app at "/" and mounted under a prefix (``root_path``, as Serve's
    ``route_prefix`` sets it); every operation of its OpenAPI document and the docs routes."""
    app = _mounted(prefix)
    (schema,) = _run(app, [("GET", f"{prefix}/openapi.json", None, {})])
    assert schema.status_code == 200
    paths = set(schema.json()["paths"])
    assert {"/v1/search", "/v1/recommend", "/v1/models", "/v1/admin/indexes", "/healthz"} <= paths
    with _sender(app) as send:
        assert walk_routes(send, prefix, schema.json(), api_key=API_KEY, admin_key=ADMIN_KEY) == []


@pytest.mark.parametrize("prefix", ["", "/api"])
def test_unknown_paths_and_the_other_credential_are_refused(ingress: Any, prefix: str) -> None:
    app = _mounted(prefix)
    unknown, api_on_admin, admin_on_api = _run(app, [
        ("GET", f"{prefix}/v1/nothing", None, {}),
        ("POST", f"{prefix}/v1/admin/indexes", BODIES["/v1/admin/indexes"], {"X-API-Key": API_KEY}),
        ("POST", f"{prefix}/v1/search", BODIES["/v1/search"], {"X-API-Key": ADMIN_KEY})])
    assert unknown.status_code == 401  # deny by default: no key, no routing information
    assert api_on_admin.status_code == 401 and admin_on_api.status_code == 401


def test_guard_checks_the_routed_path_under_a_mount(guard_state: None) -> None:
    """The guard alone, on a small app mounted under a prefix (Serve's route_prefix sets root_path the same way)."""
    from fastapi import FastAPI
    from starlette.testclient import TestClient
    from starlette.websockets import WebSocketDisconnect

    from retrec.serving.errors import install_error_handlers

    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(middleware.GuardMiddleware)

    @app.post("/v1/echo")
    async def echo(body: dict) -> dict:
        return body

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.websocket("/v1/ws")
    async def ws(socket: WebSocket) -> None:
        await socket.accept()
        await socket.send_text("hi")
        await socket.close()

    middleware.GUARD.configure(api_keys=(b"k1",), max_inflight=8)
    outer = Starlette(routes=[Mount("/api", app=app)])
    anon, keyed, health = _run(outer, [("POST", "/api/v1/echo", {"a": 1}, {}),
                                       ("POST", "/api/v1/echo", {"a": 1}, {"X-API-Key": "k1"}),
                                       ("GET", "/api/healthz", None, {})])
    assert anon.status_code == 401, anon.text
    assert keyed.status_code == 200 and health.status_code == 200
    with TestClient(outer) as client:
        with pytest.raises(WebSocketDisconnect) as closed, client.websocket_connect("/api/v1/ws") as socket:
            socket.receive_text()
        assert closed.value.code == 1008
        with client.websocket_connect("/api/v1/ws", headers={"X-API-Key": "k1"}) as socket:
            assert socket.receive_text() == "hi"


# ---- 2: a safe admin plane -------------------------------------------------------------------------------

def test_admin_is_off_unless_configured(models_root: Path) -> None:
    base = {"retrievers": {"bm25": {"index": "x"}}}
    assert ServingConfig.model_validate(base).admin.enabled is False
    assert ServingConfig.model_validate({**base, "admin": False}).admin.enabled is False
    with pytest.raises(ValueError, match="models_root"):
        ServingConfig.model_validate({**base, "admin": True})  # the old switch alone is not enough
    with pytest.raises(ValueError, match="models_root"):
        ServingConfig.model_validate({**base, "admin": {"enabled": True}})


def test_admin_disabled_answers_403(models_root: Path, keys_env: None, guard_state: None,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from retrec.serving.ingress import api

    make_ingress(_args(models_root, admin={"enabled": False}), monkeypatch)
    (r,) = _run(api, [("POST", "/v1/admin/indexes", BODIES["/v1/admin/indexes"], {"X-API-Key": API_KEY})])
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"


def test_admin_needs_its_own_keys(models_root: Path, monkeypatch: pytest.MonkeyPatch, guard_state: None) -> None:
    monkeypatch.setenv("TEST_RETREC_API_KEYS", API_KEY)
    monkeypatch.delenv("TEST_RETREC_ADMIN_KEYS", raising=False)
    with pytest.raises(ValueError, match="admin key"):
        make_ingress(_args(models_root), monkeypatch)


BAD_PATHS = ["/etc", "/${RETREC_API_KEYS}", "${RETREC_API_KEYS}", "$RETREC_API_KEYS", "~", "~root/x",
             "../outside", "bm25-v1/../../outside", "escape", "escape/", ".", "", "bm25-v1\x00", "nope"]


@pytest.mark.parametrize("path", BAD_PATHS, ids=[repr(p) for p in BAD_PATHS])
def test_admin_bundle_paths_stay_inside_the_models_root(ingress: Any, models_root: Path, path: str) -> None:
    from retrec.serving.ingress import api

    (r,) = _run(api, [("POST", "/v1/admin/indexes", {"retriever": "bm25", "path": path},
                       {"X-API-Key": ADMIN_KEY})])
    assert r.status_code in (400, 422), r.text
    text = r.text
    assert SECRET not in text and API_KEY not in text and ADMIN_KEY not in text
    assert str(models_root.parent) not in text and os.path.realpath(models_root.parent) not in text
    assert str(Path.home()) not in text or str(Path.home()) == "/"
    _, shards = ingress
    assert shards["bm25"].loaded == ["bm25-v1"]  # nothing was loaded


def test_admin_swaps_a_bundle_named_relative_to_the_root(ingress: Any, models_root: Path) -> None:
    from retrec.serving.ingress import api

    auth = {"X-API-Key": ADMIN_KEY}
    first, second, models = _run(api, [
        ("POST", "/v1/admin/indexes", {"retriever": "bm25", "path": "bm25-v2"}, auth),
        ("POST", "/v1/admin/indexes", {"retriever": "bm25", "path": "current"}, auth),  # symlink inside the root
        ("GET", "/v1/models", None, {"X-API-Key": API_KEY})])
    assert first.status_code == 200, first.text
    assert first.json() == {"retriever": "bm25", "version": "bm25-v2", "previous": "bm25-v1"}
    assert re.fullmatch(r"[0-9a-f]{32}", first.headers["X-Swap-Id"])  # its record: /v1/admin/swaps/{id}
    assert second.status_code == 200, second.text
    assert models.json()["retrievers"]["bm25"]["index_version"] == "bm25-v2"


def test_user_config_swap_keeps_the_operators_path_resolution(ingress: Any, models_root: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """``user_config`` comes from the operator's config file: ``$VAR`` / relative paths resolve as the config's."""
    obj, shards = ingress
    monkeypatch.setenv("TEST_MODELS", str(models_root))
    asyncio.run(obj.reconfigure({"indexes": {"bm25": "$TEST_MODELS/bm25-v2"}}))
    assert obj.versions.active["bm25"]["version"] == "bm25-v2" and shards["bm25"].loaded[-1] == "bm25-v2"


# ---- 3: a failed swap does not return the remote error -----------------------------------------------------

def test_failed_swap_returns_a_code_and_a_request_id(ingress: Any, caplog: pytest.LogCaptureFixture) -> None:
    from retrec.serving.ingress import api

    _, shards = ingress
    remote = "RayTaskError(OSError): ray::IndexShard.load() (pid=4242, ip=10.1.2.3, actor_id=abcdef)\n" \
             "Traceback (most recent call last):\n  File \"/srv/secret/shards.py\", line 9\nOSError: disk"
    shards["bm25"].fail_load = RuntimeError(remote)
    with caplog.at_level(logging.ERROR, logger="retrec.serving"):
        (r,) = _run(api, [("POST", "/v1/admin/indexes", {"retriever": "bm25", "path": "bm25-v2"},
                           {"X-API-Key": ADMIN_KEY})])
    assert r.status_code == 503, r.text
    err = r.json()["error"]
    assert err["code"] == "swap_failed" and err["request_id"]
    for leak in ("10.1.2.3", "4242", "Traceback", "/srv/secret", "abcdef", str(Path(os.getcwd()))):
        assert leak not in r.text
    assert "bm25-v1" in err["message"]  # still serving the previous version
    logged = "\n".join(rec.getMessage() + (rec.exc_text or "") for rec in caplog.records)
    assert err["request_id"] in logged and "10.1.2.3" in caplog.text


# ---- 4: "no auth" is explicit ----------------------------------------------------------------------------

def test_keys_mode_without_keys_refuses_to_start(models_root: Path, monkeypatch: pytest.MonkeyPatch,
                                                 guard_state: None) -> None:
    monkeypatch.delenv("TEST_RETREC_API_KEYS", raising=False)
    monkeypatch.setenv("TEST_RETREC_ADMIN_KEYS", ADMIN_KEY)
    with pytest.raises(ValueError, match="no API key") as err:
        make_ingress(_args(models_root), monkeypatch)
    assert ADMIN_KEY not in str(err.value)
    # the old spelling (no key configured) is no longer "auth off"
    monkeypatch.delenv("RETREC_API_KEYS", raising=False)
    with pytest.raises(ValueError, match="no API key"):
        make_ingress(_args(models_root, auth={}, admin=False), monkeypatch)


def test_auth_none_is_explicit_and_open(models_root: Path, monkeypatch: pytest.MonkeyPatch,
                                       guard_state: None) -> None:
    from retrec.serving.ingress import api

    monkeypatch.delenv("RETREC_API_KEYS", raising=False)
    make_ingress(_args(models_root, auth={"mode": "none"}, admin=False), monkeypatch)
    (r,) = _run(api, [("POST", "/v1/search", BODIES["/v1/search"], {})])
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(("host", "auth", "ok"), [
    ("127.0.0.1", {"mode": "none"}, True),
    ("localhost", {"mode": "none"}, True),
    ("::1", {"mode": "none"}, True),
    ("0.0.0.0", {"mode": "none"}, False),
    ("10.0.0.7", {"mode": "none"}, False),
    ("::", {"mode": "none"}, False),
    ("0.0.0.0", {"mode": "none", "allow_unauthenticated_network": True}, True),
    ("0.0.0.0", {"mode": "keys"}, True),
])
def test_no_auth_refuses_a_non_loopback_bind(host: str, auth: dict[str, Any], ok: bool) -> None:
    from retrec.serving.config import check_exposure

    cfg = ServingConfig.model_validate({"retrievers": {"bm25": {"index": "x"}}, "auth": auth})
    if ok:
        check_exposure(cfg, host)
    else:
        with pytest.raises(ValueError, match="loopback"):
            check_exposure(cfg, host)


def test_start_refuses_before_starting_ray(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import ray

    from retrec.serving import launch

    def no_ray(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("ray.init called: the bind check must come first")

    monkeypatch.setattr(ray, "init", no_ray)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    config = {"http_options": {"host": "0.0.0.0", "port": 8000},
              "applications": [{"name": "retrec", "route_prefix": "/", "import_path": "retrec.serving.app:build_app",
                                "args": {"retrievers": {"bm25": {"index": str(tmp_path)}},
                                         "auth": {"mode": "none"}}}]}
    with pytest.raises(ValueError, match="loopback"):
        launch.start(config)
    monkeypatch.delenv("RETREC_API_KEYS", raising=False)
    config["applications"][0]["args"]["auth"] = {"mode": "keys"}
    with pytest.raises(ValueError, match="no API key"):
        launch.start(config)


def test_build_app_refuses_no_auth_on_a_routable_serve_host(monkeypatch: pytest.MonkeyPatch,
                                                            models_root: Path) -> None:
    """``serve run`` / ``serve deploy`` / KubeRay: build_app asks Serve for its HTTP host."""
    from retrec.serving import app

    monkeypatch.setattr(app, "serve_http_host", lambda: "0.0.0.0")
    with pytest.raises(ValueError, match="loopback"):
        app.build_app({"retrievers": {"bm25": {"index": str(models_root / "bm25-v1")}}, "auth": {"mode": "none"}})


# ---- 13: a local Ray binds loopback ---------------------------------------------------------------------------

def test_start_pins_the_local_ray_node_to_loopback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import ray
    from ray._private import ray_constants

    from retrec import process_env
    from retrec.serving import launch

    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", True)  # restored after the test
    monkeypatch.setenv(process_env.RAY_CLUSTER_ENV, "1")
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: bool(calls))
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.setattr(launch, "deploy", lambda config: ["/"])
    config = {"http_options": {"host": "127.0.0.1", "port": 8000},
              "applications": [{"name": "retrec", "route_prefix": "/", "import_path": "retrec.serving.app:build_app",
                                "args": {"retrievers": {"bm25": {"index": str(tmp_path)}}, "auth": {"mode": "none"}}}]}
    launch.start(config, wait=False)
    (kwargs,) = calls
    assert kwargs.get("_node_ip_address") == "127.0.0.1"
    # without these Ray turns 127.0.0.1 into the routable address (GCS and raylet then listen on every interface)
    assert ray_constants.ENABLE_RAY_CLUSTER is False and os.environ[process_env.RAY_CLUSTER_ENV] == "0"
    assert os.environ.get("RAY_AUTH_MODE", "token") == "token"  # Ray's token auth stays on for the local cluster
