"""Pseudo-queries from the corpus: a sentence of a document as a query, that document as its one positive.

Collections with few judged queries (SciFact: ~800) leave a trainer repeating them; a sentence drawn from a
document is a cheap, unsupervised, in-domain query whose positive is known (the Inverse Cloze Task keeps the
sentence in the document here: the sparse model learns which of a document's terms a query reuses). The mined
negatives, the teacher and the topic clusters then treat them like judged queries.

:func:`corpus_training_set` builds a training set from the corpus alone — no query or judgement of the collection is
read — for domain adaptation (``retrec train dense --adapt``, GPL-style: the teacher's margins on these queries
are the signal); its dev queries are held-out pseudo-queries (``dev_source: "pseudo"``).

Example::

    ts = with_pseudo_queries(ts, per_query=1.0, seed=0)   # as many pseudo-queries as judged training queries
    ts = corpus_training_set("../shared/data/scifact", queries=2000, dev_queries=200, seed=0)
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np

from retrec.data.beir import corpus_texts, load_corpus
from retrec.pipelines.train.text.data import TrainingSet

PREFIX = "pseudo:"
MIN_WORDS, MAX_WORDS = 5, 40
CROP_WORDS = 12  # a document without a query-sized sentence gives a span of this many words
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


def pseudo_query(text: str, rng: np.random.Generator) -> str | None:
    """One of ``text``'s sentences (:func:`sentences`), or, when it has none, a span of ``CROP_WORDS`` consecutive
    words (text without sentence punctuation); None for a text shorter than ``MIN_WORDS`` words."""
    found = sentences(text)
    if found:
        return found[int(rng.integers(len(found)))]
    words = text.split()
    if len(words) < MIN_WORDS:
        return None
    size = min(CROP_WORDS, len(words))
    start = int(rng.integers(len(words) - size + 1))
    return " ".join(words[start:start + size])


def corpus_training_set(data: str | Path, queries: int, dev_queries: int, seed: int) -> TrainingSet:
    """A training set of ``queries`` pseudo-queries and ``dev_queries`` held-out ones from ``data``'s documents
    alone (one per document, documents drawn seeded; fewer when the corpus has fewer usable documents). Each
    query's one relevant document is the one it comes from."""
    if queries < 2 or dev_queries < 0:
        raise ValueError("adapt needs at least 2 training pseudo-queries and dev_queries >= 0")
    doc_ids, doc_texts = corpus_texts(load_corpus(data), with_title=True)
    rng = np.random.default_rng([seed, 11])
    texts: dict[str, str] = {}
    rows: dict[str, int] = {}
    for row in rng.permutation(len(doc_texts)).tolist():
        text = pseudo_query(doc_texts[row], rng)
        if text is not None:
            qid = PREFIX + doc_ids[row]
            texts[qid], rows[qid] = text, row
            if len(rows) == queries + dev_queries:
                break
    ids = list(rows)
    n_dev = min(dev_queries, len(ids) // 5)  # a small corpus keeps most of its queries for training
    dev_ids, train_ids = sorted(ids[:n_dev]), ids[n_dev:]
    if len(train_ids) < 2:
        raise ValueError(f"{data}: only {len(ids)} documents give a pseudo-query ({MIN_WORDS}+ words); adapt needs "
                         "at least 2")
    qrels_rows = {q: {r: 1} for q, r in rows.items()}
    return TrainingSet(doc_ids, doc_texts, train_ids, {q: np.array([rows[q]], dtype=np.int64) for q in train_ids},
                       dev_ids, {q: {doc_ids[rows[q]]: 1} for q in dev_ids}, texts, qrels_rows, "pseudo")
