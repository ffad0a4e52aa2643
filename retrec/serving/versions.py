"""Index versions of the deployed retrievers: the active version of each, swaps, shard readiness.

A version is an :data:`~retrec.serving.shards.IndexRef`; its identity is the ``digest`` of its manifest
(two bundles with the same version string are different versions), ``version`` is the label responses show.

A swap (``POST /v1/admin/indexes``, or an ``Ingress`` ``user_config: {indexes: {NAME: PATH}}``) runs:

1. **checks**, before anything changes: the manifest (same kind, the deployment's shard count, the kind's
   registry ``check`` hook against the retriever's query encoder), then one replica of every shard loads
   the version with its kind's registry loader and every check of it (``FaissIndex.load``: dimension and
   metric against the manifest). A refused version is a 400 and the old one keeps serving.
2. **shards**: every replica of every shard deployment holds ``[previous, new]`` (its ``user_config``,
   broadcast by the Serve controller, :mod:`retrec.serving.rollout`), loaded beside the old one. Shards
   placed in the ingress (:mod:`retrec.serving.placement`) are held by each ingress replica instead.
3. **ingress**: every ``Ingress`` replica flips its active reference (its ``user_config``) — after loading
   its own copy of in-ingress shards; the admin call returns after all of them have, so every request that
   starts after it returns searches the new version.

Requests already running finish on the version they started with; every response names the versions it
searched. A replica that (re)starts gets the current ``user_config`` before it takes traffic, so a restart
keeps the swapped version (and does not need the build-time version to exist any more). One swap at a time
per application — the swap lease of :mod:`retrec.serving.swaps` — and a swap publishes only its own
retriever's entry of the ingress ``user_config``, so swaps sent to different ingress replicas never revert each
other. After ``drain_s`` the previous version is released (one copy in memory at rest).

Example::

    versions = IndexVersions(specs, refs, encoder_manifests, resolve=cfg.resolve, publish=ServeRollout().publish)
    await versions.swap("bm25", "/srv/bundles/bm25-v2", label="bm25-v2")   # {"retriever", "version", "previous"}
    versions.active["bm25"]["version"]                                       # "bm25-v2"

``swap`` takes a path its caller resolved — :func:`retrec.serving.admin.bundle_under_root` for admin requests,
``cfg.resolve`` for the operator's config — and the name to show in errors (``label``): messages never carry
the resolved path, and a failure is logged with a request id while the client gets the code, a short message
and that id. ``apply`` (the operator's ``user_config``) resolves with ``resolve``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from retrec.bundle import BundleError, Manifest, read_manifest
from retrec.serving import prometheus as serving_metrics
from retrec.serving.admin import failure
from retrec.serving.errors import ApiError
from retrec.serving.registry import check_hook
from retrec.serving.scatter import IndexRef, RetrieverSpec
from retrec.serving.shards import index_ref, manifest_digest, shard_deployment
from retrec.serving.swaps import LocalLedger, SwapLedger

log = logging.getLogger("retrec.serving")
INGRESS = "Ingress"  # the ingress deployment's name (build_app)
Publish = Callable[..., Awaitable[None]]  # (user_configs, merge=False)


def _refusal(exc: BaseException, resolved: str, label: str = "the bundle") -> str:
    """The refusal's message with ``label`` in place of the resolved bundle path."""
    return str(exc).replace(resolved, label)


