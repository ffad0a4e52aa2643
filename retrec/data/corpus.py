"""Corpus-only reading: what ``retrec index`` needs (documents; no queries, no judgements).

``path`` is a dataset folder holding ``corpus.jsonl`` (BEIR) or ``corpus.parquet`` (canonical), or one of
those files itself. Parsing and validation are :mod:`retrec.data.beir`'s (malformed lines, bad encodings,
duplicate ids and an empty corpus are errors naming file and line).

Example::

    corpus = read_corpus("../shared/data/scifact")            # or ".../corpus.jsonl", ".../corpus.parquet"
    doc_ids, texts = corpus_texts(corpus)                      # title + " " + text
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from retrec.data.beir import corpus_texts, read_beir_corpus, read_parquet_corpus
from retrec.data.errors import DataError
from retrec.data.fetch import resolve_dataset

CORPUS_FILES = ("corpus.jsonl", "corpus.parquet")

__all__ = ["CORPUS_FILES", "corpus_file", "corpus_texts", "read_corpus"]


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
