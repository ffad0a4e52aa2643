"""Collisionless embedding tables (Monolith-style): exact 64-bit keys, cuckoo hashing, admission, expiry.

Raw IDs (int64, or strings through a stable 64-bit BLAKE2b fingerprint) map to float32 embedding rows.
Layer 1: imports only data-layer modules (bundle, kinds), never index/runtime/pipelines/serving.

- :mod:`retrec.tables.keys` — raw IDs → exact uint64 keys, the 64-bit mixer, batch dedupe.
- :mod:`retrec.tables.cuckoo` — the bucketed cuckoo index (exact keys → rows, vectorised).
- :mod:`retrec.tables.rows` — row allocator, counters, the read path shared by both tables.
- :mod:`retrec.tables.live` — :class:`EmbeddingTable`: admission, updates, TTL sweep, snapshots, deltas.
- :mod:`retrec.tables.frozen` — :class:`FrozenTable`: read-only, loaded from a snapshot, deltas applied.
- :mod:`retrec.tables.storage` — snapshot/delta bundles (Parquet + safetensors, no pickle).

Example::

    table = EmbeddingTable(dim=16, admit_threshold=2, ttl=86_400.0)
    table.observe([10, 11, 10], now=0.0)            # 10 reaches the threshold and is admitted
    table.update([10], np.ones((1, 16), np.float32), now=1.0)
    table.embed([10, 11, "user:42"])                # 11 and "user:42" give the default vector
    table.snapshot("runs/emb-v1", name="user-emb")
    frozen = FrozenTable.load("runs/emb-v1")        # checksums verified, read-only
    table.observe(["user:42"], now=2.0); table.observe(["user:42"], now=2.0)
    table.export_delta("runs/emb-v1-d1")
    frozen = frozen.apply_delta("runs/emb-v1-d1")   # == live table
"""

from __future__ import annotations

from retrec.tables.frozen import FrozenTable
from retrec.tables.keys import KeysLike, as_keys, fingerprint
from retrec.tables.live import EmbeddingTable
from retrec.tables.rows import TableStats
from retrec.tables.storage import DELTA_KIND, KIND

__all__ = [
    "DELTA_KIND",
    "KIND",
    "EmbeddingTable",
    "FrozenTable",
    "KeysLike",
    "TableStats",
    "as_keys",
    "fingerprint",
]
