"""Index swaps with replicated deployments over HTTP on 127.0.0.1 (its own Ray instance): 2 ingress replicas,
and the shard in both placements — 2 replicas of its own deployment, or inside each ingress replica; a swap
reaches every replica, survives replica restarts, and a version is its manifest digest, not its version string."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from retrec.data.beir import load_retrieval_data
from retrec.index.bm25_index import BM25Config, BM25Index
from tests.serving.test_http import API_KEY
from tests.tiny_models import with_version

ADMIN_KEY = "admin-key-for-swaps-0123"

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")


@pytest.fixture(scope="module")
def bundles(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("swap-bundles")
    ids, texts = load_retrieval_data(tiny_data, split="test").doc_texts()
    out = {"data": tiny_data}
    for key, k1, version in (("v0", 0.9, "bm25-v0"), ("v1", 0.9, "bm25-v1"), ("v2", 1.5, "bm25-v2"),
                             ("v2b", 2.5, "bm25-v2")):
        saved = BM25Index.build(ids, texts, BM25Config(k1=k1, b=0.75)).save(root / key, name="bm25")
        out[key] = with_version(saved.path, version)
    (root / "keys.txt").write_text(f"{API_KEY}\n")
    (root / "admin-keys.txt").write_text(f"{ADMIN_KEY}\n")
    out["keys"], out["admin_keys"], out["root"] = root / "keys.txt", root / "admin-keys.txt", root
    out["query"] = " ".join(texts[0].split()[:3])  # type: ignore[assignment]
    return out


def _config(bundles: dict[str, Any], port: int, placement: str) -> dict[str, Any]:
    two = {"replicas": 2, "num_cpus": 0, "max_ongoing_requests": 32, "max_queued_requests": 64}
    return {
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [{
            "name": "retrec", "route_prefix": "/", "import_path": "retrec.serving.app:build_app",
            "args": {"retrievers": {name: {"index": str(bundles["v0"]), "placement": placement, "shards": two}
                                    for name in ("bm25", "title")},  # v0: the build-time version (deleted later)
                     "ingress": {**two, "max_ongoing_requests": 64},
                     "limits": {"shard_timeout_s": 2.0, "request_timeout_s": 5, "swap_drain_s": 2.0},
                     "auth": {"api_keys_env": None, "api_keys_file": str(bundles["keys"])}, "use_gpu": False,
                     "admin": {"enabled": True, "keys_env": None, "keys_file": str(bundles["admin_keys"]),
                               "models_root": str(bundles["root"])}},
        }],
    }


@pytest.fixture(scope="module", params=["deployment", "ingress"])
def placement(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def url(bundles: dict[str, Any], placement: str) -> Iterator[str]:
    from retrec.serving.launch import free_port, start, stop

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        yield start(_config(bundles, free_port(), placement))
    finally:
        stop()


@pytest.fixture(scope="module")
def client(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, headers={"X-API-Key": API_KEY}, timeout=30.0) as c:
        yield c


def _swap(client: httpx.Client, path: Path, retriever: str = "bm25") -> httpx.Response:
    """The admin swap: a bundle named relative to the models root, with the admin key."""
    return client.post("/v1/admin/indexes", json={"retriever": retriever, "path": path.name},
                       headers={"X-API-Key": ADMIN_KEY}, timeout=120)


def _replicas(deployment: str) -> list[str]:
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if f"#{deployment}#" in a["name"])


def _shard_replicas(retriever: str = "bm25") -> list[str]:
    """The shard's own replicas (none when the shard runs inside the ingress replicas)."""
    return _replicas(f"{retriever}-shard-0")


class Load:
    """Client threads sending searches until stopped: (started, status, version, hits) per request."""

    def __init__(self, url: str, query: str, threads: int = 4) -> None:
        self.results: list[tuple[float, int, str | None, Any]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(url, query)) for _ in range(threads)]

    def _run(self, url: str, query: str) -> None:
        with httpx.Client(base_url=url, headers={"X-API-Key": API_KEY}, timeout=30.0) as c:
            for _ in range(20000):
                if self._stop.is_set():
                    break
                started = time.monotonic()
                r = c.post("/v1/search", json={"query": query, "k": 5, "retriever": "bm25"})
                body = r.json() if r.status_code == 200 else {}
                self.results.append((started, r.status_code, body.get("index_versions", {}).get("bm25"),
                                     [(h["doc_id"], round(h["score"], 4)) for h in body.get("hits", [])]))

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)


