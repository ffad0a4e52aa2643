"""The operating contracts on a real local Ray (issue 12: 11, 12): the config file's ``runtime_env`` settings reach
every replica even when the driver's environment lacks them, and retrec's metrics leave through Ray's metrics agent
(the node's metrics port), tagged with their Serve deployment and replica."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest

from retrec.data.beir import load_retrieval_data
from retrec.index.bm25_index import BM25Index
from retrec.serving import launch

ray = pytest.importorskip("ray")


def test_runtime_env_reaches_replicas_and_metrics_leave_through_ray(tiny_data: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    if ray.is_initialized():
        pytest.skip("needs its own Ray instance")
    ids, texts = load_retrieval_data(tiny_data, split="test").doc_texts()
    bundle = BM25Index.build(ids, texts).save(tmp_path / "bm25", name="bm25").path
    app = launch.load_serve_config(launch.DEFAULT_CONFIG)["applications"][0]
    light = {"replicas": 1, "num_cpus": 0}
    config = {"http_options": {"host": "127.0.0.1", "port": launch.free_port()},
              "applications": [{"name": "retrec", "route_prefix": "/", "import_path": app["import_path"],
                                "runtime_env": app["runtime_env"],
                                "args": {"retrievers": {"bm25": {"index": str(bundle), "placement": "deployment",
                                                                  "shards": light}},
                                         "ingress": light, "auth": {"mode": "none"}}}]}
    wanted = app["runtime_env"]["env_vars"]
    for key in wanted:  # only the application's runtime_env can deliver them (the serve run / KubeRay case)
        monkeypatch.delenv(key, raising=False)
    metrics_port = launch.free_port()
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False,
             _metrics_export_port=metrics_port)
    try:
        url = launch.start(config)
        for _ in range(5):
            httpx.post(f"{url}/v1/search", json={"query": "vitamin", "k": 3}, timeout=30).raise_for_status()
        replicas = [a for a in ray.util.list_named_actors(all_namespaces=True) if "SERVE_REPLICA" in a["name"]]
        assert len(replicas) == 2  # Ingress and bm25-shard-0
        for actor in replicas:
            handle = ray.get_actor(actor["name"], namespace=actor["namespace"])
            env = ray.get(handle.__ray_call__.remote(lambda self, keys=tuple(wanted): {k: os.environ.get(k)
                                                                                        for k in keys}))
            assert env == wanted, actor["name"]
        session = ray._private.worker.global_worker.node.session_name
        deadline, lines = time.monotonic() + 60, []
        while time.monotonic() < deadline and not lines:  # Ray's agent reports every few seconds
            text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
            lines = [line for line in text.splitlines()  # this session's Ingress (an earlier test's may linger)
                     if line.startswith("ray_retrec_requests_total") and 'endpoint="/v1/search"' in line
                     and 'deployment="Ingress"' in line and f'SessionName="{session}"' in line]
            time.sleep(1.0)
        assert lines, "ray_retrec_requests_total not exported on the node's metrics port"
        assert 'deployment="Ingress"' in lines[0] and "replica=" in lines[0]
        assert float(lines[0].rsplit(" ", 1)[1]) == 5.0
    finally:
        launch.stop()
