"""The index shard deployment: each replica holds one shard of one or two versions of any index kind.

:class:`IndexShard` loads shard ``i`` of an index version through its kind's registry loader
(``kinds.get(kind).load``, called with ``shard=i`` and ``use_gpu``: for ``index/dense`` that is
``FaissIndex.load(path, shards=[i])`` with its dimension and metric checks) and answers
``search_many(payloads, k, ref)`` — a packed batch of queries (see :mod:`retrec.serving.payloads`) — with
``index.search(payloads, k)``. A kind whose registry entry names a ``serve`` deployment is served by that
one instead; it is bound with the same arguments and answers the same calls (``search_many``, ``load``,
``versions``).

A request names the index version it searches (``{"version", "path", "kind"}``, chosen by the ingress
when the request starts), so one request never mixes versions. A replica keeps the two most recent
versions loaded; a version it lacks (e.g. a replica restarted after a swap) is loaded on first use.
Results are ``[(doc_id, score)]`` lists — ids and scores, never arrays.

Example::

    ref = index_ref("/idx/v1")                                  # {"version", "path", "kind"}
    shard = IndexShard.bind(kind=ref["kind"], shard=0, initial=ref, use_gpu=None)
    await handle.search_many.remote(query_vectors, 10, ref)     # dense: float32 [n, dim] -> [hits, ...]
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from ray import serve

from retrec.bundle import BundleError, load_bundle, read_manifest
from retrec.index.retriever import Hits
from retrec.kinds import call_supported
from retrec.process_env import configure_process
from retrec.serving.payloads import packer
from retrec.serving.registry import loader
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
class IndexShard(_VersionedShard):
    """Shard ``shard`` of an index of any registered kind, loaded by the kind's registry loader."""

    def __init__(self, kind: str, shard: int, initial: IndexRef, use_gpu: bool | None = None) -> None:
        from retrec import kinds

        self.kind, self.shard, self.use_gpu = kind, shard, use_gpu
        self._loader = loader(kind)  # resolved once per replica
        self._pack = packer(kinds.get(kind).payload or "text")
        super().__init__(initial)

    def _load(self, path: str) -> Any:
        """Shard ``self.shard`` of the version at ``path`` (checksums verified by the kind's loader)."""
        return call_supported(self._loader, path, shard=self.shard, use_gpu=self.use_gpu)

    async def search(self, payload: Any, k: int, ref: IndexRef) -> Hits:
        """Top-``k`` of this shard for one query payload."""
        return (await self.search_many(self._pack([payload]), k, ref))[0]

    async def search_many(self, payloads: Any, k: int, ref: IndexRef) -> list[Hits]:
        """Top-``k`` of this shard for each query of a packed batch, in order (an empty shard: no hits)."""
        index = await self._index(ref)
        if hasattr(index, "__len__") and len(index) == 0:
            return [[] for _ in range(len(payloads))]
        return await asyncio.to_thread(index.search, payloads, k)