def _offline(path: Path, query: str) -> list[tuple[str, float]]:
    return [(d, round(s, 4)) for d, s in BM25Index.load(path).search([query], 5)[0]]


def test_swap_reaches_every_replica_under_load(client: httpx.Client, url: str, bundles: dict[str, Any],
                                              placement: str) -> None:
    assert len(_replicas("Ingress")) == 2 and len(_shard_replicas()) == (2 if placement == "deployment" else 0)
    assert client.get("/v1/models").json()["retrievers"]["bm25"]["placement"] == placement
    query = bundles["query"]
    with Load(url, query) as load:
        time.sleep(1.5)
        r = _swap(client, bundles["v2"])
        swapped_at = time.monotonic()
        assert r.status_code == 200, r.text
        assert r.json() == {"retriever": "bm25", "version": "bm25-v2", "previous": "bm25-v0"}
        deadline = time.monotonic() + 60  # 21 answered requests after the swap, however slow the machine
        while sum(started > swapped_at for started, *_ in list(load.results)) <= 20 and time.monotonic() < deadline:
            time.sleep(0.1)
    statuses = {s for _, s, _, _ in load.results}
    assert statuses == {200}, statuses
    after = [(v, hits) for started, _, v, hits in load.results if started > swapped_at]
    assert len(after) > 20 and {v for v, _ in after} == {"bm25-v2"}
    assert {tuple(h) for _, h in after} == {tuple(_offline(bundles["v2"], query))}
    assert "bm25-v0" in {v for started, _, v, _ in load.results if started < swapped_at}
    for _ in range(10):  # both ingress replicas
        assert client.get("/v1/models").json()["retrievers"]["bm25"]["index_version"] == "bm25-v2"


def test_swap_survives_replica_restarts(client: httpx.Client, url: str, bundles: dict[str, Any]) -> None:
    """Serve re-applies the swapped version to the replicas it starts in place of killed ones."""
    query = bundles["query"]
    killed = {_replicas("Ingress")[0], *_shard_replicas()[:1]}
    count = len(_replicas("Ingress")) + len(_shard_replicas())
    for name in killed:
        ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        now = set(_replicas("Ingress")) | set(_shard_replicas())
        if not killed & now and len(now) == count and client.get("/readyz").status_code == 200:
            break
        time.sleep(0.5)
    else:
        pytest.fail("replicas did not come back")
    time.sleep(1.0)
    for _ in range(20):
        r = client.post("/v1/search", json={"query": query, "k": 5, "retriever": "bm25"})
        assert r.status_code == 200 and r.json()["index_versions"]["bm25"] == "bm25-v2", r.text
        assert r.json()["partial"] is False
        assert client.get("/v1/models").json()["retrievers"]["bm25"]["index_version"] == "bm25-v2"


def test_same_version_string_other_bundle_is_swapped_in(client: httpx.Client, bundles: dict[str, Any]) -> None:
    query = bundles["query"]
    assert _offline(bundles["v2b"], query) != _offline(bundles["v2"], query)
    r = _swap(client, bundles["v2b"])
    assert r.status_code == 200, r.text
    for _ in range(10):
        body = client.post("/v1/search", json={"query": query, "k": 5, "retriever": "bm25"}).json()
        assert body["index_versions"]["bm25"] == "bm25-v2"
        assert [(h["doc_id"], round(h["score"], 4)) for h in body["hits"]] == _offline(bundles["v2b"], query)


def test_refused_version_is_a_400_before_anything_flips(client: httpx.Client, url: str,
                                                        bundles: dict[str, Any], placement: str) -> None:
    """The manifest fits but a shard's loader refuses the files (a checksum): 400, no replica changes."""
    bad = bundles["root"] / f"bm25-corrupt-{placement}"
    shutil.copytree(bundles["v1"], bad)
    scores = bad / "scores.safetensors"
    scores.write_bytes(scores.read_bytes()[:-8] + b"\0" * 8)
    before = client.get("/v1/models").json()["retrievers"]["bm25"]
    with Load(url, bundles["query"], threads=2) as load:
        time.sleep(0.5)
        r = _swap(client, bad)
        time.sleep(0.5)
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_bundle", r.text
    assert "checksum" in r.text and str(bad) not in r.text
    assert {s for _, s, _, _ in load.results} == {200}
    assert {v for _, _, v, _ in load.results} == {before["index_version"]}
    for _ in range(10):
        assert client.get("/v1/models").json()["retrievers"]["bm25"] == before


