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


def _dense(data: RetrievalData, model: Path | None) -> Retriever:
    """``--model`` a ``model/dense`` bundle, else the packaged MiniLM (exported to ONNX once, cached); Flat."""
    from retrec.index.dense_retriever import DenseRetriever
    from retrec.process_env import cache_dir
    from retrec.runtime.onnx_encoder import OnnxEncoder

    if model is None:
        from retrec.models.text_encoder import zero_shot_bundle

        model = zero_shot_bundle()
    ids, texts = data.doc_texts(with_title=True)
    return DenseRetriever.build(OnnxEncoder(model), ids, texts, factory="Flat", cache=cache_dir() / "embeddings",
                                progress=True)


BUILDERS: dict[str, Callable[[RetrievalData, Path | None], Retriever]] = {"bm25": _bm25, "dense": _dense}


def build_retriever(name: str, data: RetrievalData, model: str | Path | None = None) -> Retriever:
    if name not in BUILDERS:
        raise ValueError(f"unknown retriever {name!r}; available: {', '.join(sorted(BUILDERS))}")
    return BUILDERS[name](data, Path(model) if model is not None else None)
