from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from retrec.data.beir import load_retrieval_data
from retrec.index.bm25_index import BM25Index
from retrec.pipelines.eval.retrieval import evaluate_retriever
from tests.conftest import shared_dataset


def test_saved_index_gives_identical_results(tiny_data: Path, tmp_path: Path) -> None:
    data = load_retrieval_data(tiny_data)
    ids, texts = data.doc_texts()
    index = BM25Index.build(ids, texts)
    loaded = BM25Index.load(index.save(tmp_path / "b").path)
    queries = list(data.query_texts().values())
    assert loaded.search(queries, 50) == index.search(queries, 50)
    assert index.search(["zzzz-not-a-word"], 10) == [[]]


def test_scifact_bm25_matches_published_range() -> None:
    data = load_retrieval_data(shared_dataset("scifact"))
    start = time.perf_counter()
    ids, texts = data.doc_texts()
    index = BM25Index.build(ids, texts)
    assert time.perf_counter() - start < 60
    result = evaluate_retriever(index, data, progress=False)
    assert len(result.per_query) == 300
    assert 0.65 <= result.metrics["nDCG@10"] <= 0.70  # BEIR 0.665, Anserini flat 0.679


def _reference_search(index: BM25Index, query: str, k: int) -> list[tuple[str, float]]:
    """The ranking as first defined: top-k of the whole score vector, then drop the documents with score 0."""
    from retrec.index.retriever import top_k

    return [h for h in top_k(index.scores(query), index.doc_ids, k, index._order_key) if h[1] > 0.0]


def test_only_matching_documents_are_ranked(monkeypatch: object) -> None:
    """Fewer matches than k: the sort sees the matching documents only, and the hits (ids, scores, tie order)
    are those of the whole-corpus ranking."""
    rng = np.random.default_rng(0)
    words = ["apple", "banana", "cherry", "date", "elder", "fig", "grape"]
    ids = [f"doc{i:05d}" for i in range(3000)]
    rng.shuffle(ids)
    texts = [" ".join(rng.choice(words[2:], 4)) for _ in ids]
    for i in rng.choice(len(ids), 12, replace=False):  # a rare word in 12 documents, with ties
        texts[i] = "apple " + ("banana" if i % 2 else "cherry")
    index = BM25Index.build(ids, texts)
    sizes: list[int] = []
    real_lexsort = np.lexsort

    def lexsort(keys: object, *args: object, **kwargs: object) -> object:
        sizes.append(len(keys[0]))  # type: ignore[index]
        return real_lexsort(keys, *args, **kwargs)

    queries = ["apple", "apple banana", "cherry apple", "fig", "zzz", "apple grape"]
    expected = {(q, k): _reference_search(index, q, k) for q in queries for k in (1, 5, 12, 100, 3000)}
    monkeypatch.setattr(np, "lexsort", lexsort)  # type: ignore[attr-defined]
    for (q, k), hits in expected.items():
        sizes.clear()
        assert index.search([q], k) == [hits], (q, k)
        matches = int((index.scores(q) > 0).sum())
        assert all(size <= matches for size in sizes), (q, k, sizes, matches)
    assert len(expected[("apple", 100)]) == 12 and expected[("zzz", 5)] == []


