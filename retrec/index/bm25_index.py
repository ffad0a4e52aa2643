"""BM25 over bm25s's sparse score matrix, saved as a bundle (safetensors + JSON, no pickle).

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
from dataclasses import asdict, dataclass
from pathlib import Path

import bm25s
import numpy as np
import Stemmer
from safetensors.numpy import load_file, save_file

from retrec.bundle import BundleError, Manifest, load_bundle, publish
from retrec.contracts import strict_options
from retrec.index.retriever import Hits, top_k_rows
from retrec.kinds import BM25_INDEX

KIND = BM25_INDEX
logging.getLogger("bm25s").setLevel(logging.WARNING)


@dataclass(frozen=True)
class BM25Config:
    k1: float = 0.9  # Anserini's defaults, also used for BEIR's Lucene baselines
    b: float = 0.4
    method: str = "lucene"
    stemmer: str | None = "english"
    stopwords: str | None = "en"


def tokenize(texts: Sequence[str], config: BM25Config, stemmer: Stemmer.Stemmer | None = None) -> list[list[str]]:
    """Each text's terms as this index counts them (lower-cased, stop words out, stemmed): per document, so
    documents may be tokenized in parallel and indexed together (:meth:`BM25Index.from_tokens`)."""
    if stemmer is None and config.stemmer:
        stemmer = Stemmer.Stemmer(config.stemmer)
    tokenized = bm25s.tokenize(list(texts), stopwords=config.stopwords, stemmer=stemmer, return_ids=False,
                               show_progress=False)
    return [list(t) for t in tokenized]


class BM25Index:
    name = "bm25"

    def __init__(self, model: bm25s.BM25, doc_ids: list[str], config: BM25Config) -> None:
        self.model = model
        self.doc_ids = doc_ids
        self.config = config
        self._stemmer = Stemmer.Stemmer(config.stemmer) if config.stemmer else None
        self._order_key = np.argsort(np.argsort(np.asarray(doc_ids, dtype=object))).astype(np.int64)

    def __len__(self) -> int:
        return len(self.doc_ids)

    def tokenize(self, texts: Sequence[str]) -> list[list[str]]:
        return tokenize(texts, self.config, self._stemmer)

    @classmethod
    def build(cls, doc_ids: Sequence[str], texts: Sequence[str], config: BM25Config | None = None) -> BM25Index:
        config = config or BM25Config()
        if len(doc_ids) != len(texts):
            raise ValueError(f"{len(doc_ids)} doc ids for {len(texts)} texts")
        if not doc_ids:
            raise ValueError("cannot index an empty corpus")
        return cls.from_tokens(doc_ids, tokenize(texts, config), config)

    @classmethod
    def from_tokens(cls, doc_ids: Sequence[str], tokens: Sequence[list[str]],
                    config: BM25Config | None = None) -> BM25Index:
        """The index of documents already tokenized by :func:`tokenize` with the same ``config``."""
        config = config or BM25Config()
        if len(doc_ids) != len(tokens):
            raise ValueError(f"{len(doc_ids)} doc ids for {len(tokens)} tokenized documents")
        if not doc_ids:
            raise ValueError("cannot index an empty corpus")
        # The vocabulary in sorted order: bm25s numbers terms in set order, which changes with Python's hash seed,
        # so the same corpus would give other files in every process (index versions must be reproducible).
        vocab = {term: i for i, term in enumerate(sorted({t for doc in tokens for t in doc}))}
        model = bm25s.BM25(k1=config.k1, b=config.b, method=config.method)
        model.index(([[vocab[t] for t in doc] for doc in tokens], vocab), show_progress=False)
        return cls(model, list(doc_ids), config)

    def scores(self, query: str) -> np.ndarray:
        tokens = self.tokenize([query])[0]
        ids = self.model.get_tokens_ids(tokens)
        if not ids:
            return np.zeros(len(self.doc_ids), dtype=np.float32)
        return self.model.get_scores_from_ids(ids)

    def search(self, queries: Sequence[str], k: int) -> list[Hits]:
        """Top-``k`` documents per query; only documents sharing a term with it (score > 0) are ranked."""
        out = []
        for q in queries:
            s = self.scores(q)
            rows = top_k_rows(s, k, self._order_key, rows=np.flatnonzero(s > 0.0))  # no term overlap: not retrieved
            out.append([(self.doc_ids[i], float(s[i])) for i in rows])
        return out

    def save(self, directory: str | Path, name: str = "bm25", metrics: dict | None = None) -> Manifest:
        """Publish the index at ``directory`` atomically (an existing BM25 bundle there is replaced); its manifest."""
        root = Path(directory)
        with publish(root) as pub:
            s = self.model.scores
            save_file({"data": np.asarray(s["data"]), "indices": np.asarray(s["indices"]),
                       "indptr": np.asarray(s["indptr"])}, str(pub.path / "scores.safetensors"))
            (pub.path / "vocab.json").write_text(json.dumps(self.model.vocab_dict, ensure_ascii=False))
            (pub.path / "doc_ids.json").write_text(json.dumps(self.doc_ids, ensure_ascii=False))
            pub.set_manifest(kind=KIND, name=name, config=asdict(self.config), metrics=metrics,
                             dims={"documents": len(self.doc_ids), "vocabulary": len(self.model.vocab_dict)})
        assert pub.manifest is not None
        return pub.manifest

    @classmethod
    def load(cls, directory: str | Path, verify: bool = True) -> BM25Index:
        manifest = load_bundle(directory, kind=KIND, verify=verify)
        config = BM25Config(**manifest.config)
        arrays = load_file(str(manifest.file("scores.safetensors")))
        doc_ids = json.loads(manifest.file("doc_ids.json").read_text())
        model = bm25s.BM25(k1=config.k1, b=config.b, method=config.method)
        model.scores = {**arrays, "num_docs": len(doc_ids)}
        model.vocab_dict = json.loads(manifest.file("vocab.json").read_text())
        model.unique_token_ids_set = set(model.vocab_dict.values())
        model.nonoccurrence_array = None
        return cls(model, doc_ids, config)


def build_index(doc_ids: Sequence[str], texts: Sequence[str], *, shards: int = 1, progress: bool = False,
                **options: object) -> BM25Index:
    """Registry builder (``retrec index bm25``): one shard; ``k1``/``b`` options override the defaults."""
    if shards != 1:
        raise ValueError(f"a BM25 index is one shard (asked for {shards})")
    return BM25Index.build(doc_ids, texts, _config(options))


def _config(options: dict[str, object]) -> BM25Config:
    return BM25Config(**{k: v for k, v in options.items() if k in ("k1", "b") and v is not None})  # type: ignore[arg-type]


def prepare_documents(texts: Sequence[str], **options: object) -> list[list[str]]:
    """Registry hook (``retrec reindex``, run in parallel over parts of the corpus): the documents' terms."""
    return tokenize(texts, _config(options))


def assemble_index(doc_ids: Sequence[str], prepared: Sequence[list[str]], *, shards: int = 1,
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
