"""Cross-encoder re-ranking for inference: a verified ``model/reranker`` bundle run by ONNX Runtime (no torch).

Pairs are tokenised once, sorted by length and scored in dynamically padded batches; scores come back in
input order. :meth:`OnnxReranker.rerank` re-orders a first stage's hits by the model's score (ties: the
first stage's order), keeping the hits below ``depth`` after the re-ranked ones. Given the first stage's scores
too, it ranks by :func:`interpolate` with the bundle's ``first_stage_weight`` (chosen on dev by training; 0:
the model alone).

Example::

    reranker = OnnxReranker("artifacts/scifact-reranker")
    reranker.score("what causes scurvy", ["Scurvy is ...", "Vitamin D ..."])   # float32 [2]
    ids, scores = reranker.rerank("what causes scurvy", hits.ids, texts.__getitem__, depth=100,
                                  first_scores=hits.scores)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from retrec.bundle import BundleError, Manifest
from retrec.contracts import strict_options
from retrec.kinds import RERANKER_MODEL
from retrec.runtime.onnx_session import BundleModel, Spin

KIND = RERANKER_MODEL


def interpolate(scores: np.ndarray, first_scores: np.ndarray, weight: float) -> np.ndarray:
    """``(1 - weight) * minmax(scores) + weight * minmax(first_scores)``: one query's re-ranker and first-stage
    scores on a common [0, 1] scale (whatever the first stage's own scale: cosine, BM25, fused), mixed (float64).
    A constant list maps to 0; ``weight=1`` keeps the first stage's order."""
    def minmax(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if not x.size:
            return x
        span = float(x.max() - x.min())
        return (x - x.min()) / span if span > 0 else np.zeros_like(x)

    if len(scores) != len(first_scores):
        raise ValueError(f"{len(scores)} re-ranker scores but {len(first_scores)} first-stage scores")
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"first-stage weight must be in [0, 1], got {weight}")
    return (1.0 - weight) * minmax(scores) + weight * minmax(first_scores)


class OnnxReranker(BundleModel):
    """Scores (query, document) pairs with one ONNX cross-encoder."""

    @strict_options(KIND)
    def __init__(self, bundle: str | Path | Manifest, *, variant: str = "fp32", threads: int | None = None,
                 providers: Sequence[str] | None = None, batch_size: int = 32, max_length: int | None = None,
                 spin: Spin = "always") -> None:
        super().__init__(bundle, KIND, variant=variant, threads=threads, providers=providers, spin=spin)
        self.max_length = int(max_length or self.manifest.config["max_length"])
        self.batch_size = batch_size
        self.first_stage_weight = float(self.manifest.config.get("first_stage_weight", 0.0))

    def dev_warning(self) -> str | None:
        """A sentence when the bundle's training recorded it re-ranking its dev candidates worse than the first
        stage it was mined from (``beats_first_stage: false``): re-ranking with it is likely to cost quality."""
        m = self.manifest.metrics
        if m.get("beats_first_stage") is not False:
            return None
        def fmt(value: object) -> str:
            return f"{value:.4f}" if isinstance(value, int | float) else "?"

        mixed = m.get("dev_nDCG@10_interpolated")
        mixed_text = "" if mixed is None else f", mixed with the first stage's scores {fmt(mixed)},"
        return (f"re-ranker {self.name} did not beat its first stage on its dev queries (nDCG@10 "
                f"{fmt(m.get('dev_nDCG@10'))}{mixed_text} vs {fmt(m.get('dev_nDCG@10_first_stage'))}); "
                "re-ranking with it is unlikely to help")

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

    def rerank(self, query: str, ids: Sequence[str], text: Callable[[str], str], depth: int | None = None,
               first_scores: Sequence[float] | None = None,
               first_stage_weight: float | None = None) -> tuple[list[str], np.ndarray]:
        """The first ``depth`` (default: all) of ``ids`` re-ordered by score, then the rest in their order.

        ``text(id)`` gives a document's text; ``first_scores`` (aligned with ``ids``), when given and the
        weight (``first_stage_weight``, else the bundle's) is above 0, are interpolated with the model's
        (:func:`interpolate`).
        Returns the ids and their scores (the rest score below the lowest re-ranked score, in their
        first-stage order, so one list stays sorted).
        """
        head = list(ids[:depth] if depth is not None else ids)
        if not head:
            return list(ids), np.zeros(len(ids), dtype=np.float32)
        scores = self.score(query, [text(i) for i in head])
        weight = self.first_stage_weight if first_stage_weight is None else first_stage_weight
        if first_scores is not None and weight > 0:
            scores = interpolate(scores, np.asarray(first_scores[:len(head)], dtype=np.float64), weight)
        order = np.lexsort((np.arange(len(head)), -scores))  # by score, ties in first-stage order
        tail = list(ids[len(head):])
        floor = float(scores.min()) - 1.0
        tail_scores = floor - np.arange(len(tail), dtype=np.float32) * 1e-3
        return [head[i] for i in order] + tail, np.concatenate([scores[order], tail_scores]).astype(np.float32)
