"""Online training, Monolith-style: events in, item rows and the user encoder trained as they come, deltas out.

``retrec train online --model BUNDLE --events LOG --out ROOT`` continues a trained SASRec or BERT4Rec bundle
(its weights and item table, :mod:`retrec.models.seq_weights`) on the event log's stream and writes an online
model folder (:mod:`retrec.runtime.online_model`) that serving replicas follow:

1. read up to ``batch_events`` events after the consumer's committed offset;
2. each event (user, item) whose user has a history and whose item has a row is a training example: the user's
   last items predict it, by a sampled softmax over the target and ``negatives`` rows drawn uniformly from the
   table. Gradients reach the rows of the history and candidates (updated by Adagrad, as Monolith's embedding
   tables are) and the user encoder's weights (Adam);
3. then every event's item is observed (a new item gets a row once seen ``admit_threshold`` times) and appended
   to its user's history (at most the model's history length, for at most ``max_users`` users);
4. every ``sync_s`` seconds (10): the rows touched since the last delta as ``ROOT/deltas/SNAPSHOT/SEQ`` (seq and
   source offsets in its config), and only then the consumer's offset committed (a log away: at the next delta) —
   a crash replays events from the last delta, never skips one nor trains one twice. At most ``max_touched`` keys
   a delta: updates of further keys are dropped, counted;
5. every ``snapshot_s`` seconds (an hour) and at the end: a full version (user encoder ONNX, table, weights, the
   users' histories) in ``ROOT/snapshots`` and ``current`` moved to it; its deltas count from 1.

A restart loads ``current``, applies its deltas (the table exactly as published), rebuilds the histories from the
snapshot's plus the events between it and the last delta, and goes on from the offset that delta covers up to (the
commit follows it): what a crash loses is the encoder's training since the last snapshot and the rows since the
last delta (replayed). An event log away (a broker restarting) is retried with backoff; deltas go on being
published on time.

Example::

    trainer = OnlineTrainer(Path("artifacts/sasrec"), open_log("runs/events"), Path("runs/online"))
    trainer.run(max_events=10_000)          # or until stopped; trainer.report() says what it did
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F  # noqa: N812

from retrec.bundle import publish, read_manifest
from retrec.events import EventLog, LogUnavailableError
from retrec.models.bert4rec import UserEncoder, export_user_encoder
from retrec.models.seq_weights import load_sequence_model, save_weights
from retrec.runtime.online_model import CURRENT, DELTAS, HISTORIES, SNAPSHOTS, DeltaFollower, delta_path
from retrec.runtime.sequence_recommender import SequenceRecommender
from retrec.tables import EmbeddingTable, FrozenTable
from retrec.tables.keys import as_keys

__all__ = ["OnlineConfig", "OnlineTrainer"]

log = logging.getLogger("retrec.train.online")


@dataclass
class OnlineConfig:
    sync_s: float = 10.0  # a delta every sync_s seconds (Monolith syncs its parameter servers every 10 s)
    snapshot_s: float = 3600.0  # a full version (the encoder's weights) this often
    batch_events: int = 256
    negatives: int = 256
    passes: int = 1  # training steps on each batch of events (fresh negatives each); Monolith takes one
    row_lr: float = 0.0025  # Adagrad on item rows (MovieLens-100k replay: 0.05 hurt, 0.0025 best of 5; RESULTS)
    # Adagrad's accumulator start: at 0 a row's first step is lr in every coordinate whatever its gradient (a
    # sampled negative's tiny gradient moves it as far as the target's); TensorFlow / Monolith start at 0.1
    adagrad_init: float = 0.0
    dense_lr: float = 1e-4  # Adam on the user encoder
    admit_threshold: int = 1
    max_touched: int = 1_000_000  # keys a delta may carry
    max_users: int = 1_000_000  # histories kept (least recently active dropped first)
    keep_snapshots: int = 2  # older snapshots and their deltas are removed (a replica may still read the last one)
    consumer: str = "online-trainer"
    poll_s: float = 0.5  # wait between reads at the end of the log
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("sync_s", "snapshot_s", "row_lr", "dense_lr", "poll_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not self.adagrad_init >= 0:
            raise ValueError(f"adagrad_init must be at least 0, got {self.adagrad_init}")
        for name in ("batch_events", "negatives", "passes", "admit_threshold", "max_touched", "max_users",
                     "keep_snapshots"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


class OnlineTrainer:
    def __init__(self, bundle: Path, events: EventLog, root: Path, cfg: OnlineConfig | None = None,
                 histories: Mapping[str, Sequence[str]] | None = None) -> None:
        """``histories``: the users' items so far (e.g. the batch training data's sequences), used on a first
        start only — a restart takes the snapshot's."""
        self.cfg = cfg or OnlineConfig()
        self.events, self.root = events, Path(root)
        self.base = read_manifest(bundle)
        self.model, self.item_keys = load_sequence_model(bundle)
        self.steps = self.model.history_len()
        self.histories: OrderedDict[str, deque[str]] = OrderedDict()
        self.dropped_touches = self.examples = self.events_read = self.deltas = self.snapshots = 0
        self.delta_keys = self.delta_bytes = 0  # what the deltas carried (acceptance: ~ keys x row bytes)
        self.touched: set[int] = set()  # item keys in the coming delta
        self._acc: dict[int, np.ndarray] = {}  # Adagrad accumulators by item key
        self._gen = torch.Generator().manual_seed(self.cfg.seed)
        if (self.root / CURRENT).exists():
            self._resume()
        else:
            for user, items in (histories or {}).items():
                self.histories[str(user)] = deque((str(i) for i in items), maxlen=self.steps)
            self.table = EmbeddingTable.from_frozen(FrozenTable.load(Path(bundle) / "items"),
                                                    admit_threshold=self.cfg.admit_threshold, seed=self.cfg.seed)
            self.offset = self.events.committed(self.cfg.consumer)
            self._snapshot()
        self.encoder = UserEncoder(self.model).train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.cfg.dense_lr)
        self._delta_from = self.offset

    # -- state -----------------------------------------------------------------------------------------------
    def _resume(self) -> None:
        """Continue what ``root`` holds: its current snapshot, its deltas, its histories, the committed offset."""
        follower = DeltaFollower(self.root, SequenceRecommender.load)
        follower.poll()
        snapshot = read_manifest(follower.snapshot)
        self.model, self.item_keys = load_sequence_model(follower.snapshot)
        self.name, self.seq = follower.snapshot.name, follower.seq
        self.table = EmbeddingTable.from_frozen(follower.model.table, admit_threshold=self.cfg.admit_threshold,
                                                seed=self.cfg.seed + self.seq + 1)
        for row in pq.read_table(snapshot.file(HISTORIES)).to_pylist():
            self.histories[row["user"]] = deque(row["items"], maxlen=self.steps)
        cut = int(snapshot.config["online"]["source_offset"])
        # The rows held cover the events up to the last delta's end: go on from there, whatever the commit says
        # (a crash between a delta and its commit must not train those events twice).
        self.offset = (int(read_manifest(delta_path(self.root, self.name, self.seq)).config["source_offsets"][1])
                       if self.seq else cut)
        committed = self.events.committed(self.cfg.consumer)
        if committed != self.offset:
            log.info("online: the committed offset %d differs from what delta %d covers (%d); going on from %d",
                     committed, self.seq, self.offset, self.offset)
            self._commit()
        while cut < self.offset:  # the histories of the events between the snapshot and the commit
            batch = self.events.read(cut, min(self.cfg.batch_events, self.offset - cut))
            if not batch:
                break
            self._remember([e for _, e in batch])
            cut = batch[-1][0] + 1
        log.info("online: resumed %s at delta %d, offset %d (%d histories)", self.name, self.seq, self.offset,
                 len(self.histories))

    def _snapshot(self) -> Path:
        """A full version (encoder, table, weights, histories) under ``root/snapshots``, then ``current`` moved."""
        stamp, n = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{self.offset:012d}", 0
        name = stamp
        while (self.root / SNAPSHOTS / name).exists():
            n += 1
            name = f"{stamp}-{n}"
        final = self.root / SNAPSHOTS / name
        was_training = self.model.training
        with publish(final, replace=False) as pub:
            export_user_encoder(self.model, pub.path / "user_encoder.onnx")  # (leaves the model in eval mode)
            self.table.snapshot(pub.path / "items", name=f"{self.base.name}-items")
            save_weights(self.model, self.item_keys, pub.path)
            users = list(self.histories)
            pq.write_table(pa.table({"user": pa.array(users, pa.string()),
                                     "items": pa.array([list(self.histories[u]) for u in users],
                                                       pa.list_(pa.string()))}), pub.path / HISTORIES)
            online = {"source_offset": self.offset, "base_bundle": f"{self.base.name}@{self.base.version}",
                      "config": asdict(self.cfg)}
            pub.set_manifest(kind=self.base.kind, name=self.base.name, config={**self.base.config, "online": online},
                             dims=self.base.dims, metrics={"events_read": self.events_read,
                                                           "examples": self.examples})
        self.model.train(was_training)
        link, tmp = self.root / CURRENT, self.root / f".{CURRENT}.tmp"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(Path(SNAPSHOTS) / name)
        os.replace(tmp, link)  # readers see the old version or the new one
        self.name, self.seq = name, 0
        self.touched.clear()
        self._delta_from = self.offset  # the next delta (seq 1 of this snapshot) covers events from here
        self.snapshots += 1
        self._commit()
        log.info("online: snapshot %s at offset %d", name, self.offset)
        self._prune()
        return final

    def _prune(self) -> None:
        """Keep the newest ``keep_snapshots`` snapshots and their deltas (names sort by time); the rest go."""
        names = sorted(p.name for p in (self.root / SNAPSHOTS).iterdir() if not p.name.startswith("."))
        for old in names[: -self.cfg.keep_snapshots]:
            shutil.rmtree(self.root / DELTAS / old, ignore_errors=True)
            shutil.rmtree(self.root / SNAPSHOTS / old, ignore_errors=True)
            log.info("online: removed snapshot %s and its deltas", old)

    def _delta(self) -> Path | None:
        """The rows touched since the last delta, durable, then the offset committed; None when nothing changed."""
        if not self.touched:
            self._commit()
            return None
        path = delta_path(self.root, self.name, self.seq + 1)
        manifest = self.table.export_delta(path, name=f"{self.base.name}-items",
                                           extra={"seq": self.seq + 1, "source_offsets": [self._delta_from,
                                                                                          self.offset],
                                                  "dropped_touches": self.dropped_touches})
        self.seq += 1
        self.deltas += 1
        self.delta_keys += int(manifest.dims.get("rows", 0) or 0)
        self.delta_bytes += sum(f.size for f in manifest.files.values())
        self.touched.clear()
        self._commit()
        return path

    def _commit(self) -> None:
        """Commit the offset the published rows cover; a log away now is committed at the next delta (a restart
        goes on from the deltas' offsets either way)."""
        try:
            self.events.commit(self.cfg.consumer, self.offset, rewind=True)
        except LogUnavailableError as exc:
            log.warning("online: offset %d not committed now (%s); the next delta will", self.offset, exc)

    # -- learning --------------------------------------------------------------------------------------------
    def _remember(self, events: list[Any]) -> None:
        for e in events:
            history = self.histories.pop(e.user, None) or deque(maxlen=self.steps)
            history.append(e.item)
            self.histories[e.user] = history  # most recently active last
            if len(self.histories) > self.cfg.max_users:
                self.histories.popitem(last=False)

    def _touch(self, keys: np.ndarray) -> np.ndarray:
        """Which of ``keys`` (int64) this delta may still carry: the cap counts distinct keys; updates of further
        keys are dropped and counted."""
        kept = np.zeros(len(keys), bool)
        for i, key in enumerate(keys.tolist()):
            if key in self.touched or len(self.touched) < self.cfg.max_touched:
                self.touched.add(key)
                kept[i] = True
            else:
                self.dropped_touches += 1
        return kept

    def train_events(self, events: list[Any]) -> float | None:
        """One step on the events that make examples, then their items observed and histories extended."""
        has_row = self.table.lookup([e.item for e in events]) >= 0
        examples = [(list(self.histories[e.user]), e.item) for e, ok in zip(events, has_row)
                    if ok and e.user in self.histories]
        loss_value = None
        if examples:
            for _ in range(self.cfg.passes):
                loss_value = self._step(examples)
            self.examples += len(examples)
        items = [e.item for e in events]
        kept = self._touch(_keys(items))  # over the cap: not observed, so not in this delta (counted)
        self.table.observe([i for i, ok in zip(items, kept) if ok], now=max(e.timestamp for e in events))
        self._remember(events)
        return loss_value

    def _step(self, examples: list[tuple[list[str], str]]) -> float:
        """A sampled-softmax step: the rows of the histories, the targets and shared uniform negatives."""
        table_keys, _ = self.table.entries()
        drawn = torch.randint(0, len(table_keys), (min(self.cfg.negatives, len(table_keys)),), generator=self._gen)
        negatives = np.unique(table_keys[drawn.numpy()])
        names = sorted({i for h, t in examples for i in (*h, t)})
        names = [n for n, ok in zip(names, self.table.lookup(names) >= 0) if ok]
        keys = np.concatenate([_keys(names), negatives])
        keys, first = np.unique(keys, return_index=True)  # a negative that is also a named item: one row
        keys = keys[np.argsort(first)]
        at = {int(k): i for i, k in enumerate(keys.tolist())}
        rows = torch.tensor(self.table.embed(keys), requires_grad=True)
        b, steps = len(examples), self.steps
        history = torch.zeros(b, steps, dtype=torch.long)
        padding = torch.ones(b, steps, dtype=torch.bool)
        for i, (items, _) in enumerate(examples):
            ids = [at[int(k)] for k, ok in zip(_keys(items), self.table.lookup(items) >= 0) if ok][-steps:]
            if ids:
                history[i, steps - len(ids):] = torch.tensor(ids)
                padding[i, steps - len(ids):] = False
        user = self.encoder(rows[history] * (~padding)[:, :, None], padding)  # [B, d + 1]
        targets = torch.tensor([at[int(k)] for k in _keys([t for _, t in examples])])
        candidates = torch.tensor([at[int(k)] for k in negatives.tolist()])
        pos = (user * rows[targets]).sum(-1, keepdim=True)
        own = candidates[None, :] == targets[:, None]  # a target drawn as a negative is masked
        logits = torch.cat([pos, (user @ rows[candidates].T).masked_fill(own, -1e9)], dim=1)
        loss = F.cross_entropy(logits, torch.zeros(b, dtype=torch.long))
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        assert rows.grad is not None
        self._rows_step(keys, rows.grad.numpy())
        return float(loss.item())

    def _rows_step(self, keys: np.ndarray, grads: np.ndarray) -> None:
        """Adagrad on the rows that took part (Monolith's embedding optimiser), written back to the table."""
        kept = self._touch(keys)
        keys, grads = keys[kept], grads[kept]
        if not len(keys):
            return
        start = np.full(grads.shape[1], self.cfg.adagrad_init, np.float32)
        acc = np.stack([self._acc.get(k, start) for k in keys.tolist()]) + grads ** 2
        self._acc.update(zip(keys.tolist(), acc))
        self.table.update(keys, self.table.embed(keys) - self.cfg.row_lr * grads / (np.sqrt(acc) + 1e-8))

    # -- the loop --------------------------------------------------------------------------------------------
    def run(self, max_events: int | None = None, stop_when_idle: bool = False, should_stop: Any = None) -> None:
        """Train until ``max_events`` were read, or the log is idle (``stop_when_idle``), or ``should_stop()``."""
        next_sync = time.monotonic() + self.cfg.sync_s
        next_snapshot = time.monotonic() + self.cfg.snapshot_s
        self._delta_from = self.offset
        away = 0  # reads failed in a row (the log unreachable)
        while True:
            budget = self.cfg.batch_events if max_events is None else min(self.cfg.batch_events,
                                                                         max_events - self.events_read)
            try:
                batch = self.events.read(self.offset, budget) if budget > 0 else []
                if away:
                    log.info("online: the event log is back after %d failed reads", away)
                away = 0
            except LogUnavailableError as exc:  # a broker restarting: keep what is held, try again, publish on time
                if not away:
                    log.warning("online: event log unavailable (%s); retrying", exc)
                away, batch = away + 1, []
            if batch:
                self.train_events([e for _, e in batch])
                self.offset = batch[-1][0] + 1
                self.events_read += len(batch)
            now = time.monotonic()
            finished = (max_events is not None and self.events_read >= max_events) or (
                not batch and not away and stop_when_idle) or (should_stop is not None and should_stop())
            if now >= next_sync or finished:
                self._delta()
                self._delta_from, next_sync = self.offset, now + self.cfg.sync_s
            if now >= next_snapshot:
                self._snapshot()
                next_snapshot = now + self.cfg.snapshot_s
            if finished:
                return
            if not batch:
                time.sleep(min(5.0, self.cfg.poll_s * 2 ** min(away, 4)))

    def report(self) -> dict[str, Any]:
        return {"snapshot": self.name, "seq": self.seq, "offset": self.offset, "events_read": self.events_read,
                "examples": self.examples, "deltas": self.deltas, "snapshots": self.snapshots,
                "items": len(self.table), "users": len(self.histories), "dropped_touches": self.dropped_touches,
                "delta_keys": self.delta_keys, "delta_bytes": self.delta_bytes,
                "row_bytes": self.table.dim * 4}


def _keys(names: list[str]) -> np.ndarray:
    """The tables' int64 keys of raw item ids."""
    return as_keys(list(names))[0].view(np.int64)
