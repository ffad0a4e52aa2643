"""The learned-sparse inverted index: exact scores against a dense reference, shards equal one, quantisation,
ties, save/load, refused input and files."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from retrec.bundle import BundleError, load_bundle
from retrec.index.faiss_index import check_index
from retrec.index.sparse_index import assemble_index, load_index

VOCAB = 500


def encoder(name: str = "enc", version: str = "v1") -> SimpleNamespace:
    return SimpleNamespace(manifest={"name": name, "version": version, "dim": VOCAB, "similarity": "dot",
                                     "path": None})


def random_vectors(n: int, terms: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ids = np.sort(rng.choice(VOCAB, size=int(rng.integers(0, terms)), replace=False))
        out.append((ids.astype(np.int64), rng.uniform(0.01, 3.0, len(ids)).astype(np.float32)))
    return out


def dense(vectors: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    out = np.zeros((len(vectors), VOCAB), np.float64)
    for row, (ids, w) in enumerate(vectors):
        out[row, ids] = w
    return out


@pytest.mark.parametrize("quantization", ["uint8", "float16"])
def test_search_equals_the_dense_product_of_the_stored_impacts(quantization: str) -> None:
    docs, queries = random_vectors(300, 60, 0), random_vectors(20, 15, 1)
    doc_ids = [f"d{i:03d}" for i in range(len(docs))]
    index = assemble_index(doc_ids, docs, encoder=encoder(), quantization=quantization)
    if quantization == "uint8":
        scale = max(float(w.max()) for _, w in docs if len(w)) / 255
        stored = np.clip(np.rint(dense(docs) / scale), 0, 255) * scale
        assert index.scale == pytest.approx(scale)
    else:
        stored = dense(docs).astype(np.float16).astype(np.float64)
    expected = dense(queries) @ stored.T
    for qi, hits in enumerate(index.search(queries, k=10)):
        matching = np.flatnonzero(expected[qi] > 0)
        assert len(hits) == min(10, len(matching))
        got = {d: s for d, s in hits}
        top = sorted(matching, key=lambda r: (-expected[qi, r], -r))[:10]
        assert [doc_ids[r] for r in top][:3] == [d for d, _ in hits][:3]
        for r in top:
            assert got[doc_ids[r]] == pytest.approx(expected[qi, r], rel=1e-4)
    assert index.search([(np.zeros(0, np.int64), np.zeros(0, np.float32))], k=5) == [[]]  # empty query


def test_shards_equal_one_index() -> None:
    docs, queries = random_vectors(400, 40, 2), random_vectors(25, 12, 3)
    doc_ids = [f"doc-{i}" for i in range(len(docs))]
    one = assemble_index(doc_ids, docs, encoder=encoder())
    four = assemble_index(doc_ids, docs, encoder=encoder(), shards=4)
    assert sorted(len(s.ids) for s in four.shards) != [0, 0, 0, 400] and len(four) == 400
    assert one.search(queries, k=50) == four.search(queries, k=50)


def test_ties_break_by_doc_id_descending() -> None:
    same = (np.array([3, 7]), np.array([1.0, 2.0], np.float32))
    index = assemble_index(["a", "c", "b", "z"], [same, same, same, (np.array([9]), np.array([1.0], np.float32))],
                           encoder=encoder())
    hits = index.search([(np.array([3, 7]), np.array([1.0, 1.0], np.float32))], k=10)[0]
    assert [d for d, _ in hits] == ["c", "b", "a"]  # "z" shares no term: not retrieved


def test_save_load_round_trip_and_one_shard(tmp_path: Path) -> None:
    docs, queries = random_vectors(200, 50, 4), random_vectors(10, 10, 5)
    doc_ids = [f"d{i}" for i in range(len(docs))]
    index = assemble_index(doc_ids, docs, encoder=encoder(), shards=3)
    manifest = index.save(tmp_path / "idx", name="toy")
    assert manifest.kind == "index/sparse" and manifest.dims["postings"] == index.postings()
    loaded = load_index(tmp_path / "idx")
    assert loaded.search(queries, k=20) == index.search(queries, k=20)
    part = load_index(tmp_path / "idx", shard=1)
    assert part.shard_ids == [index.shard_ids[1]]
    with pytest.raises(BundleError, match="cannot load shard 3"):
        load_index(tmp_path / "idx", shard=3)


def test_another_encoder_is_refused(tmp_path: Path) -> None:
    index = assemble_index(["a"], random_vectors(1, 20, 6)[:1], encoder=encoder())
    index.save(tmp_path / "idx")
    manifest = load_bundle(tmp_path / "idx")
    with pytest.raises(BundleError, match="version 'v2'"):
        check_index(manifest, encoder(version="v2").manifest)
    with pytest.raises(BundleError, match="dimension"):
        check_index(manifest, {**encoder().manifest, "dim": VOCAB + 1})


def test_bad_vectors_are_refused() -> None:
    index = assemble_index(["a", "b"], random_vectors(2, 20, 7), encoder=encoder())
    bad = [((np.array([VOCAB]), np.array([1.0])), "term ids must be in"),
           ((np.array([1, 1]), np.array([1.0, 2.0])), "repeated term ids"),
           ((np.array([1]), np.array([-1.0])), "non-negative"),
           ((np.array([1]), np.array([np.nan])), "finite"),
           ((np.array([1, 2]), np.array([1.0])), "2 term ids for 1 weights")]
    for vector, message in bad:
        with pytest.raises(ValueError, match=message):
            index.search([vector], k=3)
    with pytest.raises(ValueError, match="document 'x'"):
        assemble_index(["x"], [(np.array([-1]), np.array([1.0]))], encoder=encoder())
    with pytest.raises(ValueError, match="empty corpus"):
        assemble_index([], [], encoder=encoder())


def test_a_postings_file_that_does_not_fit_is_refused(tmp_path: Path) -> None:
    index = assemble_index([f"d{i}" for i in range(30)], random_vectors(30, 20, 8), encoder=encoder())
    index.save(tmp_path / "idx")
    path = tmp_path / "idx" / "shards" / "000.postings.safetensors"
    arrays = load_file(str(path))
    arrays["docs"] = arrays["docs"] + 1000  # rows past the document table
    save_file(arrays, str(path))
    with pytest.raises(BundleError, match="checksum"):
        load_index(tmp_path / "idx")
    with pytest.raises(BundleError, match="postings do not match"):
        load_index(tmp_path / "idx", verify=False)


@pytest.mark.parametrize("change, message", [
    (lambda a: {**a, "indptr": a["indptr"].astype(np.uint64)}, "postings do not match"),
    (lambda a: {**a, "indptr": a["indptr"][::-1].copy()}, "postings do not match"),
    (lambda a: {**a, "docs": a["docs"].astype(np.float32)}, "postings do not match"),
    (lambda a: {**a, "impacts": a["impacts"].astype(np.float16)}, "postings do not match"),
    (lambda a: {**a, "docs": np.sort(a["docs"])}, "not sorted and unique|postings do not match"),
])
def test_crafted_postings_are_refused_before_use(tmp_path: Path, change, message: str) -> None:
    index = assemble_index([f"d{i}" for i in range(30)], random_vectors(30, 20, 9), encoder=encoder())
    index.save(tmp_path / "idx")
    path = tmp_path / "idx" / "shards" / "000.postings.safetensors"
    save_file(change(load_file(str(path))), str(path))
    with pytest.raises(BundleError, match=message):
        load_index(tmp_path / "idx", verify=False)


def test_a_corrupt_file_or_manifest_value_is_a_bundle_error(tmp_path: Path) -> None:
    import json

    index = assemble_index([f"d{i}" for i in range(10)], random_vectors(10, 20, 10), encoder=encoder())
    index.save(tmp_path / "idx")
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    for edit in ({"config": {**manifest["config"], "scale": -1.0}}, {"dims": {**manifest["dims"], "dim": -1}},
                 {"config": {**manifest["config"], "quantization": "int4"}}):
        (tmp_path / "idx" / "manifest.json").write_text(json.dumps({**manifest, **edit}))
        with pytest.raises(BundleError):
            load_index(tmp_path / "idx", verify=False)
    (tmp_path / "idx" / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "idx" / "shards" / "000.postings.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(BundleError, match="not a readable"):
        load_index(tmp_path / "idx", verify=False)


def test_ids_must_be_integers_and_float16_range_is_checked() -> None:
    index = assemble_index(["a"], random_vectors(1, 20, 11)[:1], encoder=encoder())
    with pytest.raises(ValueError, match="integers"):
        index.search([(np.array([1.7]), np.array([1.0]))], k=3)
    with pytest.raises(ValueError, match="float16's range"):
        assemble_index(["a"], [(np.array([1]), np.array([1e6], np.float32))], encoder=encoder(),
                       quantization="float16")
    with pytest.raises(ValueError, match="quantization"):
        assemble_index(["a"], [(np.array([1]), np.array([1.0], np.float32))], encoder=encoder(), quantization="int4")
    assert index.search([(np.array([1]), np.array([1.0]))], k=0) == [[]]


def test_ties_across_shards_merge_by_doc_id_descending() -> None:
    same = (np.array([3]), np.array([1.0], np.float32))
    ids = [f"doc{i:02d}" for i in range(40)]
    index = assemble_index(ids, [same] * 40, encoder=encoder(), shards=4)
    hits = index.search([(np.array([3]), np.array([2.0], np.float32))], k=7)[0]
    assert [d for d, _ in hits] == sorted(ids, reverse=True)[:7] and len({s for _, s in hits}) == 1


def test_documents_without_postings_are_counted(tmp_path: Path) -> None:
    vectors = [(np.array([1]), np.array([3.0], np.float32)), (np.array([2]), np.array([0.001], np.float32)),
               (np.zeros(0, np.int64), np.zeros(0, np.float32))]
    manifest = assemble_index(["a", "b", "c"], vectors, encoder=encoder()).save(tmp_path / "idx")
    assert manifest.dims["documents_without_postings"] == 2  # b's weight rounds to 0 in uint8; c has none


def _scipy_postings(vectors: list[tuple[np.ndarray, np.ndarray]], quantization: str) -> object:
    """The postings as first built: every vector checked and copied, one COO -> CSR conversion by SciPy."""
    import scipy.sparse as sp

    from retrec.index.sparse_build import quantize

    top = max((float(w.max()) for _, w in vectors if len(w)), default=0.0)
    scale = top / 255 if quantization == "uint8" and top > 0 else 1.0
    lengths = [len(i) for i, _ in vectors]
    impacts = quantize(np.concatenate([w for _, w in vectors]).astype(np.float32), quantization, scale)
    terms = np.concatenate([i for i, _ in vectors]).astype(np.int64)
    docs = np.repeat(np.arange(len(vectors)), lengths)
    keep = impacts != 0
    matrix = sp.csr_matrix((impacts[keep], (terms[keep], docs[keep])), shape=(VOCAB, len(vectors)))
    matrix.sort_indices()
    return matrix


@pytest.mark.parametrize("quantization", ["uint8", "float16"])
def test_chunked_build_equals_one_scipy_conversion(monkeypatch: pytest.MonkeyPatch, quantization: str) -> None:
    """Built three chunks of documents at a time (checks, list lengths, placement), the postings are SciPy's
    COO -> CSR conversion of every vector at once: same rows, same order, same impacts; unsorted ids, int32 ids
    and float64 weights are taken as before."""
    from retrec.index import sparse_build

    monkeypatch.setattr(sparse_build, "CHUNK", 7)
    docs = random_vectors(50, 40, 12)
    docs[3] = (docs[3][0][::-1].copy(), docs[3][1][::-1].astype(np.float64))
    docs[8] = (docs[8][0].astype(np.int32), docs[8][1])
    index = assemble_index([f"d{i:02d}" for i in range(50)], docs, encoder=encoder(), quantization=quantization)
    want = _scipy_postings(docs, quantization)
    got = index.shards[0].postings
    assert np.array_equal(got.indptr, want.indptr) and np.array_equal(got.indices, want.indices)
    assert got.data.dtype == want.data.dtype and np.array_equal(got.data, want.data)


def test_the_first_bad_document_is_named_whatever_its_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    from retrec.index import sparse_build

    monkeypatch.setattr(sparse_build, "CHUNK", 4)
    docs = random_vectors(12, 20, 13)
    ids = [f"d{i:02d}" for i in range(12)]
    bad = [(6, (np.array([4, 9, 4]), np.ones(3, np.float32)), "document 'd06': repeated term ids"),
           (9, (np.array([1, 3]), np.array([1.0, np.inf], np.float32)), "document 'd09': weights must be finite"),
           (5, (np.array([VOCAB + 3]), np.ones(1)), "document 'd05': term ids must be in")]
    for row, vector, message in bad:
        broken = list(docs)
        broken[row] = vector
        broken[11] = (np.array([-1]), np.ones(1, np.float32))  # also bad, but later: the first is named
        with pytest.raises(ValueError, match=message):
            assemble_index(ids, broken, encoder=encoder())


def test_ranking_from_a_posting_list_floor_equals_ranking_every_match(monkeypatch: pytest.MonkeyPatch) -> None:
    """Search ranks only documents reaching the k-th best score of one posting list: the hits equal those of
    ranking every matching document (two weight levels, so ties at the boundary abound, across 3 shards)."""
    from retrec.index.sparse_index import SparseIndex

    rng = np.random.default_rng(14)
    docs = []
    for _ in range(600):
        ids = np.sort(rng.choice(40, size=int(rng.integers(1, 8)), replace=False))
        docs.append((ids.astype(np.int64), rng.choice(np.array([1.0, 2.0], np.float32), len(ids))))
    queries = []
    for _ in range(30):
        q = np.sort(rng.choice(40, size=int(rng.integers(1, 5)), replace=False)).astype(np.int64)
        queries.append((q, rng.choice(np.array([0.0, 1.0, 2.0], np.float32), len(q))))  # a 0 weight: no floor
    index = assemble_index([f"doc{i:03d}" for i in range(len(docs))], docs, encoder=encoder(), shards=3)
    floor, floors = SparseIndex._floor, []
    monkeypatch.setattr(SparseIndex, "_floor", lambda *a: floors.append(floor(*a)) or floors[-1])
    floored = {k: index.search(queries, k) for k in (1, 5, 40, 1000)}
    assert sum(f > 0 for f in floors) > len(floors) / 4  # the floor did cut, often
    monkeypatch.setattr(SparseIndex, "_floor", lambda *a: 0.0)  # every matching document ranked
    for k, hits in floored.items():
        assert index.search(queries, k) == hits, k
    assert any(len(h) == 40 for h in floored[40])
