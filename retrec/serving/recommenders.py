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
import contextlib
import functools
import logging
import threading
from pathlib import Path
from typing import Any

from ray import serve

from retrec.bundle import BundleError, read_manifest
from retrec.events import open_log
from retrec.kinds import call_supported
from retrec.process_env import configure_process
from retrec.runtime.online_model import CURRENT, DeltaFollower
from retrec.runtime.recommender import SkipReport
from retrec.runtime.user_histories import UserHistories
from retrec.serving.errors import ApiError
from retrec.serving.prometheus import OnlineMetrics
from retrec.serving.registry import kind_of, loader
from retrec.serving.resources import replica_threads
from retrec.serving.scatter import call_handle

log = logging.getLogger("retrec.serving")


@serve.deployment
class Recommender:
    """One recommender bundle of any registered kind; with ``online``, ``bundle`` is an online model folder whose
    ``current`` version is served and whose deltas are applied as they appear (every ``poll_s`` seconds, on a
    thread of the replica; :mod:`retrec.runtime.online_model`)."""

    def __init__(self, bundle: str, kind: str | None = None, threads: int | None = None, online: bool = False,
                 poll_s: float = 1.0, events: str | None = None) -> None:
        threads = replica_threads(threads)
        configure_process(threads)
        self.follower: DeltaFollower | None = None
        self.histories: UserHistories | None = None
        self._stop = threading.Event()
        self.manifest = read_manifest(Path(bundle) / CURRENT if online else bundle)
        self.kind = kind_of(kind or self.manifest.kind, "recommender", f"recommender bundle {bundle}")
        load = functools.partial(call_supported, loader(self.kind.kind), threads=threads)
        if online:
            self.follower = DeltaFollower(bundle, lambda path: load(str(path)))
            if not hasattr(self.follower.model, "with_table"):
                raise BundleError(f"{self.kind.kind} models cannot follow online deltas (no item table to update)")
            self.metrics = OnlineMetrics()
            with contextlib.suppress(Exception):  # outside a Serve replica (tests): the local registry only
                self.metrics.export_to_ray()
        else:
            self.model = load(bundle)
        self._events = events
        if events is not None:
            self._open_histories()
        if online or events is not None:
            threading.Thread(target=self._follow, args=(poll_s,), name="online-deltas", daemon=True).start()

    def _open_histories(self) -> None:
        """User histories from the event log (from the snapshot's, when online); a log that cannot be read now
        (a broker away) leaves them off — requests naming a user get a 503 — and is tried again on each poll."""
        try:
            log_, length = open_log(self._events), int(getattr(self.model, "steps", 50))
            view = (UserHistories.from_snapshot(log_, self.follower.snapshot, length) if self.follower
                    else UserHistories(log_, length=length))
            view.refresh(max_events=10_000_000)
            self.histories = view
        except Exception as exc:
            log.error("recommender %s: user histories unavailable (%s); retrying", self.manifest.name,
                      exc.__class__.__name__)

    @property
    def model(self) -> Any:
        return self.follower.model if self.follower is not None else self._model

    @model.setter
    def model(self, value: Any) -> None:
        self._model = value

    def _follow(self, poll_s: float) -> None:
        """Apply new snapshots and deltas, read new events, until the replica goes; a failure is logged and tried
        again (what is held keeps serving)."""
        while not self._stop.wait(poll_s):
            try:
                if self.follower is not None:
                    if self.follower.poll():
                        self.manifest = read_manifest(self.follower.snapshot)
                    self.metrics.record(self.manifest.name, self.follower.describe())
                if self.histories is not None:
                    self.histories.refresh()
                elif self._events is not None:
                    self._open_histories()
            except Exception:  # a half-deleted folder, a full disk, a broker away
                log.exception("recommender %s: refreshing failed; serving what it holds", self.manifest.name)

    def info(self) -> dict[str, Any]:
        m = self.manifest
        out = {"kind": m.kind, "name": m.name, "version": m.version, "items": len(self.model.item_ids)}
        return {**out, "online": self.follower.describe()} if self.follower is not None else out

    def _recommend(self, history: list[str], k: int, exclude_seen: bool, user: str | None = None,
                   explain: bool = False) -> dict[str, Any]:
        if user is not None:
            if self.histories is None:
                if self._events is not None:  # configured, not reachable now: the ingress answers 503
                    raise RuntimeError("user histories unavailable: the event log cannot be read")
                return {"error": {"code": "no_user_histories", "message": "this recommender keeps no user "
                                  "histories (events.log is not configured): send history instead of user"}}
            history = self.histories.get(user)
        report = SkipReport()
        model, manifest = self.model, self.manifest  # one consistent version for the whole request
        items = model.recommend([history], k=k, exclude_seen=exclude_seen, report=report)[0]
        out = {"items": items, "skipped_unknown": report.unknown_items, "unknown_examples": report.examples,
               "version": manifest.version, "name": manifest.name}
        if self.follower is not None:
            out["version"] = f"{manifest.version}+{self.follower.seq}"
        if explain and hasattr(model, "explain"):  # a fusion: each component's part of every item's score
            out["components"] = model.explain(history, [item for item, _ in items])
        return out

    async def recommend(self, history: list[str], k: int, exclude_seen: bool = True,
                        user: str | None = None, explain: bool = False) -> dict[str, Any]:
        return await asyncio.to_thread(self._recommend, list(history), k, exclude_seen, user, explain)


async def model_info(name: str, handle: Any, held: dict[str, Any] | None) -> dict[str, Any]:
    """A recommender's ``/v1/models`` entry: asked once — an online one each time (its seq moves); an online one
    that does not answer keeps its last entry, marked ``unreachable`` (a 503 only when there is none)."""
    if held is not None and "online" not in held:
        return held
    try:
        return await call_handle(handle.info.remote(), 5.0)
    except Exception as exc:
        if held is None:
            raise ApiError(503, "unavailable", f"recommender {name} failed: {type(exc).__name__}") from exc
        return {**held, "online": {**held["online"], "unreachable": True}}
