"""Dense retriever: an ONNX encoder plus a FAISS index — the unit ``retrec eval`` and serving share.

Corpus encodings can be cached by the sha256 of (encoder bundle name, version and model file
checksum, variant, max document length, texts), as safetensors under a cache folder, so evaluating
the same collection twice encodes it once.

Example::

    encoder = OnnxEncoder(zero_shot_bundle())
    retriever = DenseRetriever.build(encoder, doc_ids, texts, factory="Flat", cache=cache_dir() / "embeddings")
    retriever.search(["what causes scurvy"], k=10)      # [[(doc_id, score), ...]]
    retriever.save("artifacts/scifact-dense");  DenseRetriever.load(model_dir, "artifacts/scifact-dense")
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from retrec.bundle import Manifest, atomic_path, load_arrays
from retrec.index import ann
from retrec.index.faiss_index import FaissIndex
from retrec.index.retriever import Hits
from retrec.runtime.onnx_encoder import OnnxEncoder

CACHE_FORMAT = 1
log = logging.getLogger(__name__)


def corpus_key(encoder: OnnxEncoder, texts: Sequence[str]) -> str:
    """sha256 naming one encoder's encodings of one list of texts."""
    model_file = encoder.manifest.config["variants"][encoder.variant]
    digest = hashlib.sha256()
    for part in (CACHE_FORMAT, encoder.name, encoder.version, encoder.manifest.files[model_file].sha256,
                 encoder.variant, encoder.max_doc_length, encoder.similarity, encoder.dim, len(texts)):
        digest.update(f"{part}\x1f".encode())
    for text in texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def encode_corpus(
    encoder: OnnxEncoder, texts: Sequence[str], *, cache: str | Path | None = None, progress: bool = False,
    batch_size: int | None = None,
) -> np.ndarray:
    """Document embeddings, read from / written to ``cache`` (a folder) when given."""
    path = Path(cache) / f"{corpus_key(encoder, texts)}.safetensors" if cache is not None else None
    if path is not None and path.is_file():
        try:
            vectors = load_arrays(str(path))["embeddings"]
            if vectors.shape == (len(texts), encoder.dim) and vectors.dtype == np.float32:
                return vectors
        except Exception as exc:  # a torn or foreign file: encode again
            log.warning("ignoring unreadable encoding cache %s: %s", path, exc)
    vectors = encoder.encode_documents(texts, batch_size=batch_size, progress=progress)
    if path is not None:
        with atomic_path(path) as tmp:
            save_file({"embeddings": vectors}, str(tmp))
    return vectors


class DenseRetriever:
    """Encode queries with :class:`OnnxEncoder`, search a :class:`FaissIndex` built from the same encoder."""

    name = "dense"

    def __init__(self, encoder: OnnxEncoder, index: FaissIndex) -> None:
        index.check_encoder(encoder.manifest)
        self.encoder = encoder
        self.index = index

    @property
    def doc_ids(self) -> list[str]:
        return [d for ids in self.index.shard_ids for d in ids]

    def search(self, queries: Sequence[str], k: int) -> list[Hits]:
        return self.index.search(self.encoder.encode_queries(list(queries)), k)

    @classmethod
    def build(
        cls, encoder: OnnxEncoder, doc_ids: Sequence[str], texts: Sequence[str], *, factory: str = "Flat",
        shards: int = 1, search_params: str | None = None, cache: str | Path | None = None,
        progress: bool = False, use_gpu: bool | None = None,
    ) -> DenseRetriever:
        """Encode the collection (cached when ``cache`` is a folder) and index it."""
        if len(doc_ids) != len(texts):
            raise ValueError(f"{len(doc_ids)} doc ids for {len(texts)} texts")
        vectors = encode_corpus(encoder, texts, cache=cache, progress=progress)
        index = FaissIndex.build(vectors, doc_ids, factory=factory, shards=shards, encoder=encoder.manifest,
                                 search_params=search_params, use_gpu=use_gpu)
        return cls(encoder, index)

    def save(self, directory: str | Path, name: str = "dense", metrics: dict[str, Any] | None = None) -> Manifest:
        """Save the index version (it names the encoder bundle; the encoder bundle stays where it is)."""
        return self.index.save(directory, name=name, metrics=metrics)

    @classmethod
    def load(cls, model: str | Path, index: str | Path, **encoder_options: Any) -> DenseRetriever:
        """Load an encoder bundle and an index version, refusing a pair that does not match."""
        encoder = OnnxEncoder(model, **encoder_options)
        return cls(encoder, FaissIndex.load(index, encoder=encoder.manifest))


def build_index(
    doc_ids: Sequence[str], texts: Sequence[str], *, encoder: OnnxEncoder, factory: str | None = None,
    shards: int = 1, progress: bool = False, cache: str | Path | None = None, use_gpu: bool | None = None,
    target_recall: float = ann.TARGET_RECALL, pseudo_queries: int = ann.PSEUDO_QUERIES, seed: int = 0,
    exact_max: int = ann.EXACT_MAX_DOCS, **_: object,
) -> FaissIndex:
    """Registry builder (``retrec index dense``): encode the documents with ``encoder``, index them in FAISS
    (``auto``'s parameters: see :mod:`retrec.index.ann`)."""
    if len(doc_ids) != len(texts):
        raise ValueError(f"{len(doc_ids)} doc ids for {len(texts)} texts")
    vectors = encode_corpus(encoder, texts, cache=cache, progress=progress)
    return assemble_index(doc_ids, vectors, encoder=encoder, factory=factory, shards=shards, use_gpu=use_gpu,
                          target_recall=target_recall, pseudo_queries=pseudo_queries, seed=seed, exact_max=exact_max)


def assemble_index(
    doc_ids: Sequence[str], encoded: np.ndarray, *, encoder: OnnxEncoder, factory: str | None = None,
    shards: int = 1, use_gpu: bool | None = None, target_recall: float = ann.TARGET_RECALL,
    pseudo_queries: int = ann.PSEUDO_QUERIES, seed: int = 0, exact_max: int = ann.EXACT_MAX_DOCS, **_: object,
) -> FaissIndex:
    """Registry hook (``retrec reindex``): index document vectors that ``encoder`` produced (rows by doc id)."""
    return FaissIndex.build(encoded, doc_ids, factory=factory or "auto", shards=shards, encoder=encoder.manifest,
                            use_gpu=use_gpu, target_recall=target_recall, pseudo_queries=pseudo_queries, seed=seed,
                            exact_max=exact_max)
