"""Teachers for dense-retriever distillation: score (query, documents) pairs on a common [0, 1] scale.

A teacher is an ensemble of members, each normalised per query and then averaged with weights (the
heterogeneous-ensemble recipe of "Towards Competitive Search Relevance For Inference-Free Learned Sparse
Retrievers"): a member's scores are min-max normalised over that query's top-``depth`` scores and
clipped to [0, 1], so documents outside its top list count as 0.

Members:
- :class:`BM25Member` — BM25 over the collection (hard negatives come from here too);
- :class:`DenseMember` — embeddings of a dense model (the zero-shot MiniLM by default);
- :class:`LabelMember` — the training judgements themselves (relevance / max relevance);
- :class:`ScoreTableMember` — a Parquet file of ``(query_id, doc_id, score)`` from any teacher you bring;
  pairs missing from the file score as that query's lowest listed score;
- :class:`CrossEncoderMember` — a cross-encoder (``retrec train reranker``) scoring each training query's
  mined candidates and positives once, before training; pairs outside them score as the query's lowest.

Example::

    teacher = Teacher([(BM25Member(bm25, query_texts), 1.0), (DenseMember(qv, dv, qids), 1.0)])
    teacher.scores("q1", np.array([3, 17]))            # normalised ensemble scores of docs 3 and 17
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from retrec.data.errors import DataError
from retrec.index.bm25_index import BM25Index

SCORE_TABLE = pa.schema([("query_id", pa.string()), ("doc_id", pa.string()), ("score", pa.float64())])


class Member(Protocol):
    name: str

    def scores(self, query_id: str, docs: np.ndarray) -> np.ndarray:
        """Normalised scores in [0, 1] of corpus rows ``docs`` for the query."""
        ...


def _minmax(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi - lo <= 1e-12:
        return (values >= hi).astype(np.float32)
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


class _FullScoreMember:
    """A member that can score a query against the whole corpus (cached per query)."""

    name = "full"

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self._cache: dict[str, tuple[np.ndarray, float, float]] = {}

    def corpus_scores(self, query_id: str) -> np.ndarray:
        raise NotImplementedError

    def _full(self, query_id: str) -> tuple[np.ndarray, float, float]:
        hit = self._cache.get(query_id)
        if hit is None:
            s = np.asarray(self.corpus_scores(query_id), dtype=np.float32)
            top = np.partition(s, -min(self.depth, s.size))[-min(self.depth, s.size):]
            hit = (s, float(top.min()), float(top.max()))
            self._cache[query_id] = hit
        return hit

    def top(self, query_id: str, k: int) -> np.ndarray:
        """Corpus rows of the query's ``k`` best documents, best first."""
        s = self._full(query_id)[0]
        k = min(k, s.size)
        part = np.argpartition(-s, k - 1)[:k]
        return part[np.lexsort((part, -s[part]))]

    def scores(self, query_id: str, docs: np.ndarray) -> np.ndarray:
        s, lo, hi = self._full(query_id)
        return _minmax(s[docs], lo, hi)


class BM25Member(_FullScoreMember):
    name = "bm25"

    def __init__(self, index: BM25Index, query_texts: Mapping[str, str], depth: int = 100) -> None:
        super().__init__(depth)
        self.index = index
        self.query_texts = query_texts

    def corpus_scores(self, query_id: str) -> np.ndarray:
        return self.index.scores(self.query_texts[query_id])


class DenseMember(_FullScoreMember):
    name = "dense"

    def __init__(self, query_vectors: np.ndarray, query_ids: Sequence[str], doc_vectors: np.ndarray,
                 depth: int = 100) -> None:
        super().__init__(depth)
        if query_vectors.shape[1] != doc_vectors.shape[1]:
            raise ValueError(f"query and document vectors differ in dimension: {query_vectors.shape[1]} vs "
                             f"{doc_vectors.shape[1]}")
        self.row = {q: i for i, q in enumerate(query_ids)}
        self.query_vectors = query_vectors
        self.doc_vectors = doc_vectors

    def corpus_scores(self, query_id: str) -> np.ndarray:
        return self.doc_vectors @ self.query_vectors[self.row[query_id]]


class LabelMember:
    """The judgements as a teacher: relevance / the query's maximum relevance; unjudged documents 0."""

    name = "labels"

    def __init__(self, qrels_rows: Mapping[str, Mapping[int, int]]) -> None:
        self.qrels_rows = qrels_rows

    def scores(self, query_id: str, docs: np.ndarray) -> np.ndarray:
        rel = self.qrels_rows.get(query_id, {})
        top = max(rel.values(), default=0)
        if top <= 0:
            return np.zeros(len(docs), dtype=np.float32)
        return np.array([max(rel.get(int(d), 0), 0) / top for d in docs], dtype=np.float32)


