"""Cross-encoder re-ranking for inference: a verified ``model/reranker`` bundle run by ONNX Runtime (no torch).

Pairs are tokenised once, sorted by length and scored in dynamically padded batches; scores come back in
input order. :meth:`OnnxReranker.rerank` re-orders a first stage's hits by the model's score (ties: the
first stage's order), keeping the hits below ``depth`` after the re-ranked ones.

Example::

    reranker = OnnxReranker("artifacts/scifact-reranker")
    reranker.score("what causes scurvy", ["Scurvy is ...", "Vitamin D ..."])   # float32 [2]
    ids, scores = reranker.rerank("what causes scurvy", hits.ids, texts.__getitem__, depth=100)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from retrec.bundle import BundleError, Manifest
from retrec.kinds import RERANKER_MODEL
from retrec.runtime.onnx_session import BundleModel, Spin

KIND = RERANKER_MODEL


class OnnxReranker(BundleModel):
    """Scores (query, document) pairs with one ONNX cross-encoder."""

    def __init__(self, bundle: str | Path | Manifest, *, variant: str = "fp32", num_threads: int | None = None,
                 providers: Sequence[str] | None = None, batch_size: int = 32, max_length: int | None = None,
                 spin: Spin = "always") -> None:
        super().__init__(bundle, KIND, variant=variant, num_threads=num_threads, providers=providers, spin=spin)
        self.max_length = int(max_length or self.manifest.config["max_length"])
        self.batch_size = batch_size

    def dev_warning(self) -> str | None:
        """A sentence when the bundle's training recorded it re-ranking its dev candidates worse than the first
        stage it was mined from (``beats_first_stage: false``): re-ranking with it is likely to cost quality."""
        m = self.manifest.metrics
        if m.get("beats_first_stage") is not False:
            return None
        def fmt(value: object) -> str:
            return f"{value:.4f}" if isinstance(value, int | float) else "?"

        return (f"re-ranker {self.name} scored below its first stage on its dev queries (nDCG@10 "
                f"{fmt(m.get('dev_nDCG@10'))} vs {fmt(m.get('dev_nDCG@10_first_stage'))}); "
                "re-ranking with it is likely to lower quality")

    def score_pairs(self, pairs: Sequence[tuple[str, str]], batch_size: int | None = None) -> np.ndarray:
        """Scores ``float32 [n]`` of ``(query, document)`` pairs, in input order (higher: more relevant)."""
        out = np.zeros(len(pairs), dtype=np.float32)
        for positions, feeds in self.tokenizer.pair_batches(pairs, self.max_length, batch_size or self.batch_size):
            scores = self.session.run([self._output], {k: feeds[k] for k in self._inputs})[0]
            if scores.shape != (len(positions),):
                raise BundleError(f"{self.model_path}: model returned shape {scores.shape}, expected "
                                  f"({len(positions)},)")
            out[positions] = scores
        return out

    def score(self, query: str, documents: Sequence[str]) -> np.ndarray:
        """Scores of one query against each document."""
        return self.score_pairs([(query, d) for d in documents])

    def rerank(self, query: str, ids: Sequence[str], text: Callable[[str], str],
               depth: int | None = None) -> tuple[list[str], np.ndarray]:
        """The first ``depth`` (default: all) of ``ids`` re-ordered by score, then the rest in their order.

        ``text(id)`` gives a document's text. Returns the ids and their scores (the rest score below the
        lowest re-ranked score, in their first-stage order, so one list stays sorted).
        """
        head = list(ids[:depth] if depth is not None else ids)
        if not head:
            return list(ids), np.zeros(len(ids), dtype=np.float32)
        scores = self.score(query, [text(i) for i in head])
        order = np.lexsort((np.arange(len(head)), -scores))  # by score, ties in first-stage order
        tail = list(ids[len(head):])
        floor = float(scores.min()) - 1.0
        tail_scores = floor - np.arange(len(tail), dtype=np.float32) * 1e-3
        return [head[i] for i in order] + tail, np.concatenate([scores[order], tail_scores]).astype(np.float32)
