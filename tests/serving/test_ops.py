"""Operating the service, without Ray: probes never shed, cached readiness, cluster-wide metrics and their
PodMonitor, the Ray Serve settings from the config file, the admin swap's own timeout (issue 12: 10, 11, 12, 14)."""

from __future__ import annotations

import asyncio
import inspect
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi import FastAPI

from retrec.serving.config import ServingConfig
from retrec.serving.errors import install_error_handlers
from retrec.serving.middleware import GUARD, GuardMiddleware

ROOT = Path(__file__).resolve().parents[2]


def _rayservice() -> dict[str, Any]:
    docs = yaml.safe_load_all((ROOT / "k8s" / "base" / "rayservice.yaml").read_text(encoding="utf-8"))
    return next(d for d in docs if d and d["kind"] == "RayService")


def _containers(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    cluster = service["spec"]["rayClusterConfig"]
    groups = {"head": cluster["headGroupSpec"], **{g["groupName"]: g for g in cluster["workerGroupSpecs"]}}
    return {name: g["template"]["spec"]["containers"][0] for name, g in groups.items()}


# ---- 10: health endpoints are never shed; liveness cannot fan out; /readyz is cached ----------------------
@pytest.fixture
def busy_app() -> Iterator[FastAPI]:
    """The guard over a slow endpoint and the probe paths; ``max_inflight=1``."""
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(GuardMiddleware)
    gate, entered = asyncio.Event(), asyncio.Event()

    @app.post("/v1/slow")
    async def slow(body: dict) -> dict:
        entered.set()
        await asyncio.wait_for(gate.wait(), 5)
        return body

    for path in ("/healthz", "/readyz", "/metrics"):
        app.add_api_route(path, lambda: {"status": "ok"}, methods=["GET"])
    app.state.gate, app.state.entered = gate, entered
    saved = (GUARD.max_inflight, GUARD.api_keys, GUARD.require_keys)
    GUARD.configure(max_inflight=1, api_keys=(), require_keys=False)  # auth.mode: none
    yield app
    GUARD.max_inflight, GUARD.api_keys, GUARD.require_keys = saved


@pytest.mark.parametrize("root_path", ["", "/api"])
def test_health_endpoints_are_never_shed(busy_app: FastAPI, root_path: str) -> None:
    async def scenario() -> tuple[list[httpx.Response], httpx.Response]:
        transport = httpx.ASGITransport(app=busy_app, root_path=root_path)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            slow = asyncio.create_task(c.post(f"{root_path}/v1/slow", json={"a": 1}))
            # the one allowed request is in flight: the server is "overloaded"
            await asyncio.wait_for(busy_app.state.entered.wait(), 5)
            probes = [await c.get(f"{root_path}{p}") for p in ("/healthz", "/readyz", "/metrics")]
            shed = await c.post(f"{root_path}/v1/slow", json={"b": 2})
            busy_app.state.gate.set()
            await slow
            return probes, shed

    probes, shed = asyncio.run(scenario())
    assert [r.status_code for r in probes] == [200, 200, 200]
    assert shed.status_code == 503  # API traffic is still shed


def test_head_liveness_cannot_fan_out_and_probes_have_timeouts() -> None:
    head = _containers(_rayservice())["head"]
    live, ready = head["livenessProbe"], head["readinessProbe"]
    # Liveness restarts the head (and with it the cluster): it must not depend on the Serve app or its load.
    assert "httpGet" not in live or live["httpGet"]["path"].startswith("/-/"), live
    command = " ".join(live.get("exec", {}).get("command", []))
    assert "httpGet" in live or ("raylet_healthz" in command and "gcs_healthz" in command), live
    assert ready["httpGet"]["path"] == "/readyz"
    for probe in (live, ready):
        assert probe["timeoutSeconds"] >= 1 and probe["failureThreshold"] >= 3


def _servable(ingress: Any) -> Any:
    """Point the ingress app's class-based view at ``fake`` (the real endpoints, no Ray replica)."""
    from ray.serve._private.http_util import _walk_fastapi_routes

    route = next(r for r, _, _ in _walk_fastapi_routes(ingress.api) if r.path == "/healthz")
    return inspect.signature(route.endpoint).parameters["self"].default.dependency


@pytest.fixture
def ingress_with() -> Iterator[Any]:
    """``ingress_with(**attrs)`` → an httpx client on the real ingress app whose replica is a bare ``Ingress``."""
    from retrec.serving import ingress

    dep = None
    saved = (GUARD.max_inflight, GUARD.api_keys, GUARD.require_keys, GUARD.admin_keys)
    GUARD.configure(max_inflight=64, api_keys=(), require_keys=False, admin_keys=(b"admin-key-0123",))

    def make(**attrs: Any) -> httpx.AsyncClient:
        nonlocal dep
        fake = attrs.pop("fake", None) or object.__new__(ingress.Ingress.func_or_class)
        fake.__dict__.update(attrs)
        dep = _servable(ingress)
        ingress.api.dependency_overrides[dep] = lambda: fake
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=ingress.api), base_url="http://t")

    yield make
    if dep is not None:
        ingress.api.dependency_overrides.pop(dep, None)
    GUARD.max_inflight, GUARD.api_keys, GUARD.require_keys, GUARD.admin_keys = saved


