"""The corpus-only reader: folders or files, BEIR JSONL or canonical Parquet, errors naming file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from retrec.data.beir import load_retrieval_data
from retrec.data.corpus import corpus_texts, read_corpus
from retrec.data.errors import DataError


def test_reads_folders_and_files_of_both_formats(default_data: Path, tmp_path: Path) -> None:
    want = load_retrieval_data(default_data).doc_texts()
    assert corpus_texts(read_corpus(default_data)) == want
    assert corpus_texts(read_corpus(default_data / "corpus.parquet")) == want
    jsonl = tmp_path / "corpus.jsonl"
    jsonl.write_text('{"_id": "d1", "title": "Scurvy", "text": "vitamin c"}\n\n{"_id": 2, "text": "iron"}\n')
    assert corpus_texts(read_corpus(jsonl)) == (["d1", "2"], ["Scurvy vitamin c", "iron"])
    assert corpus_texts(read_corpus(tmp_path)) == corpus_texts(read_corpus(jsonl))  # no queries needed


def test_bad_corpora_name_the_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "corpus.jsonl"
    bad.write_text('{"_id": "d1", "text": "a"}\n{"_id": "d1", "text": "b"}\n')
    with pytest.raises(DataError, match=r"corpus.jsonl:2: duplicate document id 'd1' \(first seen at line 1\)"):
        read_corpus(tmp_path)
    bad.write_text('{"_id": "d1", "text": "a"}\n{"_id": "d2"\n')
    with pytest.raises(DataError, match=r"corpus.jsonl:2: malformed JSON"):
        read_corpus(bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no corpus here"):
        read_corpus(tmp_path / "empty")
    (tmp_path / "corpus.csv").write_text("x")
    with pytest.raises(DataError, match=r"unknown corpus format '\.csv'"):
        read_corpus(tmp_path / "corpus.csv")
    with pytest.raises(DataError, match="corpus not found"):
        read_corpus(tmp_path / "nope.jsonl")
