"""Where a query encoder runs, behind one interface: ``encode(text) -> (payload, batch size)`` and ``info()``.

``encoder.placement: ingress`` (default): :class:`LocalEncoder` — a :class:`BatchingEncoder` inside the
ingress replica, one per encoder bundle (each with its own batch queue). ``deployment``:
:class:`RemoteEncoder` — the bundle's ``QueryEncoder`` deployment, reached through its handle.
``build_app`` describes each encoder as a spec; :func:`make_encoder` turns a spec into one of these inside
the ingress replica.

Example::

    enc = make_encoder({"placement": "ingress", "bundle": "/models/minilm-onnx", "kwargs": {}}, timeout_s=5.0)
    payload, batch_size = await enc.encode("what causes scurvy")
"""

from __future__ import annotations

import asyncio
from typing import Any

from retrec.serving.scatter import call_handle


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
