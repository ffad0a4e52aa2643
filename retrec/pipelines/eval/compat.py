"""``retrec compat report``: how well a new encoder searches an old encoder's index — the cells of BCT / BT²'s
tables, on a test collection, by exact search.

- ``old/old``: old queries, old document vectors (what serves today);
- ``new/old``: new queries in the old space (a compatible encoder's first ``old_dim`` dimensions, normalised; a
  ``model/compat-map`` bundle's mapped vectors; an encoder without a compatibility record: its vectors as they
  are, when as wide) against the old vectors;
- ``new/new``: the new encoder on both sides (what a full re-encode gives; for a ``model/compat-map`` bundle, the
  encoder it maps, in its own space);
- ``backfill P%``: P% of the documents re-encoded (a stable hash of the id decides which), all compared in the old
  space: the old vectors of the rest and the old-space part of the new ones — a rolling re-encode half done.

Compatibility holds when ``new/old > old/old``. Corpus encodings are cached like every other (``RETREC_CACHE``).

Example::

    cells = compat_report("artifacts/minilm", "artifacts/tasb-compatible", "../shared/data/scifact")
    cells["new/old"]["nDCG@10"] - cells["old/old"]["nDCG@10"]
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retrec import kinds
from retrec.bundle import read_manifest
from retrec.data.beir import load_retrieval_data
from retrec.index.dense_retriever import encode_corpus
from retrec.pipelines.eval.ir_metrics import evaluate_run
from retrec.process_env import cache_dir
from retrec.runtime.onnx_encoder import OnnxEncoder

__all__ = ["BACKFILL_SHARES", "compat_report", "old_space_of"]

log = logging.getLogger(__name__)
BACKFILL_SHARES = (0.0, 0.5, 1.0)
MEASURES = ("nDCG@10", "R@100")


def old_space_of(vectors: np.ndarray, compat: dict[str, Any] | None, old_dim: int) -> np.ndarray:
    """The old-space part of an encoder's (normalised) vectors: its compatibility record's ``old_dim`` first
    dimensions, normalised again; without a record, the vectors as they are (ValueError when widths differ)."""
    dim = int(compat["old_dim"]) if compat else vectors.shape[1]
    if dim != old_dim:
        raise ValueError(f"the new encoder's old space is {dim} wide, the old encoder's vectors {old_dim}: "
                         "train it with `retrec train dense --compatible-with OLD`")
    part = vectors[:, :dim]
    return part / np.maximum(np.linalg.norm(part, axis=1, keepdims=True), 1e-12)


def _re_encoded(doc_ids: Sequence[str], share: float) -> np.ndarray:
    """Which documents a rolling re-encode at ``share`` has done: a stable hash of the id below the share."""
    points = np.array([int.from_bytes(hashlib.sha256(d.encode()).digest()[:8], "big") / 2 ** 64 for d in doc_ids])
    return points < share


def _scores(queries: np.ndarray, docs: np.ndarray, query_ids: list[str], doc_ids: list[str], qrels: Any,
            k: int = 100) -> dict[str, float]:
    sims = queries @ docs.T
    top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    run = {q: {doc_ids[j]: float(sims[i, j]) for j in top[i]} for i, q in enumerate(query_ids)}
    mean, _ = evaluate_run(qrels, run, list(MEASURES))
    return {m: round(float(v), 4) for m, v in mean.items()}


def compat_report(old: str | Path, new: str | Path, data: str | Path, split: str = "test",
                  shares: Sequence[float] = BACKFILL_SHARES, progress: bool = False) -> dict[str, dict[str, float]]:
    """The cells (each ``{"nDCG@10", "R@100"}``) of ``new`` against ``old`` on ``data``'s ``split``."""
    collection = load_retrieval_data(data, split)
    doc_ids, texts = collection.doc_texts()
    qrels = collection.qrels_dict()
    query_texts = collection.query_texts()
    query_ids = [q for q in query_texts if q in qrels]
    old_enc = OnnxEncoder(old)
    new_kind = read_manifest(new).kind
    new_enc = kinds.call(kinds.get(new_kind).load, new)
    mapped = new_kind == kinds.COMPAT_MAP  # its vectors are in the old space; new/new is the encoder it maps
    full = new_enc.base if mapped else new_enc
    compat = new_enc.manifest.config.get("compat")
    cache = cache_dir() / "embeddings"
    old_docs = encode_corpus(old_enc, texts, cache=cache, progress=progress)
    new_docs = encode_corpus(full, texts, cache=cache, progress=progress)
    old_q = old_enc.encode_queries([query_texts[q] for q in query_ids])
    new_q = full.encode_queries([query_texts[q] for q in query_ids])
    new_q_old = new_enc.map(new_q) if mapped else old_space_of(new_q, compat, old_docs.shape[1])
    cells = {"old/old": _scores(old_q, old_docs, query_ids, doc_ids, qrels),
             "new/old": _scores(new_q_old, old_docs, query_ids, doc_ids, qrels),
             "new/new": _scores(new_q, new_docs, query_ids, doc_ids, qrels)}
    new_docs_old = new_enc.map(new_docs) if mapped else old_space_of(new_docs, compat, old_docs.shape[1])
    for share in shares:
        done = _re_encoded(doc_ids, share)[:, None]
        cells[f"backfill {share:.0%}"] = _scores(new_q_old, np.where(done, new_docs_old, old_docs), query_ids,
                                                 doc_ids, qrels)
    log.info("compat %s vs %s on %s/%s: %s", new_enc.manifest.name, old_enc.manifest.name, Path(data).name, split,
             {c: v["nDCG@10"] for c, v in cells.items()})
    return cells
