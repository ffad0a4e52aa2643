"""BM25 as a term-major sparse score matrix, saved as a bundle (safetensors + JSON, no pickle).

Building streams (:mod:`retrec.index.bm25_build`): documents are analysed in chunks straight to term ids, so a
million documents cost their postings (about 14 bytes each while building, 8 once built), never lists of strings.
The matrix and its scores are exactly bm25s's (Lucene BM25 by default), and so are the files.

Search accumulates only the posting lists of the query's terms (in query order, float32, as bm25s) and ranks the
documents that share a term with the query: score descending, then doc id descending. The k-th best score of one
posting list bounds the k-th best overall from below, so only documents scoring at least that are sorted.

Example::

    index = BM25Index.build(doc_ids, texts)            # Lucene BM25, k1=0.9 b=0.4, English stemming
    hits = index.search(["what causes scurvy"], k=10)   # [[(doc_id, score), ...]]
    index.save("artifacts/bm25").version;  BM25Index.load("artifacts/bm25")   # save: the bundle's Manifest
    load_index("artifacts/bm25", shard=0, foo=1)   # UnknownOptionError: ... it takes: shard, verify
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from safetensors.numpy import save_file

from retrec.bundle import BundleError, Manifest, load_arrays, load_bundle, publish
from retrec.contracts import strict_options
from retrec.csr import csr_fits
from retrec.index.bm25_build import Analyzer, BM25Config, PostingsBuilder, ScoreMatrix
from retrec.index.filters import AllowedDocs
from retrec.index.retriever import Hits
from retrec.kinds import BM25_INDEX

KIND = BM25_INDEX
__all__ = ["BM25Config", "BM25Index", "assemble_index", "build_index", "load_index", "order_key", "prepare_documents",
           "tokenize", "top_rows"]
CHUNK = 5_000  # documents analysed at once while building (their words are the transient memory)
logging.getLogger("bm25s").setLevel(logging.WARNING)


def tokenize(texts: Sequence[str], config: BM25Config, analyzer: Analyzer | None = None) -> list[list[str]]:
    """Each text's terms as this index counts them (lower-cased, stop words out, stemmed): per document, so
    documents may be tokenized in parallel and indexed together (:meth:`BM25Index.from_tokens`)."""
    return (analyzer or Analyzer(config.stemmer, config.stopwords)).terms(texts)


def order_key(doc_ids: Sequence[str]) -> np.ndarray:
    """Each doc id's rank in ascending string order (int64): the tie-break key of :func:`top_k_rows`."""
    try:  # UTF-8 byte order is code point order: Python's string order
        ranks = pc.rank(pa.array(doc_ids, pa.string()), sort_keys="ascending", tiebreaker="first")
        return ranks.to_numpy().astype(np.int64) - 1
    except (pa.ArrowException, UnicodeEncodeError):  # e.g. a lone surrogate, not UTF-8
        return np.argsort(np.argsort(np.asarray(doc_ids, dtype=object), kind="stable")).astype(np.int64)


