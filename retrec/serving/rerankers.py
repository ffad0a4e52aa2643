"""The ``rerank`` stage of ``/v1/search``: a cross-encoder deployment that re-orders a retriever's top hits.

A replica loads a ``model/reranker`` bundle through the registry (:class:`retrec.runtime.reranker.OnnxReranker`)
and the collection's document texts (``documents``: a BEIR folder or a ``corpus.jsonl`` / ``corpus.parquet``,
title + text, as the re-ranker was trained). The ingress sends the query and the first ``depth`` document ids;
the replica answers them re-ordered, with their scores (the first stage's scores mixed in by the bundle's
``first_stage_weight``). An id it has no text for is scored on an empty text (and
counted). Configured under ``rerank:`` in the serve config; a request asks for it with ``"rerank": true``.

Example (the serve config's ``args``)::

    rerank: {bundle: artifacts/scifact-reranker, documents: ../shared/data/scifact, depth: 20}
    # POST /v1/search {"query": "what causes scurvy", "k": 10, "rerank": true}
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ray import serve

from retrec.bundle import read_manifest
from retrec.kinds import call_supported
from retrec.process_env import configure_process
from retrec.serving.registry import kind_of, loader
from retrec.serving.resources import replica_threads

log = logging.getLogger("retrec.serving")


def document_texts(documents: str) -> dict[str, str]:
    """Document id → title + text of a collection folder or corpus file."""
    from retrec.data.corpus import corpus_texts, read_corpus

    ids, texts = corpus_texts(read_corpus(documents))
    return dict(zip(ids, texts))


@serve.deployment
class Reranker:
    """One re-ranker bundle of any registered ``reranker`` kind, with the document texts it reads."""

    def __init__(self, bundle: str, documents: str, variant: str = "fp32", threads: int | None = None,
                 first_stage_weight: float | None = None) -> None:
        self.first_stage_weight = first_stage_weight  # None: the bundle's
        threads = replica_threads(threads)
        configure_process(threads)
        self.manifest = read_manifest(bundle)
        self.kind = kind_of(self.manifest.kind, "reranker", f"rerank bundle {bundle}")
        # spin="run": the threads stop busy-waiting when a call returns (the replica shares its cores)
        self.model = call_supported(loader(self.kind.kind), bundle, variant=variant, threads=threads, spin="run")
        self.texts = document_texts(documents)
        warning = getattr(self.model, "dev_warning", lambda: None)()
        if warning:
            log.warning("%s", warning)

    def info(self) -> dict[str, Any]:
        m = self.manifest
        return {"kind": m.kind, "name": m.name, "version": m.version, "documents": len(self.texts)}

    def _rerank(self, query: str, ids: list[str], first_scores: list[float] | None) -> dict[str, Any]:
        missing = sum(1 for i in ids if i not in self.texts)
        kwargs: dict[str, Any] = {} if first_scores is None else {"first_scores": first_scores}
        if self.first_stage_weight is not None:
            kwargs["first_stage_weight"] = self.first_stage_weight
        ranked, scores = self.model.rerank(query, ids, lambda d: self.texts.get(d, ""), **kwargs)
        return {"hits": [(d, float(s)) for d, s in zip(ranked, scores)], "missing_texts": missing,
                "name": self.manifest.name, "version": self.manifest.version}

    async def rerank(self, query: str, ids: list[str], first_scores: list[float] | None = None) -> dict[str, Any]:
        """``ids`` best first, with the first stage's ``first_scores`` when it has them (the bundle mixes them in
        by its ``first_stage_weight``)."""
        return await asyncio.to_thread(self._rerank, query, list(ids),
                                       None if first_scores is None else list(first_scores))
