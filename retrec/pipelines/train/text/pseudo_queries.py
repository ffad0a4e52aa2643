"""Pseudo-queries from the corpus: a sentence of a document as a query, that document as its one positive.

Collections with few judged queries (SciFact: ~800) leave a trainer repeating them; a sentence drawn from a
document is a cheap, unsupervised, in-domain query whose positive is known (the Inverse Cloze Task keeps the
sentence in the document here: the sparse model learns which of a document's terms a query reuses). The mined
negatives, the teacher and the topic clusters then treat them like judged queries.

Example::

    ts = with_pseudo_queries(ts, per_query=1.0, seed=0)   # as many pseudo-queries as judged training queries
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from retrec.pipelines.train.text.data import TrainingSet

PREFIX = "pseudo:"
MIN_WORDS, MAX_WORDS = 5, 40
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\[])")


def sentences(text: str) -> list[str]:
    """``text``'s sentences of ``MIN_WORDS``–``MAX_WORDS`` words (a title or a list item is not a query)."""
    parts = [s.strip() for line in text.splitlines() for s in _SENTENCE_END.split(line)]
    return [s for s in parts if MIN_WORDS <= len(s.split()) <= MAX_WORDS]


def with_pseudo_queries(ts: TrainingSet, per_query: float, seed: int) -> TrainingSet:
    """``ts`` plus ``round(per_query × training queries)`` pseudo-queries, one per document drawn (seeded) from
    those with a usable sentence; ids ``pseudo:<doc id>``. Dev queries and judgements are untouched."""
    if per_query < 0:
        raise ValueError("per_query must be >= 0")
    wanted = round(per_query * len(ts.query_ids))
    if wanted == 0:
        return ts
    rng = np.random.default_rng([seed, 7])
    taken = set(ts.query_texts)
    texts, rows = dict(ts.query_texts), {}
    for row in rng.permutation(len(ts.doc_texts)).tolist():
        qid = PREFIX + ts.doc_ids[row]
        found = sentences(ts.doc_texts[row])
        if not found or qid in taken:
            continue
        texts[qid] = found[int(rng.integers(len(found)))]
        rows[qid] = row
        if len(rows) == wanted:
            break
    positives = {**ts.positives, **{q: np.array([r], dtype=np.int64) for q, r in rows.items()}}
    qrels_rows = {**ts.qrels_rows, **{q: {r: 1} for q, r in rows.items()}}
    return replace(ts, query_ids=ts.query_ids + list(rows), positives=positives, query_texts=texts,
                   qrels_rows=qrels_rows)
