"""Index shards across Ray nodes: a multi-node Ray on this machine (``ray.cluster_utils.Cluster``: a head and two
worker nodes, each worker offering its own custom resource), a dense index of 3 shards pinned to the workers by
``shard_resources``, served by ``launch.start(config, address=...)`` (what ``retrec serve --ray-address`` does).

Asserted: each shard replica runs on the node its resource names; answers equal the in-process index; a worker
node killed under load (SIGKILL: its raylet, Ray's processes and the replica's worker) leaves every request
answered (200), partial with the lost shard named, ``/healthz`` 200 and ``/readyz`` degraded but up; the node back
with the same resource brings the shard back (Serve reschedules the pending replica there) and answers are
complete again within 30 s. Also, without Ray: the pinning options and their validation, the readiness verdict,
``retrec serve --ray-address`` / ``$RAY_ADDRESS`` joining a cluster.

The nodes' CPUs are fake (0 on the workers, 1 on the head: every replica asks for none), so the cluster schedules
on 2 real cores; its nodes are on 127.0.0.1 with Ray's token auth (:func:`like_a_local_ray`); node death is
detected in ~5 s (GCS health checks every 1 s, 5 misses; Ray's default: every 3 s).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from retrec.data.beir import load_retrieval_data
from retrec.index.dense_retriever import DenseRetriever
from retrec.process_env import RAY_CLUSTER_ENV
from retrec.runtime.onnx_encoder import OnnxEncoder
from retrec.serving import launch
from retrec.serving.config import RetrieverConfig, ServingConfig
from retrec.serving.readiness import any_of_each
from tests.tiny_models import tiny_dense_encoder

ray = pytest.importorskip("ray")
cluster_utils = pytest.importorskip("ray.cluster_utils")

SHARDS = 3
# shard i -> the node resource it asks for: shards 0 and 2 on node_a, shard 1 alone on node_b (the one killed)
PINS = ["node_a", "node_b", "node_a"]
PIN = 0.01  # a fraction: pins without limiting how many replicas a node takes
DEAD_SHARD = "dense-1"
# Node death found in ~5 s (Ray's default: checks every 3 s, 10 s timeout, 5 misses); read by the GCS. Not
# shorter: a raylet on a loaded 2-core machine must not miss 5 checks in a row while it is alive.
SYSTEM_CONFIG = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 1000,
                 "health_check_timeout_ms": 1000, "health_check_failure_threshold": 5}


@pytest.fixture(scope="module")
def bundles(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("multinode")
    ids, texts = load_retrieval_data(tiny_data, split="test").doc_texts()
    encoder = tiny_dense_encoder(root / "encoder")
    DenseRetriever.build(OnnxEncoder(encoder, threads=1), ids, texts, shards=SHARDS).save(root / "dense")
    queries = load_retrieval_data(tiny_data, split="test").queries.column("text").to_pylist()[:8]
    return {"encoder": encoder, "dense": root / "dense", "queries": queries}


def _config(bundles: dict[str, Any], port: int) -> dict[str, Any]:
    zero = {"replicas": 1, "num_cpus": 0, "max_ongoing_requests": 64}
    return {
        "proxy_location": "HeadOnly",  # one machine: every node's proxy would want the same port
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [{"name": "retrec", "route_prefix": "/", "import_path": "retrec.serving.app:build_app",
                          "args": {"retrievers": {"dense": {
                              "index": str(bundles["dense"]), "encoder": str(bundles["encoder"]),
                              "placement": "deployment", "shards": zero,
                              "shard_resources": [{pin: PIN} for pin in PINS]}},
                              "encoder": {"placement": "ingress", "threads": 1},
                              "ingress": {**zero, "resources": {"head": PIN}},  # stays up: not on a worker
                              "limits": {"shard_timeout_s": 1.0, "request_timeout_s": 10},
                              "auth": {"mode": "none"}, "use_gpu": False}}]}


@contextlib.contextmanager
def like_a_local_ray() -> Iterator[str]:
    """Environment of a cluster started from this process, as retrec's local Ray is (``start_local_ray``): Ray's
    files under a folder of its own (another Ray on this machine neither sees this cluster, through the address
    file ``ray.init()`` reads, nor is seen by it), every node on 127.0.0.1, Ray's token auth (the default token).
    Yields the folder."""
    from ray._private import ray_constants
    from ray._private.authentication.authentication_token_setup import (
        enable_token_auth_by_default,
        ensure_token_if_auth_enabled,
    )

    temp = tempfile.mkdtemp(prefix="rmn", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    names = ("RAY_TMPDIR", RAY_CLUSTER_ENV, "RAY_AUTH_MODE")
    saved, flag = {k: os.environ.get(k) for k in names}, ray_constants.ENABLE_RAY_CLUSTER
    os.environ.update({"RAY_TMPDIR": temp, RAY_CLUSTER_ENV: "0"})
    ray_constants.ENABLE_RAY_CLUSTER = False  # node addresses: 127.0.0.1, not the machine's routable one
    enable_token_auth_by_default()  # RAY_AUTH_MODE=token unless set (as ray.init does for a new local Ray)
    ensure_token_if_auth_enabled(None, create_token_if_missing=True)
    try:
        yield temp
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        ray_constants.ENABLE_RAY_CLUSTER = flag
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def served(bundles: dict[str, Any]) -> Iterator[dict[str, Any]]:
    if ray.is_initialized():
        ray.shutdown()
    with like_a_local_ray():
        cluster = cluster_utils.Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "resources": {"head": 1}, "include_dashboard": False, "_system_config": SYSTEM_CONFIG})
        try:
            nodes = {pin: cluster.add_node(num_cpus=0, resources={pin: 1}) for pin in sorted(set(PINS))}
            url = launch.start(_config(bundles, launch.free_port()), address=cluster.address)
            yield {"cluster": cluster, "nodes": nodes, "url": url}
        finally:
            launch.stop()
            cluster.shutdown()


# ---- pinning in the config and in build_app (no Ray cluster) ----------------------------------------------------
def _retriever(**extra: Any) -> RetrieverConfig:
    return RetrieverConfig.model_validate({"index": "/idx", "placement": "deployment", **extra})


def test_shard_pinning_options() -> None:
    rc = _retriever(shards={"resources": {"shard_node": 0.01}}, shard_resources=[{"node_a": 0.5}, {"node_b": 1}])
    options = [rc.shard_options("dense", i, 2) for i in range(2)]
    assert [o["name"] for o in options] == ["dense-shard-0", "dense-shard-1"]
    assert [o["ray_actor_options"]["resources"] for o in options] == [{"shard_node": 0.01, "node_a": 0.5},
                                                                      {"shard_node": 0.01, "node_b": 1}]
    with pytest.raises(ValueError, match="shard_resources has 2 entries, its index /idx has 3 shard"):
        rc.shard_options("dense", 0, 3)
    plain = _retriever().shard_options("dense", 0, 1)
    assert "resources" not in plain["ray_actor_options"] and "max_replicas_per_node" not in plain  # as before
    spread = _retriever(shards={"replicas": 2, "max_replicas_per_node": 1}).shard_options("dense", 0, 1)
    assert spread["max_replicas_per_node"] == 1 and spread["num_replicas"] == 2
    ingress = ServingConfig.model_validate({"retrievers": {"d": {"index": "/i"}}, "ingress": {"resources": {"h": 1}}})
    assert ingress.ingress.deployment_options("Ingress")["ray_actor_options"]["resources"] == {"h": 1}


@pytest.mark.parametrize(("extra", "message"), [
    ({"shards": {"resources": {"CPU": 1}}}, "use num_cpus / num_gpus"),
    ({"shard_resources": [{"GPU": 1}]}, "use num_cpus / num_gpus"),
    ({"shard_resources": [{"node_a": 0}]}, "must be >= 0.0001"),
    ({"shard_resources": [{" node_a": 1}]}, "padded with spaces"),
    ({"shard_resources": []}, "at least 1 item"),
    ({"shard_resource": [{"node_a": 1}]}, "Extra inputs are not permitted"),
    ({"shard_resources": [{"node_a": 1}], "placement": "ingress"}, "needs placement: deployment"),
])
def test_shard_pinning_is_validated(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _retriever(**extra)


def test_build_app_pins_shards_and_checks_the_count(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from retrec.bundle import BundleError
    from retrec.index.bm25_index import BM25Index
    from retrec.serving.app import build_app

    bm25 = BM25Index.build(["a", "b"], ["vitamin c scurvy", "sleep and memory"]).save(tmp_path / "bm25",
                                                                                          name="bm25").path
    base = {"auth": {"mode": "none"}, "use_gpu": False}
    with caplog.at_level("INFO", logger="retrec.serving"):
        app = build_app({**base, "retrievers": {"bm25": {"index": str(bm25), "shard_resources": [{"node_b": 0.01}]}}})
    (shard,) = app._bound_deployment.init_args[1]["bm25"]["shards"]  # auto + pinned: a deployment per shard
    assert shard._bound_deployment.ray_actor_options["resources"] == {"node_b": 0.01}
    assert any("auto: pinned to nodes" in r.getMessage() for r in caplog.records)
    with pytest.raises(BundleError, match=r"shard_resources has 2 entries.*1 shard"):
        build_app({**base, "retrievers": {"bm25": {"index": str(bm25), "shard_resources": [{"a": 1}, {"b": 1}]}}})


def test_readiness_tolerates_some_shards_of_each_retriever_down() -> None:
    verdict = any_of_each({"dense": ["dense-0", "dense-1"], "bm25": ["bm25-0"]})
    assert verdict({"dense-0": True, "dense-1": False, "bm25-0": True, "encoder:/m": True})  # degraded: serving
    assert not verdict({"dense-0": False, "dense-1": False, "bm25-0": True})  # a retriever with no shard
    assert not verdict({"dense-0": True, "dense-1": True, "bm25-0": True, "encoder:/m": False})
    assert not verdict({"readiness_check": False})


def test_serve_joins_the_cluster_it_is_given(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``retrec serve --ray-address`` and ``$RAY_ADDRESS`` join that cluster (as ``retrec reindex`` does); nothing
    starts a local Ray then."""
    from typer.testing import CliRunner

    from retrec.cli import app

    if ray.is_initialized():
        pytest.skip("this process is connected to a Ray already")
    joined: list[str] = []
    real_join = launch.join_ray
    monkeypatch.setattr(launch, "join_ray", joined.append)
    monkeypatch.setattr(launch, "init_local_ray", lambda *a, **k: pytest.fail("started a local Ray"))
    monkeypatch.setattr(launch, "deploy", lambda config: ["/"])
    config = {"applications": [{"args": {"retrievers": {"d": {"index": "/i"}}, "auth": {"mode": "none"}}}]}
    assert launch.start(config, address="10.0.0.5:6379", wait=False) == "http://127.0.0.1:8000/"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.6:6379")
    launch.start(config, wait=False)
    with pytest.raises(ValueError, match="num_cpus sizes a local Ray"):
        launch.start(config, num_cpus=2, wait=False)
    assert joined == ["10.0.0.5:6379", "10.0.0.6:6379"]
    assert launch.cluster_address(None) == "10.0.0.6:6379"
    monkeypatch.setenv("RAY_ADDRESS", "local")
    assert launch.cluster_address(None) is None

    def refused(**kwargs: Any) -> None:
        raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.8:6379")

    monkeypatch.setattr(ray, "init", refused)
    with pytest.raises(ConnectionError, match=r"10\.0\.0\.8:6379.*needs RAY_AUTH_MODE=token"):
        real_join("10.0.0.8:6379")  # what the CLI prints: the address, Ray's reason, the token hint

    seen: dict[str, Any] = {}

    def fake_start(spec: dict[str, Any], **kwargs: Any) -> str:
        seen.update(kwargs)
        raise ValueError("stop here")

    monkeypatch.setattr(launch, "start", fake_start)
    path = tmp_path / "serve.yaml"
    path.write_text("applications: [{name: retrec, route_prefix: /, import_path: retrec.serving.app:build_app}]\n")
    out = CliRunner().invoke(app, ["serve", "--config", str(path), "--ray-address", "10.0.0.7:6379"])
    assert out.exit_code != 0 and "stop here" in out.output
    assert seen["address"] == "10.0.0.7:6379"


