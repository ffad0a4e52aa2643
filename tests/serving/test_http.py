"""The Ray Serve application end to end over HTTP on 127.0.0.1 (one Ray instance for the module).

Bundles are built from the tiny synthetic dataset: BM25, a dense index (a tiny ONNX mean-of-embeddings
encoder with the packaged MiniLM tokenizer, 2 shards) and a 1-epoch BERT4Rec. The main application runs
the query encoder inside the ingress (``encoder.placement: ingress``); the last test adds a second
application with the ``QueryEncoder`` deployment (``placement: deployment``).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from retrec.bundle import read_manifest
from retrec.data.beir import load_retrieval_data
from retrec.data.interactions import load_interactions, user_sequences
from retrec.index.bm25_index import BM25Config, BM25Index
from retrec.index.dense_retriever import DenseRetriever
from retrec.index.faiss_index import FaissIndex
from retrec.runtime.onnx_encoder import OnnxEncoder
from retrec.runtime.sequence_recommender import SequenceRecommender, SkipReport
from tests.tiny_models import tiny_dense_encoder, tiny_reranker, with_version

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

API_KEY = "test-key-0123456789"
ADMIN_KEY = "test-admin-key-9876543210"
ADMIN = {"X-API-Key": ADMIN_KEY}
DIM = 16


@pytest.fixture(scope="module")
def bundles(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serving-bundles")
    collection = load_retrieval_data(tiny_data, split="test")
    ids, texts = collection.doc_texts()
    out = {"data": tiny_data}
    out["bm25"] = with_version(BM25Index.build(ids, texts).save(root / "bm25-v1", name="bm25").path, "bm25-v1")
    out["bm25_v2"] = with_version(BM25Index.build(ids, texts, BM25Config(k1=1.5, b=0.75))
                                   .save(root / "bm25-v2", name="bm25").path, "bm25-v2")
    out["encoder"] = tiny_dense_encoder(root / "encoder")
    out["reranker"] = tiny_reranker(root / "reranker")
    enc = OnnxEncoder(out["encoder"], threads=1)
    DenseRetriever.build(enc, ids, texts, shards=2).save(root / "dense-v1")
    out["dense"] = with_version(root / "dense-v1", "dense-v1")
    from retrec.pipelines.train.seq.bert4rec import BERT4RecTrainConfig, train_bert4rec

    out["bert4rec"] = train_bert4rec(tiny_data, root / "bert4rec", BERT4RecTrainConfig(
        max_len=12, hidden=16, layers=1, heads=2, epochs=1, eval_users=50), progress=False)
    from retrec.pipelines.train.seq.rec_fusion import train_fusion

    out["fusion"] = train_fusion(tiny_data, root / "fusion", [str(out["bert4rec"]), "markov"], grid_step=0.25)
    from retrec.pipelines.train.seq.onerec import OneRecTrainConfig, train_onerec

    out["onerec"] = train_onerec(tiny_data, root / "onerec", OneRecTrainConfig(
        max_len=12, levels=2, hidden=16, layers=1, heads=2, experts=2, top_k=1, session=2, epochs=1, eval_users=50,
        dpo_rounds=0, dpo_session=2), progress=False)
    (root / "keys.txt").write_text(f"# test keys\n{API_KEY}\n")
    out["keys"] = root / "keys.txt"
    (root / "admin-keys.txt").write_text(f"{ADMIN_KEY}\n")
    out["admin_keys"] = root / "admin-keys.txt"
    out["root"] = root
    return out


def _config(bundles: dict[str, Path], port: int, placement: str = "ingress") -> dict[str, Any]:
    zero = {"replicas": 1, "num_cpus": 0, "max_ongoing_requests": 32, "max_queued_requests": 64}
    return {
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [{
            "name": "retrec", "route_prefix": "/", "import_path": "retrec.serving.app:build_app",
            "args": {
                # bm25: placement auto (a small index: inside the ingress); dense: its own shard deployments
                "retrievers": {"bm25": {"index": str(bundles["bm25"]), "shards": zero},
                               "dense": {"index": str(bundles["dense"]), "encoder": str(bundles["encoder"]),
                                         "placement": "deployment", "shards": zero}},
                "recommenders": {"bert4rec": {"bundle": str(bundles["bert4rec"]), "replicas": zero},
                                 "fusion": {"bundle": str(bundles["fusion"]), "replicas": zero},
                                 "onerec": {"bundle": str(bundles["onerec"]), "replicas": zero}},
                "encoder": {"placement": placement, "max_batch_size": 8, "threads": 1,
                            "replicas": {**zero, "max_ongoing_requests": 64}},
                "ingress": {**zero, "max_ongoing_requests": 64},
                "rerank": {"bundle": str(bundles["reranker"]), "documents": str(bundles["data"]), "depth": 5,
                           "threads": 1, "replicas": zero},
                "limits": {"shard_timeout_s": 0.75, "request_timeout_s": 5},
                "auth": {"api_keys_env": None, "api_keys_file": str(bundles["keys"])},
                "admin": {"enabled": True, "keys_env": None, "keys_file": str(bundles["admin_keys"]),
                          "models_root": str(bundles["root"])},
                "events": {"log": str(bundles["root"].parent / "events")},
                "use_gpu": False,
            },
        }],
    }


@pytest.fixture(scope="module")
def url(bundles: dict[str, Path]) -> Iterator[str]:
    from retrec.serving.launch import free_port, start, stop

    if ray.is_initialized():
        ray.shutdown()
    try:
        yield start(_config(bundles, free_port()), num_cpus=2)  # the local Ray `retrec serve` starts
    finally:
        stop()


@pytest.fixture(scope="module")
def client(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, headers={"X-API-Key": API_KEY}, timeout=10.0) as c:
        yield c


def _queries(bundles: dict[str, Path]) -> list[str]:
    collection = load_retrieval_data(bundles["data"], split="test")
    return collection.queries.column("text").to_pylist()[:8]


# ---- 1. online == offline -------------------------------------------------------------------------------

def test_bm25_http_equals_offline(client: httpx.Client, bundles: dict[str, Path]) -> None:
    index = BM25Index.load(bundles["bm25"])
    for q in _queries(bundles):
        r = client.post("/v1/search", json={"query": q, "k": 20, "retriever": "bm25"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["index_versions"] == {"bm25": "bm25-v1"} and body["partial"] is False
        assert [(h["doc_id"], h["score"]) for h in body["hits"]] == index.search([q], 20)[0]


def test_rerank_stage_reorders_bm25_top_depth_as_offline(client: httpx.Client, bundles: dict[str, Path]) -> None:
    from retrec.data.corpus import corpus_texts, read_corpus
    from retrec.runtime.reranker import OnnxReranker

    index, reranker = BM25Index.load(bundles["bm25"]), OnnxReranker(bundles["reranker"], threads=1)
    texts = dict(zip(*corpus_texts(read_corpus(bundles["data"]))))
    for q in _queries(bundles)[:3]:
        r = client.post("/v1/search", json={"query": q, "k": 3, "retriever": "bm25", "rerank": True})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["reranked_by"].startswith("tiny-reranker@") and len(body["hits"]) == 3
        first = [d for d, _ in index.search([q], 5)[0]]
        ids, scores = reranker.rerank(q, first, texts.__getitem__)
        _assert_same_hits(body["hits"], list(zip(ids, scores.tolist()))[:3])


def _offline_dense(bundles: dict[str, Path]) -> DenseRetriever:
    return DenseRetriever(OnnxEncoder(bundles["encoder"], threads=1), FaissIndex.load(bundles["dense"]))


def _encoder_info(models: dict[str, Any], bundles: dict[str, Path]) -> dict[str, Any]:
    """The one encoder of the application, keyed by its bundle path relative to the models root (what the dense
    retriever names; responses never show where the server's files are)."""
    key = Path(bundles["encoder"]).resolve().relative_to(Path(bundles["root"]).resolve()).as_posix()
    assert str(bundles["root"]) not in str(models)
    assert list(models["encoders"]) == [key] and models["retrievers"]["dense"]["encoder"] == key
    assert models["retrievers"]["bm25"]["encoder"] is None
    return models["encoders"][key]


def _assert_same_hits(got: list[dict[str, Any]], want: list[tuple[str, float]]) -> None:
    assert [h["doc_id"] for h in got] == [d for d, _ in want]
    np.testing.assert_allclose([h["score"] for h in got], [s for _, s in want], rtol=0, atol=1e-6)


def test_dense_http_equals_offline(client: httpx.Client, bundles: dict[str, Path]) -> None:
    """Encoder inside the ingress (the default placement): same ids and scores as the offline retriever."""
    assert _encoder_info(client.get("/v1/models").json(), bundles)["placement"] == "ingress"
    offline = _offline_dense(bundles)
    for q in _queries(bundles):
        r = client.post("/v1/search", json={"query": q, "k": 15, "retriever": "dense"})
        assert r.status_code == 200, r.text
        _assert_same_hits(r.json()["hits"], offline.search([q], 15)[0])


async def _concurrent_searches(url: str, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, headers={"X-API-Key": API_KEY}, timeout=30.0) as c:
        return await asyncio.gather(*(c.post("/v1/search", json=b) for b in bodies))


def test_concurrent_batched_searches_equal_offline(url: str, bundles: dict[str, Path]) -> None:
    """Concurrent dense/bm25/hybrid requests with different k share encoder batches and batched shard calls;
    every response is still exactly its own offline answer."""
    offline, bm25 = _offline_dense(bundles), BM25Index.load(bundles["bm25"])
    queries = _queries(bundles)
    bodies = [{"query": q, "k": k, "retriever": r} for q in queries for k, r in ((5, "dense"), (12, "dense"),
                                                                                   (7, "bm25"), (6, "hybrid"))]
    responses = asyncio.run(_concurrent_searches(url, bodies))
    for body, r in zip(bodies, responses):
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["partial"] is False
        if body["retriever"] == "dense":
            _assert_same_hits(got["hits"], offline.search([body["query"]], body["k"])[0])
        elif body["retriever"] == "bm25":
            assert [(h["doc_id"], h["score"]) for h in got["hits"]] == bm25.search([body["query"]], body["k"])[0]
        else:
            from retrec.index.fusion import rrf

            q = body["query"]
            want = rrf({"bm25": bm25.search([q], 100)[0], "dense": offline.search([q], 100)[0]}, body["k"])
            _assert_same_hits(got["hits"], want)
    text = httpx.get(f"{url}/metrics").text
    assert 'retrec_shard_batch_size_count{retriever="dense"}' in text


def test_hybrid_fuses_both(client: httpx.Client, bundles: dict[str, Path]) -> None:
    from retrec.index.fusion import minmax, rrf

    q = _queries(bundles)[0]
    bm25 = client.post("/v1/search", json={"query": q, "k": 100, "retriever": "bm25"}).json()["hits"]
    dense = client.post("/v1/search", json={"query": q, "k": 100, "retriever": "dense"}).json()["hits"]
    runs = {"bm25": [(h["doc_id"], h["score"]) for h in bm25], "dense": [(h["doc_id"], h["score"]) for h in dense]}
    r = client.post("/v1/search", json={"query": q, "k": 10, "retriever": "hybrid"}).json()
    assert [(h["doc_id"], h["score"]) for h in r["hits"]] == rrf(runs, 10)
    assert set(r["index_versions"]) == {"bm25", "dense"}
    default = client.post("/v1/search", json={"query": q, "k": 10}).json()  # no retriever: the default
    assert default["retriever"] == "hybrid" and default["hits"] == r["hits"]
    w = {"bm25": 0.3, "dense": 0.7}
    r = client.post("/v1/search", json={"query": q, "k": 10, "retriever": "hybrid",
                                        "fusion": {"method": "minmax", "weights": w}}).json()
    assert [(h["doc_id"], h["score"]) for h in r["hits"]] == minmax(runs, 10, weights=w)


def test_recommend_http_equals_offline(client: httpx.Client, bundles: dict[str, Path]) -> None:
    rec = SequenceRecommender.load(bundles["bert4rec"])
    seqs = user_sequences(load_interactions(bundles["data"]))
    for history in [list(map(str, s))[-8:] for s in seqs.items[:5]]:
        for exclude in (True, False):
            r = client.post("/v1/recommend", json={"history": history, "k": 10, "exclude_seen": exclude})
            assert r.status_code == 200, r.text
            body = r.json()
            assert [(i["item_id"], i["score"]) for i in body["items"]] == rec.recommend([history], 10, exclude)[0]
            assert body["skipped_unknown"] == 0
    history = [*list(map(str, seqs.items[0]))[-3:], "no-such-item", "nope"]
    report = SkipReport()
    want = rec.recommend([history], 5, True, report)[0]
    body = client.post("/v1/recommend", json={"history": history, "k": 5}).json()
    assert body["skipped_unknown"] == report.unknown_items == 2
    assert [(i["item_id"], i["score"]) for i in body["items"]] == want


def test_fused_recommend_http_equals_eval_rec(client: httpx.Client, bundles: dict[str, Path]) -> None:
    """/v1/recommend {"model": "fusion"} returns the top of the scores `retrec eval-rec` ranks by."""
    from retrec.data.interactions import leave_one_out
    from retrec.pipelines.eval.recommenders import build_recommender, vocabulary_of

    loo = leave_one_out(user_sequences(load_interactions(bundles["data"])))
    vocab = vocabulary_of(loo)
    score = build_recommender(str(bundles["fusion"]), loo, vocab)
    histories = [[*t, v] for t, v in zip(loo.train[:8], loo.valid[:8])]  # what eval-rec ranks the test item after
    offline = score([vocab.encode(h) for h in histories])
    for history, row in zip(histories, offline):
        r = client.post("/v1/recommend", json={"history": history, "k": 10, "model": "fusion"})
        assert r.status_code == 200, r.text
        items = [(i["item_id"], i["score"]) for i in r.json()["items"]]
        assert len(items) == 10
        # exactly the offline scores of the history scored alone, as a request is: its top ten, item by item
        alone = score([vocab.encode(history)])[0]
        assert [s for _, s in items] == sorted(alone[np.isfinite(alone)].tolist(), reverse=True)[:10]
        assert all(alone[vocab.index[item]] == s for item, s in items)  # the same item scores, seen ones excluded
        # and eval-rec's, which scores 8 histories at once: ONNX Runtime rounds a batch's products differently
        # (|difference| ~1e-10 here), so within 1e-6
        np.testing.assert_allclose([s for _, s in items], sorted(row[np.isfinite(row)].tolist(), reverse=True)[:10],
                                   rtol=1e-6)
        np.testing.assert_allclose([s for _, s in items], [row[vocab.index[item]] for item, _ in items], rtol=1e-6)
        assert all("components" not in i for i in r.json()["items"])  # only when asked
    explained = client.post("/v1/recommend", json={"history": histories[0], "k": 10, "model": "fusion",
                                                    "explain": True}).json()["items"]
    names = [c["name"] for c in read_manifest(bundles["fusion"]).config["components"]]
    for item in explained:  # each component's weight x probability; their sum is the fused score
        assert list(item["components"]) == names and len(names) == 2, item
        assert abs(sum(item["components"].values()) - item["score"]) <= 1e-6 * max(1.0, abs(item["score"]))


def test_generated_recommend_http_equals_offline(client: httpx.Client, bundles: dict[str, Path]) -> None:
    """/v1/recommend {"model": "onerec"} returns the list the beam search generates offline, in its order."""
    from retrec.data.interactions import leave_one_out
    from retrec.runtime.onerec import OneRecRecommender

    loo = leave_one_out(user_sequences(load_interactions(bundles["data"])))
    rec = OneRecRecommender.load(bundles["onerec"])
    histories = [[*t, v] for t, v in zip(loo.train[:8], loo.valid[:8])]
    for history in histories:
        r = client.post("/v1/recommend", json={"history": history, "k": 10, "model": "onerec"})
        assert r.status_code == 200, r.text
        items = [(i["item_id"], i["score"]) for i in r.json()["items"]]
        assert items == rec.recommend([history], k=10)[0] and len(items) == 10
        assert not {i for i, _ in items} & set(history)


def test_models_health_metrics(client: httpx.Client, url: str, bundles: dict[str, Path]) -> None:
    models = client.get("/v1/models").json()
    assert models["retrievers"]["dense"]["shards"] == 2
    encoder = _encoder_info(models, bundles)
    assert encoder["version"] == "enc-v1" and encoder["kind"] == "model/dense" and "bert4rec" in models["recommenders"]
    assert encoder["placement"] == "ingress" and encoder["threads"] == 1
    assert models["recommenders"]["bert4rec"]["kind"] == "model/bert4rec"
    assert {"bm25", "dense"} <= set(models["registered"]["retrievers"])
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{url}/readyz").status_code == 200
    text = httpx.get(f"{url}/metrics").text
    for name in ("retrec_requests_total", "retrec_request_latency_seconds_bucket", "retrec_encoder_batch_size",
                 "retrec_index_version_info"):
        assert name in text
    spec = httpx.get(f"{url}/openapi.json").json()
    assert {"/v1/search", "/v1/recommend"} <= set(spec["paths"])
    props = spec["components"]["schemas"]
    retriever = props["SearchRequest"]["properties"]["retriever"]
    assert retriever["anyOf"] == [{"type": "string", "enum": ["bm25", "dense", "hybrid"]}, {"type": "null"}]
    assert retriever["default"] == "hybrid"  # the product default with two retrievers deployed
    assert "bm25 (index/bm25" in retriever["description"]  # registered kinds, from the registry
    assert props["RecommendRequest"]["properties"]["model"]["anyOf"][0]["enum"] == ["bert4rec", "fusion", "onerec"]
    assert props["SwapRequest"]["properties"]["retriever"]["enum"] == ["bm25", "dense"]


# ---- 2. bad input --------------------------------------------------------------------------------------

GOOD = {"query": "vitamin deficiency", "k": 5, "retriever": "bm25"}
J = {"content-type": "application/json"}
BAD_CASES: list[tuple[str, str, Any, dict[str, str], int, str]] = [
    # (id, path, body (str = raw), extra headers, status, error code)
    ("malformed-json", "/v1/search", '{"query": "x", ', J, 400, "malformed_json"),
    ("json-array", "/v1/search", "[1, 2]", J, 422, "invalid_request"),
    ("empty-body", "/v1/search", "", J, 422, "invalid_request"),
    ("query-not-string", "/v1/search", {**GOOD, "query": 5}, J, 422, "invalid_request"),
    ("query-empty", "/v1/search", {**GOOD, "query": ""}, J, 422, "invalid_request"),
    ("query-missing", "/v1/search", {"k": 5}, J, 422, "invalid_request"),
    ("query-too-long", "/v1/search", {**GOOD, "query": "a" * 2001}, J, 422, "invalid_request"),
    ("query-1mb", "/v1/search", {**GOOD, "query": "a" * 1_000_000}, J, 413, "body_too_large"),
    ("k-zero", "/v1/search", {**GOOD, "k": 0}, J, 422, "invalid_request"),
    ("k-negative", "/v1/search", {**GOOD, "k": -3}, J, 422, "invalid_request"),
    ("k-huge", "/v1/search", {**GOOD, "k": 10**9}, J, 422, "invalid_request"),
    ("k-string", "/v1/search", {**GOOD, "k": "ten"}, J, 422, "invalid_request"),
    ("k-float", "/v1/search", {**GOOD, "k": 2.5}, J, 422, "invalid_request"),
    ("unknown-retriever", "/v1/search", {**GOOD, "retriever": "tfidf"}, J, 422, "unknown_retriever"),
    ("unregistered-kind-name", "/v1/search", {**GOOD, "retriever": "splade-v9"}, J, 422, "unknown_retriever"),
    ("extra-field", "/v1/search", {**GOOD, "debug": True}, J, 422, "invalid_request"),
    ("nan-weight", "/v1/search", '{"query": "x", "retriever": "hybrid", "fusion": {"weights": {"bm25": NaN}}}',
     J, 422, "invalid_request"),
    ("inf-rrf-k", "/v1/search", '{"query": "x", "retriever": "hybrid", "fusion": {"rrf_k": Infinity}}',
     J, 422, "invalid_request"),
    ("bad-fusion", "/v1/search", {**GOOD, "retriever": "hybrid", "fusion": {"method": "borda"}}, J, 422,
     "invalid_request"),
    ("weight-unknown-retriever", "/v1/search", {**GOOD, "retriever": "hybrid", "fusion": {"weights": {"x": 1}}},
     J, 422, "invalid_request"),
    ("wrong-content-type", "/v1/search", "query=x", {"content-type": "application/x-www-form-urlencoded"}, 415,
     "unsupported_media_type"),
    ("no-content-type", "/v1/search", json.dumps(GOOD), {"content-type": ""}, 415, "unsupported_media_type"),
    ("oversized-body", "/v1/search", {**GOOD, "pad": "x" * 70_000}, J, 413, "body_too_large"),
    ("unknown-model", "/v1/recommend", {"history": ["1"], "model": "gru4rec"}, J, 422, "unknown_model"),
    ("history-empty", "/v1/recommend", {"history": []}, J, 422, "invalid_request"),
    ("history-too-long", "/v1/recommend", {"history": ["1"] * 1001}, J, 422, "invalid_request"),
    ("history-not-list", "/v1/recommend", {"history": "1 2 3"}, J, 422, "invalid_request"),
    ("history-item-int", "/v1/recommend", {"history": [1, 2]}, J, 422, "invalid_request"),
    ("rec-k-zero", "/v1/recommend", {"history": ["1"], "k": 0}, J, 422, "invalid_request"),
    ("exclude-seen-string", "/v1/recommend", {"history": ["1"], "exclude_seen": "maybe"}, J, 422,
     "invalid_request"),
    ("swap-unknown-retriever", "/v1/admin/indexes", {"retriever": "x", "path": "bm25-v2"}, {**J, **ADMIN}, 422,
     "unknown_retriever"),
    ("swap-absolute-path", "/v1/admin/indexes", {"retriever": "bm25", "path": "/tmp"}, {**J, **ADMIN}, 400,
     "bad_path"),
    ("swap-not-a-bundle", "/v1/admin/indexes", {"retriever": "bm25", "path": "nonexistent"}, {**J, **ADMIN}, 400,
     "bad_bundle"),
    ("swap-with-api-key", "/v1/admin/indexes", {"retriever": "bm25", "path": "bm25-v2"}, J, 401, "unauthorized"),
    ("unknown-path", "/v1/nothing", GOOD, J, 404, "not_found"),
]


@pytest.mark.parametrize(("path", "body", "headers", "status", "code"),
                         [c[1:] for c in BAD_CASES], ids=[c[0] for c in BAD_CASES])
def test_bad_input(client: httpx.Client, path: str, body: Any, headers: dict[str, str], status: int,
                   code: str) -> None:
    content = body if isinstance(body, str) else json.dumps(body)
    r = client.post(path, content=content.encode(), headers={**headers})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"]
    ok = client.post("/v1/search", json=GOOD)  # the service is fine right after
    assert ok.status_code == 200 and "hits" in ok.json()


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"},
                                     {"Authorization": "Basic " + API_KEY}], ids=["none", "wrong", "bearer-wrong",
                                                                                 "basic"])
