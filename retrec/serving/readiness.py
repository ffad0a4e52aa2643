"""Readiness answered from a cache that a background task refreshes: a probe never fans out to the shards.

``GET /readyz`` used to ask every shard replica (and encoder) per probe — slow under load, and a probe
storm multiplied the calls. :class:`ReadinessCache` runs the check every ``period_s`` on the replica's
event loop and ``answer()`` returns the last result at once: not ready while ``starting`` (no check has
finished yet) or when the last result is older than ``stale_after_s`` (the checks hang).

A retriever with some of its shards down (a Ray node lost) still answers, with partial results: with
``verdict=any_of_each(groups)`` the replica stays ready while each group (a retriever's shards) has one check
passing, and ``/readyz`` says ``degraded`` — so a probe never takes a serving ingress out of its Service for a
shard's outage, while a retriever with no shard at all (or an encoder down) is not ready.

Example::

    cache = ReadinessCache(check_every_shard, period_s=1.0)   # async () -> {"bm25-0": True, ...}
    cache.start()                                             # on a running loop (else: on the first answer)
    ready, checks = cache.answer()                            # (False, {"reason": "starting"}) at first
    any_of_each({"bm25": ["bm25-0", "bm25-1"]})({"bm25-0": True, "bm25-1": False})   # True: degraded
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("retrec.serving")
Verdict = Callable[[dict[str, bool]], bool]


def every_check(checks: dict[str, bool]) -> bool:
    """Ready when every check passes (the default verdict)."""
    return all(checks.values())


def any_of_each(groups: dict[str, list[str]]) -> Verdict:
    """A verdict: ready when each group has a passing check and every check outside the groups passes."""
    grouped = {key for keys in groups.values() for key in keys}

    def verdict(checks: dict[str, bool]) -> bool:
        alone = all(ok for key, ok in checks.items() if key not in grouped)
        return alone and all(any(checks.get(k, False) for k in keys) for keys in groups.values() if keys)

    return verdict


class ReadinessCache:
    """The latest result of an async readiness check, refreshed in the background."""

    def __init__(self, check: Callable[[], Awaitable[dict[str, bool]]], period_s: float = 1.0,
                 stale_after_s: float | None = None, verdict: Verdict = every_check) -> None:
        self.check, self.period_s, self.verdict = check, period_s, verdict
        self.stale_after_s = stale_after_s if stale_after_s is not None else max(10.0, 5 * period_s)
        self._checks: dict[str, bool] | None = None
        self._at = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start refreshing on the running event loop (no-op without one, or when already running)."""
        if self._task is not None and not self._task.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._task = loop.create_task(self._refresh())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _refresh(self) -> None:
        while True:
            try:
                checks = dict(await self.check())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the check itself failed: not ready, say which way (no traceback)
                log.warning("readiness check failed: %s", type(exc).__name__)
                checks = {"readiness_check": False}
            self._checks, self._at = checks, time.monotonic()
            await asyncio.sleep(self.period_s)

    def answer(self) -> tuple[bool, dict[str, Any]]:
        """``(ready, checks)`` from the cache; when not ready for lack of a fresh result, ``{"reason": ...}``."""
        self.start()
        if self._checks is None:
            return False, {"reason": "starting"}
        age = time.monotonic() - self._at
        if age > self.stale_after_s:
            return False, {"reason": f"stale: last check {age:.0f} s ago"}
        return self.verdict(self._checks), self._checks


async def encoders_answer(encoders: dict[str, Any], manifests: dict[str, Any]) -> dict[str, bool]:
    """``{"encoder:NAME": answers}`` per encoder (keyed by bundle path; shown by its manifest's name, and a
    number after a name two bundles share): does its ``info()`` answer within 2 s?"""

    async def answers(encoder: Any) -> bool:
        try:
            await asyncio.wait_for(encoder.info(), 2.0)
            return True
        except Exception:
            return False

    oks = await asyncio.gather(*(answers(e) for e in encoders.values()))
    labels: dict[str, bool] = {}
    for key, ok in zip(encoders, oks):
        manifest = manifests.get(key)
        name = getattr(manifest, "name", None) or "encoder"
        label = f"encoder:{name}" if f"encoder:{name}" not in labels else f"encoder:{name}-{len(labels)}"
        labels[label] = ok
    return labels
