from __future__ import annotations

import time
from pathlib import Path

from retrec.data.beir import load_retrieval_data
from retrec.index.bm25_index import BM25Index
from retrec.pipelines.evaluate import evaluate_retriever
from tests.conftest import shared_dataset


def test_saved_index_gives_identical_results(tiny_data: Path, tmp_path: Path) -> None:
    data = load_retrieval_data(tiny_data)
    ids, texts = data.doc_texts()
    index = BM25Index.build(ids, texts)
    loaded = BM25Index.load(index.save(tmp_path / "b"))
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
