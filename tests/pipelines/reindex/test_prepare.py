"""retrec.pipelines.reindex: a text kind's prepare step — on Ray when actors are asked for, with exactly that many
chunks in flight at once (Ray actors of one CPU, never more than the cluster's CPUs), equal to the local run."""

from __future__ import annotations

from pathlib import Path

import pytest

from retrec.data.beir import corpus_texts
from retrec.data.corpus import read_corpus
from retrec.pipelines.reindex.job import ReindexConfig, _prepare_on_ray
from retrec.pipelines.reindex.parts import ChunkPreparer, prepare_documents

BM25 = "index/bm25"


def test_actors_asked_for_put_a_text_kind_on_ray(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cfg = ReindexConfig(kind="bm25", data=tmp_path, out=tmp_path)
    texts = ["a document"] * 10
    assert not _prepare_on_ray(cfg, texts)  # a small corpus, nothing asked: this process
    assert _prepare_on_ray(ReindexConfig(kind="bm25", data=tmp_path, out=tmp_path, actors=1), texts)
    assert not _prepare_on_ray(ReindexConfig(kind="bm25", data=tmp_path, out=tmp_path, actors=2, local=True), texts)


def test_prepare_on_ray_runs_as_many_actors_as_asked_and_equals_the_local_run(tiny_data: Path) -> None:
    ray = pytest.importorskip("ray")
    from retrec.process_env import start_local_ray

    _, texts = corpus_texts(read_corpus(tiny_data))
    local, report = prepare_documents(texts, kind=BM25, local=True, chunk=64, progress=False)
    assert report["mode"] == "local" and ChunkPreparer(BM25).prepare(3, texts[:64]) == (3, local[:64])
    start_local_ray(num_cpus=2)
    try:
        one, one_report = prepare_documents(texts, kind=BM25, actors=1, chunk=64, progress=False)
        many, many_report = prepare_documents(texts, kind=BM25, actors=5, chunk=64, progress=False)
    finally:
        ray.shutdown()
    assert (one_report["mode"], one_report["workers"]) == ("ray", 1)
    assert many_report["workers"] == 2  # capped at the cluster's CPUs (more actors would wait for ever)
    assert one == local and many == local and one_report["startup_s"] >= 0.0
