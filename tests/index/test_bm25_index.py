from __future__ import annotations

import time
from pathlib import Path

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
    import numpy as np

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