class _SlowShards:
    """An ``IndexVersions`` stand-in whose readiness fan-out takes ``delay`` seconds and is counted."""

    def __init__(self, delay: float) -> None:
        self.delay, self.calls = delay, 0
        self.encoders: dict[str, Any] = {}  # encoder manifests by bundle (none here)

    async def readiness(self) -> dict[str, bool]:
        self.calls += 1
        await asyncio.sleep(self.delay)
        return {"bm25-0": True}


def test_readyz_answers_from_cache_without_a_fanout_per_probe(ingress_with: Any) -> None:
    from retrec.serving.ingress import Ingress
    from retrec.serving.readiness import ReadinessCache

    shards = _SlowShards(delay=0.3)

    async def scenario() -> tuple[list[int], list[float]]:
        fake = object.__new__(Ingress.func_or_class)
        cache = ReadinessCache(fake._readiness_checks, period_s=0.2)
        async with ingress_with(fake=fake, versions=shards, encoders={}, readiness=cache) as c:
            statuses, took = [], []
            for _ in range(40):  # a probe every ~20 ms
                t = time.perf_counter()
                r = await c.get("/readyz")
                took.append(time.perf_counter() - t)
                statuses.append(r.status_code)
                await asyncio.sleep(0.02)
            cache.stop()
            return statuses, took

    statuses, took = asyncio.run(scenario())
    took.sort()
    assert took[len(took) // 2] < 0.05 and took[-1] < 0.3, took  # never waits for the fan-out (0.3 s)
    assert statuses[0] == 503 and statuses[-1] == 200  # "starting" until the first background check
    assert shards.calls <= 10  # refreshed in the background every 0.2 s, not once per probe (40 probes)


def test_readiness_cache_goes_stale_when_checks_stop() -> None:
    from retrec.serving.readiness import ReadinessCache

    async def hangs() -> dict[str, bool]:
        await asyncio.sleep(10)
        return {}

    async def scenario() -> tuple[Any, Any]:
        ok = ReadinessCache(lambda: asyncio.sleep(0, {"a": True}), period_s=0.05, stale_after_s=0.2)
        ok.start()
        await asyncio.sleep(0.1)
        first = ok.answer()
        ok.stop()
        stuck = ReadinessCache(hangs, period_s=0.05, stale_after_s=0.2)
        stuck._checks, stuck._at = {"a": True}, time.monotonic()
        stuck.start()
        await asyncio.sleep(0.3)
        second = stuck.answer()
        stuck.stop()
        return first, second

    first, second = asyncio.run(scenario())
    assert first == (True, {"a": True})
    assert second[0] is False and "stale" in second[1]["reason"]


# ---- 11: metrics through Ray's metrics API (cluster-wide), documented, scraped by a PodMonitor ------------
def test_metrics_are_recorded_through_rays_metrics_api(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray.util.metrics as ray_metrics

    from retrec.serving.prometheus import ServingMetrics

    recorded: list[tuple[str, float, dict[str, str]]] = []

    def record(self: Any, value: float, tags: dict[str, str] | None = None) -> None:
        recorded.append((self._name, value, dict(tags or {})))

    monkeypatch.setattr(ray_metrics.Metric, "_record", record)
    m = ServingMetrics()
    m.export_to_ray()
    m.requests.labels(endpoint="/v1/search", status="200").inc()
    m.latency.labels(endpoint="/v1/search").observe(0.012)
    m.shard_failures.labels(retriever="bm25", shard="0").inc()
    m.partial.inc()
    m.set_version("bm25", "v1")
    m.set_version("bm25", "v2")
    assert ("retrec_requests", 1.0, {"endpoint": "/v1/search", "status": "200"}) in recorded
    assert ("retrec_request_latency_seconds", 0.012, {"endpoint": "/v1/search"}) in recorded
    assert ("retrec_shard_failures", 1.0, {"retriever": "bm25", "shard": "0"}) in recorded
    assert ("retrec_partial_responses", 1.0, {}) in recorded
    versions = [(v, t["version"]) for n, v, t in recorded if n == "retrec_index_version_info"]
    assert versions[-2:] == [(0.0, "v1"), (1.0, "v2")]  # the old version's series drops to 0
    assert 'retrec_requests_total{endpoint="/v1/search",status="200"} 1.0' in m.render()[0].decode()


def test_requests_are_counted_by_route_under_a_prefix() -> None:
    from retrec.serving import prometheus as metrics

    app = FastAPI()
    app.add_middleware(metrics.MetricsMiddleware)
    app.add_api_route("/v1/models", lambda: {}, methods=["GET"])
    before = metrics.METRICS.requests.labels(endpoint="/v1/models", status="200")._local._value.get()

    async def scenario() -> int:
        transport = httpx.ASGITransport(app=app, root_path="/api")
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return (await c.get("/api/v1/models")).status_code

    assert asyncio.run(scenario()) == 200
    assert metrics.METRICS.requests.labels(endpoint="/v1/models", status="200")._local._value.get() == before + 1


def test_every_metric_is_documented() -> None:
    from retrec.serving.prometheus import ServingMetrics

    page = (ROOT / "docs" / "serving.md").read_text(encoding="utf-8")  # its metrics table
    names = ServingMetrics().names()
    assert len(names) >= 8
    for name in names:
        assert f"`{name}" in page, f"{name} is not documented in docs/serving.md"


_PODMONITOR_SPEC_KEYS = {"selector", "namespaceSelector", "podMetricsEndpoints", "jobLabel", "podTargetLabels",
                         "sampleLimit", "targetLimit"}
_ENDPOINT_KEYS = {"port", "path", "scheme", "interval", "scrapeTimeout", "honorLabels", "relabelings",
                  "metricRelabelings", "params"}


def test_podmonitor_scrapes_every_ray_nodes_metrics_port() -> None:
    """A hand-written shape check of monitoring.coreos.com/v1 PodMonitor (no CRD schema is vendored)."""
    monitor = yaml.safe_load((ROOT / "k8s" / "podmonitor.yaml").read_text(encoding="utf-8"))
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["kind"] == "PodMonitor"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", monitor["metadata"]["name"])
    spec = monitor["spec"]
    assert set(spec) <= _PODMONITOR_SPEC_KEYS, set(spec) - _PODMONITOR_SPEC_KEYS
    labels = spec["selector"]["matchLabels"]
    assert labels and all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items())
    endpoints = spec["podMetricsEndpoints"]
    assert isinstance(endpoints, list) and endpoints
    service = _rayservice()
    cluster = service["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for ep in endpoints:
        assert set(ep) <= _ENDPOINT_KEYS, set(ep) - _ENDPOINT_KEYS
        assert re.fullmatch(r"\d+[smh]", ep.get("interval", "30s")) and ep.get("path", "/metrics") == "/metrics"
        for relabel in ep.get("relabelings", []):
            assert isinstance(relabel.get("sourceLabels", []), list) and "targetLabel" in relabel
        for group, container in zip(groups, _containers(service).values()):
            ports = {p.get("name"): p["containerPort"] for p in container["ports"]}
            assert ep["port"] in ports, f"{container['name']} has no port named {ep['port']}"
            assert str(ports[ep["port"]]) == group["rayStartParams"]["metrics-export-port"]
    assert labels.items() <= {"ray.io/is-ray-node": "yes"}.items()  # KubeRay's label of every Ray pod


# ---- 12: the Ray Serve settings come from the config file, applied by every path --------------------------
def _file_env() -> dict[str, str]:
    data = yaml.safe_load((ROOT / "configs" / "serve.yaml").read_text(encoding="utf-8"))
    return data["applications"][0]["runtime_env"]["env_vars"]


def test_config_file_carries_the_serve_settings_and_launch_applies_exactly_them(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from retrec.serving import launch

    env = _file_env()
    assert env["RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"] == "0"
    assert {"RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP", "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE"} <= set(env)
    assert launch.serve_env(launch.load_serve_config(launch.DEFAULT_CONFIG)) == env
    for key in env:
        monkeypatch.delenv(key, raising=False)
    other = {"applications": [{"runtime_env": {"env_vars": {"RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "7"}}}]}
    monkeypatch.setenv("RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE", "1")
    launch.apply_serve_env(other)  # the file's values, nothing else (no second copy in the code)
    import os

    assert os.environ["RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE"] == "7"
    assert all(key not in os.environ for key in env if key != "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE")
    assert launch.demo_config(tmp_path, 8000)["applications"][0]["runtime_env"]["env_vars"] == env
    with pytest.raises(ValueError, match="RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE"):
        nine = {"runtime_env": {"env_vars": {"RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "9"}}}
        launch.serve_env({"applications": [other["applications"][0], nine]})


def test_rayservice_applies_the_same_serve_settings() -> None:
    env = _file_env()
    service = _rayservice()
    serve_config = yaml.safe_load(service["spec"]["serveConfigV2"])
    assert serve_config["applications"][0]["runtime_env"]["env_vars"] == env  # every replica of the app
    for name, container in _containers(service).items():  # the proxies and controller (node processes)
        values = {e["name"]: e.get("value") for e in container.get("env", [])}
        assert {k: values.get(k) for k in env} == env, name


# ---- 14: the admin swap has a timeout of its own ----------------------------------------------------------
class _StuckVersions:
    def __init__(self) -> None:
        self.cancelled = False

    async def swap(self, name: str, path: str, label: str | None = None, swap_id: str | None = None
                   ) -> dict[str, Any]:
        try:
            await asyncio.sleep(1.0)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        return {"retriever": name, "version": "never"}


def test_admin_swap_past_its_timeout_answers_202_and_goes_on(ingress_with: Any, tmp_path: Path) -> None:
    """Issue 44: the swap is not cancelled (its publish would go on in its thread anyway); the answer says it is
    pending and where to follow it (tests/serving/test_swap_coordination.py follows one to its end)."""
    (tmp_path / "v2").mkdir()
    (tmp_path / "v2" / "manifest.json").write_text("{}")
    cfg = ServingConfig.model_validate({"retrievers": {"bm25": {"index": "x"}}, "limits": {"swap_timeout_s": 0.2},
                                        "auth": {"mode": "none"},
                                        "admin": {"enabled": True, "keys_env": "UNSET_ADMIN_KEYS_ENV",
                                                  "keys_file": None, "models_root": str(tmp_path)}})
    versions = _StuckVersions()

    async def scenario() -> tuple[httpx.Response, float]:
        async with ingress_with(cfg=cfg, versions=versions, retrievers={"bm25": None}) as c:
            t = time.perf_counter()
            r = await c.post("/v1/admin/indexes", json={"retriever": "bm25", "path": "v2"},
                             headers={"X-API-Key": "admin-key-0123"})
            took = time.perf_counter() - t
            await asyncio.sleep(1.2)  # the swap runs to its end
            return r, took

    response, took = asyncio.run(scenario())
    assert response.status_code == 202 and took < 1.0
    body = response.json()
    assert body["status"] == "pending" and "0.2 s" in body["message"]
    assert body["status_url"] == f"/v1/admin/swaps/{body['swap_id']}"
    assert not versions.cancelled
    assert ServingConfig.model_validate({"retrievers": {"bm25": {"index": "x"}}}).limits.swap_timeout_s > 0
