"""The ``rerank`` stage of ``/v1/search``: a cross-encoder deployment that re-orders a retriever's top hits.

A replica loads a ``model/reranker`` bundle through the registry (:class:`retrec.runtime.reranker.OnnxReranker`)
and the collection's document texts (``documents``: a BEIR folder or a ``corpus.jsonl`` / ``corpus.parquet``,
title + text, as the re-ranker was trained). The ingress sends the query and the first ``depth`` document ids;
the replica answers them re-ordered, with their scores (the first stage's scores mixed in by the bundle's
``first_stage_weight``). An id it has no text for is scored on an empty text (and
counted). Configured under ``rerank:`` in the serve config; a request asks for it with ``"rerank": true``. A re-ranking
past its deadline (``timeout_s``) or a re-ranker too busy to take it answers in the first stage's order with
``reranked: false`` (``on_timeout: first_stage``, the default; ``fail``: a 503).

Example (the serve config's ``args``)::

    rerank: {bundle: artifacts/scifact-reranker, documents: ../shared/data/scifact, depth: 20}
    # POST /v1/search {"query": "what causes scurvy", "k": 10, "rerank": true}
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ray import serve
from ray.serve.exceptions import BackPressureError

from retrec.bundle import read_manifest
from retrec.kinds import call_supported
from retrec.process_env import configure_process
from retrec.serving.errors import ApiError
from retrec.serving.registry import kind_of, loader
from retrec.serving.resources import replica_threads
from retrec.serving.scatter import call_handle

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


async def rerank_hits(handle: Any, cfg: Any, query: str, hits: list, depth: int) -> tuple[list, str | None]:
    """The first ``depth`` hits re-ordered by the re-ranker deployment ``handle`` (those below keep their order,
    scored below the re-ranked ones) and ``NAME@VERSION`` of the re-ranker; one past its deadline or too busy: the
    hits as they are and None (``cfg.rerank.on_timeout: first_stage``, the default) or 503; one that fails: 503."""
    assert cfg.rerank is not None
    head = [d for d, _ in hits[:depth]]
    if not head:  # nothing retrieved: nothing re-ranked
        return hits, None
    try:
        first = [float(s) for _, s in hits[:depth]]
        out = await call_handle(handle.rerank.remote(query, head, first), cfg.rerank.timeout_s)
    except (BackPressureError, TimeoutError) as exc:
        if cfg.rerank.on_timeout == "first_stage":
            log.warning("re-ranker %s: answering in the first stage's order",
                        "busy" if isinstance(exc, BackPressureError) else "past its deadline")
            return hits, None
        if isinstance(exc, BackPressureError):
            raise ApiError(503, "overloaded", f"re-ranker busy: {exc}",
                           {"Retry-After": str(cfg.limits.retry_after_s)}) from exc
        raise ApiError(503, "unavailable", f"re-ranker slower than {cfg.rerank.timeout_s} s") from exc
    except Exception as exc:
        log.warning("re-ranker failed", exc_info=True)
        raise ApiError(503, "unavailable", f"re-ranker failed: {type(exc).__name__}") from exc
    ranked = [(d, float(s)) for d, s in out["hits"]]
    floor = ranked[-1][1] if ranked else 0.0
    tail = [(d, floor - 1.0 - i * 1e-3) for i, (d, _) in enumerate(hits[depth:])]
    return ranked + tail, f"{out['name']}@{out['version']}"
