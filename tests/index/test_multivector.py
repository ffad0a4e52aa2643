"""Multi-vector indexes: exact MaxSim (index/maxsim) and MUVERA (index/muvera) — search, shards, save/load, checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from retrec.bundle import BundleError, read_manifest
from retrec.index.generic import open_index, publish_index
from retrec.index.multivector import assemble_maxsim, assemble_muvera, load_index
from retrec.runtime.fde import maxsim
from tests.tiny_models import tiny_multivector_encoder

WORDS = ["vitamin", "scurvy", "citrus", "ray", "serve", "replica", "shard", "token", "vector", "index", "query",
         "document", "fruit", "lack", "cause"]


class FakeEncoder:
    """Token matrices of random unit vectors; just the manifest facts the index records."""

    def __init__(self, tmp: Path, dim: int = 8) -> None:
        from retrec.bundle import write_manifest

        tmp.mkdir(parents=True, exist_ok=True)
        write_manifest(tmp, kind="model/multivector", name="fake-mv", version="v1", dims={"dim": dim},
                       config={"similarity": "maxsim"})
        self.manifest = read_manifest(tmp)
        self.dim = dim


def _unit(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    m = rng.standard_normal((rows, dim)).astype(np.float32)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def corpus(n: int = 120, dim: int = 8, seed: int = 0) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    docs = [_unit(rng, int(rng.integers(2, 12)), dim) for _ in range(n)]
    queries = [_unit(rng, int(rng.integers(2, 6)), dim) for _ in range(7)]
    return [f"d{i:03d}" for i in range(n)], docs, queries


def brute_force(ids: list[str], docs: list[np.ndarray], query: np.ndarray, k: int) -> list[tuple[str, float]]:
    scores = [maxsim(query, d.astype(np.float16).astype(np.float32)) for d in docs]
    by_id_desc = sorted(zip(ids, scores), key=lambda h: h[0], reverse=True)
    return sorted(by_id_desc, key=lambda h: -h[1])[:k]  # stable: score desc, then doc_id desc


@pytest.mark.parametrize("shards", [1, 3])
def test_maxsim_index_is_brute_force_maxsim(tmp_path: Path, shards: int) -> None:
    ids, docs, queries = corpus()
    index = assemble_maxsim(ids, docs, encoder=FakeEncoder(tmp_path / "enc"), shards=shards)
    for query, hits in zip(queries, index.search(queries, 10)):
        expected = brute_force(ids, docs, query, 10)
        assert [d for d, _ in hits] == [d for d, _ in expected]
        np.testing.assert_allclose([s for _, s in hits], [s for _, s in expected], rtol=1e-5)


def test_muvera_reranks_candidates_by_exact_maxsim(tmp_path: Path) -> None:
    ids, docs, queries = corpus()
    enc = FakeEncoder(tmp_path / "enc")
    exact = assemble_maxsim(ids, docs, encoder=enc, shards=2).search(queries, 10)
    muvera = assemble_muvera(ids, docs, encoder=enc, shards=2, repetitions=4, simhash_bits=3, candidates=200)
    assert muvera.search(queries, 10) == exact  # every document a candidate: exactly the brute force
    few = muvera.search(queries, 5, candidates=20)
    for query, hits in zip(queries, few):
        by_id = dict(zip(ids, docs))
        for doc, score in hits:  # scores are exact MaxSim, whichever documents were candidates
            assert score == pytest.approx(maxsim(query, by_id[doc].astype(np.float16).astype(np.float32)), rel=1e-5)
    recall = np.mean([len({d for d, _ in a[:5]} & {d for d, _ in b}) / 5 for a, b in zip(exact, few)])
    assert recall >= 0.5  # 20 of 120 candidates by FDE find most of the exact top 5 (random: 1/6)


def test_bad_inputs_are_refused(tmp_path: Path) -> None:
    ids, docs, queries = corpus(10)
    enc = FakeEncoder(tmp_path / "enc")
    with pytest.raises(ValueError, match="no \\[tokens, 8\\] matrix"):
        assemble_maxsim(ids, [*docs[:-1], np.zeros((0, 8), np.float32)], encoder=enc)
    index = assemble_maxsim(ids, docs, encoder=enc)
    with pytest.raises(ValueError, match="token dim 8"):
        index.search([np.ones((3, 4), np.float32)], 5)
    assert index.search(queries, 0) == [[] for _ in queries]


@pytest.mark.parametrize("kind", ["muvera", "maxsim"])
def test_save_load_round_trip_and_one_shard(tmp_path: Path, kind: str) -> None:
    ids, docs, queries = corpus()
    enc = FakeEncoder(tmp_path / "enc")
    build = assemble_muvera if kind == "muvera" else assemble_maxsim
    options = {"repetitions": 3, "simhash_bits": 2, "projection_dim": 4} if kind == "muvera" else {}
    index = build(ids, docs, encoder=enc, shards=2, **options)
    index.save(tmp_path / "idx", name="mv")
    manifest = read_manifest(tmp_path / "idx")
    assert manifest.kind == f"index/{kind}" and manifest.dims["documents"] == len(ids)
    assert manifest.dims["bytes_per_document"]["tokens_float16"] > 0
    if kind == "muvera":
        assert manifest.config["fde"]["repetitions"] == 3 and manifest.dims["fde_dim"] == 3 * 4 * 4
        assert manifest.dims["bytes_per_document"]["fde_raw_float32"] == 3 * 4 * 4 * 4
    loaded = load_index(tmp_path / "idx", encoder=enc.manifest)
    assert loaded.search(queries, 10) == index.search(queries, 10)
    one = load_index(tmp_path / "idx", shard=1)
    assert {d for hits in one.search(queries, 10) for d, _ in hits} <= set(index.shards[1].ids)
    assert isinstance(one.shards[0].tokens, np.memmap)


def test_a_foreign_or_damaged_index_is_refused(tmp_path: Path) -> None:
    ids, docs, _ = corpus(20)
    enc = FakeEncoder(tmp_path / "enc")
    assemble_maxsim(ids, docs, encoder=enc).save(tmp_path / "idx")
    other = FakeEncoder(tmp_path / "enc16", dim=16)
    with pytest.raises(BundleError, match="dimension 8"):
        load_index(tmp_path / "idx", encoder=other.manifest)
    store = tmp_path / "idx" / "shards" / "000.tokens.npy"
    data = bytearray(store.read_bytes())
    data[-1] ^= 0xFF
    store.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"checksum|sha256"):
        load_index(tmp_path / "idx")


def test_built_from_texts_with_a_real_token_encoder(tmp_path: Path) -> None:
    from retrec.index.generic import build_index, index_kind
    from retrec.runtime.token_encoder import OnnxTokenEncoder

    encoder = OnnxTokenEncoder(tiny_multivector_encoder(tmp_path / "mv"))
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 20)))) for _ in range(40)]
    ids = [f"t{i}" for i in range(40)]
    built = build_index(index_kind("muvera"), ids, texts, encoder=encoder, shards=2)
    path = publish_index(built, tmp_path / "v1", "tiny-muvera", texts=(ids, texts), encoder=encoder)
    retriever = open_index(path)  # the encoder from the recorded path
    hits = retriever.search(["vitamin scurvy citrus"], 5)[0]
    exact = build_index(index_kind("maxsim"), ids, texts, encoder=encoder).search(
        encoder.encode_queries(["vitamin scurvy citrus"]), 5)[0]
    assert [d for d, _ in hits] == [d for d, _ in exact]  # 40 documents, 100 candidates: exact
    config = json.loads((path / "manifest.json").read_text())["config"]
    assert config["encoder"]["name"] == "tiny-multivector" and config["candidates"] >= 40  # tuned: all 40 documents
    assert config["auto"]["recall_at_10"] == 1.0 and config["auto"]["reached"] is True


def test_auto_tunes_candidates_to_the_target_recall_and_records_it(tmp_path: Path) -> None:
    """A weak FDE (2 repetitions) needs many candidates: the smallest count reaching 0.95 recall@10 against exact
    MaxSim on document spans is kept (the one before it fell short), saved and loaded; a given count is kept."""
    from retrec.index.muvera_auto import pseudo_queries

    ids, docs, _ = corpus(1500, seed=3)
    enc = FakeEncoder(tmp_path / "enc")
    index = assemble_muvera(ids, docs, encoder=enc, shards=2, repetitions=2, simhash_bits=2, projection_dim=4)
    auto = index.tuning
    assert auto is not None and auto["reached"] and auto["recall_at_10"] >= 0.95
    curve = {int(c): r for c, r in auto["curve"].items()}
    assert index.candidates == auto["candidates"] == max(curve) > 50 and all(
        r < 0.95 for c, r in curve.items() if c < index.candidates)
    spans = pseudo_queries(index, 64, 32, seed=0)  # the spans it was tuned on: recall measured again
    exact = assemble_maxsim(ids, docs, encoder=enc).search(spans, 10)
    found = index.search(spans, 10)
    again = np.mean([len({d for d, _ in f} & {d for d, _ in e}) / 10 for f, e in zip(found, exact)])
    assert again == pytest.approx(auto["recall_at_10"], abs=1e-4)
    index.save(tmp_path / "idx")
    loaded = load_index(tmp_path / "idx")
    assert loaded.candidates == index.candidates and loaded.tuning == auto
    given = assemble_muvera(ids, docs, encoder=enc, repetitions=2, simhash_bits=2, projection_dim=4, candidates=70)
    assert given.candidates == 70 and given.tuning is None


def test_an_empty_shard_answers_nothing(tmp_path: Path) -> None:
    ids, docs, queries = corpus(3)
    assemble_maxsim(ids, docs, encoder=FakeEncoder(tmp_path / "enc"), shards=8).save(tmp_path / "idx")
    sizes = read_manifest(tmp_path / "idx").dims["shard_documents"]
    empty = sizes.index(0)
    assert load_index(tmp_path / "idx", shard=empty).search(queries, 5) == [[] for _ in queries]


def _rewrite(path: Path, edit) -> None:
    """Apply ``edit`` to a saved version's manifest, then re-manifest it (as a forger would, checksums valid)."""
    from retrec.bundle import write_manifest

    m = read_manifest(path)
    config, dims = json.loads(json.dumps(m.config)), json.loads(json.dumps(m.dims))
    edit(path, config, dims)
    write_manifest(path, kind=m.kind, name=m.name, version=m.version, config=config, dims=dims)