# ---- a Ray cluster of three nodes on this machine ----------------------------------------------------------------
def _replica_nodes(deployment: str) -> list[str]:
    """The node ids the deployment's live replicas run on (asked of each replica actor)."""
    found = []
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if f"#{deployment}#" in actor["name"]:
            handle = ray.get_actor(actor["name"], namespace=actor["namespace"])
            found.append(ray.get(handle.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id()),
                                 timeout=10))
    return found


def _hits(body: dict[str, Any]) -> list[tuple[str, float]]:
    return [(h["doc_id"], h["score"]) for h in body["hits"]]


def test_each_shard_runs_on_the_node_its_resource_names(served: dict[str, Any]) -> None:
    nodes = {pin: node.node_id for pin, node in served["nodes"].items()}
    for i, pin in enumerate(PINS):
        assert _replica_nodes(f"dense-shard-{i}") == [nodes[pin]], f"shard {i} should run on {pin}"
    head = served["cluster"].head_node.node_id
    assert _replica_nodes("Ingress") == [head]
    assert {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]} == {"127.0.0.1"}  # loopback only


def test_answers_equal_the_in_process_index(served: dict[str, Any], bundles: dict[str, Any]) -> None:
    offline = DenseRetriever.load(bundles["encoder"], bundles["dense"], threads=1)
    with httpx.Client(base_url=served["url"], timeout=10) as client:
        assert client.get("/v1/models").json()["retrievers"]["dense"]["shards"] == SHARDS
        for q in bundles["queries"]:
            body = client.post("/v1/search", json={"query": q, "k": 10}).json()
            want = offline.search([q], 10)[0]
            assert body["partial"] is False and want
            assert [d for d, _ in _hits(body)] == [d for d, _ in want]
            assert [s for _, s in _hits(body)] == pytest.approx([s for _, s in want], rel=1e-5)


