"""The live (mutable) embedding table: frequency admission, updates, TTL expiry, snapshots and deltas.

A key gets a row only after :meth:`EmbeddingTable.observe` has seen it ``admit_threshold`` times
(exact per-key counts of pending keys, kept in a second cuckoo index); until then it looks up as the
default vector. With ``ttl`` set, ``sweep(now)`` evicts rows (and pending counts) not updated or
observed within ``ttl`` seconds. ``snapshot`` / ``export_delta`` publish bundles (:mod:`retrec.tables.storage`).

Example::

    table = EmbeddingTable(dim=16, admit_threshold=2, ttl=86_400.0)
    table.observe([10, 11, 10], now=0.0)            # 10 reaches the threshold and is admitted
    table.update([10], np.ones((1, 16), np.float32), now=1.0)
    table.snapshot("runs/emb-v1", name="user-emb")
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from retrec.bundle import Manifest
from retrec.tables.cuckoo import CuckooIndex
from retrec.tables.frozen import FrozenTable
from retrec.tables.keys import KeysLike, as_keys, dedupe
from retrec.tables.rows import FreeList, KeyedRows, TableStats, fill_normal, grow
from retrec.tables.storage import DELTA_KIND, FORMAT_VERSION, KIND, new_version, write_bundle

__all__ = ["EmbeddingTable"]


class EmbeddingTable(KeyedRows):
    """Mutable collisionless embedding table with frequency admission and TTL expiry.

    Args:
        dim: embedding width.
        admit_threshold: ``observe`` calls (occurrences) needed before a key gets a row.
        ttl: seconds without ``observe``/``update`` after which ``sweep`` evicts an entry; None: never.
        initial_capacity: rows (and index slots) preallocated; both grow by doubling.
        num_hashes: candidate buckets per key (>= 2).
        seed: seeds the hash functions and the row initialiser.
        init_std: standard deviation of the normal initialisation of new rows.
        bucket_size: slots per cuckoo bucket (4 = one 32-byte key line per bucket).

    Example::

        t = EmbeddingTable(8)
        rows = t.observe(np.array([7, 8, 7]), now=0.0)   # rows[0] == rows[2] != rows[1]
        t.embed(["never-seen"])                          # default vector, counted as a miss
    """

    def __init__(
        self,
        dim: int,
        *,
        admit_threshold: int = 1,
        ttl: float | None = None,
        initial_capacity: int = 1024,
        num_hashes: int = 2,
        seed: int = 0,
        init_std: float = 0.01,
        bucket_size: int = 4,
    ) -> None:
        if dim < 1:
            raise ValueError("dim must be >= 1")
        if admit_threshold < 1:
            raise ValueError("admit_threshold must be >= 1")
        if ttl is not None and ttl <= 0:
            raise ValueError("ttl must be positive or None")
        self.dim = int(dim)
        self.admit_threshold = int(admit_threshold)
        self.ttl = None if ttl is None else float(ttl)
        self.num_hashes = int(num_hashes)
        self.bucket_size = int(bucket_size)
        self.seed = int(seed)
        self.init_std = float(init_std)
        cap = max(16, int(initial_capacity))
        self._index = CuckooIndex(cap, num_hashes=num_hashes, bucket_size=bucket_size, seed=seed)
        self._rows = FreeList()
        self._emb = np.zeros((cap, self.dim), np.float32)
        self._last = np.zeros(cap, np.float64)
        self._used = np.zeros(cap, bool)
        self._dirty = np.zeros(cap, bool)
        # pending (not yet admitted) keys: exact counts, allocated only when admit_threshold > 1
        self._pindex = CuckooIndex(16, num_hashes=num_hashes, bucket_size=bucket_size, seed=seed + 1)
        self._pslots = FreeList()
        self._pcount = np.zeros(16, np.int32)
        self._plast = np.zeros(16, np.float64)
        self._raw: dict[int, str] = {}
        self._evicted_log: list[NDArray[np.uint64]] = []
        self._base_version: str | None = None
        self._rng = np.random.default_rng(seed)
        self._stats = TableStats()
        self.default_vector: NDArray[np.float32] = np.zeros(self.dim, np.float32)

    @classmethod
    def from_frozen(cls, frozen: FrozenTable, **options: Any) -> EmbeddingTable:
        """A live table holding ``frozen``'s entries exactly (keys, rows, raw ids, last updates) whose next delta
        is based on ``frozen``'s version: how a restarted writer continues the table it published."""
        table = cls(frozen.dim, initial_capacity=max(16, 2 * len(frozen)), **options)
        rows = table._admit(frozen.keys.view(np.uint64), 0.0)
        table._emb[rows] = frozen.embeddings
        table._last[rows] = frozen.last_update
        table._raw = dict(frozen.raw)
        table.default_vector = np.array(frozen.default_vector, np.float32)
        table._dirty[:] = False
        table._stats = TableStats()
        table._base_version = frozen.version
        return table

    # -- introspection
    def __len__(self) -> int:
        return self._index.size

    @property
    def stats(self) -> TableStats:
        """A copy of the counters with the current size, pending count and index load."""
        return dataclasses.replace(
            self._stats,
            size=len(self),
            pending=self._pindex.size,
            index_rebuilds=self._index.rebuilds,
            index_load=round(self._index.load, 4),
        )

    @property
    def config(self) -> dict[str, Any]:
        return {
            "dim": self.dim,
            "admit_threshold": self.admit_threshold,
            "ttl": self.ttl,
            "num_hashes": self.num_hashes,
            "bucket_size": self.bucket_size,
            "seed": self.seed,
            "init_std": self.init_std,
            "key_fingerprint": "blake2b-64 of utf-8, little-endian, as int64",
            "format_version": FORMAT_VERSION,
        }

    def memory_bytes(self) -> dict[str, int]:
        """Bytes held, by part (capacity, not just the used part)."""
        return {
            "index": self._index.nbytes,
            "row_meta": int(self._last.nbytes + self._used.nbytes + self._dirty.nbytes),
            "embeddings": int(self._emb.nbytes),
            "pending": int(self._pindex.nbytes + self._pcount.nbytes + self._plast.nbytes),
        }

    def entries(self) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """All admitted ``(keys, rows)`` as int64 arrays (index order)."""
        keys, rows = self._index.items()
        return keys.view(np.int64), rows

    # -- reads
    def _counters(self) -> TableStats:
        return self._stats

    def _matrix(self) -> NDArray[np.float32]:
        return self._emb

    def _raw_map(self) -> dict[int, str]:
        return self._raw

    # -- writes
    def observe(self, keys: KeysLike, now: float | None = None) -> NDArray[np.int64]:
        """Count occurrences, admit keys that reach the threshold, touch admitted keys.

        Returns the row per key (-1 for keys still pending admission).
        """
        now = time.time() if now is None else float(now)
        k, strs = as_keys(keys)
        self._stats.observed += k.size
        rows = self._index.lookup(k)
        miss = np.flatnonzero(rows < 0)
        if miss.size:
            mk = k[miss]
            first, inverse = dedupe(mk)
            uk = mk[first]
            if self.admit_threshold > 1:
                counts = np.bincount(inverse, minlength=uk.size)
                admit = self._count_pending(uk, counts, now)
            else:
                admit = np.ones(uk.size, bool)
            urows = np.full(uk.size, -1, np.int64)
            if admit.any():
                urows[admit] = self._admit(uk[admit], now)
                if strs is not None:
                    src = miss[first[admit]].tolist()
                    pairs = zip(uk[admit].view(np.int64).tolist(), [strs[i] for i in src], strict=True)
                    self._raw.update((key, raw) for key, raw in pairs if raw is not None)
            rows[miss] = urows[inverse]
        hit = rows[rows >= 0]
        self._last[hit] = now
        self._dirty[hit] = True
        return rows

    def update(
        self, keys: KeysLike, values: NDArray[np.floating[Any]], now: float | None = None
    ) -> NDArray[np.int64]:
        """Write rows of admitted keys (absent keys are skipped; duplicates: the last value wins).

        Returns the row per key (-1 where skipped).
        """
        now = time.time() if now is None else float(now)
        k, _ = as_keys(keys)
        values = np.asarray(values, dtype=np.float32)
        if values.shape != (k.size, self.dim):
            raise ValueError(f"values must have shape {(k.size, self.dim)}, got {values.shape}")
        rows = self._index.lookup(k)
        sel = np.flatnonzero(rows >= 0)
        r = rows[sel]
        first, inverse = dedupe(r.view(np.uint64))
        if first.size < r.size:  # duplicates: keep the last occurrence of each row
            last = np.zeros(first.size, np.int64)
            np.maximum.at(last, inverse, np.arange(r.size))
            sel = sel[last]
            r = rows[sel]
        self._emb[r] = values[sel]
        self._last[r] = now
        self._dirty[r] = True
        return rows

    def sweep(self, now: float | None = None) -> int:
        """Evict entries (and pending counts) not touched within ``ttl``; returns evicted entries."""
        if self.ttl is None:
            return 0
        now = time.time() if now is None else float(now)
        cutoff = now - self.ttl
        evicted = 0
        keys, rows = self._index.items()
        stale = self._last[rows] < cutoff
        if stale.any():
            ek, er = keys[stale], rows[stale]
            self._index.remove(ek)
            self._release_rows(er)
            self._evicted_log.append(ek)
            if self._raw:
                for key in ek.view(np.int64).tolist():
                    self._raw.pop(key, None)
            evicted = int(ek.size)
            self._stats.evicted += evicted
        if self._pindex.size:
            pkeys, pslots = self._pindex.items()
            pstale = self._plast[pslots] < cutoff
            if pstale.any():
                self._pindex.remove(pkeys[pstale])
                self._pslots.release(pslots[pstale])
                self._stats.pending_evicted += int(np.count_nonzero(pstale))
        return evicted

    # -- internals
    def _admit(self, keys: NDArray[np.uint64], now: float) -> NDArray[np.int64]:
        rows = self._rows.alloc(keys.size)
        if not rows.size:
            return rows
        if self._rows.next > self._emb.shape[0]:
            cap = max(self._rows.next, 2 * self._emb.shape[0])
            self._emb = grow(self._emb, cap)  # rows are initialised on admission
            self._last = grow(self._last, cap, 0.0)
            self._used = grow(self._used, cap, False)
            self._dirty = grow(self._dirty, cap, False)
        lo, hi = int(rows[0]), int(rows[-1]) + 1
        if hi - lo == rows.size and np.all(rows[1:] > rows[:-1]):  # fresh rows: a contiguous range
            rows_ix: slice | NDArray[np.int64] = slice(lo, hi)
            fill_normal(self._rng, self._emb[lo:hi].reshape(-1), self.init_std)
        else:
            rows_ix = rows
            init = np.empty((keys.size, self.dim), np.float32)
            fill_normal(self._rng, init.reshape(-1), self.init_std)
            self._emb[rows] = init
        self._last[rows_ix] = now
        self._used[rows_ix] = True
        self._dirty[rows_ix] = True
        self._index.insert_new(keys, rows)
        self._stats.admitted += keys.size
        return rows

    def _release_rows(self, rows: NDArray[np.int64]) -> None:
        self._used[rows] = False
        self._dirty[rows] = False
        self._emb[rows] = 0.0
        self._rows.release(rows)

    def _count_pending(
        self, keys: NDArray[np.uint64], counts: NDArray[np.int64], now: float
    ) -> NDArray[np.bool_]:
        """Add ``counts`` to the pending counts of distinct ``keys``; returns which reached the threshold."""
        slots = self._pindex.lookup(keys)
        have = slots >= 0
        total = counts.astype(np.int64)
        total[have] += self._pcount[slots[have]]
        admit = total >= self.admit_threshold
        done = have & admit
        if done.any():
            self._pindex.remove(keys[done])
            self._pslots.release(slots[done])
        keep = have & ~admit
        s = slots[keep]
        self._pcount[s] = total[keep]
        self._plast[s] = now
        new = ~have & ~admit
        if new.any():
            ns = self._pslots.alloc(int(np.count_nonzero(new)))
            if self._pslots.next > self._pcount.size:
                cap = max(self._pslots.next, 2 * self._pcount.size)
                self._pcount = grow(self._pcount, cap, 0)
                self._plast = grow(self._plast, cap, 0.0)
            self._pcount[ns] = total[new]
            self._plast[ns] = now
            self._pindex.insert_new(keys[new], ns)
        return admit

    # -- snapshots
    def snapshot(self, out_dir: str | os.PathLike[str], name: str = "embedding-table", *,
                 replace: bool = False) -> Manifest:
        """Publish a frozen snapshot bundle (kind ``table/embedding``) and start a new delta window.

        Atomic (:func:`retrec.bundle.publish`): ``out_dir`` must be new or empty, or with ``replace=True`` hold
        the previous table bundle, which readers keep seeing until the new one is complete.
        """
        keys, rows = self._index.items()
        return self._publish(Path(out_dir), KIND, name, keys, rows, evicted=None, base=None, replace=replace)

    def export_delta(self, out_dir: str | os.PathLike[str], name: str = "embedding-table",
                     extra: dict[str, Any] | None = None) -> Manifest:
        """Write the keys touched (admitted, observed, updated) or evicted since the last snapshot/delta.

        The bundle (kind ``table/embedding-delta``) names its base version in ``config.base_version`` (and
        carries ``extra`` in its config, e.g. a writer's sequence number); apply it with
        :meth:`FrozenTable.apply_delta` on the table of that version.
        """
        if self._base_version is None:
            raise RuntimeError("export_delta needs a base: call snapshot() first")
        keys, rows = self._index.items()
        touched = self._dirty[rows]
        keys, rows = keys[touched], rows[touched]
        if self._evicted_log:
            ev = np.concatenate(self._evicted_log)
            ev = ev[dedupe(ev)[0]]
            ev = ev[self._index.lookup(ev) < 0]  # re-admitted keys travel as upserts
        else:
            ev = np.empty(0, np.uint64)
        return self._publish(Path(out_dir), DELTA_KIND, name, keys, rows, evicted=ev.view(np.int64),
                             base=self._base_version, extra=extra)

    def _publish(self, out_dir: Path, kind: str, name: str, keys: NDArray[np.uint64], rows: NDArray[np.int64],
                 evicted: NDArray[np.int64] | None, base: str | None, replace: bool = False,
                 extra: dict[str, Any] | None = None) -> Manifest:
        """Write ``rows`` as a bundle of ``kind`` and start a new delta window on its version."""
        version = new_version()
        manifest = write_bundle(
            out_dir,
            kind=kind,
            name=name,
            version=version,
            keys=keys.view(np.int64),
            embeddings=self._emb[rows],
            last_update=self._last[rows],
            raw=self._raw,
            default=self.default_vector,
            evicted=evicted,
            config={**self.config, **(extra or {}), "base_version": base},
            metrics=self.stats.as_dict(),
            replace=replace,
        )
        self._dirty[:] = False
        self._evicted_log.clear()
        self._base_version = version
        return manifest

