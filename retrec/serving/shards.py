"""The index shard deployment: each replica holds one shard of one or two versions of any index kind.

:class:`IndexShard` loads shard ``i`` of an index version through its kind's registry loader
(``kinds.get(kind).load``, called with ``shard=i`` and ``use_gpu``: for ``index/dense`` that is
``FaissIndex.load(path, shards=[i])`` with its dimension and metric checks) and answers
``search_many(payloads, k, ref)`` — a packed batch of queries (see :mod:`retrec.serving.payloads`) — with
``index.search(payloads, k)``. A kind whose registry entry names a ``serve`` deployment is served by that
one instead; it is bound with the same arguments and answers the same calls (``search_many``, ``load``,
``versions``).

A request names the index version it searches (an :data:`IndexRef`, chosen by the ingress when the
request starts), so one request never mixes versions. A version's identity is its ``digest`` (sha256 of
its ``manifest.json``, which lists the sha256 of every file); ``version`` is the human label responses show.

Which versions a replica holds is its deployment's ``user_config`` (``{"versions": [IndexRef, ...]}``,
newest last), which the Serve controller applies to every replica through :meth:`reconfigure` — on a
change, and again to each replica it (re)starts — so every replica holds the versions the swap published
(:mod:`retrec.serving.versions`). Loads run on a worker thread under a lock that only loads take; searches
of held versions never wait for them. A search of a version the replica does not hold fails at once
(:class:`UnknownVersionError`; the shard counts as failed for that request) — nothing is loaded on the search path.
Results are ``[(doc_id, score)]`` lists — ids and scores, never arrays.

Example::

    ref = index_ref("/idx/v1")                          # {"version", "digest", "path", "kind"}
    shard = IndexShard.options(user_config={"versions": [ref]}).bind(kind=ref["kind"], shard=0, initial=ref)
    await handle.search_many.remote(query_vectors, 10, ref)     # dense: float32 [n, dim] -> [hits, ...]
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import threading
from pathlib import Path
from typing import Any

from ray import serve

from retrec.bundle import MANIFEST, MAX_MANIFEST_BYTES, BundleError, read_manifest
from retrec.index.filters import EXACT, AllowedDocs, EveryDoc, FilterError, parse_filter
from retrec.index.generic import read_metadata
from retrec.index.retriever import Hits
from retrec.kinds import call_supported
from retrec.process_env import configure_process, release_freed_memory
from retrec.serving.payloads import packer
from retrec.serving.registry import loader
from retrec.serving.resources import replica_threads

log = logging.getLogger("retrec.serving")
IndexRef = dict[str, str]


class UnknownVersionError(LookupError):
    """A search named an index version this replica was not told to hold."""


def shard_deployment(retriever: str, shard: int) -> str:
    """The deployment name of shard ``shard`` of ``retriever``'s index."""
    return f"{retriever}-shard-{shard}"


def manifest_digest(path: str | Path) -> str:
    """sha256 of the version's ``manifest.json`` bytes: its identity (the manifest lists every file's sha256)."""
    try:
        file = Path(path) / MANIFEST
        if file.stat().st_size > MAX_MANIFEST_BYTES:
            raise BundleError(f"{path}: {MANIFEST} larger than a manifest holds; refused unread")
        return hashlib.sha256(file.read_bytes()).hexdigest()
    except OSError as exc:
        raise BundleError(f"{path}: no readable {MANIFEST}; not a retrec bundle") from exc


def index_ref(path: str | Path) -> IndexRef:
    """``{"version", "digest", "path", "kind"}`` of a published index version (manifest read, not verified)."""
    digest = manifest_digest(path)
    manifest = read_manifest(path)
    if manifest_digest(path) != digest:
        raise BundleError(f"{path}: the manifest changed while it was read; retry")
    return {"version": manifest.version, "digest": digest, "path": str(Path(path).resolve()), "kind": manifest.kind}


