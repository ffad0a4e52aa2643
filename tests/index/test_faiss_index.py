from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest

from retrec.bundle import BundleError, load_bundle, write_manifest
from retrec.index import faiss_index
from retrec.index.faiss_index import FaissIndex, shard_of
from retrec.index.retriever import top_k


def _tied_vectors(n: int = 300, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Small-integer vectors (exact float32 dot products) with duplicated rows: many exact ties."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, size=(n, dim)).astype(np.float32)
    x[n // 2 :: 3] = x[0]  # a block of documents identical to doc 0
    x[1::7] = x[2]
    queries = rng.integers(-2, 3, size=(12, dim)).astype(np.float32)
    queries[0] = x[0]
    ids = [f"d{rng.integers(10**6):06d}-{i}" for i in range(n)]
    return x, ids, queries


def _encoder_manifest(tmp_path: Path, dim: int, similarity: str = "dot", version: str = "v1") -> object:
    root = tmp_path / f"enc-{dim}-{similarity}-{version}"
    root.mkdir()
    (root / "encoder.onnx").write_bytes(b"not a model")
    write_manifest(root, kind="model/dense", name="enc", version=version, dims={"dim": dim},
                   config={"similarity": similarity})
    return load_bundle(root, kind="model/dense")


def test_shard_hash_is_stable_across_processes() -> None:
    ids = ["a", "doc-1", "ünï", "31715818"]
    here = [shard_of(d, 7) for d in ids]
    code = f"from retrec.index.faiss_index import shard_of; print([shard_of(d, 7) for d in {ids!r}])"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "123", "PATH": ""}).stdout.strip()
    assert other == str(here)
    assert shard_of("a", 4) == shard_of("a", 4) and 0 <= shard_of("a", 4) < 4


@pytest.mark.parametrize("k", [1, 5, 37, 150, 1000])
def test_four_shards_equal_one_shard_equal_exact_top_k(k: int) -> None:
    x, ids, queries = _tied_vectors()
    one = FaissIndex.build(x, ids, factory="Flat", shards=1, similarity="dot")
    four = FaissIndex.build(x, ids, factory="Flat", shards=4, similarity="dot")
    assert sorted(len(s) for s in four.shard_ids) != [len(ids)] and sum(map(len, four.shard_ids)) == len(ids)
    got_one, got_four = one.search(queries, k), four.search(queries, k)
    assert got_one == got_four
    for q, hits in zip(queries, got_four):
        assert hits == top_k(x @ q, ids, k)  # score desc, doc_id desc — ties resolved the same way
    if k >= 10:
        scores = [s for _, s in got_four[0]]
        assert len(set(scores[:10])) < 10  # the test really has ties at the top


def test_no_padding_ids_when_k_exceeds_corpus() -> None:
    x, ids, queries = _tied_vectors(n=10)
    index = FaissIndex.build(x, ids, shards=4, similarity="dot")
    for hits in index.search(queries, 50):
        assert len(hits) == 10 and {d for d, _ in hits} == set(ids)
    assert index.search(queries, 0) == [[] for _ in queries]
    assert index.search(queries[:0], 5) == []


def test_cosine_normalises_documents_and_queries() -> None:
    x, ids, queries = _tied_vectors(n=50)
    index = FaissIndex.build(x * 3.0, ids, similarity="cosine")
    (best, score), *_ = index.search(queries[:1] * 10.0, 1)[0]
    assert score == pytest.approx(1.0, abs=1e-5) and np.allclose(x[ids.index(best)], x[0])


