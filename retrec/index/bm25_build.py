"""BM25's analyzer and a streaming builder of its score matrix: memory bounded by the postings, not the tokens.

The analyzer is bm25s's ``tokenize`` (lower-case, the ``\\w\\w+`` words, stop words out, then stemmed), done on
chunks of documents straight to integer term ids with a growing vocabulary (no per-document lists of strings are
kept). Each chunk is reduced at once to its ``(document, term, frequency)`` triples (6 bytes a posting); at the end
the terms are renumbered in sorted order (the same corpus gives the same files whatever the hash seed) and the
chunks are scored and placed, chunk by chunk, into the term-major matrix ``[vocabulary, documents]``: ``indptr``
(int64), ``indices`` (int32 document rows, ascending in each term) and ``data`` (float32 BM25 scores), the arrays
bm25s itself builds (:class:`retrec.index.bm25_index.BM25Index` stores them), score for score the same.

Example::

    builder = PostingsBuilder(BM25Config())
    for start in range(0, len(texts), 5_000):
        builder.add_texts(texts[start:start + 5_000])
    matrix = builder.finish()          # ScoreMatrix: data, indices, indptr, vocabulary (sorted), documents
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import chain

import numpy as np
import Stemmer
from bm25s.scoring import _select_idf_scorer, _select_tfc_scorer  # the formulas bm25s's own index uses
from bm25s.tokenization import _infer_stopwords  # "en" -> bm25s's English list, as bm25s.tokenize reads it

from retrec.index.postings import offsets, place

log = logging.getLogger(__name__)
TOKEN_PATTERN = re.compile(r"(?u)\b\w\w+\b")  # bm25s's (scikit-learn's CountVectorizer) default
SUPPORTED_METHODS = ("lucene", "robertson", "atire")  # BM25L / BM25+ score absent terms too: not a sparse matrix


@dataclass(frozen=True)
class BM25Config:
    k1: float = 0.9  # Anserini's defaults, also used for BEIR's Lucene baselines
    b: float = 0.4
    method: str = "lucene"
    stemmer: str | None = "english"
    stopwords: str | None = "en"


class Analyzer:
    """Text → terms exactly as ``bm25s.tokenize(texts, stopwords, stemmer)``; one stemmer per thread."""

    def __init__(self, stemmer: str | None, stopwords: str | Sequence[str] | None) -> None:
        self.stemmer_name = stemmer
        self.stopwords = frozenset(_infer_stopwords(stopwords))  # type: ignore[arg-type]
        self._local = threading.local()  # PyStemmer's stemmers are not thread-safe

    def _stem(self, words: list[str]) -> list[str]:
        if not self.stemmer_name:
            return words
        stemmer = getattr(self._local, "stemmer", None)
        if stemmer is None:
            stemmer = self._local.stemmer = Stemmer.Stemmer(self.stemmer_name)
        return stemmer.stemWords(words)

    def words(self, texts: Sequence[str]) -> list[list[str]]:
        """Each text's words (lower-cased, stop words kept), before stemming."""
        return [TOKEN_PATTERN.findall(t.lower()) for t in texts]

    def terms(self, texts: Sequence[str]) -> list[list[str]]:
        """Each text's terms (stop words out, stemmed)."""
        words = self.words(texts)
        unique = [w for w in dict.fromkeys(chain.from_iterable(words)) if w not in self.stopwords]
        stem = dict(zip(unique, self._stem(unique)))
        return [[stem[w] for w in doc if w in stem] for doc in words]


@dataclass
class ScoreMatrix:
    """BM25 scores, term-major: term ``t``'s documents are ``indices[indptr[t]:indptr[t + 1]]`` (ascending)."""

    data: np.ndarray  # float32
    indices: np.ndarray  # int32 document rows
    indptr: np.ndarray  # int64, vocabulary + 1
    vocabulary: list[str]  # the term of each id (sorted, when built here)
    documents: int


@dataclass
class _Chunk:
    terms: np.ndarray  # int32, first-seen numbering; sorted by (document, term id)
    tf: np.ndarray  # uint16 (int32 if a term occurs 65,536 times in a document)
    distinct: np.ndarray  # int32 per document: how many of the triples are its
    lengths: np.ndarray  # int32 per document: its terms, repeats included (BM25's document length)