def test_api_key_required(url: str, headers: dict[str, str]) -> None:
    r = httpx.post(f"{url}/v1/search", json=GOOD, headers=headers)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert API_KEY not in r.text
    ok = httpx.post(f"{url}/v1/search", json=GOOD, headers={"Authorization": f"Bearer {API_KEY}"})
    assert ok.status_code == 200


def test_wrong_method_and_unknown_items(client: httpx.Client) -> None:
    r = client.get("/v1/search")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    r = client.post("/v1/recommend", json={"history": ["never-seen-1", "never-seen-2"], "k": 3})
    assert r.status_code == 200 and r.json()["skipped_unknown"] == 2


# ---- 3. index version swap under load ------------------------------------------------------------------

def test_index_swap_under_load(client: httpx.Client, url: str, bundles: dict[str, Path]) -> None:
    results: list[tuple[float, int, str | None]] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=url, headers={"X-API-Key": API_KEY}, timeout=10.0) as c:
            for i in range(2000):  # bounded
                if stop.is_set():
                    break
                started = time.monotonic()
                r = c.post("/v1/search", json={"query": f"vitamin {i % 7}", "k": 5, "retriever": "bm25"})
                version = r.json().get("index_versions", {}).get("bm25") if r.status_code == 200 else None
                results.append((started, r.status_code, version))

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    r = client.post("/v1/admin/indexes", json={"retriever": "bm25", "path": bundles["bm25_v2"].name}, headers=ADMIN,
                    timeout=60)
    swapped_at = time.monotonic()
    assert r.status_code == 200, r.text
    assert r.json() == {"retriever": "bm25", "version": "bm25-v2", "previous": "bm25-v1"}
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert results and all(status == 200 for _, status, _ in results), {s for _, s, _ in results}
    after = [v for started, _, v in results if started > swapped_at]
    before = [v for started, _, v in results if started < swapped_at]
    assert after and set(after) == {"bm25-v2"}
    assert "bm25-v1" in before
    assert client.get("/v1/models").json()["retrievers"]["bm25"]["index_version"] == "bm25-v2"
    assert 'retrec_index_version_info{retriever="bm25",version="bm25-v2"} 1.0' in httpx.get(f"{url}/metrics").text


