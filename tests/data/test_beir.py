"""Bad-input cases for retrieval collections: each error names the file and the problem."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from retrec.data.beir import load_retrieval_data, write_retrieval_data
from retrec.data.errors import DataError


def _beir(root: Path, corpus: list[str] | None = None, queries: list[str] | None = None,
          qrels: str | None = None) -> Path:
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    corpus = corpus if corpus is not None else [
        json.dumps({"_id": "d1", "title": "Scurvy", "text": "vitamin c deficiency"}),
        json.dumps({"_id": "d2", "title": "", "text": "iron and anaemia"}),
    ]
    queries = queries if queries is not None else [
        json.dumps({"_id": "q1", "text": "what causes scurvy"}),
        json.dumps({"_id": "q2", "text": "anaemia"}),
    ]
    (root / "corpus.jsonl").write_text("\n".join(corpus) + "\n")
    (root / "queries.jsonl").write_text("\n".join(queries) + "\n")
    (root / "qrels" / "test.tsv").write_text(qrels if qrels is not None else
                                             "query-id\tcorpus-id\tscore\r\nq1\td1\t1\r\nq2\td2\t1\r\n")
    return root


def test_good_folder_loads_with_crlf_header_and_bom(tmp_path: Path) -> None:
    root = _beir(tmp_path)
    (root / "corpus.jsonl").write_bytes(b"\xef\xbb\xbf" + (root / "corpus.jsonl").read_bytes())
    d = load_retrieval_data(root)
    assert d.qrels_dict() == {"q1": {"d1": 1}, "q2": {"d2": 1}}
    assert d.doc_texts()[1][0] == "Scurvy vitamin c deficiency"
    assert d.report.skipped == {}


def test_malformed_json_names_file_and_line(tmp_path: Path) -> None:
    root = _beir(tmp_path, corpus=[json.dumps({"_id": "d1", "text": "x"}), '{"_id": "d2", "text": '])
    with pytest.raises(DataError, match=r"corpus\.jsonl:2: malformed JSON"):
        load_retrieval_data(root)


def test_missing_field(tmp_path: Path) -> None:
    root = _beir(tmp_path, corpus=[json.dumps({"_id": "d1"})])
    with pytest.raises(DataError, match=r"corpus\.jsonl:1: missing field 'text'"):
        load_retrieval_data(root)


def test_duplicate_doc_id(tmp_path: Path) -> None:
    row = json.dumps({"_id": "d1", "text": "x"})
    root = _beir(tmp_path, corpus=[row, json.dumps({"_id": "d2", "text": "y"}), row])
    with pytest.raises(DataError, match=r"corpus\.jsonl:3: duplicate document id 'd1' \(first seen at line 1\)"):
        load_retrieval_data(root)


def test_duplicate_query_id(tmp_path: Path) -> None:
    row = json.dumps({"_id": "q1", "text": "x"})
    root = _beir(tmp_path, queries=[row, row])
    with pytest.raises(DataError, match=r"queries\.jsonl:2: duplicate query id 'q1'"):
        load_retrieval_data(root)


def test_empty_corpus(tmp_path: Path) -> None:
    root = _beir(tmp_path, corpus=[])
    with pytest.raises(DataError, match="empty corpus"):
        load_retrieval_data(root)


def test_invalid_utf8_names_the_line(tmp_path: Path) -> None:
    root = _beir(tmp_path)
    with open(root / "queries.jsonl", "ab") as fh:
        fh.write(b'{"_id": "q3", "text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"queries\.jsonl:3: not valid utf-8"):
        load_retrieval_data(root)


def test_qrels_wrong_field_count_and_bad_relevance(tmp_path: Path) -> None:
    root = _beir(tmp_path, qrels="q1\td1\t1\nq2\td2\n")
    with pytest.raises(DataError, match=r"test\.tsv:2: expected 3 tab-separated fields"):
        load_retrieval_data(root)
    root = _beir(tmp_path / "b", qrels="q1\td1\tyes\n")
    with pytest.raises(DataError, match=r"test\.tsv:1: relevance 'yes' is not an integer"):
        load_retrieval_data(root)


def test_duplicate_judgement(tmp_path: Path) -> None:
    root = _beir(tmp_path, qrels="q1\td1\t1\nq1\td1\t0\n")
    with pytest.raises(DataError, match=r"test\.tsv:2: duplicate judgement for query 'q1', document 'd1'"):
        load_retrieval_data(root)


def test_unknown_document_and_query_are_counted_skips_or_strict_errors(tmp_path: Path) -> None:
    root = _beir(tmp_path, qrels="q1\td1\t1\nq1\tnope\t1\nq9\td2\t1\nq2\td2\t1\n")
    d = load_retrieval_data(root)
    assert d.report.skipped == {"qrels: unknown document": 1, "qrels: unknown query": 1}
    assert "line 2" in d.report.examples["qrels: unknown document"][0]
    assert d.qrels.num_rows == 2
    with pytest.raises(DataError, match=r"test\.tsv:2: document 'nope' is not in the corpus"):
        load_retrieval_data(root, strict=True)


def test_missing_split_and_unknown_folder(tmp_path: Path) -> None:
    root = _beir(tmp_path)
    with pytest.raises(DataError, match="no qrels for split 'dev'"):
        load_retrieval_data(root, split="dev")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="neither a BEIR folder"):
        load_retrieval_data(tmp_path / "empty")


def test_canonical_parquet_round_trip_and_schema_errors(tmp_path: Path) -> None:
    d = load_retrieval_data(_beir(tmp_path / "beir"))
    out = write_retrieval_data(d, tmp_path / "canon")
    again = load_retrieval_data(out)
    assert again.corpus.equals(d.corpus) and again.qrels_dict() == d.qrels_dict()
    pq.write_table(pa.table({"doc_id": ["a"], "body": ["b"]}), out / "corpus.parquet")
    with pytest.raises(DataError, match=r"corpus\.parquet: missing columns \['title', 'text'\]"):
        load_retrieval_data(out)
