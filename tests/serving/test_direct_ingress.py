"""Direct ingress (opt-in, retrec.serving.launch): the ingress replica's own HTTP server, turned on by the serve
config's ``runtime_env.env_vars``, serves the same app as the proxy — same answers, every route behind a key, bound
to the configured loopback host only. Its own Ray instance (the flag is read when Serve's processes start)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from retrec.data.beir import load_retrieval_data
from retrec.index.bm25_index import BM25Index

ray = pytest.importorskip("ray")
API_KEY, ADMIN_KEY = "direct-ingress-key-0123", "direct-ingress-admin-4567"


@pytest.fixture(scope="module")
def served(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from retrec.serving import launch

    root = tmp_path_factory.mktemp("direct")
    ids, texts = load_retrieval_data(tiny_data, split="test").doc_texts()
    BM25Index.build(ids, texts).save(root / "bm25", name="bm25")
    (root / "keys.txt").write_text(f"{API_KEY}\n")
    (root / "admin.txt").write_text(f"{ADMIN_KEY}\n")
    first = launch.free_port()
    env = {launch.DIRECT_INGRESS: "1", launch.DIRECT_INGRESS_PORT: str(first),
           "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(first + 50)}
    zero = {"replicas": 1, "num_cpus": 0}
    config = {"http_options": {"host": "127.0.0.1", "port": launch.free_port()},
              "applications": [{"name": "retrec", "route_prefix": "/", "import_path": "retrec.serving.app:build_app",
                                "runtime_env": {"env_vars": env},
                                "args": {"retrievers": {"bm25": {"index": str(root / "bm25"), "shards": zero}},
                                         "ingress": zero, "use_gpu": False,
                                         "auth": {"api_keys_env": None, "api_keys_file": str(root / "keys.txt")},
                                         "admin": {"enabled": True, "keys_env": None,
                                                   "keys_file": str(root / "admin.txt"), "models_root": str(root)},
                                         "events": {"log": str(root / "events")}}}]}
    saved = {k: os.environ.get(k) for k in [*launch.serve_env(config), *launch.serve_env()]}
    if ray.is_initialized():
        ray.shutdown()
    try:
        url = launch.start(config, num_cpus=2)  # exports the config's env to the local Ray it starts
        yield {"url": url, "direct": launch.direct_url(config), "root": root, "texts": texts}
    finally:
        launch.stop()
        for key, value in saved.items():  # the flag must not reach later tests' Ray instances
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_direct_answers_like_the_proxy_and_needs_a_key(served: dict[str, Any]) -> None:
    direct, url = served["direct"], served["url"]
    assert direct is not None and direct != url
    body = {"query": " ".join(served["texts"][0].split()[:3]), "k": 5, "retriever": "bm25"}
    assert httpx.get(f"{direct}/readyz", timeout=10).status_code == 200
    anon = httpx.post(f"{direct}/v1/search", json=body, timeout=10)
    assert anon.status_code == 401 and anon.json()["error"]["code"] == "unauthorized"
    key = {"X-API-Key": API_KEY}
    got = httpx.post(f"{direct}/v1/search", json=body, headers=key, timeout=10)
    via_proxy = httpx.post(f"{url}/v1/search", json=body, headers=key, timeout=10)
    assert got.status_code == via_proxy.status_code == 200, got.text
    assert got.json()["hits"] == via_proxy.json()["hits"] and got.json()["hits"]
    top = BM25Index.load(served["root"] / "bm25").search([body["query"]], 1)[0][0]
    assert got.json()["hits"][0]["doc_id"] == top[0]


def test_every_route_needs_a_key_on_the_direct_port(served: dict[str, Any]) -> None:
    from tests.serving.routes import http_send, walk_routes

    direct = served["direct"]

    send = http_send(direct)

    schema = httpx.get(f"{direct}/openapi.json", timeout=30.0).json()
    failures = walk_routes(send, "", schema, api_key=API_KEY, admin_key=ADMIN_KEY,
                           bodies={"/v1/admin/indexes": {"retriever": "bm25", "path": "bm25"}})
    # no recommender is deployed here: with the key, /v1/recommend(/batch) gets past auth to a 400 not_deployed
    assert [f for f in failures if "(400, 'not_deployed') with the key" not in f] == [], failures
    assert len(failures) == 4


def test_direct_server_binds_the_configured_loopback_host(served: dict[str, Any]) -> None:
    import psutil  # Ray's dependency

    port = int(served["direct"].rsplit(":", 1)[1])
    bound = [c.laddr.ip for proc in psutil.Process().children(recursive=True)
             for c in _listening(proc) if c.laddr.port == port]
    assert bound == ["127.0.0.1"], bound


def _listening(proc: Any) -> list[Any]:
    import psutil

    try:
        return [c for c in proc.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN]
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []
