"""Index versions of the deployed retrievers: the active version of each, swaps, shard readiness.

A swap (``POST /v1/admin/indexes`` or a new ``user_config``) is checked first — same bundle kind, the
deployment's shard count (``manifest.config["shards"]``), and the kind's own registry ``check`` hook against
the retriever's query encoder (for ``index/dense``: dimension, similarity and encoder version) — then loads
the new version on every shard beside the old one and flips the active reference. Requests already running
finish on the version they started with; every response names the versions it searched.

Callers resolve the path first — ``cfg.resolve`` for the operator's ``user_config``,
:func:`retrec.serving.admin.bundle_under_root` for admin requests — and pass the name to show in
errors (``label``): messages never carry the resolved path, and a shard's failure is logged with a
request id while the client gets only the code, a short message and that id.

Example::

    versions = IndexVersions(specs, refs, encoder_manifests)
    await versions.swap("bm25", "/srv/bundles/bm25-v2", label="bm25-v2")   # {"retriever", "version", "previous"}
    versions.active["bm25"]["version"]                                       # "bm25-v2"
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from retrec.bundle import BundleError, Manifest, read_manifest
from retrec.serving import metrics as serving_metrics
from retrec.serving.admin import failure
from retrec.serving.errors import ApiError
from retrec.serving.registry import check_hook
from retrec.serving.scatter import IndexRef, RetrieverSpec, call_handle
from retrec.serving.shards import index_ref

log = logging.getLogger("retrec.serving")


class IndexVersions:
    """The active index version per retriever and the swap that changes it."""

    def __init__(self, retrievers: dict[str, RetrieverSpec], active: dict[str, IndexRef],
                 encoders: dict[str, Manifest]) -> None:
        self.retrievers, self.encoders = retrievers, encoders
        self.active = dict(active)
        self._checks = {name: check_hook(spec.kind) for name, spec in retrievers.items()}
        self._lock = asyncio.Lock()
        for name, ref in self.active.items():
            serving_metrics.METRICS.set_version(name, ref["version"])

    def check(self, name: str, path: str, label: str) -> IndexRef:
        """The version at ``path`` if ``name`` may swap to it, else a 400 naming (as ``label``) what does not fit."""
        spec = self.retrievers[name]

        def bad(exc: BundleError) -> ApiError:  # the bundle's messages name its resolved path: show the label
            return ApiError(400, "bad_bundle", str(exc).replace(path, label))

        try:
            ref = index_ref(path)
            manifest = read_manifest(path)
        except BundleError as exc:
            raise bad(exc) from exc
        if ref["kind"] != spec.kind:
            raise ApiError(400, "bad_bundle", f"{label}: kind {ref['kind']!r}, {name} needs {spec.kind!r}")
        shards = int(manifest.config.get("shards", 1))
        if shards != len(spec.shards):
            raise ApiError(400, "bad_bundle", f"{label}: {shards} shards, this deployment has {len(spec.shards)}; "
                           "redeploy to change the shard count")
        check = self._checks[name]
        if check is not None:
            try:
                check(manifest, self.encoders.get(spec.encoder) if spec.encoder else None)
            except BundleError as exc:
                raise bad(exc) from exc
        return ref

    async def swap(self, name: str, path: str, label: str | None = None) -> dict[str, Any]:
        """Load the index version at ``path`` (absolute, resolved by the caller) on every shard of ``name``, then
        make it the active one; errors show ``label`` (default: ``path``) for the bundle."""
        if name not in self.retrievers:
            raise ApiError(422, "unknown_retriever", f"retriever {name!r} is not deployed")
        spec = self.retrievers[name]
        ref = self.check(name, path, path if label is None else label)
        async with self._lock:
            previous = self.active[name]
            if previous["version"] == ref["version"] and previous["path"] == ref["path"]:
                return {"retriever": name, "version": ref["version"], "previous": previous["version"]}
            try:
                await asyncio.gather(*(h.load.remote(ref) for h in spec.shards))
            except Exception as exc:
                raise failure(503, "swap_failed", f"loading index version {ref['version']!r} failed on a shard of "
                              f"{name}; still serving {previous['version']!r}", f"swap of {name}") from exc
            self.active = {**self.active, name: ref}  # the flip: new requests see the new version
            serving_metrics.METRICS.set_version(name, ref["version"])
            serving_metrics.METRICS.swaps.labels(retriever=name).inc()
            log.info("retriever %s: index version %s -> %s", name, previous["version"], ref["version"])
        return {"retriever": name, "version": ref["version"], "previous": previous["version"]}

    async def readiness(self) -> dict[str, bool]:
        """Per shard (``NAME-i``): does it have its retriever's active version loaded?"""

        async def shard_ok(handle: Any, version: str) -> bool:
            try:
                return version in await call_handle(handle.versions.remote(), 2.0)
            except Exception:
                return False

        checks: dict[str, bool] = {}
        for name, spec in self.retrievers.items():
            version = self.active[name]["version"]
            oks = await asyncio.gather(*(shard_ok(h, version) for h in spec.shards))
            checks.update({f"{name}-{i}": ok for i, ok in enumerate(oks)})
        return checks

    def describe(self) -> dict[str, dict[str, Any]]:
        """``/v1/models`` entries: active version, path, kind, shard count, encoder bundle per retriever."""
        return {name: {"index_version": ref["version"], "index_path": ref["path"], "kind": ref["kind"],
                       "shards": len(self.retrievers[name].shards), "encoder": self.retrievers[name].encoder}
                for name, ref in self.active.items()}