def _served(client: httpx.Client) -> set[tuple[str, str]]:
    """(retriever, index version) as ingress replicas report them (enough calls to reach both)."""
    return {(n, r["index_version"]) for _ in range(12)
            for n, r in client.get("/v1/models").json()["retrievers"].items()}


def test_concurrent_swaps_on_different_ingress_replicas_both_take_effect(client: httpx.Client,
                                                                        bundles: dict[str, Any]) -> None:
    """Issue 44, acceptance 1: each round sends a swap of each retriever at once (the proxy spreads them over
    the two ingress replicas); both take effect, on every replica — none reverts the other."""
    for bm25, title in (("v2", "v2"), ("v1", "v2b"), ("v2", "v2")):
        out: dict[str, httpx.Response] = {}
        threads = [threading.Thread(target=lambda n=n, v=v, out=out: out.__setitem__(n, _swap(client, bundles[v], n)))
                   for n, v in (("bm25", bm25), ("title", title))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert {n: r.status_code for n, r in out.items()} == {"bm25": 200, "title": 200}, [r.text for r in out.values()]
        want = {("bm25", f"bm25-{bm25[:2]}"), ("title", f"bm25-{title[:2]}")}
        assert _served(client) == want
        for r in out.values():  # the status endpoint, from any replica, says the same
            status = client.get(f"/v1/admin/swaps/{r.headers['X-Swap-Id']}", headers={"X-API-Key": ADMIN_KEY}).json()
            assert status["status"] == "done" and status["version"] == r.json()["version"]


def test_restart_after_the_build_time_version_was_deleted(client: httpx.Client, bundles: dict[str, Any]) -> None:
    """Issue 44, acceptance 2: the build-time version (v0) deleted, every replica killed: all come back ready
    on the current versions (Serve re-applies the current user_config to the replicas it starts)."""
    saved = bundles["root"] / "v0-saved"
    shutil.move(str(bundles["v0"]), saved)
    try:
        killed = set(_replicas("Ingress") + _shard_replicas("bm25") + _shard_replicas("title"))
        for name in killed:
            ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            now = set(_replicas("Ingress") + _shard_replicas("bm25") + _shard_replicas("title"))
            try:
                ready = client.get("/readyz").status_code == 200
            except httpx.HTTPError:
                ready = False
            if not killed & now and len(now) == len(killed) and ready:
                break
            time.sleep(0.5)
        else:
            pytest.fail("replicas did not come back ready")
        assert _served(client) == {("bm25", "bm25-v2"), ("title", "bm25-v2")}
        for _ in range(10):
            r = client.post("/v1/search", json={"query": bundles["query"], "k": 5})
            assert r.status_code == 200 and r.json()["partial"] is False, r.text
    finally:
        shutil.move(str(saved), bundles["v0"])


def test_user_config_swap_reaches_every_replica(client: httpx.Client, url: str, bundles: dict[str, Any],
                                                placement: str) -> None:
    """An operator's redeploy naming another version in the Ingress user_config: in place, every replica."""
    from retrec.serving.launch import deploy

    config = _config(bundles, int(url.rsplit(":", 1)[1]), placement)
    config["applications"][0]["deployments"] = [{"name": "Ingress",
                                                 "user_config": {"indexes": {"bm25": str(bundles["v1"])}}}]
    replicas = _replicas("Ingress") + _shard_replicas()
    with Load(url, bundles["query"], threads=3) as load:
        time.sleep(1.0)
        deploy(config)
        deployed_at = time.monotonic()
        time.sleep(1.5)
    assert _replicas("Ingress") + _shard_replicas() == replicas, "replicas were restarted"
    assert {s for _, s, _, _ in load.results} == {200}
    after = [(v, tuple(h)) for started, _, v, h in load.results if started > deployed_at]
    assert after and set(after) == {("bm25-v1", tuple(_offline(bundles["v1"], bundles["query"])))}