def test_a_compatible_encoder_searches_the_old_index_in_its_old_space_and_others_are_refused(tmp_path: Path) -> None:
    """An encoder trained --compatible-with the index's encoder is taken at load; its wider queries are searched
    by their first dimensions. Without that record, or naming another version, it is refused at load; an index
    loaded for its own encoder refuses the wider queries at query time."""
    rng = np.random.default_rng(0)
    docs, ids = rng.standard_normal((40, 8)).astype(np.float32), [f"d{i}" for i in range(40)]
    own = _encoder_manifest(tmp_path, 8, "cosine")
    FaissIndex.build(docs, ids, similarity="cosine", encoder=own).save(tmp_path / "idx")

    def new_encoder(name: str, compat: dict | None) -> object:
        root = tmp_path / name
        root.mkdir()
        (root / "encoder.onnx").write_bytes(b"not a model")
        write_manifest(root, kind="model/dense", name=name, version="v2", dims={"dim": 12},
                       config={"similarity": "cosine", **({"compat": compat} if compat else {})})
        return load_bundle(root, kind="model/dense")

    good = new_encoder("new", {"old": {"name": "enc", "version": "v1"}, "old_dim": 8, "mode": "bt2"})
    loaded = FaissIndex.load(tmp_path / "idx", encoder=good)
    assert loaded.query_prefix == 8
    queries = rng.standard_normal((5, 8)).astype(np.float32)
    wide = np.concatenate([queries * 2.0, rng.standard_normal((5, 4)).astype(np.float32)], axis=1)
    assert loaded.search(wide, 10) == loaded.search(queries, 10)
    from retrec.index.encoder_check import check_index

    assert check_index(load_bundle(tmp_path / "idx"), good) == 8  # the serving hook: queries cut to 8
    assert check_index(load_bundle(tmp_path / "idx"), own) is None
    for bad in (new_encoder("plain", None), new_encoder("other", {"old": {"name": "enc", "version": "v0"},
                                                                   "old_dim": 8})):
        with pytest.raises(BundleError, match="records no compatibility"):
            FaissIndex.load(tmp_path / "idx", encoder=bad)
    with pytest.raises(ValueError, match="this index has dim 8"):
        FaissIndex.load(tmp_path / "idx", encoder=own).search(wide, 10)


def test_shards_stamped_with_different_encoders_load_only_when_compatible(tmp_path: Path) -> None:
    """A rolling re-encode's version lists each shard's encoder: its own or a compatible one loads (in process
    and through the serving hook); a shard stamped by an encoder with no compatibility record is refused."""
    from retrec.index.encoder_check import check_index, shard_stamp

    rng = np.random.default_rng(1)
    own = _encoder_manifest(tmp_path, 8, "cosine")
    FaissIndex.build(rng.standard_normal((30, 8)).astype(np.float32), [f"d{i}" for i in range(30)],
                     similarity="cosine", encoder=own, shards=2).save(tmp_path / "idx")
    compatible = {"name": "new", "version": "v2", "dim": 12, "similarity": "cosine", "path": None,
                  "compat": {"name": "enc", "version": "v1", "old_dim": 8}}
    plain = {**compatible, "name": "plain", "compat": None}

    def stamped(stamps: list) -> Path:
        manifest = load_bundle(tmp_path / "idx")
        write_manifest(tmp_path / "idx", kind=manifest.kind, name=manifest.name, version=manifest.version,
                       config={**manifest.config, "shard_encoders": stamps}, dims=manifest.dims)
        return tmp_path / "idx"

    assert "path" not in shard_stamp(compatible) and shard_stamp(own)["name"] == "enc"
    loaded = FaissIndex.load(stamped([shard_stamp(own), shard_stamp(compatible)]), encoder=own)
    assert len(loaded) == 30 and check_index(load_bundle(tmp_path / "idx"), own) is None
    for bad, match in (([shard_stamp(own), shard_stamp(plain)], "shard 1 was encoded by 'plain'"),
                       ([shard_stamp(own)], "one encoder per shard")):
        stamped(bad)
        with pytest.raises(BundleError, match=match):
            FaissIndex.load(tmp_path / "idx")
        with pytest.raises(BundleError, match=match):
            check_index(load_bundle(tmp_path / "idx"), own)


def test_save_load_round_trip(tmp_path: Path) -> None:
    x, ids, queries = _tied_vectors()
    encoder = _encoder_manifest(tmp_path, 16)
    index = FaissIndex.build(x, ids, factory="Flat", shards=3, encoder=encoder)
    manifest = index.save(tmp_path / "idx", name="toy")
    assert manifest.kind == "index/dense"
    assert manifest.config["encoder"] == {"name": "enc", "version": "v1", "path": str(encoder.path.resolve())}
    assert manifest.config["factory"] == "Flat" and manifest.config["metric"] == "inner_product"
    assert manifest.dims["dim"] == 16 and manifest.dims["documents"] == len(ids)
    assert sum(manifest.dims["shard_documents"]) == len(ids)
    loaded = FaissIndex.load(tmp_path / "idx", encoder=encoder)
    assert loaded.search(queries, 40) == index.search(queries, 40)
    assert FaissIndex.load(tmp_path / "idx", mmap=False).search(queries, 7) == index.search(queries, 7)
    with pytest.raises(FileExistsError):
        index.save(tmp_path / "idx")


