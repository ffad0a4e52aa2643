from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from retrec.bundle import load_bundle, write_manifest
from retrec.cli import app
from retrec.index import ann
from retrec.index.faiss_index import FaissIndex

runner = CliRunner()


def _clustered(n: int, dim: int = 32, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Embedding-like vectors: topics (cluster centres) plus per-document noise."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, dim)).astype(np.float32)
    x = centres[rng.integers(0, 40, n)] + 0.5 * rng.normal(size=(n, dim)).astype(np.float32)
    return x, [f"doc-{i:05d}" for i in range(n)]


def _encoder(tmp_path: Path, dim: int, similarity: str = "cosine") -> Path:
    root = tmp_path / f"enc-{dim}"
    root.mkdir()
    (root / "encoder.onnx").write_bytes(b"not a model")
    write_manifest(root, kind="model/dense", name="enc", version="v1", dims={"dim": dim},
                   config={"similarity": similarity})
    return root


def test_auto_recipe_is_exact_when_small_and_lists_grow_as_sqrt_n() -> None:
    assert ann.auto_recipe(50_000, 384) == ann.Recipe("Flat", refine=False)
    big = ann.auto_recipe(1_000_000, 384)
    assert big.refine and big.factory == f"IVF{big.nlist},PQ192x4fs"
    assert ann.nlist_for(100_000) < ann.nlist_for(1_000_000) < ann.nlist_for(5_000_000)
    assert 2_048 <= ann.nlist_for(1_000_000) <= 8_192  # ~4·√N lists


def test_auto_below_the_threshold_is_exact_search() -> None:
    x, ids = _clustered(500)
    auto = FaissIndex.build(x, ids, factory="auto", shards=2)
    flat = FaissIndex.build(x, ids, factory="Flat", shards=2)
    assert auto.factory == "Flat" and auto.refine is None and auto.tuning is None
    assert auto.search(x[:5], 10) == flat.search(x[:5], 10)


def test_auto_tunes_to_the_target_recall_and_records_it(tmp_path: Path) -> None:
    x, ids = _clustered(6_000)
    index = FaissIndex.build(x, ids, factory="auto", shards=2, exact_max=1_000, target_recall=0.95,
                             pseudo_queries=128)
    tuning = index.tuning
    assert index.factory.startswith("IVF") and index.refine is not None
    assert tuning["recall_at_10"] >= 0.95 and tuning["search_params"] == index.search_params
    assert "refine=" in index.search_params and tuning["pseudo_queries"] == 128
    assert tuning["bytes_per_doc"]["refine_store"] == 2 * 32  # float16 vectors
    # held-out queries (not documents of the index) reach about the same recall against exact search
    flat = FaissIndex.build(x, ids, factory="Flat")
    rng = np.random.default_rng(9)
    queries = x[rng.choice(len(x), 200)] + 0.4 * rng.normal(size=(200, 32)).astype(np.float32)
    got, want = index.search(queries, 10), flat.search(queries, 10)
    recall = np.mean([len({d for d, _ in a} & {d for d, _ in b}) / 10 for a, b in zip(got, want)])
    assert recall >= 0.9
    # saved: parameters, recall and the refine store (memory-mapped on load) travel with the version
    manifest = index.save(tmp_path / "v1")
    assert manifest.config["auto"]["recall_at_10"] == tuning["recall_at_10"]
    assert manifest.config["refine_store"] == "float16" and "shards/001.vectors.npy" in manifest.files
    loaded = FaissIndex.load(tmp_path / "v1")
    assert isinstance(loaded.refine[0], np.memmap) and loaded.search_params == index.search_params
    assert loaded.search(queries[:20], 10) == index.search(queries[:20], 10)
    # a lower refine depth costs recall: the parameter is really used
    loaded.set_search_params("nprobe=1,refine=1")
    low = np.mean([len({d for d, _ in a} & {d for d, _ in b}) / 10 for a, b in zip(loaded.search(queries, 10), want)])
    assert low < recall


def test_refine_needs_a_store_and_a_whole_number() -> None:
    x, ids = _clustered(300)
    flat = FaissIndex.build(x, ids, factory="Flat")
    with pytest.raises(ValueError, match="keeps no vectors"):
        flat.set_search_params("refine=4")
    with pytest.raises(ValueError, match="whole number"):
        flat.set_search_params("refine=lots")


def test_index_dense_from_vectors_cli(tmp_path: Path) -> None:
    x, ids = _clustered(3_000, dim=16)
    pq.write_table(pa.table({"doc_id": ids, "vector": pa.FixedSizeListArray.from_arrays(x.ravel(), 16)}),
                   tmp_path / "emb.parquet", row_group_size=500)
    enc = _encoder(tmp_path, 16)
    out = tmp_path / "index"
    args = ["index", "dense", "--vectors", str(tmp_path / "emb.parquet"), "--model", str(enc), "--out", str(out),
            "--shards", "2", "--param", "exact_max=1000", "--param", "pseudo_queries=64"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    manifest = load_bundle(out, kind="index/dense")
    assert manifest.dims["documents"] == 3_000 and manifest.config["encoder"]["name"] == "enc"
    assert manifest.config["auto"]["recall_at_10"] >= 0.95
    index = FaissIndex.load(out, encoder=load_bundle(enc))
    assert index.search(x[:1], 1)[0][0][0] == ids[0]
    # the wrong encoder, a second --data, a non-dense kind and unknown params are refused with exit 2
    wrong = _encoder(tmp_path / "w" if (tmp_path / "w").mkdir() is None else tmp_path, 8)
    bad = runner.invoke(app, [*args[:5], str(wrong), "--out", str(tmp_path / "o2")])
    assert bad.exit_code == 2 and "dim 16" in bad.output
    assert runner.invoke(app, [*args[:7], str(tmp_path / "o3"), "--data", str(tmp_path)]).exit_code == 2
    bm25 = runner.invoke(app, ["index", "bm25", *args[2:7], str(tmp_path / "o4")])
    assert bm25.exit_code == 2 and "index/dense" in bm25.output
    assert runner.invoke(app, [*args[:7], str(tmp_path / "o5"), "--param", "nprobe=3"]).exit_code == 2
    encoded = runner.invoke(app, [*args[:7], str(tmp_path / "o6"), "--variant", "int8"])
    assert encoded.exit_code == 2 and "encoded already" in encoded.output
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o4").exists()


def test_tuning_on_query_vectors_and_the_margin_on_document_pseudo_queries() -> None:
    x, ids = _clustered(5_000)
    rng = np.random.default_rng(4)
    shift = rng.normal(size=32).astype(np.float32)  # queries from another region than documents (asymmetric)
    queries = x[rng.choice(len(x), 300)] + 0.8 * rng.normal(size=(300, 32)).astype(np.float32) + shift
    by_docs = FaissIndex.build(x, ids, factory="auto", exact_max=1_000, pseudo_queries=100)
    t = by_docs.tuning
    assert t["tuned_on"].startswith("documents") and t["margin"] == ann.DOCUMENT_QUERY_MARGIN
    assert by_docs.search_params == ann.with_margin(t["params_at_target"], ann.DOCUMENT_QUERY_MARGIN,
                                                    ann.nlist_for(5_000))
    by_queries = FaissIndex.build(x, ids, factory="auto", exact_max=1_000, tune_queries=queries[:150])
    assert by_queries.tuning["tuned_on"] == "query vectors" and by_queries.tuning["recall_at_10"] >= 0.95
    flat = FaissIndex.build(x, ids, factory="Flat")
    held = queries[150:]
    want = flat.search(held, 10)
    recall = np.mean([len({d for d, _ in a} & {d for d, _ in b}) / 10
                      for a, b in zip(by_queries.search(held, 10), want)])
    assert recall >= 0.9  # unseen queries of the same kind
    assert ann.with_margin("nprobe=4,refine=8", 8, 16) == "nprobe=16,refine=8"


def test_refine_candidates_are_bounded_and_blocks_give_the_same_scores(monkeypatch: pytest.MonkeyPatch) -> None:
    from retrec.index import faiss_index

    x, ids = _clustered(3_000)
    index = FaissIndex.build(x, ids, factory="auto", exact_max=1_000, pseudo_queries=64)
    queries = x[:40] + 0.1
    whole = index.search(queries, 10)
    monkeypatch.setattr(faiss_index, "REFINE_BLOCK", 50)  # a block of one query at a time
    assert index.search(queries, 10) == whole
    seen: list[int] = []
    shard_search = index._shard_search
    monkeypatch.setattr(index, "_shard_search", lambda s, q, w: seen.append(w) or shard_search(s, q, w))
    monkeypatch.setattr(faiss_index, "REFINE_MAX", 100)
    index.set_search_params("nprobe=4,refine=128")
    assert len(index.search(queries[:2], 50)[0]) == 50 and max(seen) == 100  # not 128 × 50 candidates
    seen.clear()
    index.search(queries[:2], 300)
    assert max(seen) == 300  # never fewer than k
