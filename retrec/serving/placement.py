"""Where query encoders and index shards run, each behind one small interface.

Query encoders — ``encode(text) -> (payload, batch size)`` and ``info()``. ``encoder.placement: ingress``
(default): :class:`LocalEncoder`, a :class:`BatchingEncoder` inside the ingress replica, one per encoder
bundle (each with its own batch queue). ``deployment``: :class:`RemoteEncoder`, the bundle's
``QueryEncoder`` deployment, reached through its handle.

Index shards — ``search_many(payloads, k, ref, timeout)``, ``load(ref, timeout)``, ``hold(refs)``,
``versions()``. A retriever's ``placement`` (:func:`shard_placement`): ``ingress`` — :class:`LocalShard`, the
shard's replica class (the kind's ``serve`` deployment class, else
:class:`~retrec.serving.shards.IndexShard`'s) instantiated inside every ingress replica: no deployment hop
per query, one copy of the index per ingress replica (two during a swap). ``deployment`` —
:class:`RemoteShard`, one ``NAME-shard-i`` deployment per shard, for indices that need their own memory,
replicas or GPUs. ``auto`` (default) is ``ingress`` for an index of at most :data:`AUTO_INGRESS_MAX_BYTES`
on disk that asks for no GPU, else ``deployment``; ``build_app`` logs the choice.

``build_app`` describes each encoder and shard as a spec; :func:`make_encoder` and :func:`make_shard` turn
specs into these inside the ingress replica.

Example::

    enc = make_encoder({"placement": "ingress", "bundle": "/models/minilm-onnx", "kwargs": {}}, timeout_s=5.0)
    payload, batch_size = await enc.encode("what causes scurvy")
    shard = make_shard({"placement": "ingress", "kind": "index/bm25", "shard": 0, "use_gpu": False}, ref)
    hits = (await shard.search_many(["what causes scurvy"], 10, ref, timeout=2.0))[0]
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from retrec.bundle import Manifest
from retrec.serving.scatter import IndexRef, RetrieverSpec, call_handle

Placement = Literal["ingress", "deployment"]
# An index this small (all its files, every shard) is served inside each ingress replica by default: each
# replica holds a copy, and two during a swap, so the bound is a memory bound, not a speed one.
AUTO_INGRESS_MAX_BYTES = 256 * 2**20


class RemoteEncoder:
    """A ``QueryEncoder`` deployment behind the same two calls as :class:`LocalEncoder`."""

    placement = "deployment"

    def __init__(self, handle: Any, timeout_s: float) -> None:
        self.handle, self.timeout_s = handle, timeout_s

    async def encode(self, text: str) -> tuple[Any, int]:
        return await call_handle(self.handle.encode.remote(text), self.timeout_s)

    async def info(self) -> dict[str, Any]:
        return await call_handle(self.handle.info.remote(), 30.0)


class LocalEncoder:
    """A :class:`BatchingEncoder` inside this ingress replica (``encoder.placement: ingress``)."""

    placement = "ingress"

    def __init__(self, bundle: str, kwargs: dict[str, Any], timeout_s: float) -> None:
        from retrec.serving.encoders import BatchingEncoder

        self.batcher, self.timeout_s = BatchingEncoder(bundle, **kwargs), timeout_s
        self.batcher.encode_now(["warm up"])  # the first run allocates; keep it out of the first request

    async def encode(self, text: str) -> tuple[Any, int]:
        return await asyncio.wait_for(self.batcher.encode(text), self.timeout_s)

    async def info(self) -> dict[str, Any]:
        return self.batcher.info()


def make_encoder(spec: dict[str, Any], timeout_s: float) -> LocalEncoder | RemoteEncoder:
    """``{"placement": "ingress", "bundle", "kwargs"}`` or ``{"placement": "deployment", "handle"}`` → encoder."""
    if spec["placement"] == "ingress":
        return LocalEncoder(spec["bundle"], spec["kwargs"], timeout_s)
    return RemoteEncoder(spec["handle"], timeout_s)


# ---- index shards ----------------------------------------------------------------------------------------

def shard_placement(configured: str, manifest: Manifest, use_gpu: bool | None,
                    num_gpus: float) -> tuple[Placement, str]:
    """``(placement, why)`` of a retriever's shards: ``configured`` unless ``auto``, which is ``ingress`` for an
    index of at most :data:`AUTO_INGRESS_MAX_BYTES` that asks for no GPU (``use_gpu: true`` or shard GPUs)."""
    size = sum(f.size for f in manifest.files.values())
    mib = f"{size / 2**20:.1f} MiB"
    if configured != "auto":
        return configured, f"configured ({mib})"  # type: ignore[return-value]
    if use_gpu or num_gpus > 0:
        return "deployment", f"auto: GPU shards ({mib})"
    if size > AUTO_INGRESS_MAX_BYTES:
        return "deployment", f"auto: {mib} > {AUTO_INGRESS_MAX_BYTES / 2**20:.0f} MiB"
    return "ingress", f"auto: {mib} <= {AUTO_INGRESS_MAX_BYTES / 2**20:.0f} MiB"


class RemoteShard:
    """One shard deployment (``NAME-shard-i``), reached through its handle."""

    placement = "deployment"

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    async def search_many(self, payloads: Any, k: int, ref: IndexRef, timeout: float,
                          doc_filter: str | None = None) -> list[Any]:
        extra = () if doc_filter is None else (doc_filter,)  # a plugin kind's deployment may take 3 arguments
        return await call_handle(self.handle.search_many.remote(payloads, k, ref, *extra), timeout)

    async def load(self, ref: IndexRef, timeout: float) -> str:
        """One replica loads and checks ``ref`` (the swap's check); every replica gets it through ``hold``'s
        broadcast, which :class:`~retrec.serving.versions.IndexVersions` publishes for the deployment."""
        return await call_handle(self.handle.load.remote(ref), timeout)

    async def versions(self, timeout: float = 2.0) -> list[str]:
        return await call_handle(self.handle.versions.remote(), timeout)


class LocalShard:
    """One shard's replica object inside this ingress replica: the same code as its deployment, no hop."""

    placement = "ingress"

    def __init__(self, replica: Any) -> None:
        self.replica = replica

    async def search_many(self, payloads: Any, k: int, ref: IndexRef, timeout: float,
                          doc_filter: str | None = None) -> list[Any]:
        extra = () if doc_filter is None else (doc_filter,)
        return await asyncio.wait_for(self.replica.search_many(payloads, k, ref, *extra), timeout)

    async def load(self, ref: IndexRef, timeout: float) -> str:
        return await asyncio.wait_for(self.replica.load(ref), timeout)

    async def hold(self, refs: list[IndexRef]) -> None:
        """Hold exactly ``refs`` (newest last; loading any missing) plus the newest held before."""
        await self.replica.reconfigure({"versions": refs})

    async def versions(self, timeout: float = 2.0) -> list[str]:
        return self.replica.versions()


def make_shard(spec: Any, initial: IndexRef) -> LocalShard | RemoteShard:
    """``{"placement": "ingress", "kind", "shard", "use_gpu"}`` → :class:`LocalShard` holding ``initial``
    (loaded now); a shard deployment's handle → :class:`RemoteShard`."""
    if isinstance(spec, dict) and spec.get("placement") == "ingress":
        from retrec.serving.registry import deployment
        from retrec.serving.shards import IndexShard

        cls = deployment(spec["kind"], IndexShard).func_or_class
        return LocalShard(cls(kind=spec["kind"], shard=spec["shard"], initial=initial, use_gpu=spec.get("use_gpu")))
    return RemoteShard(spec)


def retriever_spec(name: str, args: dict[str, Any]) -> RetrieverSpec:
    """One retriever of ``build_app``'s description ``{"kind", "payload", "placement", "shards", "encoder", "ref"}``
    with its shards made (in-ingress shards load ``ref`` now)."""
    shards = [make_shard(spec, args["ref"]) for spec in args["shards"]]
    placement = shards[0].placement if shards else "deployment"
    return RetrieverSpec(name, args["kind"], args["payload"], shards, args.get("encoder"), placement)
