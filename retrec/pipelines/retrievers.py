"""Retriever registry: ``--retriever NAME [--model BUNDLE]`` → a :class:`Retriever`.

Adding a retriever is one entry in ``BUILDERS``: a function of the collection and an optional
bundle path. Without a bundle, a retriever builds what it needs from the collection itself.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from retrec.data.beir import RetrievalData
from retrec.index.bm25_index import BM25Index
from retrec.index.retriever import Retriever


def _bm25(data: RetrievalData, model: Path | None) -> Retriever:
    if model is not None:
        index = BM25Index.load(model)
        missing = set(data.corpus.column("doc_id").to_pylist()) - set(index.doc_ids)
        if missing:
            raise ValueError(f"{model}: index lacks {len(missing)} documents of this collection "
                             f"(e.g. {sorted(missing)[:3]}); rebuild it")
        return index
    ids, texts = data.doc_texts(with_title=True)
    return BM25Index.build(ids, texts)


BUILDERS: dict[str, Callable[[RetrievalData, Path | None], Retriever]] = {"bm25": _bm25}


def build_retriever(name: str, data: RetrievalData, model: str | Path | None = None) -> Retriever:
    if name not in BUILDERS:
        raise ValueError(f"unknown retriever {name!r}; available: {', '.join(sorted(BUILDERS))}")
    return BUILDERS[name](data, Path(model) if model is not None else None)
