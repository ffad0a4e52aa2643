"""The `rerank` stage of /v1/search: in-process ingress over a fake re-ranker handle, and the Reranker
deployment's own class over a real (toy) cross-encoder bundle."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.serving.inproc import FakeReranker, ingress_app

CONFIG = {"retrievers": {"bm25": {"index": "/indexes/bm25-v1"}, "bm25-title": {"index": "/indexes/bm25-title-v1"}},
          "auth": {"mode": "none"}, "rerank": {"bundle": "/models/ce", "documents": "/data/corpus", "depth": 4}}


def _post(bodies: list[dict[str, Any]], config: dict[str, Any] | None = None,
          reranker: Any = None, path: str = "/v1/search") -> list[httpx.Response]:
    async def run() -> list[httpx.Response]:
        with ingress_app(config, reranker) as app:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
                if path == "/openapi.json":
                    return [await client.get(path)]
                return [await client.post(path, json=b) for b in bodies]
    return asyncio.run(run())


def test_rerank_reorders_the_top_depth_and_keeps_the_rest() -> None:
    fake = FakeReranker()
    first, reranked, hybrid = _post([{"query": "scurvy", "k": 3}, {"query": "scurvy", "k": 3, "rerank": True},
                                     {"query": "scurvy", "k": 6, "rerank": True, "retriever": "hybrid"}],
                                    CONFIG, fake)
    assert first.status_code == reranked.status_code == hybrid.status_code == 200, (reranked.text, hybrid.text)
    assert first.json()["reranked_by"] is None and reranked.json()["reranked_by"] == "fake-ce@c1"
    query, sent = fake.calls[0]
    assert query == "scurvy" and len(sent) == 4  # depth 4 fetched although k is 3
    first_scores = fake.first_scores[0]  # the first stage's scores, aligned with the ids, for the mix
    assert first_scores is not None and len(first_scores) == 4 and first_scores == sorted(first_scores, reverse=True)
    assert [h["doc_id"] for h in reranked.json()["hits"]] == list(reversed(sent))[:3]
    assert [h["rank"] for h in reranked.json()["hits"]] == [1, 2, 3]
    hits = hybrid.json()["hits"]
    assert len(hits) == 6 and [h["doc_id"] for h in hits[:4]] == list(reversed(fake.calls[1][1]))
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)  # the tail ranks below the re-ranked head


def test_rerank_without_a_reranker_is_refused_and_not_published() -> None:
    refused, = _post([{"query": "scurvy", "rerank": True}])
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "not_deployed"
    doc, = _post([], path="/openapi.json")
    assert doc.json()["components"]["schemas"]["SearchRequest"]["properties"]["rerank"]["enum"] == [False]
    deployed, = _post([], CONFIG, FakeReranker(), path="/openapi.json")
    assert "enum" not in deployed.json()["components"]["schemas"]["SearchRequest"]["properties"]["rerank"]


def test_a_failing_reranker_is_a_503_that_names_no_internals() -> None:
    r, = _post([{"query": "scurvy", "rerank": True}], CONFIG, FakeReranker(fail=True))
    assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable"
    assert "replica died" not in r.text


@pytest.mark.parametrize("on_timeout", ["first_stage", "fail"])
def test_a_reranker_past_its_deadline_answers_in_the_first_stage_order_or_fails(on_timeout: str) -> None:
    slow = {**CONFIG, "rerank": {**CONFIG["rerank"], "timeout_s": 0.05, "on_timeout": on_timeout}}
    first, late = _post([{"query": "scurvy", "k": 3}, {"query": "scurvy", "k": 3, "rerank": True}], slow,
                        FakeReranker(delay_s=1.0))
    assert first.status_code == 200 and first.json()["reranked"] is False
    if on_timeout == "fail":
        assert late.status_code == 503 and late.json()["error"]["code"] == "unavailable"
        return
    assert late.status_code == 200, late.text
    assert late.json()["reranked"] is False and late.json()["reranked_by"] is None
    assert late.json()["hits"] == first.json()["hits"]  # the first stage's order, untouched
    on_time, = _post([{"query": "scurvy", "k": 3, "rerank": True}], slow, FakeReranker())
    assert on_time.json()["reranked"] is True and on_time.json()["reranked_by"] == "fake-ce@c1"


def test_the_reranker_deployment_scores_with_the_bundle_and_the_corpus(tiny_data: Path, tmp_path: Path) -> None:
    from retrec.data.corpus import corpus_texts, read_corpus
    from retrec.models.cross_encoder import CrossEncoder, RerankerConfig, export_reranker
    from retrec.serving.rerankers import Reranker

    bundle = tmp_path / "ce"
    export_reranker(CrossEncoder.from_pretrained(), bundle, name="toy-ce", config=RerankerConfig(max_length=32))
    replica = Reranker.func_or_class(str(bundle), str(tiny_data), threads=1)
    ids, texts = corpus_texts(read_corpus(tiny_data))
    out = asyncio.run(replica.rerank("a query about genes", [*ids[:5], "no-such-doc"]))
    assert out["name"] == "toy-ce" and out["missing_texts"] == 1 and len(out["hits"]) == 6
    expected = replica.model.score("a query about genes", [*texts[:5], ""])
    by_id = dict(out["hits"])
    assert [by_id[i] for i in [*ids[:5], "no-such-doc"]] == pytest.approx(expected.tolist(), abs=1e-5)
    assert replica.info()["documents"] == len(ids)