@pytest.mark.parametrize("forgery", ["offsets", "shards", "huge_fde", "float_fde"])
def test_forged_versions_are_refused_at_load(tmp_path: Path, forgery: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids, docs, _ = corpus(30)
    assemble_muvera(ids, docs, encoder=FakeEncoder(tmp_path / "enc"), repetitions=2, simhash_bits=2,
                    projection_dim=4, final_dim=16).save(tmp_path / "idx")

    def edit(path: Path, config: dict, dims: dict) -> None:
        if forgery == "offsets":  # a gap: document 0 would read rows of document 1
            table = pq.read_table(path / "shards" / "000.docs.parquet").to_pydict()
            table["offset"] = [o + (3 if i else 0) for i, o in enumerate(table["offset"])]
            pq.write_table(pa.table(table), path / "shards" / "000.docs.parquet")
        elif forgery == "shards":
            config["shards"] = 0
        elif forgery == "huge_fde":  # the same final_dim, a raw encoding of billions of values per search
            config["fde"].update(repetitions=4096, simhash_bits=16, projection_dim=None)
        else:
            config["fde"]["repetitions"] = 2.5

    _rewrite(tmp_path / "idx", edit)
    with pytest.raises(BundleError):
        load_index(tmp_path / "idx")


def test_param_values_of_the_wrong_type_are_refused() -> None:
    from retrec import kinds

    ref = kinds.get("index/muvera").build
    kinds.check_params(ref, {"candidates": 50, "projection_dim": None, "repetitions": 8}, "muvera")
    for bad in ({"candidates": "abc"}, {"simhash_bits": 5.5}, {"repetitions": True}, {"projection_dim": "x"}):
        with pytest.raises(ValueError, match="must be int"):
            kinds.check_params(ref, bad, "muvera")


def test_default_fde_index_is_fast_scan_pq_for_large_shards_and_flat_for_small_ones(tmp_path: Path) -> None:
    from retrec.index.multivector import FAST_SCAN_FROM, default_factory
    from retrec.runtime.fde import FDEConfig

    cfg = FDEConfig(dim=8, repetitions=2, simhash_bits=2, projection_dim=4)
    assert default_factory(cfg, FAST_SCAN_FROM) == "PQ8x4fs" and default_factory(cfg, FAST_SCAN_FROM - 1) == "Flat"
    ids, docs, queries = corpus(1200)
    enc = FakeEncoder(tmp_path / "enc")
    index = assemble_muvera(ids, docs, encoder=enc, shards=2, repetitions=2, simhash_bits=2, projection_dim=4)
    assert [s.fde_factory for s in index.shards] == ["Flat", "Flat"]  # ~600 documents a shard
    one = assemble_muvera(ids, docs, encoder=enc, repetitions=2, simhash_bits=2, projection_dim=4, candidates=1200)
    assert one.shards[0].fde_factory == "PQ8x4fs"
    assert one.search(queries, 10) == assemble_maxsim(ids, docs, encoder=enc).search(queries, 10)
    one.save(tmp_path / "idx")
    assert read_manifest(tmp_path / "idx").config["shard_factories"] == ["PQ8x4fs"]
    assert load_index(tmp_path / "idx").shards[0].fde_factory == "PQ8x4fs"


def test_a_factory_faiss_refuses_is_a_clear_error(tmp_path: Path) -> None:
    ids, docs, _ = corpus(20)
    with pytest.raises(ValueError, match="FAISS cannot build index 'NoSuchThing42'"):
        assemble_muvera(ids, docs, encoder=FakeEncoder(tmp_path / "enc"), factory="NoSuchThing42", repetitions=2,
                        simhash_bits=2)
    with pytest.raises(ValueError, match="shard 0: cannot train"):
        assemble_muvera(ids, docs, encoder=FakeEncoder(tmp_path / "enc2"), factory="IVF64,Flat", repetitions=2,
                        simhash_bits=2)
