"""``retrec compat fit``: a linear map from a new dense encoder's space into an old one's, fitted on the two
encoders' vectors of the same documents, written as a small ``model/compat-map`` bundle
(:class:`retrec.runtime.compat_map.CompatMapEncoder`).

Methods (both closed form, seconds on a CPU):

- ``procrustes``: the orthogonal map ``W = U Vᵀ`` from the SVD of ``X_newᵀ X_old`` (semi-orthogonal when the widths
  differ) — rotates, never stretches: it cannot overfit the corpus it is fitted on;
- ``affine``: least squares with a bias and a ridge ``ridge × mean eigenvalue``, reduced to ``rank`` (the
  fitted values projected on their top ``rank`` directions: reduced-rank regression) — the low-rank affine map.

A tenth of the documents (a stable hash of the id) is held out: the manifest records the mean cosine between
mapped new vectors and the old ones there, with the identity map's (when the widths agree) beside it.

Example::

    fit_compat_map("artifacts/minilm", "artifacts/tasb", "../shared/data/scifact", "artifacts/tasb-to-minilm")
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
from safetensors.numpy import save_file

from retrec import kinds
from retrec.bundle import BundleError, load_bundle, publish
from retrec.data.beir import corpus_texts
from retrec.data.corpus import read_corpus
from retrec.index.dense_retriever import encode_corpus
from retrec.index.encoder_check import encoder_ref
from retrec.process_env import cache_dir
from retrec.runtime.compat_map import KIND, MAP_FILE, files_digest
from retrec.runtime.onnx_encoder import OnnxEncoder
from retrec.runtime.vectors import l2_normalize

__all__ = ["METHODS", "fit_compat_map", "fit_map"]

log = logging.getLogger(__name__)
Method = Literal["procrustes", "affine"]
METHODS: tuple[str, ...] = ("procrustes", "affine")
HELD_OUT = 0.1


def fit_map(new: np.ndarray, old: np.ndarray, method: Method = "procrustes", rank: int | None = None,
            ridge: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """``(weight [new_dim, old_dim], bias [old_dim])`` so that ``new @ weight + bias ≈ old`` (rows paired).

    >>> rng = np.random.default_rng(0); x = rng.normal(size=(200, 4)); q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    >>> w, b = fit_map(x, x @ q); bool(np.allclose(w, q, atol=1e-6)) and not b.any()
    True
    """
    if new.shape[0] != old.shape[0] or new.shape[0] < 2:
        raise ValueError(f"paired vectors needed: {new.shape[0]} new rows, {old.shape[0]} old rows")
    new, old = np.asarray(new, np.float64), np.asarray(old, np.float64)
    if method == "procrustes":
        u, _, vt = np.linalg.svd(new.T @ old, full_matrices=False)
        return (u @ vt).astype(np.float32), np.zeros(old.shape[1], np.float32)
    if method != "affine":
        raise ValueError(f"unknown method {method!r}; one of {', '.join(METHODS)}")
    x = np.hstack([new, np.ones((len(new), 1))])
    gram = x.T @ x
    gram[np.diag_indices(new.shape[1])] += ridge * np.trace(gram[:-1, :-1]) / new.shape[1]
    full = np.linalg.solve(gram, x.T @ old)  # [new_dim + 1, old_dim]
    if rank is not None and rank < min(full.shape):
        _, _, vt = np.linalg.svd(x @ full, full_matrices=False)
        full = full @ vt[:rank].T @ vt[:rank]  # reduced-rank regression: the fitted values' top directions
    return full[:-1].astype(np.float32), full[-1].astype(np.float32)


def _held_out(doc_ids: list[str]) -> np.ndarray:
    return np.array([int.from_bytes(hashlib.sha256(d.encode()).digest()[:8], "big") / 2 ** 64 < HELD_OUT
                     for d in doc_ids])


def _mean_cos(a: np.ndarray, b: np.ndarray) -> float:
    return float((l2_normalize(a) * l2_normalize(b)).sum(axis=1).mean())


def fit_compat_map(old: str | Path, new: str | Path, data: str | Path, out: str | Path, *,
                   method: Method = "procrustes", rank: int | None = None, ridge: float = 1e-3,
                   name: str | None = None, progress: bool = False) -> Path:
    """Fit ``new``'s map into ``old``'s space on ``data``'s corpus and publish the map bundle at ``out``."""
    old_m, new_m = load_bundle(old), load_bundle(new)
    for label, m in (("old", old_m), ("new", new_m)):
        if m.kind != kinds.DENSE_MODEL:
            raise BundleError(f"{m.path}: the {label} encoder is a {m.kind} bundle; a map joins two "
                              f"{kinds.DENSE_MODEL} bundles")
    if old_m.config.get("similarity") != new_m.config.get("similarity"):
        raise BundleError(f"similarities differ: old {old_m.config.get('similarity')!r}, new "
                          f"{new_m.config.get('similarity')!r}")
    doc_ids, texts = corpus_texts(read_corpus(Path(data)))
    if len(doc_ids) < 10:
        raise ValueError(f"{data}: {len(doc_ids)} documents; a map needs at least 10 (thousands fit well)")
    cache = cache_dir() / "embeddings"
    old_v = encode_corpus(OnnxEncoder(old_m), texts, cache=cache, progress=progress)
    new_v = encode_corpus(OnnxEncoder(new_m), texts, cache=cache, progress=progress)
    held = _held_out(doc_ids)
    weight, bias = fit_map(new_v[~held], old_v[~held], method, rank, ridge)
    mapped = new_v[held] @ weight + bias
    metrics: dict[str, Any] = {"documents": int((~held).sum()), "held_out_documents": int(held.sum()),
                               "held_out_mean_cos": round(_mean_cos(mapped, old_v[held]), 4)}
    if new_v.shape[1] == old_v.shape[1]:
        metrics["held_out_mean_cos_identity"] = round(_mean_cos(new_v[held], old_v[held]), 4)
    log.info("compat map %s -> %s (%s): %s", new_m.name, old_m.name, method, metrics)
    old_ref = encoder_ref(old_m)
    with publish(Path(out), replace=False) as pub:
        save_file({"weight": weight, "bias": bias}, str(pub.path / MAP_FILE))
        pub.set_manifest(
            kind=KIND, name=name or f"{new_m.name}-to-{old_m.name}", metrics=metrics,
            config={"similarity": old_m.config.get("similarity"), "method": method, "rank": rank, "ridge": ridge,
                    "data": str(Path(data).resolve()),
                    "new": {"name": new_m.name, "version": new_m.version, "files_sha256": files_digest(new_m),
                            "path": str(Path(new_m.path).resolve()), "dim": int(new_m.dims["dim"])},
                    "compat": {"mode": "map", "old": {k: old_ref[k] for k in ("name", "version", "dim", "path")},
                               "old_dim": int(old_v.shape[1])}},
            dims={"dim": int(old_v.shape[1])})
    return Path(out)
