"""Serving by kind: kinds defined only in tests/ (``tests.toy_kinds``) served over HTTP equal their offline
answers, and two dense retrievers with different encoder bundles share one application.

``$RETREC_PLUGINS=tests.toy_kinds`` is set before Ray starts, so every Ray worker (the Serve controller
building the app, each replica) inherits it and registers the toy kinds on first use of the registry; the
workers import ``tests.toy_kinds`` from the driver's working directory, which Ray puts on their path (run
from the repository root). No file under retrec/ knows these kinds.

Applications (one Ray instance for the module): ``/`` — toy index, BM25 (for hybrid) and the toy
recommender; ``/dense`` — two dense retrievers with different encoder bundles, encoders inside the
ingress; ``/dep`` — the same two with ``placement: deployment`` (one ``QueryEncoder`` deployment each).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from retrec.bundle import BundleError
from retrec.data.beir import load_retrieval_data
from retrec.index.bm25_index import BM25Index
from retrec.index.dense_retriever import DenseRetriever
from retrec.index.faiss_index import FaissIndex
from retrec.index.fusion import rrf
from retrec.kinds import PLUGINS_ENV
from retrec.runtime.onnx_encoder import OnnxEncoder
from tests import toy_kinds
from tests.tiny_models import tiny_dense_encoder

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")
ADMIN_KEY = "plugin-admin-key-0123456789"
ADMIN = {"X-API-Key": ADMIN_KEY}


@pytest.fixture(scope="module")
def bundles(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serving-kinds")
    ids, texts = load_retrieval_data(tiny_data, split="test").doc_texts()
    out = {"data": tiny_data, "root": root}
    (root / "admin-keys.txt").write_text(f"{ADMIN_KEY}\n")
    toy_kinds.build_toy_index(ids, texts).save(root / "toy", name="toy")
    out["toy"] = root / "toy"
    out["bm25"] = BM25Index.build(ids, texts).save(root / "bm25").path
    out["toypop"] = toy_kinds.train_toy(tiny_data, root / "toypop", toy_kinds.ToyTrainConfig())  # retrec train toy
    for name, dim, seed in (("a", 16, 0), ("b", 8, 1)):  # two encoder bundles: different weights and dims
        out[f"enc_{name}"] = tiny_dense_encoder(root / f"enc-{name}", dim=dim, seed=seed)
        DenseRetriever.build(OnnxEncoder(out[f"enc_{name}"], threads=1), ids, texts, shards=2).save(
            root / f"dense-{name}")
        out[f"dense_{name}"] = root / f"dense-{name}"
    return out


def _app(name: str, prefix: str, args: dict[str, Any], root: Path) -> dict[str, Any]:
    zero = {"replicas": 1, "num_cpus": 0, "max_ongoing_requests": 32}
    base = {"encoder": {"max_batch_size": 8, "threads": 1, "replicas": {**zero, "max_ongoing_requests": 64}},
            "ingress": {**zero, "max_ongoing_requests": 64}, "auth": {"mode": "none"}, "use_gpu": False,
            "admin": {"enabled": True, "keys_file": str(root / "admin-keys.txt"), "models_root": str(root)}}
    for r in args.get("retrievers", {}).values():
        r["shards"] = zero
    for r in args.get("recommenders", {}).values():
        r["replicas"] = zero
    return {"name": name, "route_prefix": prefix, "import_path": "retrec.serving.app:build_app",
            "args": {**base, **args, "encoder": {**base["encoder"], **args.get("encoder", {})}}}


def _dense_args(bundles: dict[str, Path], placement: str) -> dict[str, Any]:
    return {"retrievers": {n: {"index": str(bundles[f"dense_{n[-1]}"]), "encoder": str(bundles[f"enc_{n[-1]}"])}
                           for n in ("dense_a", "dense_b")},
            "encoder": {"placement": placement}}


@pytest.fixture(scope="module")
def url(bundles: dict[str, Path]) -> Iterator[str]:
    from retrec.serving.launch import free_port, start, stop

    saved = os.environ.get(PLUGINS_ENV)
    os.environ[PLUGINS_ENV] = "tests.toy_kinds"  # before Ray starts: every worker inherits it
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    config = {"http_options": {"host": "127.0.0.1", "port": free_port()}, "applications": [
        _app("toys", "/", {"retrievers": {"toy": {"index": str(bundles["toy"])},
                                          "bm25": {"index": str(bundles["bm25"])}},
                           "recommenders": {"toypop": {"bundle": str(bundles["toypop"])}}}, bundles["root"]),
        _app("dense", "/dense", _dense_args(bundles, "ingress"), bundles["root"]),
        _app("dep", "/dep", _dense_args(bundles, "deployment"), bundles["root"]),
    ]}
    try:
        yield start(config)
    finally:
        stop()
        if saved is None:
            os.environ.pop(PLUGINS_ENV, None)
        else:
            os.environ[PLUGINS_ENV] = saved


@pytest.fixture(scope="module")
def client(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=30.0) as c:
        yield c


def _queries(bundles: dict[str, Path]) -> list[str]:
    return load_retrieval_data(bundles["data"], split="test").queries.column("text").to_pylist()[:6]


def _hits(body: dict[str, Any]) -> list[tuple[str, float]]:
    return [(h["doc_id"], h["score"]) for h in body["hits"]]


def test_toy_retriever_and_hybrid_http_equal_offline(client: httpx.Client, bundles: dict[str, Path]) -> None:
    toy = toy_kinds.load_toy_index(bundles["toy"])
    bm25 = BM25Index.load(bundles["bm25"])
    for q in _queries(bundles):
        r = client.post("/v1/search", json={"query": q, "k": 15, "retriever": "toy"})
        assert r.status_code == 200, r.text
        assert r.json()["index_versions"]["toy"] and _hits(r.json()) == toy.search([q], 15)[0]
        r = client.post("/v1/search", json={"query": q, "k": 10, "retriever": "hybrid"})
        assert r.status_code == 200, r.text
        assert set(r.json()["index_versions"]) == {"toy", "bm25"}
        assert _hits(r.json()) == rrf({"toy": toy.search([q], 100)[0], "bm25": bm25.search([q], 100)[0]}, 10)
    r = client.post("/v1/search", json={"query": _queries(bundles)[0]})  # default: every retriever fused
    assert r.status_code == 200 and r.json()["retriever"] == "hybrid"


def test_toy_recommender_http_equals_offline(client: httpx.Client, bundles: dict[str, Path]) -> None:
    rec = toy_kinds.PopularRecommender(bundles["toypop"])
    popular = rec.ranked[:3]
    for history in ([*popular, "never-seen"], ["never-seen"]):
        answers = {}
        for exclude in (True, False):
            r = client.post("/v1/recommend", json={"history": history, "k": 5, "model": "toypop",
                                                   "exclude_seen": exclude})
            assert r.status_code == 200, r.text
            body = r.json()
            answers[exclude] = [(i["item_id"], i["score"]) for i in body["items"]]
            assert answers[exclude] == rec.recommend([history], 5, exclude)[0]
            assert body["skipped_unknown"] == 1 and body["model"] == "toypop"
        if history[0] in popular:  # exclude_seen reaches the model: the seen popular items are left out
            assert {i for i, _ in answers[True]}.isdisjoint(popular) and answers[False][0][0] == popular[0]
    assert client.post("/v1/recommend", json={"history": ["x"]}).json()["model"] == "toypop"


def test_models_names_and_openapi_come_from_the_registry(client: httpx.Client, bundles: dict[str, Path]) -> None:
    models = client.get("/v1/models").json()
    assert models["retrievers"]["toy"]["kind"] == toy_kinds.TOY_INDEX
    assert models["retrievers"]["bm25"]["kind"] == "index/bm25" and models["hybrid"] is True
    assert models["recommenders"]["toypop"]["kind"] == toy_kinds.TOY_RECOMMENDER
    assert models["encoders"] == {}
    assert {"toy", "bm25", "dense"} <= set(models["registered"]["retrievers"])
    assert {"toypop", "bert4rec"} <= set(models["registered"]["recommenders"])
    spec = client.get("/openapi.json").json()["components"]["schemas"]
    retriever = spec["SearchRequest"]["properties"]["retriever"]
    assert retriever["anyOf"] == [{"type": "string", "enum": ["toy", "bm25", "hybrid"]}, {"type": "null"}]
    assert retriever["default"] == "hybrid" and "toy (index/toy-overlap" in retriever["description"]
    assert spec["RecommendRequest"]["properties"]["model"]["anyOf"][0]["enum"] == ["toypop"]
    # a registered name this application does not deploy: 400; a name nothing registers: 422
    for body, status, code in (({"query": "x", "retriever": "dense"}, 400, "not_deployed"),
                               ({"query": "x", "retriever": "splade-v9"}, 422, "unknown_retriever")):
        r = client.post("/v1/search", json=body)
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), r.text
    r = client.post("/v1/recommend", json={"history": ["x"], "model": "bert4rec"})
    assert (r.status_code, r.json()["error"]["code"]) == (400, "not_deployed")


async def _concurrent(url: str, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=30.0) as c:
        return await asyncio.gather(*(c.post("/v1/search", json=b) for b in bodies))


def _assert_close(got: list[tuple[str, float]], want: list[tuple[str, float]]) -> None:
    assert [d for d, _ in got] == [d for d, _ in want]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in want], rtol=0, atol=1e-6)


@pytest.mark.parametrize("prefix", ["/dense", "/dep"], ids=["encoders-in-ingress", "encoder-deployments"])
def test_two_dense_retrievers_with_their_own_encoders(url: str, bundles: dict[str, Path], prefix: str) -> None:
    """Concurrent requests to two dense retrievers (different encoder bundles and dims) and their hybrid:
    each encoder batches only its own queries; every answer equals its offline retriever's."""
    offline = {n: DenseRetriever(OnnxEncoder(bundles[f"enc_{n[-1]}"], threads=1),
                                 FaissIndex.load(bundles[f"dense_{n[-1]}"])) for n in ("dense_a", "dense_b")}
    queries = _queries(bundles)
    bodies = [{"query": q, "k": 7, "retriever": r} for q in queries for r in ("dense_a", "dense_b", "hybrid")]
    for body, r in zip(bodies, asyncio.run(_concurrent(url + prefix, bodies))):
        assert r.status_code == 200, r.text
        q, name = body["query"], body["retriever"]
        if name == "hybrid":
            want = rrf({n: offline[n].search([q], 100)[0] for n in offline}, 7)
        else:
            want = offline[name].search([q], 7)[0]
        _assert_close(_hits(r.json()), want)
    models = httpx.get(f"{url}{prefix}/v1/models").json()
    encoders = {Path(bundles[k]).resolve().relative_to(Path(bundles["root"]).resolve()).as_posix()
                for k in ("enc_a", "enc_b")}
    assert set(models["encoders"]) == encoders
    placement = "deployment" if prefix == "/dep" else "ingress"
    assert {e["placement"] for e in models["encoders"].values()} == {placement}
    assert {e["dim"] for e in models["encoders"].values()} == {16, 8}
    if prefix == "/dep":
        names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]
        assert any("::dep#QueryEncoder#" in n for n in names) and any("::dep#QueryEncoder-dense_b#" in n
                                                                       for n in names), names


