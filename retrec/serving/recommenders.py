"""The recommender deployment: any registered recommender kind, loaded through the registry.

A replica loads its bundle with the kind's registry loader (``kinds.get(kind).load``, given ``threads``
when it accepts it) and answers with the one recommender contract
(:class:`retrec.runtime.recommender.Recommender`): ``recommend(histories, k, exclude_seen, report)``.
Raw item ids in; unknown ids are skipped and counted (never an error). A kind whose registry entry names a
``serve`` deployment is served by that one instead (bound with the same arguments, same calls).

Example::

    rec = Recommender.bind("/bundles/bert4rec", kind="model/bert4rec")
    await handle.recommend.remote(["12", "7", "x"], 10, True)
    # {"items": [(item_id, score), ...], "skipped_unknown": 1, "unknown_examples": ["x"], "version": "..."}
"""

from __future__ import annotations

import asyncio
from typing import Any

from ray import serve

from retrec.bundle import read_manifest
from retrec.kinds import call_supported
from retrec.process_env import configure_process
from retrec.runtime.recommender import SkipReport
from retrec.serving.registry import kind_of, loader
from retrec.serving.resources import replica_threads


@serve.deployment
class Recommender:
    """One recommender bundle of any registered kind."""

    def __init__(self, bundle: str, kind: str | None = None, threads: int | None = None) -> None:
        threads = replica_threads(threads)
        configure_process(threads)
        self.manifest = read_manifest(bundle)
        self.kind = kind_of(kind or self.manifest.kind, "recommender", f"recommender bundle {bundle}")
        self.model = call_supported(loader(self.kind.kind), bundle, threads=threads)

    def info(self) -> dict[str, Any]:
        m = self.manifest
        return {"kind": m.kind, "name": m.name, "version": m.version, "items": len(self.model.item_ids)}

    def _recommend(self, history: list[str], k: int, exclude_seen: bool) -> dict[str, Any]:
        report = SkipReport()
        items = self.model.recommend([history], k=k, exclude_seen=exclude_seen, report=report)[0]
        return {"items": items, "skipped_unknown": report.unknown_items, "unknown_examples": report.examples,
                "version": self.manifest.version, "name": self.manifest.name}

    async def recommend(self, history: list[str], k: int, exclude_seen: bool = True) -> dict[str, Any]:
        return await asyncio.to_thread(self._recommend, list(history), k, exclude_seen)
