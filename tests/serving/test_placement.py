"""Where index shards run (retrec.serving.placement): the ``auto`` choice and its log line, in-ingress shards
behind the same scatter as deployments (answers equal to the index's own, failures and timeouts are partial
results, never a lost request)."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from retrec.bundle import read_manifest
from retrec.data.beir import load_retrieval_data
from retrec.index.bm25_index import BM25Index
from retrec.serving import placement
from retrec.serving.placement import LocalShard, make_shard, shard_placement
from retrec.serving.scatter import RetrieverSpec, Scatter
from retrec.serving.shards import index_ref

pytest.importorskip("ray")


@pytest.fixture(scope="module")
def bm25(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    ids, texts = load_retrieval_data(tiny_data, split="test").doc_texts()
    return Path(BM25Index.build(ids, texts).save(tmp_path_factory.mktemp("placement") / "bm25", name="bm25").path)


def test_auto_serves_small_cpu_indices_in_the_ingress(bm25: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = read_manifest(bm25)
    assert shard_placement("auto", manifest, None, 0.0)[0] == "ingress"
    assert shard_placement("auto", manifest, True, 0.0)[0] == "deployment"  # GPU shards: their own replicas
    assert shard_placement("auto", manifest, None, 0.5)[0] == "deployment"
    assert shard_placement("deployment", manifest, None, 0.0)[0] == "deployment"  # configured wins
    size = sum(f.size for f in manifest.files.values())
    monkeypatch.setattr(placement, "AUTO_INGRESS_MAX_BYTES", size - 1)
    chosen, why = shard_placement("auto", manifest, None, 0.0)
    assert chosen == "deployment" and "MiB >" in why
    assert shard_placement("ingress", manifest, None, 0.0)[0] == "ingress"


def _ingress_args(app: Any) -> dict[str, Any]:
    return app._bound_deployment.init_args[1]  # Ingress.bind(config, retrievers, encoders, recommenders)


def test_build_app_logs_and_describes_the_choice(bm25: Path, caplog: pytest.LogCaptureFixture) -> None:
    from retrec.serving.app import build_app

    base = {"auth": {"api_keys_env": None, "api_keys_file": None, "mode": "keys"}, "use_gpu": False}
    with caplog.at_level(logging.INFO, logger="retrec.serving"):
        auto = _ingress_args(build_app({**base, "retrievers": {"bm25": {"index": str(bm25)}}}))
        dep = _ingress_args(build_app({**base, "retrievers": {"bm25": {"index": str(bm25),
                                                                       "placement": "deployment"}}}))
    assert auto["bm25"]["placement"] == "ingress"
    assert auto["bm25"]["shards"] == [{"placement": "ingress", "kind": "index/bm25", "shard": 0, "use_gpu": False}]
    assert dep["bm25"]["placement"] == "deployment" and not isinstance(dep["bm25"]["shards"][0], dict)
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("retriever bm25:")]
    assert "served in each ingress replica (auto:" in logged[0]
    assert "served in their own deployments (configured" in logged[1]


def _local(bm25: Path) -> tuple[LocalShard, dict[str, str]]:
    ref = index_ref(bm25)
    shard = make_shard({"placement": "ingress", "kind": "index/bm25", "shard": 0, "use_gpu": False}, ref)
    assert isinstance(shard, LocalShard)
    return shard, ref


def test_in_ingress_shard_answers_like_the_index(bm25: Path, tiny_data: Path) -> None:
    shard, ref = _local(bm25)
    scatter = Scatter({"bm25": RetrieverSpec("bm25", "index/bm25", "text", [shard], None, "ingress")},
                      shard_timeout_s=2.0, retry_after_s=1, max_batch_size=8)
    queries = load_retrieval_data(tiny_data, split="test").queries.column("text").to_pylist()[:5]
    got = asyncio.run(scatter.scatter([("bm25", q, 5, ref, None) for q in queries]))
    assert [row[0] for row in got] == BM25Index.load(bm25).search(queries, 5)


class _Broken:
    """An in-ingress shard replica that fails, or hangs past the shard timeout."""

    def __init__(self, hang_s: float = 0.0) -> None:
        self.hang_s = hang_s

    async def search_many(self, payloads: Any, k: int, ref: Any) -> Any:
        if self.hang_s:
            await asyncio.sleep(self.hang_s)
        raise RuntimeError("shard bug")


@pytest.mark.parametrize("hang_s", [0.0, 5.0])
def test_failing_or_slow_in_ingress_shard_is_a_partial_result(bm25: Path, hang_s: float) -> None:
    shard, ref = _local(bm25)
    scatter = Scatter({"bm25": RetrieverSpec("bm25", "index/bm25", "text", [shard, LocalShard(_Broken(hang_s))],
                                             None, "ingress")},
                      shard_timeout_s=0.5, retry_after_s=1, max_batch_size=8)

    async def run() -> Any:
        scatter.batch = lambda item: _first(scatter.scatter([item]))  # one item per batch, on this loop
        return await scatter.retrieve("bm25", "vitamin", 5, ref)

    started = time.perf_counter()
    hits, failed = asyncio.run(run())
    assert failed == ["bm25-1"] and hits == BM25Index.load(bm25).search(["vitamin"], 5)[0]
    assert time.perf_counter() - started < 2.0


async def _first(rows: Any) -> Any:
    return (await rows)[0]