class _VersionedShard:
    """Holds the index versions its ``user_config`` names; subclasses load one shard of a version."""

    kind = ""

    def __init__(self, initial: IndexRef) -> None:
        configure_process(replica_threads())
        self._versions: dict[str, Any] = {}  # digest -> loaded index; replaced whole, never mutated
        self._metadata: dict[str, Any] = {}  # digest -> its documents' metadata (filters), read on first use
        self._held: list[str] = []  # digests the user_config names, newest last
        self._previous: str | None = None  # the newest version held before the last reconfigure
        self._load_lock = threading.Lock()  # taken by loads only
        self.problem: str | None = None  # why this replica holds no version (it stays up, not ready)
        try:
            self._ensure(initial)
            self._held = [initial["digest"]]
        except Exception as exc:  # e.g. the build-time version was deleted: reconfigure brings the current one
            self._unservable(initial, exc)

    def _load(self, path: str) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _ensure(self, ref: IndexRef) -> None:
        """Load ``ref`` unless held (on the caller's thread): its digest, kind, then the kind's loader checks."""
        with self._load_lock:
            if ref["digest"] in self._versions:
                return
            if manifest_digest(ref["path"]) != ref["digest"]:
                raise BundleError(f"{ref['path']}: manifest differs from index version {ref['version']!r} "
                                  "that the swap checked (republished in place?)")
            if read_manifest(ref["path"]).kind != self.kind:
                raise BundleError(f"{ref['path']}: not a {self.kind} bundle")
            index = self._load(ref["path"])
            if manifest_digest(ref["path"]) != ref["digest"]:
                raise BundleError(f"{ref['path']}: republished while loading; retry the swap")
            self._versions = {**self._versions, ref["digest"]: index}

    def _keep(self, held: list[str] | None = None, extra: str | None = None) -> None:
        """Drop what is not held (on a worker thread: it waits for a load in progress, searches never do)."""
        with self._load_lock:
            if held is not None:
                self._previous = self._held[-1] if self._held else None
                self._held = [d for d in held if d in self._versions]
            keep = {*self._held, self._previous, extra}
            dropped = [d for d in self._versions if d not in keep]
            self._versions = {d: i for d, i in self._versions.items() if d in keep}
            self._metadata = {d: m for d, m in self._metadata.items() if d in keep}
        if dropped:  # give a dropped version's pages back: glibc keeps a freed heap's pages otherwise, and each
            release_freed_memory()  # swap's leftovers added a few MiB that the next version's arrays did not reuse

    def _index(self, ref: IndexRef) -> Any:
        index = self._versions.get(ref["digest"])
        if index is None:
            raise UnknownVersionError(f"this replica does not hold index version {ref['version']!r} "
                                      f"({ref['digest'][:12]})")
        return index

    async def load(self, ref: IndexRef) -> str:
        """Load and check ``ref`` beside the held versions (a swap's check on one replica); returns the version."""
        await asyncio.to_thread(self._ensure, ref)
        await asyncio.to_thread(self._keep, None, ref["digest"])  # until the next reconfigure names (or drops) it
        return ref["version"]

    async def reconfigure(self, user_config: dict[str, Any] | None) -> None:
        """``{"versions": [IndexRef, ...]}`` (newest last): load the ones missing, newest first, then hold
        exactly those plus the newest one held before (requests already routed to it finish)."""
        refs = list((user_config or {}).get("versions") or [])
        if not refs:
            return
        for i, ref in enumerate(reversed(refs)):
            try:
                await asyncio.to_thread(self._ensure, ref)
            except Exception as exc:
                if i == 0 and self._versions:
                    raise  # a swap's new version: refusing it fails the rollout, the held ones keep serving
                if i == 0:  # nothing to serve either way: stay up, not ready, rather than restart in a loop
                    self._unservable(ref, exc)
                    return
                log.warning("older index version %s not loaded; holding the newer ones", ref["version"], exc_info=True)
        self.problem = None
        await asyncio.to_thread(self._keep, [r["digest"] for r in refs])

    def _unservable(self, ref: IndexRef, exc: BaseException) -> None:
        self.problem = f"index version {ref['version']!r} could not be loaded ({type(exc).__name__})"
        log.error("%s; this replica stays up and not ready until its user_config names a loadable version",
                  self.problem, exc_info=exc)

    def versions(self) -> list[str]:
        """Digests of the versions loaded, oldest first."""
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

    async def search_many(self, payloads: Any, k: int, ref: IndexRef, doc_filter: str | None = None) -> list[Hits]:
        """Top-``k`` of this shard for each query of a packed batch, in order (an empty shard: no hits); with
        ``doc_filter`` (a filter's canonical JSON) only among the documents it allows."""
        index = self._index(ref)
        if hasattr(index, "__len__") and len(index) == 0:
            return [[] for _ in range(len(payloads))]
        if doc_filter is None:
            return await asyncio.to_thread(index.search, payloads, k)
        allowed = await asyncio.to_thread(self._allowed, ref, doc_filter)
        return await asyncio.to_thread(functools.partial(index.search, payloads, k, allowed=allowed))

    def _allowed(self, ref: IndexRef, doc_filter: str) -> AllowedDocs:
        """The documents of version ``ref`` that ``doc_filter`` allows (its metadata read once per version);
        :data:`~retrec.index.filters.EXACT`: every document (the kind's exact search)."""
        if doc_filter == EXACT:
            return EveryDoc()
        if ref["digest"] not in self._metadata:
            self._metadata = {**self._metadata, ref["digest"]: read_metadata(ref["path"])}
        metadata = self._metadata[ref["digest"]]
        if metadata is None:
            raise FilterError(f"index version {ref['version']!r} stores no document metadata")
        return metadata.allowed(parse_filter(json.loads(doc_filter)))
