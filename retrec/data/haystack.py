"""Needle-in-a-haystack collections: a BEIR folder plus N generated distractor documents.

:func:`write_haystack` writes a BEIR folder holding the base folder's documents, queries and judgements unchanged
and ``docs`` distractors drawn from word bigram models (:mod:`retrec.data.bigram`) fitted on the base corpus's
texts and, separately, its titles. Each distractor's (title, text) lengths in words are those of a base document
drawn at random, so the length distribution is the base's; its words follow the base's bigram statistics.

* ``corpus.jsonl``: the base file's bytes first, unchanged (a final newline added if it had none), then one JSON
  line per distractor, ``{"_id": "haystack-00000000", "title": ..., "text": ...}``. Distractor ids never collide
  with base ids (a base id starting with the prefix is an error).
* ``queries.jsonl`` and ``qrels/*.tsv``: copied byte for byte.
* ``haystack.json``: provenance (base folder and checksum, counts, seed, chunk size, model sizes, generator
  version, the output corpus's sha256). No timestamp: the same (base, docs, seed) gives identical bytes.

Determinism: distractors are generated in chunks of ``chunk_size`` (default 10,000); chunk ``c`` is drawn from
``numpy.random.SeedSequence([seed, c])`` and always in full, so distractor ``i`` depends only on (base, seed,
chunk size, ``i // chunk_size``): the first k of a larger haystack are the k of a smaller one, and chunks can be
generated in any order or in parallel. Writing streams chunk by chunk (memory: the model and one chunk), into a
hidden temporary sibling of ``out`` renamed into place at the end; a non-empty ``out`` is refused.

Example::

    from retrec.data.haystack import HaystackGenerator, write_haystack

    write_haystack("../shared/data/scifact", "/tmp/scifact-haystack-10k", docs=10_000, seed=0)

    gen = HaystackGenerator.from_beir("../shared/data/scifact", seed=0)   # in a notebook
    for doc in gen.documents(3):
        print(doc["_id"], doc["title"][:60], "|", doc["text"][:100])
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa

from retrec.atomic import _fsync_dir, fsync_tree
from retrec.data.beir import read_beir_corpus
from retrec.data.bigram import BigramModel
from retrec.data.errors import DataError
from retrec.version import __version__

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1  # bump when the same inputs would give other text
DEFAULT_CHUNK = 10_000
DEFAULT_PREFIX = "haystack-"
PROVENANCE = "haystack.json"


class HaystackGenerator:
    """Distractor documents drawn from bigram models of a corpus's titles and texts (see the module docstring)."""

    def __init__(self, titles: Sequence[str], texts: Sequence[str], *, seed: int = 0, chunk_size: int = DEFAULT_CHUNK,
                 unigram_weight: float = 0.05, id_prefix: str = DEFAULT_PREFIX, source: str = "texts") -> None:
        if len(titles) != len(texts):
            raise ValueError(f"{source}: {len(titles)} titles but {len(texts)} texts")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
        if not id_prefix:
            raise ValueError("id_prefix must not be empty")
        self.seed, self.chunk_size, self.id_prefix = seed, int(chunk_size), id_prefix
        self.text_model = BigramModel.fit(texts, unigram_weight)
        if self.text_model.empty:
            raise DataError(source, f"no text to fit a language model on: all {len(texts)} documents' texts are empty")
        self.title_model = BigramModel.fit(titles, unigram_weight)
        self.text_lengths = np.fromiter((len(t.split()) for t in texts), dtype=np.int64, count=len(texts))
        self.title_lengths = np.fromiter((len(t.split()) for t in titles), dtype=np.int64, count=len(titles))

    @classmethod
    def from_beir(cls, base: str | os.PathLike[str], **kwargs: Any) -> HaystackGenerator:
        """Fit on ``base/corpus.jsonl`` (validated as :func:`retrec.data.beir.read_beir_corpus` does)."""
        path = Path(base) / "corpus.jsonl"
        return cls.from_corpus(read_beir_corpus(path), source=str(path), **kwargs)

    @classmethod
    def from_corpus(cls, corpus: pa.Table, **kwargs: Any) -> HaystackGenerator:
        """Fit on a corpus table (columns ``title``, ``text``; :data:`retrec.data.schemas.CORPUS`)."""
        return cls(corpus.column("title").to_pylist(), corpus.column("text").to_pylist(), **kwargs)

    def doc_id(self, i: int) -> str:
        return f"{self.id_prefix}{i:08d}"

    def stats(self) -> dict[str, object]:
        return {"text_model": self.text_model.stats(), "title_model": self.title_model.stats(),
                "mean_text_words": float(self.text_lengths.mean()),
                "mean_title_words": float(self.title_lengths.mean())}

    def chunk(self, index: int) -> tuple[list[str], list[str]]:
        """``(titles, texts)`` of all ``chunk_size`` distractors of chunk ``index`` (ids ``index * chunk_size`` on)."""
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, index])))
        pick = rng.integers(0, self.text_lengths.size, size=self.chunk_size)
        titles = self.title_model.texts(*self.title_model.sample(rng, self.title_lengths[pick]))
        texts = self.text_model.texts(*self.text_model.sample(rng, self.text_lengths[pick]))
        return titles, texts

    def documents(self, n: int, start: int = 0) -> Iterator[dict[str, str]]:
        """Distractors ``start`` .. ``start + n - 1`` as BEIR records ``{"_id", "title", "text"}``."""
        for c in range(start // self.chunk_size, -(-(start + n) // self.chunk_size)):
            titles, texts = self.chunk(c)
            first = c * self.chunk_size
            for k in range(max(start - first, 0), min(start + n - first, self.chunk_size)):
                yield {"_id": self.doc_id(first + k), "title": titles[k], "text": texts[k]}

    def jsonl_chunks(self, n: int) -> Iterator[bytes]:
        """Distractors ``0 .. n - 1`` as ``corpus.jsonl`` lines, one bytes block per chunk."""
        done = 0
        for c in range(-(-n // self.chunk_size)):
            titles, texts = self.chunk(c)
            count = min(self.chunk_size, n - done)
            ids = [self.doc_id(done + k) for k in range(count)]
            lines = [json.dumps({"_id": i, "title": a, "text": b}) for i, a, b in zip(ids, titles, texts)]
            done += count
            yield ("\n".join(lines) + "\n").encode("utf-8")


def _base_files(base: Path) -> tuple[Path, Path, list[Path]]:
    corpus, queries, qrels = base / "corpus.jsonl", base / "queries.jsonl", base / "qrels"
    if not base.is_dir():
        raise DataError(base, "base BEIR folder not found")
    for path in (corpus, queries):
        if not path.is_file():
            raise DataError(path, "file not found (a BEIR folder has corpus.jsonl, queries.jsonl and qrels/*.tsv)")
    tsvs = sorted(qrels.glob("*.tsv")) if qrels.is_dir() else []
    if not tsvs:
        raise DataError(qrels, "no qrels/*.tsv judgements found")
    return corpus, queries, tsvs


def _check_ids(corpus: Path, ids: list[str], prefix: str) -> None:
    for n, doc_id in enumerate(ids, 1):
        if doc_id.startswith(prefix):
            raise DataError(corpus, f"document id {doc_id!r} (document {n}) starts with the distractor prefix "
                            f"{prefix!r}; distractor ids could collide: choose another id prefix")


def _copy_hashed(src: Path, dst_fh: BinaryIO, digest: Any) -> str:
    """Append ``src``'s bytes to ``dst_fh`` (and to ``digest``), a newline added if missing; return its sha256."""
    own = hashlib.sha256()
    last = b"\n"
    with open(src, "rb") as fh:
        while block := fh.read(1 << 20):
            own.update(block)
            digest.update(block)
            dst_fh.write(block)
            last = block[-1:]
    if last != b"\n":
        digest.update(b"\n")
        dst_fh.write(b"\n")
    return own.hexdigest()


def _write_distractors(gen: HaystackGenerator, docs: int, fh: BinaryIO, digest: Any) -> float:
    """Stream ``docs`` distractors into ``fh``; log progress every ~10%; return the docs/s achieved."""
    chunks = -(-docs // gen.chunk_size)
    every = max(1, chunks // 10)
    t0 = time.perf_counter()
    for c, block in enumerate(gen.jsonl_chunks(docs), 1):
        digest.update(block)
        fh.write(block)
        if c % every == 0 or c == chunks:
            done = min(c * gen.chunk_size, docs)
            rate = done / max(time.perf_counter() - t0, 1e-9)
            log.info("haystack: %d/%d distractors (%.0f%%, %.0f docs/s)", done, docs, 100 * done / docs, rate)
    return docs / max(time.perf_counter() - t0, 1e-9) if docs else 0.0


def _claim_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: exists and is not an empty directory; refusing to overwrite it")


def write_haystack(base: str | os.PathLike[str], out: str | os.PathLike[str], docs: int, seed: int = 0, *,
                   chunk_size: int = DEFAULT_CHUNK, unigram_weight: float = 0.05,
                   id_prefix: str = DEFAULT_PREFIX) -> Path:
    """Write ``out``: the BEIR folder ``base`` plus ``docs`` distractors (see the module docstring); return ``out``.

    Errors: :class:`DataError` naming the file for a bad base (missing files, malformed corpus, no text, an id
    that could collide), :class:`ValueError` for bad arguments, :class:`FileExistsError` for a non-empty ``out``.
    """
    base, out = Path(base), Path(out)
    if isinstance(docs, bool) or not isinstance(docs, int) or docs < 0:
        raise ValueError(f"docs (the number of distractors) must be a non-negative integer, got {docs!r}")
    _claim_out(out)
    corpus, queries, tsvs = _base_files(base)
    table = read_beir_corpus(corpus)
    base_ids = table.column("doc_id").to_pylist()
    _check_ids(corpus, base_ids, id_prefix)
    gen = HaystackGenerator.from_corpus(table, seed=seed, chunk_size=chunk_size, unigram_weight=unigram_weight,
                                        id_prefix=id_prefix, source=str(corpus))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.haystack-{secrets.token_hex(4)}"
    (tmp / "qrels").mkdir(parents=True)
    try:
        digest = hashlib.sha256()
        with open(tmp / "corpus.jsonl", "wb") as fh:
            base_sha = _copy_hashed(corpus, fh, digest)
            rate = _write_distractors(gen, docs, fh, digest)
        shutil.copyfile(queries, tmp / "queries.jsonl")
        for tsv in tsvs:
            shutil.copyfile(tsv, tmp / "qrels" / tsv.name)
        provenance = {
            "generator": "retrec.data.haystack", "generator_version": GENERATOR_VERSION, "retrec_version": __version__,
            "base": str(base.resolve()), "base_corpus_sha256": base_sha, "base_docs": len(base_ids),
            "distractors": docs, "docs": len(base_ids) + docs, "seed": seed, "chunk_size": gen.chunk_size,
            "id_prefix": id_prefix, "id_format": f"{id_prefix}{{i:08d}}, i = 0 .. {max(docs - 1, 0)}",
            "base_lines": "byte for byte (the base corpus.jsonl is a prefix of corpus.jsonl)",
            "model": gen.stats(), "corpus_sha256": digest.hexdigest(),
        }
        (tmp / PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
        fsync_tree(tmp)
        _claim_out(out)  # again: someone may have written there meanwhile
        if out.is_dir():
            out.rmdir()
        os.rename(tmp, out)
        _fsync_dir(out.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("haystack: wrote %s (%d base + %d distractors, %.0f docs/s)", out, len(base_ids), docs, rate)
    return out