class _RowsMember:
    """Scores listed per (query, corpus row); a pair not listed scores as that query's lowest listed score."""

    name = "rows"

    def __init__(self, rows: dict[str, dict[int, float]]) -> None:
        self.rows = rows
        self._bounds = {q: (min(r.values()), max(r.values())) for q, r in rows.items() if r}

    def scores(self, query_id: str, docs: np.ndarray) -> np.ndarray:
        r = self.rows.get(query_id)
        if not r:
            return np.zeros(len(docs), dtype=np.float32)
        lo, hi = self._bounds[query_id]
        return _minmax(np.array([r.get(int(d), lo) for d in docs], dtype=np.float64), lo, hi)


class ScoreTableMember(_RowsMember):
    """Scores from a Parquet file ``(query_id: string, doc_id: string, score: double)``."""

    def __init__(self, path: str | Path, doc_row: Mapping[str, int]) -> None:
        path = Path(path)
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowInvalid) as exc:
            raise DataError(path, f"not a readable Parquet file ({exc})") from exc
        missing = [f.name for f in SCORE_TABLE if f.name not in table.column_names]
        if missing:
            raise DataError(path, f"teacher scores need columns query_id, doc_id, score; missing {missing}")
        try:
            table = table.select(SCORE_TABLE.names).cast(SCORE_TABLE)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise DataError(path, f"teacher score columns have the wrong types ({exc})") from exc
        rows: dict[str, dict[int, float]] = {}
        unknown = 0
        for n, (q, d, s) in enumerate(zip(*(table.column(c).to_pylist() for c in SCORE_TABLE.names))):
            if q is None or d is None or s is None or not np.isfinite(s):
                raise DataError(path, f"row {n}: null or non-finite value ({q!r}, {d!r}, {s!r})")
            row = doc_row.get(d)
            if row is None:
                unknown += 1
                continue
            rows.setdefault(q, {})[row] = float(s)
        if not rows:
            raise DataError(path, "no teacher score names a document of this collection")
        super().__init__(rows)
        self.name = f"table:{path.name}"
        self.unknown_docs = unknown


class PairScorer(Protocol):
    name: str

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray: ...


class CrossEncoderMember(_RowsMember):
    """A cross-encoder's scores of each query's candidate documents (e.g.
    :class:`retrec.runtime.reranker.OnnxReranker`), computed once up front: ``candidates[q]`` are the corpus
    rows scored for query ``q``; pairs outside them score as the query's lowest."""

    def __init__(self, scorer: PairScorer, query_texts: Mapping[str, str], doc_texts: Sequence[str],
                 candidates: Mapping[str, np.ndarray], progress: Callable[[int, int], None] | None = None) -> None:
        rows: dict[str, dict[int, float]] = {}
        queries = list(candidates)
        block = 64  # queries per call: long enough for length-sorted batches, short enough to report progress
        for start in range(0, len(queries), block):
            chunk = queries[start:start + block]
            pairs = [(query_texts[q], doc_texts[int(r)]) for q in chunk for r in candidates[q]]
            scores = scorer.score_pairs(pairs)
            at = 0
            for q in chunk:
                n = len(candidates[q])
                rows[q] = {int(r): float(s) for r, s in zip(candidates[q], scores[at:at + n])}
                at += n
            if progress is not None:
                progress(min(start + block, len(queries)), len(queries))
        super().__init__(rows)
        self.name = f"cross-encoder:{scorer.name}"
        self.pairs = sum(len(c) for c in candidates.values())


class Teacher:
    """Weighted mean of normalised member scores."""

    def __init__(self, members: Sequence[tuple[Member, float]]) -> None:
        if not members:
            raise ValueError("a teacher needs at least one member")
        if any(w < 0 for _, w in members) or sum(w for _, w in members) <= 0:
            raise ValueError("teacher member weights must be non-negative and not all zero")
        self.members = list(members)
        self.total = float(sum(w for _, w in members))

    @property
    def description(self) -> dict[str, float]:
        return {m.name: w for m, w in self.members}

    def scores(self, query_id: str, docs: np.ndarray) -> np.ndarray:
        out = np.zeros(len(docs), dtype=np.float32)
        for member, weight in self.members:
            if weight:
                out += weight * member.scores(query_id, docs)
        return out / self.total
