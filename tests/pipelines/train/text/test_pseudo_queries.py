"""Pseudo-queries: corpus sentences as queries, their documents as positives, added beside the judged queries."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retrec.pipelines.train.text.data import TrainingSet
from retrec.pipelines.train.text.pseudo_queries import (
    CROP_WORDS,
    PREFIX,
    corpus_training_set,
    pseudo_query,
    sentences,
    with_pseudo_queries,
)

LONG = "The protein binds the receptor in most cells tested here."


def _set(docs: int = 12) -> TrainingSet:
    doc_ids = [f"d{i}" for i in range(docs)]
    texts = [f"Title {i}. {LONG} Cells number {i} grow fast in cold water. Short one." for i in range(docs)]
    texts[3] = "no sentence here"  # too short: never a source
    queries = {"q1": "what binds", "q2": "cold cells", "dev1": "held out"}
    return TrainingSet(doc_ids, texts, ["q1", "q2"], {"q1": np.array([0]), "q2": np.array([1])}, ["dev1"],
                       {"dev1": {"d2": 1}}, queries, {"q1": {0: 1}, "q2": {1: 1}, "dev1": {2: 1}})


def test_sentences_keep_query_sized_ones() -> None:
    got = sentences(f"A title. {LONG} Tiny. Then (4) more words follow in this one?\nAnother line with enough words.")
    assert got == [LONG, "Then (4) more words follow in this one?", "Another line with enough words."]
    assert sentences("") == [] and sentences(" ".join(["word"] * 60) + ".") == []


def test_pseudo_queries_point_at_the_document_they_come_from() -> None:
    ts = _set()
    out = with_pseudo_queries(ts, per_query=2.5, seed=0)
    pseudo = out.query_ids[2:]
    assert out.query_ids[:2] == ["q1", "q2"] and len(pseudo) == 5 and all(q.startswith(PREFIX) for q in pseudo)
    for q in pseudo:
        (row,) = out.positives[q].tolist()
        assert out.doc_ids[row] == q[len(PREFIX):] and out.qrels_rows[q] == {row: 1}
        assert out.query_texts[q] in out.doc_texts[row] and row != 3
    assert out.dev_ids == ts.dev_ids and out.dev_qrels == ts.dev_qrels and out.query_texts["dev1"] == "held out"
    assert len(ts.query_ids) == 2 and len(ts.query_texts) == 3  # the input is not modified
    again = with_pseudo_queries(ts, per_query=2.5, seed=0)
    assert again.query_ids == out.query_ids and again.query_texts == out.query_texts
    assert with_pseudo_queries(ts, per_query=2.5, seed=1).query_ids != out.query_ids


def test_pseudo_queries_are_capped_by_the_corpus_and_zero_changes_nothing() -> None:
    ts = _set()
    assert len(with_pseudo_queries(ts, per_query=100, seed=0).query_ids) == 2 + 11  # one per usable document
    assert with_pseudo_queries(ts, per_query=0, seed=0) is ts
    with pytest.raises(ValueError, match="per_query"):
        with_pseudo_queries(ts, per_query=-1, seed=0)


def test_corpus_training_set_reads_only_the_corpus_and_holds_out_dev(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = 40
    texts = [f"Doc {i}. {LONG} Cells number {i} grow fast in cold water." for i in range(docs)]
    texts[5] = "tiny"  # under MIN_WORDS: never a source
    texts[6] = " ".join(f"w{j}" for j in range(60))  # no sentence punctuation: a span of CROP_WORDS words
    pq.write_table(pa.table({"doc_id": [f"d{i}" for i in range(docs)], "title": [""] * docs, "text": texts}),
                   tmp_path / "corpus.parquet")  # no queries.parquet, no qrels/: nothing else is read
    ts = corpus_training_set(tmp_path, queries=30, dev_queries=10, seed=0)
    assert len(ts.query_ids) == 32 and len(ts.dev_ids) == 7 and ts.dev_source == "pseudo"  # 39 usable, a fifth dev
    assert not set(ts.query_ids) & set(ts.dev_ids) and PREFIX + "d5" not in ts.query_texts
    for q in ts.query_ids + ts.dev_ids:
        row = ts.doc_ids.index(q[len(PREFIX):])
        assert ts.query_texts[q] in ts.doc_texts[row] and ts.qrels_rows[q] == {row: 1}
    for q in ts.dev_ids:
        assert ts.dev_qrels[q] == {q[len(PREFIX):]: 1}
    assert {q: r.tolist() for q, r in ts.positives.items()} == {
        q: [ts.doc_ids.index(q[len(PREFIX):])] for q in ts.query_ids}
    assert len(ts.query_texts[PREFIX + "d6"].split()) == CROP_WORDS  # every usable document gave one
    again = corpus_training_set(tmp_path, queries=30, dev_queries=10, seed=0)
    assert again.query_ids == ts.query_ids and again.query_texts == ts.query_texts
    with pytest.raises(ValueError, match="at least 2"):
        corpus_training_set(tmp_path, queries=1, dev_queries=0, seed=0)


def test_pseudo_query_falls_back_to_a_span_of_words() -> None:
    rng = np.random.default_rng(0)
    words = " ".join(f"w{j}" for j in range(50))
    span = pseudo_query(words, rng)
    assert span is not None and len(span.split()) == CROP_WORDS and span in words
    assert pseudo_query(f"Title. {LONG}", rng) == LONG
    assert pseudo_query("too short", rng) is None
