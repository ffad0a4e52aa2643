"""Dataset writers replace files whole (issue 44): a writer that dies half-way leaves the previous file."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from retrec.data.beir import RetrievalData, write_retrieval_data


def _data(n: int) -> RetrievalData:
    corpus = pa.table({"doc_id": [f"d{i}" for i in range(n)], "title": [""] * n, "text": ["x"] * n})
    queries = pa.table({"query_id": ["q0"], "text": ["x"]})
    qrels = pa.table({"query_id": ["q0"], "doc_id": ["d0"], "score": pa.array([1], pa.int32())})
    return RetrievalData(corpus=corpus, queries=queries, qrels=qrels, split="test")


def test_a_crash_while_rewriting_leaves_the_old_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_retrieval_data(_data(3), tmp_path)
    real = pq.write_table

    def dies_half_way(table: pa.Table, where: object, **kw: object) -> None:
        Path(str(where)).write_bytes(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", dies_half_way)
    with pytest.raises(OSError, match="disk full"):
        write_retrieval_data(_data(5), tmp_path)
    monkeypatch.setattr(pq, "write_table", real)
    assert pq.read_table(tmp_path / "corpus.parquet").num_rows == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.parquet", "qrels", "queries.parquet"]