class Load:
    """Threads sending searches until stopped: (sent at, status, partial, failed shards, answered at) per
    request."""

    def __init__(self, url: str, queries: list[str], threads: int = 3) -> None:
        self.url, self.queries, self.results = url, queries, []
        self.stopped = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, offset: int) -> None:
        with httpx.Client(base_url=self.url, timeout=15) as client:
            i = offset
            while not self.stopped.is_set():
                sent = time.monotonic()
                try:
                    r = client.post("/v1/search", json={"query": self.queries[i % len(self.queries)], "k": 5})
                    body = r.json() if r.status_code == 200 else {}
                    self.results.append((sent, r.status_code, body.get("partial"), body.get("failed_shards"),
                                         time.monotonic()))
                except httpx.HTTPError as exc:
                    self.results.append((sent, type(exc).__name__, None, None, time.monotonic()))
                i += 1
                time.sleep(0.02)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        for t in self.threads:
            t.join(timeout=30)

    def since(self, t: float) -> list[tuple[Any, ...]]:
        return [r for r in list(self.results) if r[0] >= t]


def _wait(condition: Any, timeout: float, what: str, load: Load | None = None) -> float:
    """Seconds until ``condition()`` holds (polled), or fail with ``what`` (and the last answers under ``load``)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(0.25)
    last = [(round(t - started, 2), *rest) for t, *rest in load.results[-12:]] if load is not None else []
    pytest.fail(f"{what} not within {timeout} s; last answers (s from the wait's start, status, partial, failed): "
                f"{last}")


def _replica_names(deployment: str) -> list[str]:
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if f"#{deployment}#" in a["name"])


def test_a_node_lost_under_load_is_partial_then_whole_again(served: dict[str, Any], bundles: dict[str, Any]) -> None:
    cluster, url = served["cluster"], served["url"]
    lost_replicas = _replica_names("dense-shard-1")
    (replica,) = [ray.get_actor(name, namespace="serve") for name in lost_replicas]
    replica_pid = ray.get(replica.__ray_call__.remote(lambda self: os.getpid()), timeout=10)
    with Load(url, bundles["queries"]) as load, httpx.Client(base_url=url, timeout=10) as probe:
        time.sleep(1.0)
        # The machine goes: its raylet and Ray's processes (no graceful exit), and the replica's worker process,
        # which Ray keeps in a process group of its own (it would otherwise answer until it notices, ~1 s).
        os.kill(replica_pid, signal.SIGKILL)
        cluster.remove_node(served["nodes"].pop("node_b"), allow_graceful=False)
        killed = time.monotonic()  # its processes are gone

        def partial_now() -> bool:  # the last 3 answers (a lost shard costs each request the shard timeout)
            recent = load.since(killed)[-3:]
            return len(recent) == 3 and all(r[2] is True for r in recent)

        _wait(partial_now, 15, "partial answers after the node was killed", load)
        assert probe.get("/healthz").status_code == 200
        # /readyz is refreshed in the background (every 1 s; a shard's check gives up after 2 s): degraded, not 503
        _wait(lambda: probe.get("/readyz").json().get("status") == "degraded", 10, "/readyz degraded")
        ready = probe.get("/readyz")
        assert ready.status_code == 200 and ready.json()["unavailable"] == [DEAD_SHARD], ready.text
        time.sleep(2.0)  # down a while: the replacement replica waits for a node offering node_b

        back_at = time.monotonic()
        served["nodes"]["node_b"] = cluster.add_node(num_cpus=0, resources={"node_b": 1})

        def whole_now() -> bool:
            recent = load.since(back_at)[-3:]
            return len(recent) == 3 and all(r[2] is False for r in recent)

        _wait(whole_now, 30, "complete answers after the node came back", load)
        _wait(lambda: probe.get("/readyz").json().get("status") == "ready", 10, "/readyz ready again")
    results = list(load.results)
    assert {r[1] for r in results} == {200}  # nothing lost: every request answered, before, during and after
    before = [r for r in results if r[4] < killed]
    assert before and all(r[2] is False for r in before)  # complete while every node was up
    down = [r for r in results if killed <= r[0] and r[4] < back_at]
    assert down and {tuple(r[3]) for r in down} == {(DEAD_SHARD,)}  # partial, naming the lost shard only
    slowest = max(r[4] - r[0] for r in down)
    assert slowest < 5.0  # the shard timeout (1 s) and the rest of the request, not the request timeout
    streak = 0
    while streak < len(results) and results[-1 - streak][2] is False:
        streak += 1
    recovered = results[-streak][0] - back_at  # the first request of the complete answers that followed
    assert 0 < recovered < 30
    assert _replica_nodes("dense-shard-1") == [served["nodes"]["node_b"].node_id]
    assert _replica_names("dense-shard-1") != lost_replicas  # a new replica: Serve rescheduled it there
    print(f"{len(down)} partial answers while node_b was down (slowest {slowest:.2f} s); complete again "
          f"{recovered:.1f} s after the node came back; {len(results)} requests, all 200")
