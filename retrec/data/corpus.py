"""Corpus-only reading: what ``retrec index`` needs (documents; no queries, no judgements).

``path`` is a dataset folder holding ``corpus.jsonl`` (BEIR) or ``corpus.parquet`` (canonical), or one of
those files itself. Parsing and validation are :mod:`retrec.data.beir`'s (malformed lines, bad encodings,
duplicate ids and an empty corpus are errors naming file and line).

Example::

    corpus = read_corpus("../shared/data/scifact")            # or ".../corpus.jsonl", ".../corpus.parquet"
    doc_ids, texts = corpus_texts(corpus)                      # title + " " + text
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from retrec.data.beir import _jsonl_records, corpus_texts, read_beir_corpus, read_parquet_corpus
from retrec.data.errors import DataError
from retrec.data.fetch import resolve_dataset

CORPUS_FILES = ("corpus.jsonl", "corpus.parquet")

__all__ = ["CORPUS_FILES", "corpus_fields", "corpus_file", "corpus_texts", "read_corpus"]


def corpus_file(path: str | Path) -> Path:
    """The corpus file of a dataset folder (or a fetched dataset's name), or ``path`` itself when it is a
    ``.jsonl`` / ``.parquet`` file."""
    path = resolve_dataset(path)
    if path.is_dir():
        for name in CORPUS_FILES:
            if (path / name).is_file():
                return path / name
        raise DataError(path, f"no corpus here: expected {' or '.join(CORPUS_FILES)}")
    if not path.is_file():
        raise DataError(path, "corpus not found (a folder with corpus.jsonl / corpus.parquet, or such a file)")
    if path.suffix not in (".jsonl", ".parquet"):
        raise DataError(path, f"unknown corpus format {path.suffix!r}; expected .jsonl (BEIR) or .parquet")
    return path


def read_corpus(path: str | Path) -> pa.Table:
    """The documents (``doc_id``, ``title``, ``text``) of a BEIR / canonical folder or corpus file."""
    file = corpus_file(path)
    return read_parquet_corpus(file) if file.suffix == ".parquet" else read_beir_corpus(file)


def corpus_fields(path: str | Path) -> dict[str, dict[str, str]]:
    """What an index version stores besides the text (``documents.parquet``): ``{"title": {doc_id: title},
    "metadata": {doc_id: JSON object}}`` — BEIR lines' ``title`` and ``metadata`` (an object), or a Parquet corpus's
    ``title`` and ``metadata`` columns (a JSON object per row, or a struct). Documents without metadata are left
    out of it; a ``metadata`` that is not an object is a :class:`DataError` naming its line."""
    file = corpus_file(path)
    titles: dict[str, str] = {}
    metadata: dict[str, str] = {}
    if file.suffix == ".parquet":
        names = set(pq.read_schema(file).names)
        table = pq.read_table(file, columns=["doc_id", *(c for c in ("title", "metadata") if c in names)])
        ids = [str(d) for d in table.column("doc_id").to_pylist()]
        if "title" in names:
            titles = {d: t for d, t in zip(ids, table.column("title").to_pylist()) if t}
        rows = table.column("metadata").to_pylist() if "metadata" in names else []
        for line, (doc_id, value) in enumerate(zip(ids, rows), start=1):
            _add_metadata(metadata, file, line, doc_id, json.loads(value) if isinstance(value, str) else value)
    else:
        for line, obj in _jsonl_records(file, ("_id", "text")):
            doc_id = str(obj["_id"])
            if obj.get("title"):
                titles[doc_id] = str(obj["title"])
            _add_metadata(metadata, file, line, doc_id, obj.get("metadata"))
    return {"title": titles, **({"metadata": metadata} if metadata else {})}


def _add_metadata(out: dict[str, str], file: Path, line: int, doc_id: str, value: object) -> None:
    if value is None or value == {}:
        return
    if not isinstance(value, dict):
        raise DataError(file, f"'metadata' of document {doc_id!r} must be a JSON object", line)
    out[doc_id] = json.dumps(value, sort_keys=True, ensure_ascii=False)
