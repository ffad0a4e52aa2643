"""Index shard deployments: each replica holds one shard of one or two index versions.

A request names the index version it searches (``{"version", "path"}``, chosen by the ingress when the
request starts), so one request never mixes versions. A replica keeps the two most recent versions
loaded; a version it lacks (e.g. a replica restarted after a swap) is loaded on first use. Results are
``[(doc_id, score)]`` lists — ids and scores, never arrays. ``search_many`` answers a batch of queries
(the ingress's batched scatter) in one call: one hit list per query, in order.

Example::

    shard = DenseShard.bind(shard=0, initial={"version": "v1", "path": "/idx/v1"}, use_gpu=None)
    await handle.search.remote(query_vector, 10, {"version": "v1", "path": "/idx/v1"})
    await handle.search_many.remote(query_vectors, 10, {"version": "v1", "path": "/idx/v1"})  # [n, dim]
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from ray import serve

from retrec.bundle import BundleError, load_bundle, read_manifest
from retrec.index.retriever import Hits
from retrec.process_env import configure_process
from retrec.serving.resources import replica_threads

log = logging.getLogger("retrec.serving")
KEEP_VERSIONS = 2
IndexRef = dict[str, str]


def index_ref(path: str | Path) -> IndexRef:
    """``{"version", "path", "kind"}`` of a published index version (manifest read, not verified)."""
    manifest = read_manifest(path)
    return {"version": manifest.version, "path": str(Path(path).resolve()), "kind": manifest.kind}


class _VersionedShard:
    """Loads index versions on demand, keeps the newest ``KEEP_VERSIONS``; subclasses load one shard."""

    kind = ""

    def __init__(self, initial: IndexRef) -> None:
        configure_process(replica_threads())
        self._versions: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._get(initial)

    def _load(self, path: str) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _get(self, ref: IndexRef) -> Any:
        index = self._versions.get(ref["version"])  # fast path: no lock, loads never block searches
        if index is not None:
            return index
        with self._lock:
            index = self._versions.get(ref["version"])
            if index is not None:
                return index
            manifest = load_bundle(ref["path"], kind=self.kind, verify=False)
            if manifest.version != ref["version"]:
                raise BundleError(f"{ref['path']}: holds version {manifest.version!r}, not {ref['version']!r}")
            index = self._load(ref["path"])
            versions = OrderedDict(self._versions)
            versions[ref["version"]] = index
            while len(versions) > KEEP_VERSIONS:  # in-flight searches keep their object alive
                versions.popitem(last=False)
            self._versions = versions  # one atomic swap of the map
            return index

    async def _index(self, ref: IndexRef) -> Any:
        """The loaded index of ``ref``: no thread hop when loaded, else loaded on a worker thread."""
        index = self._versions.get(ref["version"])
        return index if index is not None else await asyncio.to_thread(self._get, ref)

    async def load(self, ref: IndexRef) -> str:
        """Load ``ref`` beside the current version(s); returns the version once ready."""
        await asyncio.to_thread(self._get, ref)
        return ref["version"]

    def versions(self) -> list[str]:
        return list(self._versions)

    def ready(self) -> bool:
        return bool(self._versions)


@serve.deployment
class BM25Shard(_VersionedShard):
    """The BM25 index as one shard (bm25s sparse scores); ``search(query, k, ref)``."""

    kind = "index/bm25"

    def _load(self, path: str) -> Any:
        from retrec.index.bm25_index import BM25Index

        return BM25Index.load(path)  # verifies checksums

    async def search(self, query: str, k: int, ref: IndexRef) -> Hits:
        return (await self.search_many([query], k, ref))[0]

    async def search_many(self, queries: list[str], k: int, ref: IndexRef) -> list[Hits]:
        """Top-``k`` of this shard for each query, in order."""
        index = await self._index(ref)
        return await asyncio.to_thread(index.search, list(queries), k)


def load_dense_shard(path: str, shard: int, use_gpu: bool | None = None) -> Any:
    """Shard ``shard`` of a dense index version as a one-shard :class:`FaissIndex` (checksums verified)."""
    import faiss
    import pyarrow.parquet as pq

    from retrec.index.faiss_index import KIND, FaissIndex

    manifest = load_bundle(path, kind=KIND)
    config, dims = manifest.config, manifest.dims
    if not 0 <= shard < int(config["shards"]):
        raise BundleError(f"{path}: has {config['shards']} shards, no shard {shard}")
    file = manifest.file(f"shards/{shard:03d}.faiss")
    try:
        index = faiss.read_index(str(file), faiss.IO_FLAG_MMAP)
    except RuntimeError:
        index = faiss.read_index(str(file))
    ids = pq.read_table(manifest.file(f"shards/{shard:03d}.ids.parquet")).column("doc_id").to_pylist()
    enc = config.get("encoder") or {}
    encoder = ({"name": enc.get("name"), "version": enc.get("version"), "dim": dims["dim"],
                "similarity": config["similarity"]} if enc.get("name") is not None else None)
    return FaissIndex([index], [ids], factory=config["factory"], similarity=config["similarity"],
                      encoder=encoder, search_params=config.get("search_params"), use_gpu=use_gpu)


@serve.deployment
class DenseShard(_VersionedShard):
    """One FAISS shard of a dense index version; ``search(query_vector, k, ref)`` → its exact top-k."""

    kind = "index/dense"

    def __init__(self, shard: int, initial: IndexRef, use_gpu: bool | None = None) -> None:
        self.shard = shard
        self.use_gpu = use_gpu
        super().__init__(initial)

    def _load(self, path: str) -> Any:
        return load_dense_shard(path, self.shard, self.use_gpu)

    async def search(self, vector: np.ndarray, k: int, ref: IndexRef) -> Hits:
        return (await self.search_many(np.asarray(vector, np.float32)[None, :], k, ref))[0]

    async def search_many(self, vectors: np.ndarray, k: int, ref: IndexRef) -> list[Hits]:
        """Exact top-``k`` of this shard for each row of ``vectors`` (``float32 [n, dim]``), in order."""
        index = await self._index(ref)
        if len(index) == 0:
            return [[] for _ in range(len(vectors))]
        return await asyncio.to_thread(index.search, np.asarray(vectors, np.float32), k)
