"""Sequence recommender at inference: a frozen embedding-table snapshot + the ONNX user encoder.

Raw item ids go through the collisionless table to rows; unknown or never-admitted ids are skipped
and counted, never an error. A user vector ``[u, 1]`` scores every row ``[e, b]`` by inner product.

Example::

    rec = SequenceRecommender.load("artifacts/bert4rec-beauty")
    rec.recommend([["12", "7", "981"]], k=10)     # [[(item_id, score), ...]]
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from retrec.bundle import BundleError, Manifest, load_bundle
from retrec.contracts import strict_options
from retrec.kinds import BERT4REC_MODEL, SASREC_MODEL
from retrec.runtime.onnx_session import create_session
from retrec.runtime.recommender import ScoringRecommender, SkipReport, known_rows
from retrec.tables import FrozenTable

KIND = BERT4REC_MODEL
KINDS = (BERT4REC_MODEL, SASREC_MODEL)  # the same layout: user encoder + item table


class SequenceRecommender(ScoringRecommender):
    def __init__(self, manifest: Manifest, table: FrozenTable, threads: int | None = None) -> None:
        self.manifest = manifest
        self.table = table
        if manifest.kind not in KINDS:
            raise BundleError(f"{manifest.path}: a {manifest.kind[:80]!r} bundle, not one of {', '.join(KINDS)}")
        steps = manifest.dims.get("history_len", manifest.dims.get("max_len", 0) - 1
                                  if type(manifest.dims.get("max_len")) is int else None)
        if type(steps) is not int or not 1 <= steps <= 4096:
            raise BundleError(f"{manifest.path}: history_len must be an integer in 1..4096")
        self.steps = steps
        if table.dim != int(manifest.dims["row_dim"]):
            raise BundleError(f"{manifest.path}: table width {table.dim} != model row width {manifest.dims['row_dim']}")
        self.session = create_session(manifest.file("user_encoder.onnx"), threads=threads)
        self._use(table)

    def _use(self, table: FrozenTable) -> None:
        held = getattr(self, "item_ids", None) and self.table
        n = 0 if not held else len(held)
        if held and len(table) >= n and np.array_equal(table.keys[:n], held.keys):
            # the same rows first (an online delta): only the appended keys' ids are new
            self.item_ids = self.item_ids + [table.raw.get(k, str(k)) for k in table.keys[n:].tolist()]
        else:
            self.item_ids = [table.raw.get(k, str(k)) for k in table.keys.tolist()]
        self.table = table
        self.matrix = np.ascontiguousarray(table.embeddings)
        self._positions = None

    def with_table(self, table: FrozenTable) -> SequenceRecommender:
        """This model over another item table of the same width (e.g. with an online delta applied); the ONNX
        session is shared, this object is left as it was (requests in flight keep a consistent table)."""
        if table.dim != self.table.dim:
            raise BundleError(f"table width {table.dim} != the model's row width {self.table.dim}")
        other = copy.copy(self)
        other._use(table)
        return other

    @classmethod
    @strict_options(" / ".join(KINDS))
    def load(cls, directory: str | Path, threads: int | None = None) -> SequenceRecommender:
        manifest = load_bundle(directory)
        return cls(manifest, FrozenTable.load(Path(directory) / "items"), threads=threads)

    @property
    def name(self) -> str:
        return f"{self.manifest.name}@{self.manifest.version}"

    def rows(self, histories: Sequence[Sequence[str]], report: SkipReport | None = None) -> list[np.ndarray]:
        """Raw ids → table rows, unknown ids dropped (and counted in ``report``)."""
        return [known_rows(h, self.table.lookup(list(h)) if len(h) else np.empty(0, np.int64), report)
                for h in histories]

    def user_vectors(self, row_histories: Sequence[np.ndarray]) -> np.ndarray:
        steps = self.steps
        b = len(row_histories)
        history = np.zeros((b, steps, self.matrix.shape[1]), np.float32)
        padding = np.ones((b, steps), bool)
        for i, r in enumerate(row_histories):
            r = r[-steps:]
            if len(r):
                history[i, steps - len(r):] = self.matrix[r]
                padding[i, steps - len(r):] = False
        return self.session.run(["user"], {"history": history, "padding": padding})[0]

    def score_rows(self, row_histories: Sequence[np.ndarray]) -> np.ndarray:
        """Scores ``[B, rows]`` over every item row of the table."""
        if not len(row_histories):
            return np.zeros((0, self.matrix.shape[0]), np.float32)
        return self.user_vectors(row_histories) @ self.matrix.T

    def score(self, histories: Sequence[Sequence[str]], report: SkipReport | None = None) -> np.ndarray:
        """Scores ``[B, items]`` over the catalogue (``item_ids``, the table's row order)."""
        return self.score_rows(self.rows(histories, report))