# ---- 4. shard failure ----------------------------------------------------------------------------------

def _replica_actor(deployment: str) -> Any:
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if f"#{deployment}#" in a["name"]]
    assert names, f"no replica of {deployment}"
    return ray.get_actor(names[0], namespace="serve")


def test_shard_failure_is_partial_and_recovers(client: httpx.Client) -> None:
    body = {"query": "vitamin", "k": 10, "retriever": "dense"}
    assert client.post("/v1/search", json=body).json()["partial"] is False
    ray.kill(_replica_actor("dense-shard-1"), no_restart=True)
    saw_partial = False
    deadline = time.monotonic() + 60
    recovered = False
    while time.monotonic() < deadline:
        started = time.monotonic()
        r = client.post("/v1/search", json=body)
        elapsed = time.monotonic() - started
        # a dead shard costs its shard timeout (0.75 s), never the whole request timeout (5 s); the margin is
        # for a loaded machine, where Serve starts the replacement replica on the same cores
        assert elapsed < 4.0, f"request took {elapsed:.2f} s"
        assert r.status_code in (200, 503), r.text
        if r.status_code == 200 and r.json()["partial"]:
            saw_partial = True
            assert r.json()["failed_shards"] == ["dense-1"] and r.json()["hits"]
        elif r.status_code == 200 and saw_partial:
            recovered = True
            break
        time.sleep(0.2)
    assert saw_partial and recovered