def test_the_same_corpus_gives_the_same_files_in_every_process(tiny_data: Path, tmp_path: Path) -> None:
    """bm25s numbers terms in set order (Python's hash seed); the index sorts its vocabulary instead."""
    import os
    import subprocess
    import sys

    from retrec.bundle import read_manifest

    script = ("import sys; from retrec.data.beir import load_retrieval_data; from retrec.index.bm25_index import "
              "BM25Index; ids, texts = load_retrieval_data(sys.argv[1]).doc_texts(); "
              "BM25Index.build(ids, texts).save(sys.argv[2])")
    for seed in ("1", "2"):
        done = subprocess.run([sys.executable, "-c", script, str(tiny_data), str(tmp_path / seed)],
                              env={**os.environ, "PYTHONHASHSEED": seed}, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
    one, two = (read_manifest(tmp_path / s).files for s in ("1", "2"))
    assert {k: v.sha256 for k, v in one.items()} == {k: v.sha256 for k, v in two.items()}
    data = load_retrieval_data(tiny_data)
    queries = list(data.query_texts().values())
    assert BM25Index.load(tmp_path / "1").search(queries, 20) == BM25Index.build(*data.doc_texts()).search(queries, 20)


def _bm25s_reference(texts: list[str], config: object) -> tuple[dict[str, np.ndarray], dict[str, int], object]:
    """The index as it was first built: every document's tokens as lists of strings, a sorted vocabulary, and
    bm25s's own ``BM25.index`` (arrays, vocabulary with bm25s's empty token, and the bm25s model for scoring)."""
    import bm25s
    import Stemmer

    tokens = bm25s.tokenize(texts, stopwords=config.stopwords, stemmer=Stemmer.Stemmer(config.stemmer),  # type: ignore[attr-defined]
                            return_ids=False, show_progress=False)
    vocab = {term: i for i, term in enumerate(sorted({t for doc in tokens for t in doc}))}
    model = bm25s.BM25(k1=config.k1, b=config.b, method=config.method)  # type: ignore[attr-defined]
    model.index(([[vocab[t] for t in doc] for doc in tokens], vocab), show_progress=False)
    return {k: np.asarray(model.scores[k]) for k in ("data", "indices", "indptr")}, model.vocab_dict, model


def _arrays(index: BM25Index) -> dict[str, np.ndarray]:
    m = index.matrix
    return {"data": m.data, "indices": m.indices, "indptr": m.indptr}


def _assert_same_arrays(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    for name in ("data", "indices", "indptr"):
        assert got[name].dtype == want[name].dtype, name
        assert got[name].tobytes() == want[name].tobytes(), name  # bit for bit, scores included


def test_streaming_build_equals_bm25s_on_scifact(tmp_path: Path) -> None:
    """Chunked analysis to term ids + the numpy score matrix = bm25s's tokenize and index: the same arrays bit for
    bit, the same vocabulary, the same files, and the same top-10 (ids and scores) for every test query."""
    from retrec.index.bm25_index import BM25Config
    from retrec.index.retriever import top_k_rows

    data = load_retrieval_data(shared_dataset("scifact"))
    ids, texts = data.doc_texts()
    want, vocab, model = _bm25s_reference(texts, BM25Config())
    index = BM25Index.build(ids, texts, chunk=997)  # chunks that split the corpus unevenly
    _assert_same_arrays(_arrays(index), want)
    assert {**index.vocab, "": len(index.vocab)} == vocab
    for q in list(data.query_texts().values()):
        s = model.get_scores_from_ids(model.get_tokens_ids(index.tokenize([q])[0]))
        rows = top_k_rows(s, 10, index._order_key, rows=np.flatnonzero(s > 0.0))
        assert index.search([q], 10) == [[(ids[i], float(s[i])) for i in rows]], q
    loaded = BM25Index.load(index.save(tmp_path / "b").path)
    _assert_same_arrays(_arrays(loaded), want)


@pytest.mark.parametrize("chunk", [1, 7, 10_000])
def test_chunk_size_does_not_change_the_index_and_prepared_parts_assemble_to_it(tiny_data: Path, chunk: int) -> None:
    from retrec.index.bm25_index import BM25Config, assemble_index, prepare_documents

    ids, texts = load_retrieval_data(tiny_data).doc_texts()
    texts = [*texts[:60], "", "the and of", "Apple APPLE apple, apples!", *texts[60:]]  # empty, stop words only
    ids = [*ids[:60], "empty", "stop", "apples", *ids[60:]]
    want, _, _ = _bm25s_reference(texts, BM25Config())
    built = BM25Index.build(ids, texts, chunk=chunk)
    _assert_same_arrays(_arrays(built), want)
    parts = [prepare_documents(texts[s:s + 50]) for s in range(0, len(texts), 50)]  # as the reindex job's chunks
    prepared = [p for part in parts for p in part]
    assert all(isinstance(p, str) for p in prepared) and prepared[60] == "" and prepared[61] == ""
    _assert_same_arrays(_arrays(assemble_index(ids, prepared)), want)
    as_lists = [p.split() for p in prepared]  # the earlier prepared form (lists of terms) still assembles
    _assert_same_arrays(_arrays(BM25Index.from_tokens(ids, as_lists, chunk=chunk)), want)
    assert built.search(["apple"], 3)[0][0][0] == "apples"


def test_repeated_query_terms_add_in_query_order_as_bm25s() -> None:
    from retrec.index.bm25_index import BM25Config

    texts = ["cell cell growth", "growth factor", "cell death growth growth", "factor"] * 5
    ids = [f"d{i:02d}" for i in range(len(texts))]
    _, _, model = _bm25s_reference(texts, BM25Config())
    index = BM25Index.build(ids, texts, chunk=3)
    for q in ("cell growth cell", "growth cell growth factor", "factor factor", "death"):
        want = model.get_scores_from_ids(model.get_tokens_ids(index.tokenize([q])[0]))
        assert index.scores(q).tobytes() == want.tobytes(), q


def test_a_version_numbering_terms_in_another_order_still_loads(tiny_data: Path, tmp_path: Path) -> None:
    """Versions written before the vocabulary was sorted number terms in bm25s's set order: they load and search
    the same."""
    import json
    from dataclasses import asdict

    from safetensors.numpy import save_file

    from retrec.bundle import publish

    data = load_retrieval_data(tiny_data)
    index = BM25Index.build(*data.doc_texts())
    m = index.matrix
    rng = np.random.default_rng(0)
    new_of_old = rng.permutation(len(m.vocabulary))  # old term t is stored as term new_of_old[t]
    lists = [(m.indices[m.indptr[t]:m.indptr[t + 1]], m.data[m.indptr[t]:m.indptr[t + 1]])
             for t in np.argsort(new_of_old)]
    indptr = np.concatenate([[0], np.cumsum([len(i) for i, _ in lists])]).astype(np.int64)
    vocab = {term: int(new_of_old[t]) for t, term in enumerate(m.vocabulary)}
    with publish(tmp_path / "old") as pub:
        save_file({"data": np.concatenate([d for _, d in lists]), "indices": np.concatenate([i for i, _ in lists]),
                   "indptr": indptr}, str(pub.path / "scores.safetensors"))
        (pub.path / "vocab.json").write_text(json.dumps({**vocab, "": len(vocab)}))
        (pub.path / "doc_ids.json").write_text(json.dumps(index.doc_ids))
        pub.set_manifest(kind="index/bm25", name="bm25", config=asdict(index.config),
                         dims={"documents": len(index), "vocabulary": len(vocab) + 1})
    queries = list(data.query_texts().values())
    assert BM25Index.load(tmp_path / "old").search(queries, 20) == index.search(queries, 20)


def test_concurrent_searches_equal_serial_ones(tiny_data: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    data = load_retrieval_data(tiny_data)
    index = BM25Index.build(*data.doc_texts())
    queries = list(data.query_texts().values()) * 4
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda q: index.search([q], 10)[0], queries))
    assert together == [index.search([q], 10)[0] for q in queries]


def test_unsupported_methods_and_mismatched_input_are_refused() -> None:
    from retrec.index.bm25_index import BM25Config

    with pytest.raises(ValueError, match="method 'bm25\\+' is not supported"):
        BM25Index.build(["a"], ["text"], BM25Config(method="bm25+"))
    with pytest.raises(ValueError, match="2 doc ids for 1 texts"):
        BM25Index.build(["a", "b"], ["text"])
    with pytest.raises(ValueError, match="empty corpus"):
        BM25Index.from_tokens([], [])


def test_top_rows_from_a_floor_equal_the_ranking_of_every_matching_row() -> None:
    """The k-th best score of any k rows is a floor: ranking only the rows at or above it gives the same hits,
    ties at the boundary included (scores drawn from a few values, so ties abound)."""
    from retrec.index.bm25_index import top_rows
    from retrec.index.retriever import top_k_rows

    rng = np.random.default_rng(1)
    for trial in range(200):
        n = int(rng.integers(1, 400))
        scores = rng.choice(np.array([0.0, 0.0, 0.5, 1.0, 1.5, 2.0], np.float32), n)
        key = rng.permutation(n).astype(np.int64)
        k = int(rng.integers(1, 30))
        some = rng.choice(n, int(rng.integers(0, n + 1)), replace=False)
        want = top_k_rows(scores, k, key, rows=np.flatnonzero(scores > 0.0))
        assert top_rows(scores, k, key, some).tolist() == want.tolist(), trial
        assert top_rows(scores, k, key).tolist() == want.tolist(), trial
