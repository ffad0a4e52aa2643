"""Encoded retriever kinds through Ray Serve: ``muvera`` (the query's token matrix travels to two shard deployments,
each returns its FDE candidates re-ranked by exact MaxSim), ``sparse`` (the query's term weights travel to two
shard deployments of the inverted index) and ``dense`` served by an encoder upgrade (an index of the old encoder's
vectors, queries from a new encoder that records compatibility with it: searched by their old-space part). The
merged answer equals the offline index, and hybrid fuses it with BM25."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray

from retrec.data.beir import load_retrieval_data
from retrec.index.bm25_index import BM25Index
from retrec.index.fusion import rrf
from retrec.index.generic import build_index, index_kind, load_query_encoder, open_index, publish_index
from tests.tiny_models import tiny_dense_encoder, tiny_multivector_encoder, tiny_sparse_encoder

API_KEY = "test-key-encoded-kinds-0123456789"
# retriever name -> (tiny encoder bundle builder, the index kind's build parameters)
KINDS: dict[str, tuple[Callable[[Path], Path], dict[str, Any]]] = {
    "muvera": (tiny_multivector_encoder, {"candidates": 30, "repetitions": 4, "simhash_bits": 3}),
    "sparse": (tiny_sparse_encoder, {}),
    "dense": (tiny_dense_encoder, {"factory": "Flat"}),  # the index's encoder; served with its compatible upgrade
}


@pytest.fixture(scope="module", params=sorted(KINDS))
def bundles(request: pytest.FixtureRequest, tiny_data: Path, tmp_path_factory: pytest.TempPathFactory
            ) -> dict[str, Any]:
    name = request.param
    make_model, params = KINDS[name]
    root = tmp_path_factory.mktemp(f"{name}-serving")
    ids, texts = load_retrieval_data(tiny_data, split="test").doc_texts()
    model = make_model(root / "model")
    kind = index_kind(name)
    encoder = load_query_encoder(kind, model, threads=1)
    index = build_index(kind, ids, texts, encoder=encoder, shards=2, **params)
    if name == "dense":  # serve the index with a new encoder, 4 dimensions wider, compatible with its own
        model = tiny_dense_encoder(root / "new", compatible_with=model, extra_dims=4)
    (root / "keys.txt").write_text(f"{API_KEY}\n")
    return {"name": name, "data": tiny_data, "model": model, "keys": root / "keys.txt",
            "index": publish_index(index, root / f"{name}-v1", name, texts=(ids, texts), encoder=encoder),
            "bm25": BM25Index.build(ids, texts).save(root / "bm25", name="bm25").path}


@pytest.fixture(scope="module")
def url(bundles: dict[str, Any]) -> Iterator[str]:
    from retrec.serving.launch import free_port, start, stop

    zero = {"replicas": 1, "num_cpus": 0}
    config: dict[str, Any] = {
        "http_options": {"host": "127.0.0.1", "port": free_port()},
        "applications": [{"name": "retrec", "route_prefix": "/", "import_path": "retrec.serving.app:build_app",
                          "args": {"retrievers": {
                              "bm25": {"index": str(bundles["bm25"]), "shards": zero},
                              bundles["name"]: {"index": str(bundles["index"]), "encoder": str(bundles["model"]),
                                                "placement": "deployment", "shards": zero}},
                              "encoder": {"placement": "ingress", "threads": 1, "replicas": zero},
                              "ingress": zero, "use_gpu": False,
                              "auth": {"api_keys_env": None, "api_keys_file": str(bundles["keys"])}}}]}
    if ray.is_initialized():
        ray.shutdown()
    try:
        yield start(config, num_cpus=2)
    finally:
        stop()


def test_encoded_kind_over_http_equals_offline_and_joins_hybrid(url: str, bundles: dict[str, Any]) -> None:
    name = bundles["name"]
    offline = open_index(bundles["index"], model=bundles["model"])
    bm25 = BM25Index.load(bundles["bm25"])
    queries = load_retrieval_data(bundles["data"], split="test").queries.column("text").to_pylist()[:6]
    with httpx.Client(base_url=url, headers={"X-API-Key": API_KEY}, timeout=10.0) as client:
        models = client.get("/v1/models").json()
        assert models["retrievers"][name]["shards"] == 2
        assert models["retrievers"][name]["kind"] == f"index/{name}"
        for q in queries:
            r = client.post("/v1/search", json={"query": q, "k": 10, "retriever": name})
            assert r.status_code == 200, r.text
            got = [(h["doc_id"], h["score"]) for h in r.json()["hits"]]
            want = offline.search([q], 10)[0]
            assert want  # the tiny model's encodings match documents
            assert [d for d, _ in got] == [d for d, _ in want]
            assert [s for _, s in got] == pytest.approx([s for _, s in want], rel=1e-5)
        q = queries[0]
        hybrid = client.post("/v1/search", json={"query": q, "k": 10, "retriever": "hybrid"}).json()
        assert set(hybrid["index_versions"]) == {"bm25", name}
        runs = {"bm25": bm25.search([q], 100)[0], name: offline.search([q], 100)[0]}
        assert [h["doc_id"] for h in hybrid["hits"]] == [d for d, _ in rrf(runs, 10)]