def test_index_swap_through_user_config(client: httpx.Client, url: str, bundles: dict[str, Path]) -> None:
    """A config whose Ingress ``user_config`` names another version swaps in place; no request fails."""
    from retrec.serving.launch import deploy

    port = int(url.rsplit(":", 1)[1])
    config = _config(bundles, port)
    current = client.get("/v1/models").json()["retrievers"]["bm25"]["index_version"]
    target = "bm25-v1" if current == "bm25-v2" else "bm25-v2"
    statuses: list[int] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=url, headers={"X-API-Key": API_KEY}, timeout=10.0) as c:
            for _ in range(2000):
                if stop.is_set():
                    break
                r = c.post("/v1/search", json=GOOD)
                statuses.append(r.status_code)
                if r.status_code != 200:
                    print("FAIL", r.status_code, r.text[:300])

    worker = threading.Thread(target=load)
    worker.start()
    try:
        path = bundles["bm25"] if target == "bm25-v1" else bundles["bm25_v2"]
        before = {a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "SERVE_REPLICA" in a["name"]}
        config["applications"][0]["deployments"] = [{"name": "Ingress",
                                                     "user_config": {"indexes": {"bm25": str(path)}}}]
        deploy(config)
        after = {a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "SERVE_REPLICA" in a["name"]}
        assert before == after, "replicas were restarted; a user_config change must reconfigure in place"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            body = client.post("/v1/search", json=GOOD).json()
            if body["index_versions"]["bm25"] == target:
                break
            time.sleep(0.2)
    finally:
        stop.set()
        worker.join(timeout=30)
    assert body["index_versions"]["bm25"] == target
    assert statuses and set(statuses) == {200}


