"""Count baselines as bundles (kinds ``model/markov``, ``model/markov-decay``, ``model/cooc``): servable, fusable,
torch-free.

``retrec eval-rec --model markov|markov-decay|cooc`` fits the count model on the fly; these are the same models
(:mod:`retrec.runtime.count_scoring`: first-order transitions, transitions from the recent history weighted by
recency, or recency-weighted item co-occurrence; all backed off to popularity) fitted once on raw-id histories
and stored as

    <bundle>/items.parquet            item_id, in catalogue order
    <bundle>/counts.safetensors       the item × item table as CSR (indptr, indices, data) + popularity counts
    manifest config                   the model's parameters (backoff; markov-decay and cooc: decay, window)

Loading checks the arrays against each other and the parameters' types and ranges (a forged bundle is a
BundleError, never an index error later).

Example::

    rec = CountBundle.fit("markov", [["a", "b", "c"], ["b", "c"]])
    rec.recommend([["b"]], k=2)                # [[("c", ...), ("a", ...)]]
    rec.save(pub.path)                         # inside retrec.bundle.publish(...)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp
from safetensors.numpy import save_file

from retrec.bundle import BundleError, Manifest, load_arrays, load_bundle
from retrec.contracts import strict_options
from retrec.kinds import COOC_MODEL, MARKOV_DECAY_MODEL, MARKOV_MODEL
from retrec.runtime.count_scoring import CooccurrenceRecommender, MarkovRecommender
from retrec.runtime.recommender import ScoringRecommender, SkipReport

ITEMS_FILE = "items.parquet"
COUNTS_FILE = "counts.safetensors"
# model name -> (kind, class, its parameters with their (low, high) ranges)
MODELS: dict[str, tuple[str, Any, dict[str, tuple[float, float]]]] = {
    "markov": (MARKOV_MODEL, MarkovRecommender, {"backoff": (0.0, 1e6)}),
    "markov-decay": (MARKOV_DECAY_MODEL, MarkovRecommender, {"decay": (0.0, 1.0), "window": (1, 10_000),
                                                             "backoff": (0.0, 1e6)}),
    "cooc": (COOC_MODEL, CooccurrenceRecommender, {"decay": (0.0, 1.0), "window": (1, 10_000),
                                                   "backoff": (0.0, 1e6)}),
}


class CountBundle(ScoringRecommender):
    """Catalogue scores of a fitted count model over raw item ids."""

    def __init__(self, model_name: str, item_ids: Sequence[str], model: Any, manifest: Manifest | None = None) -> None:
        self.model_name = model_name
        self.item_ids = [str(i) for i in item_ids]
        self.model = model
        self.manifest = manifest

    @property
    def name(self) -> str:
        return self.model_name if self.manifest is None else f"{self.manifest.name}@{self.manifest.version}"

    @property
    def kind(self) -> str:
        return MODELS[self.model_name][0]

    @classmethod
    def fit(cls, model_name: str, histories: Sequence[Sequence[str]], **params: float) -> CountBundle:
        """Fit on raw-id histories (``params``: the model's, e.g. ``decay``); the catalogue is every item seen,
        sorted."""
        if model_name not in MODELS:
            raise ValueError(f"unknown count model {model_name!r}; choose one of {', '.join(MODELS)}")
        items = sorted({str(i) for h in histories for i in h})
        index = {item: j for j, item in enumerate(items)}
        encoded = [[index[str(i)] for i in h] for h in histories]
        return cls(model_name, items, MODELS[model_name][1](len(items), **params).fit(encoded))

    def score(self, histories: Sequence[Sequence[str]], report: SkipReport | None = None) -> np.ndarray:
        rows = []
        for history in histories:
            pos = self.positions(list(history))
            if report is not None:
                for item, p in zip(history, pos.tolist()):
                    if p < 0:
                        report.add(str(item))
            rows.append(pos[pos >= 0].tolist())
        return np.asarray(self.model.score(rows), dtype=np.float32)

    def save(self, directory: Path) -> dict[str, Any]:
        """Write the two data files; returns the manifest's ``kind``, ``name``, ``config`` and ``dims``."""
        t = self.model.matrix.tocsr()
        pq.write_table(pa.table({"item_id": pa.array(self.item_ids, pa.string())}), directory / ITEMS_FILE)
        save_file({"indptr": t.indptr.astype(np.int64), "indices": t.indices.astype(np.int64),
                   "data": t.data.astype(np.float32), "popularity": self.model.popularity.counts.astype(np.float32)},
                  str(directory / COUNTS_FILE))
        params = {p: getattr(self.model, p) for p in MODELS[self.model_name][2]}
        return {"kind": self.kind, "name": self.model_name, "config": {"model": self.model_name, **params},
                "dims": {"items": len(self.item_ids), "entries": int(t.nnz)}}

    @classmethod
    @strict_options(" / ".join(kind for kind, _, _ in MODELS.values()))
    def load(cls, directory: str | Path) -> CountBundle:
        manifest = load_bundle(directory)
        found = [name for name, (kind, _, _) in MODELS.items() if kind == manifest.kind]
        if not found:
            raise BundleError(f"{directory}: a {manifest.kind} bundle, not a count model")
        model_name = found[0]
        items = pq.read_table(manifest.file(ITEMS_FILE), columns=["item_id"]).column(0).to_pylist()
        arrays = load_arrays(str(manifest.file(COUNTS_FILE)))
        n = len(items)
        try:
            indptr, indices, data, pop = (arrays[k] for k in ("indptr", "indices", "data", "popularity"))
        except KeyError as exc:
            raise BundleError(f"{directory}: {COUNTS_FILE} lacks the array {exc}") from exc
        ok = (indptr.dtype.kind == indices.dtype.kind == "i" and data.dtype.kind == pop.dtype.kind == "f"
              and all(isinstance(i, str) for i in items) and indptr.shape == (n + 1,) and indptr[0] == 0
              and indptr[-1] == len(indices) == len(data)
              and bool(np.all(np.diff(indptr) >= 0)) and pop.shape == (n,)
              and (not len(indices) or 0 <= int(indices.min()) <= int(indices.max()) < n)
              and bool(np.all(np.isfinite(data))) and bool(np.all(np.isfinite(pop))))
        if not ok or len(set(items)) != n:
            raise BundleError(f"{directory}: {COUNTS_FILE} does not match {ITEMS_FILE} ({n} items): a corrupt bundle")
        _, model_type, ranges = MODELS[model_name]
        params = {}
        for param, (low, high) in ranges.items():
            value = manifest.config.get(param)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise BundleError(f"{directory}: config {param} must be a number in [{low}, {high}]")
            params[param] = int(value) if isinstance(low, int) and isinstance(high, int) else float(value)
        model = model_type(n, **params)
        model.matrix = sp.csr_matrix((data, indices, indptr), shape=(n, n))
        model.popularity.counts = pop
        return cls(model_name, items, model, manifest)
