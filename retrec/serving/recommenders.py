"""Recommender deployment: a :class:`SequenceRecommender` bundle (embedding table + ONNX user encoder).

Raw item ids in; unknown ids are skipped and counted (never an error).

Example::

    rec = Recommender.bind("/bundles/bert4rec")
    await handle.recommend.remote(["12", "7", "x"], 10, True)
    # {"items": [(item_id, score), ...], "skipped_unknown": 1, "unknown_examples": ["x"], "version": "..."}
"""

from __future__ import annotations

import asyncio
from typing import Any

from ray import serve

from retrec.process_env import configure_process
from retrec.serving.resources import replica_threads


@serve.deployment
class Recommender:
    def __init__(self, bundle: str, threads: int | None = None) -> None:
        from retrec.runtime.sequence_recommender import SequenceRecommender

        threads = replica_threads(threads)
        configure_process(threads)
        self.model = SequenceRecommender.load(bundle, threads=threads)

    def info(self) -> dict[str, Any]:
        m = self.model.manifest
        return {"name": m.name, "version": m.version, "items": len(self.model.item_ids)}

    def _recommend(self, history: list[str], k: int, exclude_seen: bool) -> dict[str, Any]:
        from retrec.runtime.sequence_recommender import SkipReport

        report = SkipReport()
        items = self.model.recommend([history], k=k, exclude_seen=exclude_seen, report=report)[0]
        return {"items": items, "skipped_unknown": report.unknown_items, "unknown_examples": report.examples,
                "version": self.model.manifest.version, "name": self.model.manifest.name}

    async def recommend(self, history: list[str], k: int, exclude_seen: bool = True) -> dict[str, Any]:
        return await asyncio.to_thread(self._recommend, list(history), k, exclude_seen)