def test_encoder_coalesces_pending_batches(bundles: dict[str, Path]) -> None:
    """Batches formed while the ONNX worker is busy are merged into one call of at most max_batch_size."""
    from retrec.serving.encoders import BatchingEncoder

    enc = BatchingEncoder(str(bundles["encoder"]), max_batch_size=5, threads=1, use_gpu=False)
    queries = _queries(bundles)
    batches = [queries[0:2], queries[2:4], queries[4:5], queries[5:8]]  # 2 + 2 + 1 coalesce; then 3

    async def scenario() -> list[list[tuple[np.ndarray, int]]]:
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in batches]
        enc._pending.extend(zip(batches, futures))
        await enc._run_pending()
        return [f.result() for f in futures]

    results = asyncio.run(scenario())
    assert [[size for _, size in r] for r in results] == [[5, 5], [5, 5], [5], [3, 3, 3]]
    want = enc.encode_now(queries[:8])
    got = np.stack([v for r in results for v, _ in r])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_encoder_alone_skips_the_batch_queue(bundles: dict[str, Path]) -> None:
    """A query with none other in flight goes straight to the ONNX worker; queries arriving while one is in
    flight go through the batch queue; every query gets its own vector."""
    from retrec.serving.encoders import BatchingEncoder

    enc = BatchingEncoder(str(bundles["encoder"]), max_batch_size=4, threads=1, use_gpu=False)
    queries, queued = _queries(bundles)[:4], []
    batch_queue = enc.encode_batch

    async def recording(text: str) -> tuple[np.ndarray, int]:
        queued.append(text)
        return await batch_queue(text)

    async def scenario() -> list[tuple[np.ndarray, int]]:
        enc.encode_batch = recording
        alone = await enc.encode(queries[0])
        return [alone, *await asyncio.gather(*(enc.encode(q) for q in queries[1:]))]

    from ray.serve import batching
    with pytest.MonkeyPatch.context() as mp:  # @serve.batch outside a replica: skip its replica-config warning
        mp.setattr(batching._BatchQueue, "_warn_if_max_batch_size_exceeds_max_ongoing_requests", lambda self: None)
        results = asyncio.run(scenario())
    assert queued == queries[2:] and enc._in_flight == 0
    np.testing.assert_allclose(np.stack([v for v, _ in results]), enc.encode_now(queries), rtol=0, atol=1e-5)


