"""What ``retrec.load`` gives for an index version, and ``retrec.evaluate``: one query or many, hits with text.

:class:`Retriever` wraps the kind's retriever (:class:`retrec.index.generic.IndexRetriever`): ``search`` takes
one query string (→ a list of :class:`Hit`) or a list of them (→ a list of lists); anything else is a
``TypeError`` naming what it takes — a string is never iterated character by character. A :class:`Hit` is the
``(doc_id, score)`` pair the rest of retrec uses (it unpacks and compares as one) with its ``rank`` and, when the
index version stored its documents' text (``retrec index`` / ``reindex`` do) or ``corpus=`` names the collection,
its ``text``. Every other attribute (``encoder``, ``doc_ids``, ``manifest``, ``save``) is the wrapped retriever's.

:func:`evaluate` scores a retriever (or a run: ``{query_id: [(doc_id, score), ...]}``) on a BEIR-style folder's
test split with the measures of ``retrec eval`` and returns the same numbers ``retrec eval --json`` prints.

Example::

    import retrec
    bm25 = retrec.load("artifacts/scifact-bm25")
    hits = bm25.search("what causes scurvy", k=3)          # [Hit(doc_id=..., score=..., rank=1, text=...), ...]
    doc_id, score = hits[0]
    retrec.evaluate(bm25, "data/scifact")["nDCG@10"]       # as `retrec eval --index artifacts/scifact-bm25`
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


class Hit(tuple):
    """``(doc_id, score)`` with ``rank`` (1 = best) and ``text`` (None when the version stores none)."""

    doc_id = property(lambda self: self[0])
    score = property(lambda self: self[1])

    def __new__(cls, doc_id: str, score: float, rank: int, text: str | None = None) -> Hit:
        hit = super().__new__(cls, (doc_id, float(score)))
        hit.rank, hit.text = rank, text
        return hit

    def __repr__(self) -> str:
        text = None if self.text is None else (self.text[:60] + "..." if len(self.text) > 60 else self.text)
        return f"Hit(doc_id={self[0]!r}, score={self[1]:.4f}, rank={self.rank}, text={text!r})"


class Retriever:
    """An index version opened for search from Python (see the module doc)."""

    def __init__(self, retriever: Any, corpus: str | Path | None = None) -> None:
        self._retriever = retriever
        self._corpus = corpus
        self._texts: dict[str, str] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._retriever, name)

    def search(self, query: str | Sequence[str], k: int = 10) -> list[Hit] | list[list[Hit]]:
        """The top ``k`` hits of one query (a list of :class:`Hit`), or of each query of a list (a list of lists)."""
        if isinstance(query, str):
            return self._search([query], k)[0]
        if isinstance(query, Sequence) and not isinstance(query, bytes) and all(isinstance(q, str) for q in query):
            return self._search(list(query), k)
        raise TypeError(f"search takes a query string or a list of query strings, not {type(query).__name__}")

    def _search(self, queries: list[str], k: int) -> list[list[Hit]]:
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise TypeError(f"k must be a positive int, not {k!r}")
        texts = self.texts()
        return [[Hit(d, s, r, texts.get(d)) for r, (d, s) in enumerate(hits, start=1)]
                for hits in self._retriever.search(queries, k)]

    def texts(self) -> dict[str, str]:
        """doc_id → the text the version indexed (its ``documents.parquet``), or the ``corpus=`` collection's."""
        if self._texts is None:
            self._texts = _corpus_texts(self._corpus) if self._corpus is not None else _stored_texts(self._retriever)
        return self._texts


def _stored_texts(retriever: Any) -> dict[str, str]:
    from retrec.index.generic import read_texts

    manifest = getattr(retriever, "manifest", None)
    return {} if manifest is None else read_texts(manifest)


def _corpus_texts(corpus: str | Path) -> dict[str, str]:
    from retrec.data.beir import corpus_texts
    from retrec.data.corpus import read_corpus

    ids, texts = corpus_texts(read_corpus(Path(corpus)))
    return dict(zip(ids, texts))


def evaluate(retriever_or_run: Any, data: str | Path, measures: Sequence[str] | None = None,
             split: str = "test", k: int = 1000) -> dict[str, float]:
    """The measures of ``retrec eval`` (nDCG@10, RR@10, R@100, R@1000, AP by default) of a retriever — anything
    with ``search(queries, k)``, e.g. what :func:`retrec.load` gives — or of a run ``{query_id: [(doc_id, score),
    ...]}`` on ``data``'s ``split``: the numbers ``retrec eval --json`` prints."""
    from retrec.data.beir import load_retrieval_data
    from retrec.pipelines.eval.ir_metrics import RETRIEVAL_MEASURES
    from retrec.pipelines.eval.retrieval import evaluate_hits, evaluate_retriever

    collection = load_retrieval_data(Path(data), split=split)
    chosen = tuple(measures) if measures is not None else RETRIEVAL_MEASURES
    if isinstance(retriever_or_run, Mapping):
        run = {str(q): [(str(d), float(s)) for d, s in hits] for q, hits in retriever_or_run.items()}
        return dict(evaluate_hits("run", run, collection.qrels_dict(), chosen).metrics)
    inner = retriever_or_run._retriever if isinstance(retriever_or_run, Retriever) else retriever_or_run
    if not callable(getattr(inner, "search", None)):
        raise TypeError(f"evaluate takes a retriever (with search(queries, k)) or a run mapping, not "
                        f"{type(retriever_or_run).__name__}")
    return dict(evaluate_retriever(inner, collection, k=k, progress=False, measures=chosen).metrics)