def _cause(exc: BaseException) -> BaseException:
    """The exception raised inside a replica (Ray wraps it in a ``RayTaskError``)."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


async def _unpublished(_: dict[str, Any], merge: bool = False) -> None:
    raise RuntimeError("no rollout configured: index swaps need the Serve controller (ServeRollout)")


class IndexVersions:
    """The active index version per retriever and the swap that changes it on every replica."""

    def __init__(self, retrievers: dict[str, RetrieverSpec], active: dict[str, IndexRef],
                 encoders: dict[str, Manifest], resolve: Callable[[str], str], publish: Publish | None = None,
                 load_timeout_s: float = 300.0, ledger: SwapLedger | None = None, drain_s: float = 30.0) -> None:
        self.retrievers, self.encoders, self.resolve = retrievers, encoders, resolve
        self.publish: Publish = publish or _unpublished
        self.ledger: SwapLedger = ledger or LocalLedger()
        self.load_timeout_s, self.drain_s = load_timeout_s, drain_s
        self._drains: dict[str, asyncio.Task] = {}  # retriever -> the pending release of its previous version
        # (name, ref) -> a search of ref through every shard (the ingress sets it; scatter.probe_search)
        self.probe: Callable[[str, IndexRef], Awaitable[None]] | None = None
        self.active = dict(active)
        self._published: dict[str, str] = {}  # retriever -> digest every shard replica holds (this replica's swaps)
        # retriever -> a version every other ingress replica flipped to that this one could not load (in-ingress
        # shards): the replica fails Serve's health check until it has it, and Serve replaces it
        self.stale: dict[str, IndexRef] = {}
        self._checks = {name: check_hook(spec.kind) for name, spec in retrievers.items()}
        # digest -> the width of the query vectors that version searches (a compatible encoder's old space) or
        # None (the encoder's own): what its check hook said, at a swap here or at the first query on it
        self._widths: dict[str, int | None] = {}
        self._refused: dict[str, ApiError] = {}  # digest -> why a version never checked here was refused
        self._lock = asyncio.Lock()
        for name, ref in self.active.items():
            serving_metrics.METRICS.set_version(name, ref["version"])

    def check(self, name: str, path: str, label: str = "the bundle") -> IndexRef:
        """The version at ``path`` if ``name`` may swap to it, else a 400 naming what does not fit."""
        spec = self.retrievers[name]
        try:
            ref = index_ref(path)
            manifest = read_manifest(path)
        except BundleError as exc:
            raise ApiError(400, "bad_bundle", _refusal(exc, path, label)) from exc
        if ref["kind"] != spec.kind:
            raise ApiError(400, "bad_bundle", f"bundle kind {ref['kind']!r}, {name} needs {spec.kind!r}")
        shards = manifest.config.get("shards", 1)
        if not isinstance(shards, int) or shards != len(spec.shards):
            raise ApiError(400, "bad_bundle", f"{shards} shards, this deployment has {len(spec.shards)}; "
                           "redeploy to change the shard count")
        check = self._checks[name]
        if check is not None:
            try:
                width = check(manifest, self.encoders.get(spec.encoder) if spec.encoder else None)
            except BundleError as exc:
                raise ApiError(400, "bad_bundle", _refusal(exc, path, label)) from exc
            self._widths[ref["digest"]] = width if isinstance(width, int) else None
        return ref

    def query_width(self, name: str, ref: IndexRef) -> int | None:
        """The width of the query vectors ``ref`` searches: the retriever encoder's old space when that encoder
        is compatible with the version's (their first dimensions), else None (as they are). A version this
        replica never checked (the one it started with, one another replica swapped to) is checked at its first
        query; one whose vectors the encoder cannot search is refused (503), never searched."""
        if ref["digest"] in self._widths:
            return self._widths[ref["digest"]]
        if ref["digest"] in self._refused:
            raise self._refused[ref["digest"]]
        spec, check = self.retrievers[name], self._checks[name]
        width = None
        if check is not None and spec.encoder:
            try:
                manifest = read_manifest(ref["path"])
                if manifest_digest(ref["path"]) != ref["digest"]:
                    raise BundleError("its manifest changed after it was loaded")
                found = check(manifest, self.encoders.get(spec.encoder))
                width = found if isinstance(found, int) else None
            except BundleError as exc:
                log.error("retriever %s: index version %s refused for its query encoder: %s", name,
                          ref["version"], exc)
                refusal = ApiError(503, "incompatible_index", f"retriever {name}: index version "
                                   f"{ref['version']!r} cannot be searched with its query encoder (server log)")
                self._refused[ref["digest"]] = refusal
                raise refusal from exc
        self._widths[ref["digest"]] = width
        return width

    async def _prepare(self, name: str, ref: IndexRef) -> None:
        """One replica of every shard (in-ingress shards: this replica's) loads ``ref`` with all its kind's
        checks: a refusal is a 400."""
        spec = self.retrievers[name]
        results = await asyncio.gather(*(shard.load(ref, self.load_timeout_s) for shard in spec.shards),
                                       return_exceptions=True)
        for shard, res in enumerate(results):
            if not isinstance(res, BaseException):
                continue
            cause = _cause(res)
            if isinstance(cause, BundleError):
                raise ApiError(400, "bad_bundle", f"shard {shard}: {_refusal(cause, ref['path'])}") from res
            raise failure(503, "swap_failed", f"loading the new version failed on shard {shard} "
                          f"({type(cause).__name__}); still serving {self.active[name]['version']}",
                          f"retriever {name}: loading on shard {shard}", res) from res

    async def _publish_shards(self, name: str, previous: IndexRef, ref: IndexRef) -> None:
        """Every replica of every shard of ``name`` holds ``[previous, ref]`` (undone if that fails). In-ingress
        shards: this replica's hold them (loaded by ``_prepare``); other ingress replicas load ``ref`` when the
        ingress ``user_config`` reaches them, before they flip (:meth:`apply`)."""
        spec = self.retrievers[name]
        n = len(spec.shards)
        held = [previous, ref] if previous["digest"] != ref["digest"] else [ref]
        if spec.placement == "ingress":
            await self._hold_local(name, held)
            self._published[name] = ref["digest"]
            return
        try:
            await self.publish({shard_deployment(name, i): {"versions": held} for i in range(n)})
        except Exception as exc:
            error = failure(503, "swap_failed", f"the shards did not load the new version ({type(exc).__name__}); "
                            f"still serving {previous['version']}", f"retriever {name}: publishing to its shards", exc)
            try:
                await self.publish({shard_deployment(name, i): {"versions": [previous]} for i in range(n)})
            except Exception:
                log.exception("retriever %s: restoring the shards' versions failed", name)
            raise error from exc
        self._published[name] = ref["digest"]

    async def _hold_local(self, name: str, held: list[IndexRef]) -> None:
        """This replica's in-ingress shards of ``name`` hold ``held`` (loading what is missing, with checks)."""
        try:
            await asyncio.gather(*(shard.hold(held) for shard in self.retrievers[name].shards))
        except BundleError as exc:
            raise ApiError(400, "bad_bundle", _refusal(exc, held[-1]["path"])) from exc
        except Exception as exc:
            raise failure(503, "swap_failed", f"loading the new version failed ({type(exc).__name__}); "
                          f"still serving {self.active[name]['version']}", f"retriever {name}: loading in the ingress",
                          exc) from exc

    def _flip(self, name: str, ref: IndexRef) -> None:
        previous = self.active[name]
        if previous["digest"] == ref["digest"]:
            return
        self.active = {**self.active, name: ref}  # new requests on this replica see the new version
        serving_metrics.METRICS.set_version(name, ref["version"])
        serving_metrics.METRICS.swaps.labels(retriever=name).inc()
        log.info("retriever %s: index version %s -> %s (%s)", name, previous["version"], ref["version"],
                 ref["digest"][:12])

    async def swap(self, name: str, path: str, label: str | None = None, *, everywhere: bool = True,
                   swap_id: str | None = None) -> dict[str, Any]:
        """Check the version at ``path`` (resolved by the caller; errors show ``label``), load it on every shard
        replica, then make it the active one on every ingress replica, all under the application's swap lease
        (``everywhere=False``: on this replica only, as its ``reconfigure`` does — inside another swap's lease).
        With ``swap_id`` the ledger records it pending, then done or failed."""
        if name not in self.retrievers:
            raise ApiError(422, "unknown_retriever", f"retriever {name!r} is not deployed")
        ref = await asyncio.to_thread(self.check, name, path, path if label is None else label)  # file reads
        if not everywhere:
            async with self._lock:
                previous = self.active[name]
                if ref["digest"] != previous["digest"]:
                    await self._prepare(name, ref)
                    await self._publish_shards(name, previous, ref)
                    self._flip(name, ref)
                    self._drain_later(name, ref, shards=False)
            return {"retriever": name, "version": ref["version"], "previous": previous["version"]}
        entry = {"swap_id": swap_id, "retriever": name, "version": ref["version"]}
        try:
            async with self.ledger.lease(), self._lock:  # the lease first: a reconfigure never waits on _lock
                previous = self.active[name]
                if swap_id:
                    await self.ledger.record({**entry, "status": "pending", "previous": previous["version"]})
                if ref["digest"] != previous["digest"]:
                    await self._prepare(name, ref)
                    await self._publish_shards(name, previous, ref)
                    await self._probe(name, previous, ref)
                    try:  # this retriever's entry only: another's swap made meanwhile elsewhere stays
                        await self.publish({INGRESS: {"indexes": {name: ref["path"]},
                                                      "digests": {name: ref["digest"]}}}, merge=True)
                    except Exception as exc:
                        raise failure(503, "swap_failed", "the ingress replicas did not take the new version "
                                      f"({type(exc).__name__})", f"retriever {name}: publishing to the ingress",
                                      exc) from exc
                    self._flip(name, ref)
                    self._drain_later(name, ref, shards=True)
        except ApiError as exc:
            if swap_id:
                await self.ledger.record({**entry, "status": "failed", "error": {"code": exc.code,
                                                                                 "message": exc.message}})
            raise
        out = {"retriever": name, "version": ref["version"], "previous": previous["version"]}
        if swap_id:
            await self.ledger.record({**entry, **out, "status": "done"})
        return out

    async def _probe(self, name: str, previous: IndexRef, ref: IndexRef) -> None:
        """A search of ``ref`` through every shard before traffic moves; if it fails the shards go back."""
        if self.probe is None:
            return
        try:
            await self.probe(name, ref)
        except Exception as exc:
            if self.retrievers[name].placement != "ingress":
                n = len(self.retrievers[name].shards)
                await self.publish({shard_deployment(name, i): {"versions": [previous]} for i in range(n)})
            raise failure(503, "swap_failed", f"a probe search of the new version failed ({type(exc).__name__}); "
                          f"still serving {previous['version']}", f"retriever {name}: probing", exc) from exc

    def _drain_later(self, name: str, ref: IndexRef, shards: bool) -> None:
        """After ``drain_s``, release the previous version of ``name``: this replica's in-ingress shards, and
        (``shards``: the replica that ran the swap) every shard replica, unless another swap came first."""
        if not shards and self.retrievers[name].placement != "ingress":
            return  # nothing held here: the replica that ran the swap releases the shards' copies
        pending = self._drains.pop(name, None)
        if pending is not None:
            pending.cancel()
        self._drains[name] = asyncio.get_running_loop().create_task(self._drain(name, ref, shards))

    async def _drain(self, name: str, ref: IndexRef, shards: bool) -> None:
        await asyncio.sleep(self.drain_s)
        spec = self.retrievers[name]
        try:
            if spec.placement == "ingress":
                async with self._lock:
                    if self.active[name]["digest"] == ref["digest"]:
                        await self._hold_local(name, [ref])
            elif shards:
                async with self.ledger.lease(), self._lock:
                    if self.active[name]["digest"] == ref["digest"]:
                        await self.publish({shard_deployment(name, i): {"versions": [ref]}
                                            for i in range(len(spec.shards))})
            log.info("retriever %s: previous index version released after %.0f s", name, self.drain_s)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("retriever %s: releasing the previous index version failed (kept until the next swap)",
                          name)

    async def apply(self, indexes: dict[str, str], digests: dict[str, str] | None = None) -> None:
        """An ``Ingress`` ``user_config`` (``indexes: {retriever: path}``): make each this replica's active
        version. One whose ``digests`` entry (written by a swap once every shard replica holds it) matches is
        flipped at once — with in-ingress shards once this replica has loaded it; if it cannot, the replica is
        ``stale``: it keeps its version and fails Serve's health check, so Serve replaces it. Any other is
        swapped to on this replica (checks, every shard replica loads it, then the flip). A refused one is
        logged and not applied."""
        for name, path in indexes.items():
            if name not in self.retrievers:  # an operator's typo: said, and the others still applied
                log.error("user_config names retriever %r, which this application does not deploy; ignored",
                          name[:100])
                continue
            try:  # a swap's published path is literal (resolved when checked); an operator's resolves ($VAR, ~)
                published = (digests or {}).get(name) is not None
                ref = index_ref(path if published else self.resolve(path))
                if ref["digest"] == self.active.get(name, {}).get("digest"):
                    continue
                if ref["digest"] in (self._published.get(name), (digests or {}).get(name)):
                    if self.retrievers[name].placement == "ingress":  # this replica's copy first
                        try:
                            await self._hold_local(name, [self.active[name], ref])
                        except ApiError:  # checked and loaded elsewhere: a fault of this replica
                            self.stale[name] = ref
                            raise
                    self.stale.pop(name, None)
                    self._flip(name, ref)
                    self._drain_later(name, ref, shards=False)
                    continue
                await self.swap(name, path if published else self.resolve(path), path, everywhere=False)
            except (ApiError, BundleError) as exc:
                if isinstance(exc, ApiError) and exc.status == 503 and self.retrievers[name].placement == "ingress":
                    self.stale[name] = ref  # not a refusal of the version: this replica failed to load it
                log.error("retriever %s: not swapping to the configured index version: %s", name,
                          exc.message if isinstance(exc, ApiError) else _refusal(exc, path))

    def raise_if_stale(self) -> None:
        """Raise when this replica could not load a version the other ingress replicas serve (see ``stale``)."""
        if self.stale:
            names = ", ".join(f"{n} {r['version']}" for n, r in self.stale.items())
            raise RuntimeError(f"this ingress replica could not load the published index version(s): {names}")

    async def readiness(self) -> dict[str, bool]:
        """Per shard (``NAME-i``): does it have its retriever's active version loaded?"""

        async def shard_ok(shard: Any, digest: str) -> bool:
            try:
                return digest in await shard.versions(2.0)
            except Exception:
                return False

        checks: dict[str, bool] = {}
        for name, spec in self.retrievers.items():
            digest = self.active[name]["digest"]
            oks = await asyncio.gather(*(shard_ok(h, digest) for h in spec.shards))
            checks.update({f"{name}-{i}": ok for i, ok in enumerate(oks)})
        return checks

    def describe(self) -> dict[str, dict[str, Any]]:
        """``/v1/models`` entries: active version, digest, path, kind, shard count and placement, encoder bundle
        per retriever."""
        return {name: {"index_version": ref["version"], "index_digest": ref["digest"], "index_path": ref["path"],
                       "kind": ref["kind"], "shards": len(self.retrievers[name].shards),
                       "placement": self.retrievers[name].placement, "encoder": self.retrievers[name].encoder}
                for name, ref in self.active.items()}