# ---- 5. encoder placement: deployment ------------------------------------------------------------------

def test_encoder_as_deployment_equals_offline(client: httpx.Client, url: str, bundles: dict[str, Path]) -> None:
    """``encoder.placement: deployment`` (a second application under /dep): a QueryEncoder deployment, same answers."""
    from retrec.serving.launch import deploy

    port = int(url.rsplit(":", 1)[1])
    main_app = _config(bundles, port)["applications"][0]
    current = str(bundles["root"] / client.get("/v1/models").json()["retrievers"]["bm25"]["index_path"])
    main_app["deployments"] = [{"name": "Ingress", "user_config": {"indexes": {"bm25": current}}}]  # unchanged
    second = {**_config(bundles, port, placement="deployment")["applications"][0], "name": "retrec-dep",
              "route_prefix": "/dep"}
    deploy({**_config(bundles, port), "applications": [main_app, second]})
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]
    assert any("::retrec-dep#QueryEncoder#" in n for n in names), names
    assert not any("::retrec#QueryEncoder#" in n for n in names)
    with httpx.Client(base_url=f"{url}/dep", headers={"X-API-Key": API_KEY}, timeout=10.0) as dep:
        deadline = time.monotonic() + 60
        while dep.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.25)
        assert _encoder_info(dep.get("/v1/models").json(), bundles)["placement"] == "deployment"
        offline = _offline_dense(bundles)
        for q in _queries(bundles)[:4]:
            r = dep.post("/v1/search", json={"query": q, "k": 10, "retriever": "dense"})
            assert r.status_code == 200, r.text
            _assert_same_hits(r.json()["hits"], offline.search([q], 10)[0])
        assert "retrec_encoder_batch_size_count" in dep.get("/metrics").text


