"""An online model's folder, and the reader that keeps a served model current with it.

The layout (written by an online trainer, read here):

    ROOT/current                        symlink to the latest full version (a model/sasrec or model/bert4rec
                                        bundle whose items table is version V)
    ROOT/snapshots/NAME/                the full versions (new dense weights, or a periodic full snapshot)
    ROOT/deltas/NAME/00000001/ ...      table/embedding-delta bundles for snapshot NAME, in seq order: delta 1 is
                                        based on V, delta n on delta n-1's table version (``config.seq``,
                                        ``config.source_offsets`` name what produced it)

:class:`DeltaFollower` loads ``ROOT/current`` and, on each :meth:`~DeltaFollower.poll`, applies the deltas that
follow what it holds, in seq order, each checked against the table version it is based on (so rows end up
bit-identical to the trainer's at that seq). A new ``current`` is loaded whole; a missing seq with later ones
present (deltas compacted away) keeps serving the last seq applied, and says so, until a new snapshot; a delta
that does not fit what is held reloads the snapshot. The model in use is swapped
as a whole object, so a request in flight keeps a consistent table.

Example::

    follower = DeltaFollower("runs/online", SequenceRecommender.load)
    follower.poll()                 # True when something new was applied
    follower.model.recommend([["12", "7"]], k=10); follower.describe()   # {"snapshot", "seq", "lag_s", ...}
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from retrec.bundle import BundleError, read_manifest

__all__ = ["CURRENT", "DELTAS", "HISTORIES", "SNAPSHOTS", "DeltaFollower", "delta_path"]

log = logging.getLogger(__name__)
CURRENT, SNAPSHOTS, DELTAS = "current", "snapshots", "deltas"
HISTORIES = "histories.parquet"  # a snapshot's users' recent items (at its config.online.source_offset)


def delta_path(root: str | os.PathLike[str], snapshot: str, seq: int) -> Path:
    """Where delta ``seq`` (from 1) of ``snapshot`` lives."""
    if seq < 1:
        raise ValueError(f"delta seq numbers start at 1, got {seq}")
    return Path(root) / DELTAS / snapshot / f"{seq:08d}"


class DeltaFollower:
    """``model``: the served model, kept current with ``root``'s snapshot and deltas (``load(folder)`` loads a
    snapshot; the model has ``table`` and ``with_table(table)``, as
    :class:`~retrec.runtime.sequence_recommender.SequenceRecommender` does)."""

    def __init__(self, root: str | os.PathLike[str], load: Callable[[Path], Any]) -> None:
        self.root = Path(root)
        self.load = load
        self.seq = 0
        self.applied_at: float | None = None  # when the last delta was applied here
        self.delta_written_at: float | None = None  # when the trainer published it (its manifest's mtime)
        self.reloads = 0
        self._load_current()

    def _current(self) -> Path:
        link = self.root / CURRENT
        if not link.exists():
            raise BundleError(f"{self.root}: no {CURRENT} version (an online model folder starts with one)")
        return link.resolve()

    def _load_current(self) -> None:
        snapshot = self._current()
        self.model = self.load(snapshot)
        self.snapshot, self.seq = snapshot, 0
        self.reloads += 1

    def poll(self) -> bool:
        """Apply what is new (a new ``current``, then the deltas that follow); whether anything changed."""
        changed = False
        if self._current() != self.snapshot:
            log.info("online model %s: new snapshot %s", self.root.name, self._current().name)
            self._load_current()
            changed = True
        folder = self.root / DELTAS / self.snapshot.name
        while True:
            path = delta_path(self.root, self.snapshot.name, self.seq + 1)
            if not (path / "manifest.json").is_file():  # not written yet (a delta is published whole)
                break
            try:
                table = self.model.table.apply_delta(path)
            except BundleError as exc:  # not based on what this replica holds: start again from the snapshot
                log.warning("online model %s: delta %d does not apply (%s); reloading the snapshot",
                            self.root.name, self.seq + 1, exc)
                self._load_current()
                return True
            self.model = self.model.with_table(table)
            self.seq += 1
            self.applied_at = time.time()
            self.delta_written_at = (path / "manifest.json").stat().st_mtime
            changed = True
        gap = f"{self.seq + 1:08d}"
        if folder.is_dir() and any(p.name > gap for p in folder.iterdir()):  # later deltas, not the next one
            log.warning("online model %s: delta %s of %s is missing while later ones exist (compacted?); serving "
                        "seq %d until a new snapshot", self.root.name, gap, self.snapshot.name, self.seq)
        return changed

    def describe(self) -> dict[str, Any]:
        """What ``/v1/models`` shows: the snapshot, the seq applied, the table version and the staleness."""
        lag = None if self.delta_written_at is None else round(max(0.0, time.time() - self.delta_written_at), 3)
        return {"root": self.root.name, "snapshot": self.snapshot.name, "seq": self.seq,
                "table_version": self.model.table.version, "reloads": self.reloads,
                "last_delta_age_s": lag, "snapshot_version": read_manifest(self.snapshot).version}
