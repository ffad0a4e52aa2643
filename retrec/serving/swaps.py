"""Index swaps across the whole application: one at a time, and each one's outcome readable from any replica.

Every ingress replica can take an admin swap, and k8s runs several. Two rules make them agree:

- **One swap at a time per application.** A swap holds the application's *swap lease* from its checks to the
  last replica's flip. In Ray the lease lives in one small named actor per application (:class:`RayLedger`,
  ``retrec-swaps-<app>``, detached, no CPU); a lease the holder stops renewing (its replica died) expires after
  ``ttl_s``. In one process (tests, the in-process ingress) :class:`LocalLedger` is an ``asyncio.Lock``.
- **A swap changes only its own entry** of the ingress ``user_config`` (``merge=True`` in
  :mod:`retrec.serving.rollout`): a swap of ``dense`` on one replica never reverts a swap of ``bm25`` made on
  another.

The ledger also keeps each swap's record — ``{"swap_id", "retriever", "status": "pending" | "done" | "failed",
"version", "previous", "error"}`` — so that a swap that outlives its request (the admin call answers 202 after
``limits.swap_timeout_s``) can be followed with ``GET /v1/admin/swaps/{swap_id}`` on any replica. The last
:data:`KEEP` records are kept.

Example::

    ledger = LocalLedger()
    async with ledger.lease():
        await ledger.record({"swap_id": "ab12...", "retriever": "bm25", "status": "pending"})
    (await ledger.get("ab12..."))["status"]        # "pending"
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any, Protocol

KEEP = 1000  # swap records kept per application
SWAP_ID = re.compile(r"^[0-9a-f]{32}$")


def new_swap_id() -> str:
    return uuid.uuid4().hex


class SwapLedger(Protocol):
    """The application's swap lease and swap records."""

    def lease(self) -> contextlib.AbstractAsyncContextManager[None]: ...

    async def record(self, entry: dict[str, Any]) -> None: ...

    async def get(self, swap_id: str) -> dict[str, Any] | None: ...

    async def recent(self) -> list[dict[str, Any]]: ...


class _Records:
    """The last :data:`KEEP` swap records by id (newest last)."""

    def __init__(self) -> None:
        self._records: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def put(self, entry: dict[str, Any]) -> None:
        swap_id = str(entry["swap_id"])
        self._records[swap_id] = {**self._records.get(swap_id, {}), **entry}
        self._records.move_to_end(swap_id)
        while len(self._records) > KEEP:
            self._records.popitem(last=False)

    def get(self, swap_id: str) -> dict[str, Any] | None:
        found = self._records.get(swap_id)
        return dict(found) if found is not None else None

    def recent(self, n: int = 50) -> list[dict[str, Any]]:
        return [dict(r) for r in list(self._records.values())[-n:][::-1]]


class LocalLedger:
    """The ledger of one process: an ``asyncio.Lock`` and the records in memory."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._records = _Records()

    @contextlib.asynccontextmanager
    async def lease(self) -> AsyncIterator[None]:
        async with self._lock:
            yield

    async def record(self, entry: dict[str, Any]) -> None:
        self._records.put(entry)

    async def get(self, swap_id: str) -> dict[str, Any] | None:
        return self._records.get(swap_id)

    async def recent(self) -> list[dict[str, Any]]:
        return self._records.recent()


class _LedgerActor:
    """The Ray actor behind :class:`RayLedger`: a lease with an expiry, and the records."""

    def __init__(self) -> None:
        self.holder: str | None = None
        self.until = 0.0
        self.records = _Records()

    def acquire(self, token: str, ttl_s: float) -> bool:
        """Take (or renew) the lease for ``token``; False while another token holds an unexpired lease."""
        now = time.monotonic()
        if self.holder in (None, token) or now > self.until:
            self.holder, self.until = token, now + ttl_s
            return True
        return False

    def release(self, token: str) -> None:
        if self.holder == token:
            self.holder = None

    def record(self, entry: dict[str, Any]) -> None:
        self.records.put(entry)

    def get(self, swap_id: str) -> dict[str, Any] | None:
        return self.records.get(swap_id)

    def recent(self) -> list[dict[str, Any]]:
        return self.records.recent()


class RayLedger:
    """The application's ledger in a named, detached Ray actor (created by the first replica that needs it)."""

    def __init__(self, app_name: str | None = None, ttl_s: float = 30.0, poll_s: float = 0.05) -> None:
        self.app_name, self.ttl_s, self.poll_s = app_name, ttl_s, poll_s
        self._handle: Any = None

    def _actor(self) -> Any:
        if self._handle is None:
            import ray

            if self.app_name is None:
                from ray import serve

                self.app_name = serve.get_replica_context().app_name
            self._handle = ray.remote(_LedgerActor).options(
                name=f"retrec-swaps-{self.app_name}", namespace="serve", lifetime="detached", get_if_exists=True,
                num_cpus=0, max_restarts=-1).remote()
        return self._handle

    @contextlib.asynccontextmanager
    async def lease(self) -> AsyncIterator[None]:
        actor, token = self._actor(), new_swap_id()
        while not await actor.acquire.remote(token, self.ttl_s):
            await asyncio.sleep(self.poll_s)

        async def renew() -> None:
            while True:
                await asyncio.sleep(self.ttl_s / 3)
                await actor.acquire.remote(token, self.ttl_s)

        renewing = asyncio.create_task(renew())
        try:
            yield
        finally:
            renewing.cancel()
            await actor.release.remote(token)

    async def record(self, entry: dict[str, Any]) -> None:
        await self._actor().record.remote(entry)

    async def get(self, swap_id: str) -> dict[str, Any] | None:
        return await self._actor().get.remote(swap_id)

    async def recent(self) -> list[dict[str, Any]]:
        return await self._actor().recent.remote()