# ---- 6. auth follows routing (issue 12, acceptance 4); a loopback-only local Ray (item 13) --------------------

def test_local_ray_listens_on_loopback_only(url: str) -> None:
    """Every TCP port the local Ray of ``start`` listens on (GCS, raylet, workers, agents, Serve's proxy) is loopback
    — but the Serve replicas' inter-deployment gRPC servers, which Ray Serve 2.60 binds to ``[::]`` (hard-coded):
    those must refuse a call without Ray's token (token auth is on for the local cluster)."""
    import ipaddress

    import grpc
    import psutil  # Ray's dependency
    from ray._raylet import AuthenticationMode, get_authentication_mode

    assert ray._private.worker._global_node.node_ip_address == "127.0.0.1"
    assert get_authentication_mode() == AuthenticationMode.TOKEN
    listening = []
    for proc in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        try:
            conns = proc.net_connections(kind="tcp")
            name = proc.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        listening += [(name, c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN]
    assert len(listening) >= 3, listening  # GCS, raylet, Serve's proxy at least
    exposed = [e for e in listening if not ipaddress.ip_address(e[1].removeprefix("::ffff:")).is_loopback]
    assert exposed and all(name.startswith("ray::ServeReplica:") for name, _, _ in exposed), exposed
    for _, _, port in exposed:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel, pytest.raises(grpc.RpcError) as err:
            channel.unary_unary("/ray.serve.ASGIService/HandleRequest")(b"", timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_every_route_needs_a_key_under_root_and_a_route_prefix(client: httpx.Client, url: str,
                                                               bundles: dict[str, Path]) -> None:
    """Real Ray Serve HTTP: this module's application at "/" and a second one at ``route_prefix: /api`` (deployed the
    way ``retrec serve`` deploys); every operation of each OpenAPI document and the docs routes, without a key, with
    a wrong one and with the right one (the admin key for the admin endpoint)."""
    from retrec.serving.launch import deploy, wait_ready
    from tests.serving.routes import http_send, walk_routes

    port = int(url.rsplit(":", 1)[1])
    main_app = _config(bundles, port)["applications"][0]
    current = str(bundles["root"] / client.get("/v1/models").json()["retrievers"]["bm25"]["index_path"])
    main_app["deployments"] = [{"name": "Ingress", "user_config": {"indexes": {"bm25": current}}}]  # unchanged
    api_app = _config(bundles, port)["applications"][0]
    api_app = {**api_app, "name": "retrec-api", "route_prefix": "/api",
               "args": {**api_app["args"], "retrievers": {"bm25": api_app["args"]["retrievers"]["bm25"]}}}
    deploy({**_config(bundles, port), "applications": [main_app, api_app]})
    wait_ready(f"{url}/api")

    send = http_send(url)

    swap_to_current = {"/v1/admin/indexes": {"retriever": "bm25", "path": Path(current).name}}
    for prefix in ("", "/api"):
        schema = httpx.get(f"{url}{prefix}/openapi.json", timeout=30.0)
        assert schema.status_code == 200, schema.text
        assert walk_routes(send, prefix, schema.json(), api_key=API_KEY, admin_key=ADMIN_KEY,
                           bodies=swap_to_current) == []