class BM25Index:
    name = "bm25"

    def __init__(self, matrix: ScoreMatrix, doc_ids: list[str], config: BM25Config) -> None:
        if matrix.documents != len(doc_ids):
            raise ValueError(f"{len(doc_ids)} doc ids for a score matrix of {matrix.documents} documents")
        self.matrix = matrix
        self.doc_ids = doc_ids
        self.config = config
        self.vocab = {term: i for i, term in enumerate(matrix.vocabulary)}
        self.analyzer = Analyzer(config.stemmer, config.stopwords)
        self._order_key = order_key(doc_ids)

    def __len__(self) -> int:
        return len(self.doc_ids)

    def tokenize(self, texts: Sequence[str]) -> list[list[str]]:
        return self.analyzer.terms(texts)

    @classmethod
    def build(cls, doc_ids: Sequence[str], texts: Sequence[str], config: BM25Config | None = None,
              chunk: int = CHUNK) -> BM25Index:
        """The index of ``texts``, analysed ``chunk`` documents at a time (progress logged every tenth)."""
        config = config or BM25Config()
        _check(doc_ids, texts, "texts")
        builder = PostingsBuilder(config, total=len(texts))
        for start in range(0, len(texts), chunk):
            builder.add_texts(texts[start:start + chunk])
        return cls(builder.finish(), list(doc_ids), config)

    @classmethod
    def from_tokens(cls, doc_ids: Sequence[str], tokens: Sequence[Sequence[str] | str],
                    config: BM25Config | None = None, chunk: int = CHUNK) -> BM25Index:
        """The index of documents already tokenized by :func:`tokenize` with the same ``config``: each a list of
        terms, or the terms joined by spaces (what :func:`prepare_documents` gives)."""
        config = config or BM25Config()
        _check(doc_ids, tokens, "tokenized documents")
        builder = PostingsBuilder(config, total=len(tokens))
        for start in range(0, len(tokens), chunk):
            builder.add_terms([t.split() if isinstance(t, str) else t for t in tokens[start:start + chunk]])
        return cls(builder.finish(), list(doc_ids), config)

    def term_ids(self, query: str) -> list[int]:
        """The query's terms that the index knows, as term ids, in query order (repeats kept)."""
        return [self.vocab[t] for t in self.tokenize([query])[0] if t in self.vocab]

    def _accumulate(self, ids: Sequence[int]) -> np.ndarray:
        """Scores of every document (float32), summed term by term in query order with ``np.add.at``: bm25s's
        own sums, bit for bit (float32 addition depends on the order)."""
        m = self.matrix
        scores = np.zeros(len(self.doc_ids), dtype=np.float32)
        for t in ids:
            lo, hi = m.indptr[t], m.indptr[t + 1]
            np.add.at(scores, m.indices[lo:hi], m.data[lo:hi])
        return scores

    def _shortest_list(self, ids: Sequence[int], k: int) -> np.ndarray | None:
        """The documents of the query's shortest posting list holding at least ``k`` (None if none does)."""
        lengths = [(int(self.matrix.indptr[t + 1] - self.matrix.indptr[t]), t) for t in set(ids)]
        fit = [(n, t) for n, t in lengths if n >= k]
        if not fit:
            return None
        t = min(fit)[1]
        return self.matrix.indices[self.matrix.indptr[t]:self.matrix.indptr[t + 1]]

    def scores(self, query: str) -> np.ndarray:
        """The query's BM25 score for every document (float32, 0 where no term is shared)."""
        return self._accumulate(self.term_ids(query))

    def search(self, queries: Sequence[str], k: int, allowed: AllowedDocs | None = None) -> list[Hits]:
        """Top-``k`` documents per query; only documents sharing a term with it (score > 0) are ranked, and only
        the ``allowed`` ones when given (a filter: :mod:`retrec.index.filters`)."""
        out = []
        mask = None if allowed is None else allowed.rows(self.doc_ids)
        for q in queries:
            ids = self.term_ids(q)
            if not ids or k <= 0:
                out.append([])
                continue
            s = self._accumulate(ids)
            if mask is not None:
                s[~mask] = 0.0
            rows = top_rows(s, k, self._order_key, None if mask is not None else self._shortest_list(ids, k))
            out.append([(self.doc_ids[i], float(s[i])) for i in rows])
        return out

    def save(self, directory: str | Path, name: str = "bm25", metrics: dict | None = None) -> Manifest:
        """Publish the index at ``directory`` atomically (an existing BM25 bundle there is replaced); its manifest."""
        root = Path(directory)
        m = self.matrix
        vocab = {**self.vocab, "": len(self.vocab)}  # bm25s's empty token, kept so the files stay as they were
        with publish(root) as pub:
            save_file({"data": m.data, "indices": m.indices, "indptr": m.indptr}, str(pub.path / "scores.safetensors"))
            (pub.path / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
            (pub.path / "doc_ids.json").write_text(json.dumps(self.doc_ids, ensure_ascii=False))
            pub.set_manifest(kind=KIND, name=name, config=asdict(self.config), metrics=metrics,
                             dims={"documents": len(self.doc_ids), "vocabulary": len(vocab)})
        assert pub.manifest is not None
        return pub.manifest

    @classmethod
    def load(cls, directory: str | Path, verify: bool = True) -> BM25Index:
        manifest = load_bundle(directory, kind=KIND, verify=verify)
        config = BM25Config(**manifest.config)
        arrays = load_arrays(str(manifest.file("scores.safetensors")))
        doc_ids = json.loads(manifest.file("doc_ids.json").read_text())
        vocab = json.loads(manifest.file("vocab.json").read_text())
        terms = sorted((i, t) for t, i in vocab.items() if t != "")
        indptr = arrays["indptr"].astype(np.int64, copy=False)
        if [i for i, _ in terms] != list(range(len(indptr) - 1)):
            raise BundleError(f"{manifest.path}: vocab.json does not number the score matrix's "
                              f"{len(indptr) - 1} terms 0..{len(indptr) - 2}")
        data = arrays["data"]
        if (not isinstance(doc_ids, list) or not all(isinstance(d, str) for d in doc_ids)
                or len(set(doc_ids)) != len(doc_ids) or data.ndim != 1 or data.dtype.kind != "f"
                or not csr_fits(indptr, arrays["indices"], rows=len(indptr) - 1, cols=len(doc_ids), values=len(data))
                or not bool(np.isfinite(data).all())):
            raise BundleError(f"{manifest.path}: scores.safetensors and doc_ids.json do not form a score matrix "
                              "(row offsets, document numbers, finite scores, distinct string ids)")
        matrix = ScoreMatrix(arrays["data"].astype(np.float32, copy=False),
                             arrays["indices"].astype(np.int32, copy=False), indptr, [t for _, t in terms],
                             len(doc_ids))
        return cls(matrix, doc_ids, config)


def top_rows(scores: np.ndarray, k: int, key: np.ndarray, some: np.ndarray | None = None) -> np.ndarray:
    """Rows of the ``k`` best positive scores, best first: score descending, then ``key`` (doc id rank)
    descending — :func:`retrec.index.retriever.top_k_rows` over the rows scoring > 0, the same rows.

    ``some``: at least ``k`` rows (e.g. one of the query's posting lists). Their ``k``-th best score is at most
    the ``k``-th best of all, so only the rows scoring at least that are ranked, not every matching row.
    """
    floor = 0.0
    if some is not None and len(some) >= k > 0:
        part = scores[some]
        floor = float(np.partition(part, len(part) - k)[len(part) - k])
    rows = np.flatnonzero(scores >= floor) if floor > 0.0 else np.flatnonzero(scores > 0.0)
    s = scores[rows]
    if len(rows) > k:  # every row tied with the k-th score stays a candidate
        keep = s >= np.partition(s, len(s) - k)[len(s) - k]
        rows, s = rows[keep], s[keep]
    return rows[np.lexsort((-key[rows], -s))[:k]]


def _check(doc_ids: Sequence[str], docs: Sequence[object], what: str) -> None:
    if len(doc_ids) != len(docs):
        raise ValueError(f"{len(doc_ids)} doc ids for {len(docs)} {what}")
    if not len(doc_ids):
        raise ValueError("cannot index an empty corpus")


def build_index(doc_ids: Sequence[str], texts: Sequence[str], *, shards: int = 1, progress: bool = False,
                **options: object) -> BM25Index:
    """Registry builder (``retrec index bm25``): one shard; ``k1``/``b`` options override the defaults."""
    if shards != 1:
        raise ValueError(f"a BM25 index is one shard (asked for {shards})")
    return BM25Index.build(doc_ids, texts, _config(options))


def _config(options: dict[str, object]) -> BM25Config:
    return BM25Config(**{k: v for k, v in options.items() if k in ("k1", "b") and v is not None})  # type: ignore[arg-type]


def prepare_documents(texts: Sequence[str], **options: object) -> list[str]:
    """Registry hook (``retrec reindex``, run in parallel over parts of the corpus): each document's terms, joined
    by spaces (one string a document, not a list of strings: a tenth of the memory)."""
    return [" ".join(terms) for terms in tokenize(texts, _config(options))]


def assemble_index(doc_ids: Sequence[str], prepared: Sequence[str | Sequence[str]], *, shards: int = 1,
                   **options: object) -> BM25Index:
    """Registry hook (``retrec reindex``): the index of every document's terms (the statistics are global)."""
    if shards != 1:
        raise ValueError(f"a BM25 index is one shard (asked for {shards})")
    return BM25Index.from_tokens(doc_ids, prepared, _config(options))


@strict_options(KIND)
def load_index(path: str | Path, *, shard: int | None = None, verify: bool = True) -> BM25Index:
    """Registry loader: the BM25 index version at ``path`` (it has one shard, number 0); ``verify=False`` skips
    the checksums. Any other option is refused (:class:`~retrec.contracts.UnknownOptionError`)."""
    if shard not in (None, 0):
        raise BundleError(f"{path}: a BM25 index has one shard, not shard {shard}")
    return BM25Index.load(path, verify=verify)
