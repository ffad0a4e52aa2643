"""The frozen (read-only) embedding table loaded from a snapshot bundle, with deltas applied as new tables.

Example::

    frozen = FrozenTable.load("runs/emb-v1")          # BundleError if any file was altered
    vecs = frozen.embed(np.array([10, 11]))
    frozen = frozen.apply_delta("runs/emb-v1-d1")     # a new FrozenTable; the base is unchanged
"""

from __future__ import annotations

import copy
import os
from typing import Any

import numpy as np
from numpy.typing import NDArray

from retrec.bundle import BundleError, load_bundle
from retrec.contracts import strict_options
from retrec.tables.cuckoo import CuckooIndex
from retrec.tables.keys import dedupe
from retrec.tables.rows import KeyedRows, TableStats
from retrec.tables.storage import DELTA_KIND, KIND, read_bundle

__all__ = ["FrozenTable"]


class FrozenTable(KeyedRows):
    """Read-only table loaded from a snapshot bundle, with the same vectorised ``lookup``/``embed``.

    Rows are compact (``0..len-1``); the cuckoo index is rebuilt from the keys at load time.

    Example::

        frozen = FrozenTable.load("runs/emb-v1")          # BundleError if any file was altered
        vecs = frozen.embed(np.array([10, 11]))
        frozen = frozen.apply_delta("runs/emb-v1-d1")     # a new FrozenTable; self is unchanged
    """

    def __init__(
        self,
        keys: NDArray[np.int64],
        embeddings: NDArray[np.float32],
        last_update: NDArray[np.float64],
        default: NDArray[np.float32],
        *,
        raw: dict[int, str] | None = None,
        version: str = "",
        name: str = "",
        config: dict[str, Any] | None = None,
    ) -> None:
        n = keys.shape[0]
        if embeddings.ndim != 2 or embeddings.shape[0] != n or last_update.shape != (n,):
            raise ValueError("keys, embeddings and last_update disagree in length")
        self.keys = _readonly(np.ascontiguousarray(keys, dtype=np.int64))
        self.embeddings = _readonly(np.ascontiguousarray(embeddings, dtype=np.float32))
        self.last_update = _readonly(np.ascontiguousarray(last_update, dtype=np.float64))
        self.default_vector = _readonly(np.asarray(default, dtype=np.float32).reshape(-1))
        self.dim = int(self.embeddings.shape[1])
        if self.default_vector.shape != (self.dim,):
            raise ValueError("default vector width differs from the embedding width")
        self.raw = dict(raw or {})
        self.version = version
        self.name = name
        self.config = dict(config or {})
        self.stats = TableStats()
        self._index = CuckooIndex(
            n,
            num_hashes=int(self.config.get("num_hashes", 2)),
            bucket_size=int(self.config.get("bucket_size", 4)),
            seed=int(self.config.get("seed", 0)),
        )
        if dedupe(self.keys.view(np.uint64))[0].size != n:
            raise ValueError("duplicate keys")
        self._index.insert_new(self.keys.view(np.uint64), np.arange(n, dtype=np.int64))
        self.stats.size = n

    def __len__(self) -> int:
        return self.keys.shape[0]

    @classmethod
    @strict_options(KIND)
    def load(cls, directory: str | os.PathLike[str]) -> FrozenTable:
        """Load a ``table/embedding`` bundle, verifying every checksum (raises BundleError)."""
        manifest = load_bundle(directory, kind=KIND)
        keys, emb, last, raw, default, _ = read_bundle(manifest)
        try:
            return cls(
                keys,
                emb,
                last,
                default,
                raw=raw,
                version=manifest.version,
                name=manifest.name,
                config=manifest.config,
            )
        except ValueError as exc:
            raise BundleError(f"{directory}: inconsistent snapshot ({exc})") from exc

    def _counters(self) -> TableStats:
        return self.stats

    def _matrix(self) -> NDArray[np.float32]:
        return self.embeddings

    def _raw_map(self) -> dict[int, str]:
        return self.raw

    def apply_delta(self, directory: str | os.PathLike[str]) -> FrozenTable:
        """Return a new table: this one with a ``table/embedding-delta`` bundle applied.

        Evicted keys are removed, new keys added and changed rows replaced. Refuses (BundleError) a
        delta whose base version is not this table's version, or of another width.
        """
        manifest = load_bundle(directory, kind=DELTA_KIND)
        base = manifest.config.get("base_version")
        if base != self.version:
            raise BundleError(f"{directory}: delta is based on {base!r}, this table is {self.version!r}")
        keys, emb, last, raw, _, evicted = read_bundle(manifest)
        if emb.shape[1] != self.dim:
            raise BundleError(f"{directory}: delta width {emb.shape[1]} != table width {self.dim}")
        assert evicted is not None
        if not evicted.size:  # the usual online delta: rows changed in place, new keys appended after the rest
            return self._updated(keys, emb, last, raw, manifest.version)
        drop = np.zeros(len(self), bool)
        for ks in (evicted, keys):
            r = self._index.lookup(ks.view(np.uint64))
            drop[r[r >= 0]] = True
        keep = ~drop
        merged_raw = dict(self.raw)
        if merged_raw and evicted.size:
            for key in evicted.tolist():
                merged_raw.pop(key, None)
        merged_raw.update(raw)
        return FrozenTable(
            np.concatenate([self.keys[keep], keys]),
            np.concatenate([self.embeddings[keep], emb]),
            np.concatenate([self.last_update[keep], last]),
            self.default_vector,
            raw=merged_raw,
            version=manifest.version,
            name=self.name,
            config=self.config,
        )


    def _updated(self, keys: NDArray[np.int64], emb: NDArray[np.float32], last: NDArray[np.float64],
                 raw: dict[int, str], version: str) -> FrozenTable:
        """A new table: these rows replaced where their keys are held, the other keys appended in order (rows of
        the held keys keep their positions; the index is copied and extended, not rebuilt)."""
        rows = self._index.lookup(keys.view(np.uint64))
        held, new = rows >= 0, rows < 0
        if dedupe(keys.view(np.uint64))[0].size != keys.size:
            raise BundleError("a delta with duplicate keys")
        out = copy.copy(self)
        out.embeddings = np.concatenate([self.embeddings, emb[new]])
        out.embeddings[rows[held]] = emb[held]
        out.last_update = np.concatenate([self.last_update, last[new]])
        out.last_update[rows[held]] = last[held]
        out.keys = _readonly(np.concatenate([self.keys, keys[new]]))
        for arr in (out.embeddings, out.last_update):
            _readonly(arr)
        out.raw = {**self.raw, **raw}
        out.version, out.stats = version, TableStats()
        out._index = self._index.copy()
        out._index.insert_new(keys[new].view(np.uint64), np.arange(len(self), len(out.keys), dtype=np.int64))
        out.stats.size = len(out.keys)
        return out


def _readonly(arr: NDArray[Any]) -> NDArray[Any]:
    arr.setflags(write=False)
    return arr

