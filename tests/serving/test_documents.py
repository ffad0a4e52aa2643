"""Hits' stored fields read by row group: only the groups holding the hits asked for, a bounded cache, old files."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from retrec.index import generic
from retrec.index.bm25_index import BM25Index
from retrec.index.generic import DOCUMENTS, publish_index
from retrec.serving import documents
from retrec.serving.documents import DocumentFields

N = 50
GROUP = 4  # rows per row group in these tests (13 groups)


def _collection() -> tuple[list[str], list[str], dict[str, dict[str, str]]]:
    ids = [f"d{i:03d}" for i in range(N)]
    texts = [f"document {i} about topic {i % 7} " + "word " * (i % 5) for i in range(N)]
    fields = {"title": {d: f"Title {d}" for d in ids[::2]},  # every other document has a title
              "metadata": {d: json.dumps({"year": 2000 + i % 20}) for i, d in enumerate(ids)}}
    return ids, texts, fields


@pytest.fixture()
def version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(generic, "DOCUMENT_ROW_GROUP", GROUP)
    ids, texts, fields = _collection()
    return publish_index(BM25Index.build(ids, texts), tmp_path / "v1", "v1", texts=(ids, texts), fields=fields)


def _ref(path: Path, digest: str = "a") -> dict[str, str]:
    return {"path": str(path), "digest": digest, "version": path.name}


def _count_reads(fields: DocumentFields, ref: dict[str, str]) -> list[int]:
    """Load ``ref``'s ids and record every row group its fields are read from."""
    stored = fields._load(ref)
    read, original = [], stored.file.read_row_group

    def counted(group: int, **kwargs: object) -> object:
        read.append(group)
        return original(group, **kwargs)

    stored.file.read_row_group = counted  # type: ignore[method-assign]
    return read


def test_fields_are_read_from_the_row_groups_of_the_hits_only(version: Path) -> None:
    assert pq.ParquetFile(version / DOCUMENTS).num_row_groups == 13
    ids, texts, fields = _collection()
    store = DocumentFields()
    ref = _ref(version)
    read = _count_reads(store, ref)
    asked = ["d049", "d000", "d003", "nope", "d021"]  # groups 12, 0, 0, -, 5
    rows = asyncio.run(store.fetch([ref], asked, ["text", "title", "metadata"]))
    for doc, row in zip(asked, rows):
        if doc == "nope":
            assert row == {"text": None, "title": None, "metadata": None}
            continue
        i = ids.index(doc)
        assert row == {"text": texts[i], "title": fields["title"].get(doc),
                       "metadata": json.loads(fields["metadata"][doc])}
    assert sorted(read) == [0, 5, 12]  # one read per group holding a hit, none for the others
    asyncio.run(store.fetch([ref], ["d001", "d048"], ["text"]))
    assert sorted(read) == [0, 5, 12]  # cached
    for start in range(0, N, GROUP):  # every group: the cache keeps the last CACHED_GROUPS
        asyncio.run(store.fetch([ref], [ids[start]], ["text"]))
    assert len(store._stored["a"]._cache) == documents.CACHED_GROUPS
    # least recently used out: 0 and 5 were still cached when asked again, 12 had been evicted by groups 6-11
    assert read[3:] == [1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 12]


def test_the_first_version_holding_a_document_answers_and_samples_are_deterministic(version: Path,
                                                                                  tmp_path: Path) -> None:
    other = publish_index(BM25Index.build(["x1", "d000"], ["other text", "older text"]), tmp_path / "v0", "v0",
                          texts=(["x1", "d000"], ["other text", "older text"]))
    store = DocumentFields()
    rows = asyncio.run(store.fetch([_ref(version), _ref(other, "b")], ["x1", "d000"], ["text", "title"]))
    assert rows == [{"text": "other text", "title": None}, {"text": _collection()[1][0], "title": "Title d000"}]
    first = asyncio.run(store.sample_texts(_ref(version), 10, seed=3))
    assert first == asyncio.run(DocumentFields().sample_texts(_ref(version), 10, seed=3))
    assert len(first) == 10 and len(set(first)) == 10 and set(first) <= set(_collection()[1])
    assert len(asyncio.run(store.sample_texts(_ref(version), 500))) == N


def test_a_version_written_in_one_row_group_and_one_without_documents(tmp_path: Path) -> None:
    ids, texts, fields = _collection()
    old = publish_index(BM25Index.build(ids, texts), tmp_path / "old", "old")  # no documents.parquet
    store = DocumentFields()
    assert asyncio.run(store.fetch([_ref(old)], ["d001"], ["text"])) == [{"text": None}]
    assert asyncio.run(store.sample_texts(_ref(old), 5)) == []
    # a version of under DOCUMENT_ROW_GROUP documents (or one written before row groups were set) is one group
    publish_index(BM25Index.build(ids, texts), tmp_path / "one", "one", texts=(ids, texts), fields=fields)
    assert pq.ParquetFile(tmp_path / "one" / DOCUMENTS).num_row_groups == 1
    rows = asyncio.run(store.fetch([_ref(tmp_path / "one", "c")], ["d049", "d002"], ["text", "title"]))
    assert rows == [{"text": texts[49], "title": None}, {"text": texts[2], "title": "Title d002"}]


def test_an_unreadable_row_group_leaves_the_ids_and_gives_no_fields(version: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    store = DocumentFields()
    ref = _ref(version)
    stored = store._load(ref)

    def broken(group: int, **kwargs: object) -> object:
        raise OSError("disk gone")

    stored.file.read_row_group = broken  # type: ignore[method-assign]
    rows = asyncio.run(store.fetch([ref], ["d001", "d002"], ["text"]))
    assert rows == [{"text": None}, {"text": None}]
    assert "not readable (OSError)" in caplog.text and "disk gone" not in caplog.text
