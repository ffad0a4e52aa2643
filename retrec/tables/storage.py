"""Snapshot and delta bundles of an embedding table (Parquet + safetensors, no pickle).

A snapshot (kind ``table/embedding``) holds ``keys.parquet`` (key, row, raw_id, last_update),
``rows.safetensors`` (``embeddings``, ``default``) and ``manifest.json``; a delta
(``table/embedding-delta``) adds ``evicted.parquet`` and names its base version in
``config.base_version``. Bundles are published with :func:`retrec.bundle.publish` (temporary sibling, fsync,
manifest last, rename): a reader, or a writer killed at any point, leaves the previous version or the new one.

Example::

    manifest = write_bundle(Path("runs/emb-v1"), kind=KIND, name="user-emb", version=new_version(),
                            keys=keys, embeddings=emb, last_update=last, raw={}, default=default,
                            evicted=None, config={}, metrics={})
    keys, emb, last, raw, default, evicted = read_bundle(load_bundle("runs/emb-v1", kind=KIND))
"""

from __future__ import annotations

import datetime as _dt
import secrets
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from numpy.typing import NDArray
from safetensors.numpy import save_file

from retrec.bundle import BundleError, Manifest, load_arrays, publish
from retrec.kinds import EMBEDDING_TABLE, EMBEDDING_TABLE_DELTA

__all__ = ["DELTA_KIND", "FORMAT_VERSION", "KIND", "new_version", "read_bundle", "write_bundle"]

KIND = EMBEDDING_TABLE
DELTA_KIND = EMBEDDING_TABLE_DELTA
KEYS_FILE = "keys.parquet"
ROWS_FILE = "rows.safetensors"
EVICTED_FILE = "evicted.parquet"
FORMAT_VERSION = 1


def new_version() -> str:
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{stamp}-{secrets.token_hex(3)}"


def write_bundle(
    out_dir: Path,
    *,
    kind: str,
    name: str,
    version: str,
    keys: NDArray[np.int64],
    embeddings: NDArray[np.float32],
    last_update: NDArray[np.float64],
    raw: dict[int, str],
    default: NDArray[np.float32],
    evicted: NDArray[np.int64] | None,
    config: dict[str, Any],
    metrics: dict[str, Any],
    replace: bool = False,
) -> Manifest:
    """Publish the bundle at ``out_dir`` atomically; ``replace=False`` refuses a non-empty ``out_dir``
    (FileExistsError), ``replace=True`` swaps out the table bundle there in one step."""
    with publish(out_dir, replace=replace) as pub:
        tmp = pub.path
        n = keys.shape[0]
        if raw:
            raw_col = pa.array([raw.get(k) for k in keys.tolist()], type=pa.string())
        else:
            raw_col = pa.nulls(n, type=pa.string())
        table = pa.table(
            {
                "key": pa.array(keys, type=pa.int64()),
                "row": pa.array(np.arange(n, dtype=np.int64), type=pa.int64()),
                "raw_id": raw_col,
                "last_update": pa.array(last_update, type=pa.float64()),
            }
        )
        pq.write_table(table, tmp / KEYS_FILE)
        save_file(
            {
                "embeddings": np.ascontiguousarray(embeddings, np.float32),
                "default": np.ascontiguousarray(default, np.float32),
            },
            str(tmp / ROWS_FILE),
            metadata={"format_version": str(FORMAT_VERSION)},
        )
        (tmp / ROWS_FILE).chmod((tmp / KEYS_FILE).stat().st_mode & 0o777)  # safetensors writes 0600
        dims: dict[str, Any] = {"dim": int(embeddings.shape[1]), "rows": int(n)}
        if evicted is not None:
            pq.write_table(pa.table({"key": pa.array(evicted, type=pa.int64())}), tmp / EVICTED_FILE)
            dims["evicted"] = int(evicted.size)
        pub.set_manifest(kind=kind, name=name, version=version, config=config, dims=dims, metrics=metrics)
    assert pub.manifest is not None
    return pub.manifest


def read_bundle(
    manifest: Manifest,
) -> tuple[
    NDArray[np.int64],
    NDArray[np.float32],
    NDArray[np.float64],
    dict[int, str],
    NDArray[np.float32],
    NDArray[np.int64] | None,
]:
    """(keys, embeddings in key order, last_update, raw ids, default, evicted keys or None)."""
    where = manifest.path
    try:
        table = pq.read_table(manifest.file(KEYS_FILE))
        tensors = load_arrays(str(manifest.file(ROWS_FILE)))
        keys = table.column("key").to_numpy().astype(np.int64, copy=False)
        rows = table.column("row").to_numpy().astype(np.int64, copy=False)
        last = table.column("last_update").to_numpy().astype(np.float64, copy=False)
        raw_col = table.column("raw_id")
        valid = pc.is_valid(raw_col)
        raw: dict[int, str] = {}
        if raw_col.null_count < len(raw_col):
            raw = dict(
                zip(
                    pc.filter(table.column("key"), valid).to_pylist(),
                    pc.filter(raw_col, valid).to_pylist(),
                    strict=True,
                )
            )
        emb = tensors["embeddings"]
        default = tensors["default"]
        evicted = None
        if EVICTED_FILE in manifest.files:
            evicted = pq.read_table(manifest.file(EVICTED_FILE)).column("key").to_numpy().astype(np.int64)
        elif manifest.kind == DELTA_KIND:
            raise BundleError(f"{where}: delta without {EVICTED_FILE}")
    except (KeyError, OSError, pa.ArrowException, ValueError) as exc:
        raise BundleError(f"{where}: unreadable table bundle ({exc})") from exc
    if emb.ndim != 2 or emb.dtype != np.float32:
        raise BundleError(f"{where}: embeddings must be a 2-D float32 tensor")
    if rows.size and (rows.min() < 0 or rows.max() >= emb.shape[0]):
        raise BundleError(f"{where}: row ids out of range")
    if rows.size != emb.shape[0] or not np.array_equal(rows, np.arange(rows.size)):
        emb = emb[rows]
    if manifest.dims.get("dim") not in (None, emb.shape[1]):
        raise BundleError(f"{where}: manifest dim {manifest.dims.get('dim')} != tensor width {emb.shape[1]}")
    return keys, emb, last, raw, default, evicted