class PostingsBuilder:
    """Documents added in chunks (texts, or terms already analysed); :meth:`finish` gives the score matrix."""

    def __init__(self, config: BM25Config, total: int | None = None) -> None:
        if config.method not in SUPPORTED_METHODS:
            raise ValueError(f"BM25 method {config.method!r} is not supported (one of {SUPPORTED_METHODS})")
        self.config = config
        self.analyzer = Analyzer(config.stemmer, config.stopwords)
        self.ids: dict[str, int] = {}  # term -> id, in first-seen order (renumbered by finish)
        self.chunks: list[_Chunk] = []
        self.documents = 0
        self.total = total  # for the progress log only
        self._logged = 0

    def add_texts(self, texts: Sequence[str]) -> None:
        """Analyse and add one chunk of documents (what :meth:`Analyzer.terms` gives, without the strings)."""
        words = self.analyzer.words(texts)
        unique = list(dict.fromkeys(chain.from_iterable(words)))
        kept = [w for w in unique if w not in self.analyzer.stopwords]
        term_of = dict(zip(kept, self._number(self.analyzer._stem(kept))))
        unique_ids = np.fromiter((term_of.get(w, -1) for w in unique), np.int64, len(unique))
        self._add(words, unique, unique_ids)

    def add_terms(self, docs: Sequence[Sequence[str]]) -> None:
        """Add one chunk of documents already analysed (each a list of terms)."""
        unique = list(dict.fromkeys(chain.from_iterable(docs)))
        self._add(docs, unique, np.asarray(self._number(unique), dtype=np.int64))

    def _number(self, terms: Iterable[str]) -> list[int]:
        ids = self.ids
        return [ids.setdefault(t, len(ids)) for t in terms]

    def _add(self, docs: Sequence[Sequence[str]], unique: list[str], unique_ids: np.ndarray) -> None:
        """``docs``' tokens (``unique`` in first-seen order, their term ids or -1 to drop) as the chunk's triples."""
        n = len(docs)
        counts = np.fromiter(map(len, docs), np.int64, n)
        where = dict(zip(unique, range(len(unique))))
        position = np.fromiter(map(where.__getitem__, chain.from_iterable(docs)), np.int64, int(counts.sum()))
        terms = unique_ids[position]
        keep = terms >= 0
        doc = np.repeat(np.arange(n, dtype=np.int64), counts)[keep]
        pairs, tf = np.unique((doc << 32) | terms[keep], return_counts=True)  # sorted by document, then term
        self.chunks.append(_Chunk(
            terms=(pairs & 0xFFFFFFFF).astype(np.int32),
            tf=tf.astype(np.uint16 if len(tf) == 0 or tf.max() < 2**16 else np.int32),
            distinct=np.bincount(pairs >> 32, minlength=n).astype(np.int32),
            lengths=np.bincount(doc, minlength=n).astype(np.int32)))
        self.documents += n
        if self.total and self.documents - self._logged >= max(1, self.total // 10):
            self._logged = self.documents
            log.info("bm25: %d/%d documents analysed, %d terms", self.documents, self.total, len(self.ids))

    def finish(self) -> ScoreMatrix:
        """The score matrix of every document added (the chunks are released as they are placed)."""
        names = list(self.ids)
        order = sorted(range(len(names)), key=names.__getitem__)
        vocabulary = [names[i] for i in order]
        rank = np.empty(len(names), dtype=np.int32)
        rank[np.asarray(order, dtype=np.int64)] = np.arange(len(names), dtype=np.int32)
        self.ids = {}
        for chunk in self.chunks:
            chunk.terms = rank[chunk.terms]
        lengths = np.concatenate([c.lengths for c in self.chunks]).astype(np.int64) if self.chunks else \
            np.zeros(0, np.int64)
        df = np.zeros(len(names), dtype=np.int64)
        for chunk in self.chunks:
            df += np.bincount(chunk.terms, minlength=len(names))
        indptr = offsets(df)
        idf = idf_array(df, self.documents, self.config.method)
        average = lengths.mean() if len(lengths) else np.float64(0.0)  # as bm25s: the int64 lengths' mean
        data = np.empty(int(indptr[-1]), dtype=np.float32)
        indices = np.empty(int(indptr[-1]), dtype=np.int32)
        cursor = indptr[:-1].copy()
        first = 0
        while self.chunks:
            chunk = self.chunks.pop(0)
            n = len(chunk.lengths)
            _place(chunk, first, idf, average, self.config, cursor, data, indices)
            first += n
        log.info("bm25: %d documents, %d terms, %d postings", self.documents, len(vocabulary), len(data))
        return ScoreMatrix(data, indices, indptr, vocabulary, self.documents)


def idf_array(df: np.ndarray, documents: int, method: str) -> np.ndarray:
    """Each term's idf (float32), computed as bm25s does (Python floats, ``math.log``) once per distinct df."""
    score = _select_idf_scorer(method)
    values, inverse = np.unique(df, return_inverse=True)
    per_value = np.array([score(int(v), N=documents) if v else 0.0 for v in values], dtype=np.float32)
    return per_value[inverse.reshape(-1)] if len(df) else np.zeros(0, np.float32)


def _place(chunk: _Chunk, first: int, idf: np.ndarray, average: np.floating, config: BM25Config,
           cursor: np.ndarray, data: np.ndarray, indices: np.ndarray) -> None:
    """Score one chunk's triples and write them at their terms' next free slots (``cursor``, advanced)."""
    local = np.repeat(np.arange(len(chunk.lengths), dtype=np.int64), chunk.distinct)
    tfc = _select_tfc_scorer(config.method)(tf_array=chunk.tf.astype(np.float32), l_d=chunk.lengths[local]
                                            .astype(np.int64), l_avg=average, k1=config.k1, b=config.b)
    scores = (idf[chunk.terms] * tfc).astype(np.float32)  # float32 idf × float64 tfc, rounded once: as bm25s
    place(chunk.terms, (local + first).astype(np.int32), scores, cursor, data, indices)