def test_swap_is_checked_by_the_kind(url: str, bundles: dict[str, Path]) -> None:
    """A dense version built with another encoder is refused by the kind's check hook; another kind too."""
    r = httpx.post(f"{url}/dense/v1/admin/indexes", json={"retriever": "dense_a", "path": "dense-b"}, headers=ADMIN)
    assert r.status_code == 400 and "dimension" in r.json()["error"]["message"], r.text
    assert str(bundles["root"]) not in r.text
    r = httpx.post(f"{url}/v1/admin/indexes", json={"retriever": "toy", "path": "bm25"}, headers=ADMIN)
    assert r.status_code == 400 and "index/bm25" in r.json()["error"]["message"], r.text
    r = httpx.post(f"{url}/v1/admin/indexes", json={"retriever": "toy", "path": "toy"}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["version"] == r.json()["previous"]


def test_build_refuses_a_mismatched_encoder(bundles: dict[str, Path]) -> None:
    """At build time: the kind's check hook (dense: dimension) and the encoder kind must fit the index."""
    from retrec.serving.app import build_app

    with pytest.raises(BundleError, match="dimension"):
        build_app({"retrievers": {"d": {"index": str(bundles["dense_a"]), "encoder": str(bundles["enc_b"])}}})
    with pytest.raises(BundleError, match="needs 'encoder"):
        build_app({"retrievers": {"d": {"index": str(bundles["dense_a"])}}})
    with pytest.raises(BundleError, match="not a query_encoder"):
        build_app({"retrievers": {"d": {"index": str(bundles["dense_a"]), "encoder": str(bundles["bm25"])}}})
    with pytest.raises(BundleError, match="fused ranking"):
        build_app({"retrievers": {"hybrid": {"index": str(bundles["bm25"])}}})


def test_demo_config_serves_bundles_by_kind(bundles: dict[str, Path]) -> None:
    """The demo's config comes from the bundles' kinds: every index (a dense one with the encoder bundle its
    kind's check accepts), every recommender; folder names become the served names."""
    from retrec.serving.config import ServingConfig
    from retrec.serving.launch import demo_config, servable_bundles

    retrievers, recommenders = servable_bundles(bundles["toy"].parent)
    assert retrievers == {"bm25": {"index": str(bundles["bm25"].resolve())},
                          "dense-a": {"index": str(bundles["dense_a"].resolve()),
                                      "encoder": str(bundles["enc_a"].resolve())},
                          "dense-b": {"index": str(bundles["dense_b"].resolve()),
                                      "encoder": str(bundles["enc_b"].resolve())},
                          "toy": {"index": str(bundles["toy"].resolve())}}
    assert recommenders == {"toypop": {"bundle": str(bundles["toypop"].resolve())}}
    ServingConfig.model_validate(demo_config(bundles["toy"].parent, 8000)["applications"][0]["args"])