def test_load_refuses_mismatched_encoder(tmp_path: Path) -> None:
    x, ids, _ = _tied_vectors()
    FaissIndex.build(x, ids, encoder=_encoder_manifest(tmp_path, 16)).save(tmp_path / "idx")
    with pytest.raises(BundleError, match="dimension 16 does not match"):
        FaissIndex.load(tmp_path / "idx", encoder=_encoder_manifest(tmp_path, 8))
    with pytest.raises(BundleError, match="metric mismatch"):
        FaissIndex.load(tmp_path / "idx", encoder=_encoder_manifest(tmp_path, 16, similarity="cosine"))
    with pytest.raises(BundleError, match="not comparable"):
        FaissIndex.load(tmp_path / "idx", encoder=_encoder_manifest(tmp_path, 16, version="v2"))
    shard = tmp_path / "idx" / "shards" / "000.faiss"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum mismatch"):
        FaissIndex.load(tmp_path / "idx")


def test_bad_inputs_are_refused() -> None:
    x, ids, queries = _tied_vectors(n=20)
    with pytest.raises(ValueError, match="duplicate"):
        FaissIndex.build(x, ids[:-1] + ids[:1], similarity="dot")
    with pytest.raises(ValueError, match="shape"):
        FaissIndex.build(x, ids[:-1])
    index = FaissIndex.build(x, ids)
    with pytest.raises(ValueError, match="dim 16"):
        index.search(queries[:, :8], 3)


@pytest.fixture
def one_faiss_thread() -> object:
    """Tiny trainings are dominated by OpenMP barriers, which stall when the CPUs are busy elsewhere."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)


@pytest.mark.usefixtures("one_faiss_thread")
@pytest.mark.parametrize(("factory", "params"), [("HNSW32", "efSearch=64"), ("IVF8,Flat", "nprobe=8"),
                                                 ("IVF8,PQ8x4", "nprobe=8")])
def test_approximate_factories_build_and_search(factory: str, params: str) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1300, 32)).astype(np.float32)  # >= 39 training points per centroid per shard
    ids = [f"doc{i}" for i in range(len(x))]
    queries = x[:20] + 0.05 * rng.normal(size=(20, 32)).astype(np.float32)
    exact = FaissIndex.build(x, ids, shards=2).search(queries, 10)
    approx = FaissIndex.build(x, ids, factory=factory, shards=2, search_params=params)
    assert approx.factory == factory and approx.search_params == params
    got = approx.search(queries, 10)
    assert all(len(h) == 10 for h in got)
    recall = np.mean([len({d for d, _ in a} & {d for d, _ in e}) / 10 for a, e in zip(got, exact)])
    assert recall >= (0.3 if "PQ" in factory else 0.9)  # 4-bit PQ on isotropic noise is coarse
    assert all(hits[0][0] == f"doc{i}" for i, hits in enumerate(got[:5])) or "PQ" in factory


def test_untrainable_factory_names_the_problem() -> None:
    x = np.random.default_rng(0).normal(size=(20, 16)).astype(np.float32)
    with pytest.raises(ValueError, match="cannot train"):
        FaissIndex.build(x, [str(i) for i in range(20)], factory="IVF64,Flat")


def test_cpu_fallback_without_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 0)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", lambda index: calls.append(index) or index, raising=False)
    x, ids, queries = _tied_vectors(n=40)
    index = FaissIndex.build(x, ids, shards=2, similarity="dot")
    assert index.on_gpu == [False, False] and not calls
    assert index.search(queries, 5)[0] == top_k(x @ queries[0], ids, 5)


def test_gpu_path_selected_when_gpus_exist(monkeypatch: pytest.MonkeyPatch) -> None:
    moved = []

    def fake_to_gpus(index: faiss.Index) -> faiss.Index:
        copy = faiss.IndexFlatIP(index.d)  # stands in for the GPU copy
        copy.add(index.reconstruct_n(0, index.ntotal))
        moved.append(copy)
        return copy

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", fake_to_gpus, raising=False)
    x, ids, queries = _tied_vectors(n=40)
    index = FaissIndex.build(x, ids, shards=2, similarity="dot")
    assert index.on_gpu == [True, True] and len(moved) == 2
    assert index.search(queries, 5)[0] == top_k(x @ queries[0], ids, 5)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", lambda index: (_ for _ in ()).throw(RuntimeError("no")))
    assert FaissIndex.build(x, ids, shards=2).on_gpu == [False, False]  # unsupported type: stays on CPU
    assert faiss_index._gpu_copy(index.cpu_shards[0], use_gpu=False) is None
