"""retrec train online: events in, deltas out — rows a follower holds bit-identical to the trainer's at each seq, a
new item recommendable after admission, the touched-key cap, and a SIGKILLed trainer resuming with no lost and no
double-applied delta (real processes)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from retrec.bundle import read_manifest
from retrec.events import Event, LogUnavailableError, open_log
from retrec.pipelines.train.seq.config import SASRecTrainConfig
from retrec.pipelines.train.seq.online import OnlineConfig, OnlineTrainer
from retrec.pipelines.train.seq.sasrec import train_sasrec
from retrec.runtime.online_model import DELTAS, DeltaFollower
from retrec.runtime.sequence_recommender import SequenceRecommender
from retrec.runtime.user_histories import UserHistories

TINY = SASRecTrainConfig(max_len=8, hidden=16, layers=1, heads=2, batch_size=64, epochs=1, patience=1,
                         eval_users=50, negatives=32, warmup_steps=0)


@pytest.fixture(scope="module")
def bundle(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_sasrec(tiny_data, tmp_path_factory.mktemp("online") / "sasrec", TINY, progress=False)


def _stream(tiny_data: Path, n: int, new_item: str = "brand-new-item") -> list[Event]:
    """Events over the data's users and items, the new item bought by many users in the second half."""
    table = pq.read_table(tiny_data / "interactions.parquet").to_pylist()
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        row = table[int(rng.integers(len(table)))]
        item = new_item if i > n // 2 and i % 3 == 0 else str(row["item_id"])
        out.append(Event(str(row["user_id"]), item, 1_700_000_000.0 + i, "view"))
    return out


def _started(bundle: Path, tiny_data: Path, tmp_path: Path, events: int, **cfg: object
             ) -> tuple[Any, Path, OnlineTrainer, DeltaFollower]:
    """A log holding ``events`` events, a trainer on it writing ``tmp_path/online``, and a follower of that folder."""
    log = open_log(tmp_path / "events")
    log.append(_stream(tiny_data, events))
    root = tmp_path / "online"
    trainer = OnlineTrainer(bundle, log, root, OnlineConfig(**cfg))  # type: ignore[arg-type]
    return log, root, trainer, DeltaFollower(root, SequenceRecommender.load)


def test_deltas_carry_the_trainers_rows_bit_identically_and_a_new_item(bundle: Path, tiny_data: Path,
                                                                       tmp_path: Path) -> None:
    log, root, trainer, follower = _started(bundle, tiny_data, tmp_path, 600, sync_s=0.001, batch_events=100,
                                            negatives=32)
    for _ in range(6):  # six batches, a delta after each; the follower checks every seq
        trainer.run(max_events=trainer.events_read + 100)
        assert follower.poll() and follower.seq == trainer.seq
        keys, _ = trainer.table.entries()
        assert np.array_equal(follower.model.table.embed(keys), trainer.table.embed(keys))
    report = trainer.report()
    assert report["examples"] > 300 and report["offset"] == 600 and log.committed("online-trainer") == 600
    assert "brand-new-item" in follower.model.item_ids
    deltas = sorted((root / DELTAS / trainer.name).iterdir())
    spans = [read_manifest(d).config["source_offsets"] for d in deltas]
    assert spans[0][0] == 0 and spans[-1][1] == 600 and all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    rec = follower.model.recommend([["brand-new-item"]], k=5, exclude_seen=False)[0]
    assert rec and follower.describe()["seq"] == 6
    for delta in deltas:  # the row payload is the touched rows, within 10% (a header and the default vector)
        manifest = read_manifest(delta)
        payload = manifest.dims["rows"] * manifest.dims["dim"] * 4
        assert payload > 0 and abs(manifest.files["rows.safetensors"].size - payload) <= 0.1 * payload
    assert report["delta_bytes"] == sum(f.size for d in deltas for f in read_manifest(d).files.values())
    view = UserHistories.from_snapshot(log, root / "current", length=trainer.steps)  # the snapshot's (offset 0)
    assert view.offset == 0 and view.refresh() == 600
    assert all(view.get(u) == list(h) for u, h in trainer.histories.items())  # what serving reads = the trainer's


def test_the_touched_key_cap_bounds_a_delta_and_counts_what_it_drops(bundle: Path, tiny_data: Path,
                                                                      tmp_path: Path) -> None:
    log = open_log(tmp_path / "events")
    log.append(_stream(tiny_data, 300))
    trainer = OnlineTrainer(bundle, log, tmp_path / "online",
                            OnlineConfig(sync_s=3600, batch_events=300, negatives=16, max_touched=20))
    trainer.run(max_events=300)
    delta = sorted((tmp_path / "online" / DELTAS / trainer.name).iterdir())[-1]
    config = read_manifest(delta).config
    assert trainer.dropped_touches > 0 and config["dropped_touches"] == trainer.dropped_touches
    assert 0 < len(pq.read_table(delta / "keys.parquet")) <= 20  # the cap, however many items the events named


def test_a_killed_trainer_resumes_with_no_lost_and_no_double_applied_delta(bundle: Path, tiny_data: Path,
                                                                           tmp_path: Path) -> None:
    log = open_log(tmp_path / "events")
    log.append(_stream(tiny_data, 3000))
    root = tmp_path / "online"
    command = [str(Path(sys.executable).parent / "retrec"), "train", "online", "--model", str(bundle), "--events",
               str(tmp_path / "events"), "--out", str(root), "--sync-s", "0.05", "--batch-events", "20",
               "--negatives", "16", "--until-idle"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(root.glob(f"{DELTAS}/*/*/manifest.json"))) < 3:
        time.sleep(0.1)
        assert first.poll() is None, first.stderr.read().decode()[-2000:] if first.stderr else ""
    first.send_signal(signal.SIGKILL)
    first.wait()
    committed = log.committed("online-trainer")
    assert 0 < committed < 3000
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["offset"] == 3000
    deltas = sorted(p.parent for p in (root / DELTAS).rglob("manifest.json"))
    spans = [read_manifest(d).config["source_offsets"] for d in deltas]
    assert spans[0][0] == 0 and spans[-1][1] == 3000
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))  # contiguous: nothing skipped, nothing twice
    follower = DeltaFollower(root, SequenceRecommender.load)
    follower.poll()
    assert follower.seq == len(deltas)


class _Flaky:
    """An event log whose reads and commits fail (a broker restarting) while ``away`` is set."""

    def __init__(self, log: Any) -> None:
        self.log, self.away, self.failures = log, False, 0

    def __getattr__(self, name: str) -> Any:
        call = getattr(self.log, name)
        if name not in ("read", "commit"):
            return call

        def maybe(*args: Any, **kwargs: Any) -> Any:
            if self.away:
                self.failures += 1
                raise LogUnavailableError("event log at redis://x:6379/0: ConnectionError")
            return call(*args, **kwargs)
        return maybe


def test_a_log_away_is_retried_and_a_lagging_commit_never_trains_events_twice(bundle: Path, tiny_data: Path,
                                                                                tmp_path: Path) -> None:
    log = open_log(tmp_path / "events")
    log.append(_stream(tiny_data, 400))
    flaky, root = _Flaky(log), tmp_path / "online"
    trainer = OnlineTrainer(bundle, flaky, root, OnlineConfig(sync_s=0.001, batch_events=100, negatives=16,
                                                                poll_s=0.01))
    trainer.run(max_events=200)
    flaky.away = True  # reads and commits fail: the trainer waits, holding what it has
    polls = iter(range(4))
    trainer.run(should_stop=lambda: next(polls, None) is None)
    assert flaky.failures >= 3 and trainer.offset == 200 and log.committed("online-trainer") == 200
    flaky.away = False
    trainer.run(max_events=300)
    log.commit("online-trainer", 200, rewind=True)  # a crash between the last delta and its commit
    again = OnlineTrainer(bundle, log, root, OnlineConfig(sync_s=0.001, batch_events=100, negatives=16))
    assert again.offset == 300 and log.committed("online-trainer") == 300  # what the deltas cover, not the commit
    again.run(stop_when_idle=True)
    spans = [read_manifest(d).config["source_offsets"] for d in sorted((root / DELTAS / again.name).iterdir())]
    assert spans[0][0] == 0 and spans[-1][1] == 400
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))  # nothing trained twice, nothing skipped


def test_snapshots_move_current_and_their_deltas_start_at_their_offset(bundle: Path, tiny_data: Path,
                                                                        tmp_path: Path) -> None:
    _, root, trainer, follower = _started(bundle, tiny_data, tmp_path, 400, sync_s=0.001, snapshot_s=3600,
                                          batch_events=100)
    trainer.run(max_events=200)
    trainer._snapshot()  # what the snapshot_s timer does
    trainer.run(max_events=400)
    assert trainer.report()["snapshots"] == 2 and (root / "current").resolve().name == trainer.name
    spans = [read_manifest(d).config["source_offsets"] for d in sorted((root / DELTAS / trainer.name).iterdir())]
    assert spans[0][0] == 200 and spans[-1][1] == 400
    assert follower.poll() and follower.snapshot.name == trainer.name and follower.seq == trainer.seq
    keys, _ = trainer.table.entries()
    assert np.array_equal(follower.model.table.embed(keys), trainer.table.embed(keys))
    first = sorted(p.name for p in (root / "snapshots").iterdir())[0]
    trainer._snapshot()  # a third: the oldest snapshot and its deltas go (two are kept)
    assert not (root / "snapshots" / first).exists() and not (root / DELTAS / first).exists()
    assert len(list((root / "snapshots").iterdir())) == 2


def test_a_bert4rec_bundle_trains_online_too(tiny_data: Path, tmp_path: Path) -> None:
    from retrec.pipelines.train.seq.bert4rec import BERT4RecTrainConfig, train_bert4rec

    cfg = BERT4RecTrainConfig(max_len=8, hidden=16, layers=1, heads=2, batch_size=64, epochs=1, patience=1,
                              eval_users=50, negatives=32, warmup_steps=0)
    bert = train_bert4rec(tiny_data, tmp_path / "bert4rec", cfg, progress=False)
    log = open_log(tmp_path / "events")
    log.append(_stream(tiny_data, 300))
    trainer = OnlineTrainer(bert, log, tmp_path / "online", OnlineConfig(sync_s=3600, batch_events=100))
    trainer.run(max_events=300)
    assert trainer.steps == 7 and trainer.report()["examples"] > 100 and trainer.seq == 1
    follower = DeltaFollower(tmp_path / "online", SequenceRecommender.load)
    follower.poll()
    keys, _ = trainer.table.entries()
    assert np.array_equal(follower.model.table.embed(keys), trainer.table.embed(keys))


@pytest.mark.parametrize("init", [0.0, 0.1])
def test_adagrad_first_steps_follow_the_gradient_only_with_a_started_accumulator(bundle: Path, tiny_data: Path,
                                                                                tmp_path: Path, init: float) -> None:
    """At ``adagrad_init=0`` a row's first step is ``row_lr`` in every coordinate whatever its gradient (a tiny
    gradient moves a row as far as a large one); started at 0.1 the step is proportional to the gradient."""
    _, _, trainer, _ = _started(bundle, tiny_data, tmp_path, 10, sync_s=3600, row_lr=0.01, adagrad_init=init)
    keys, _ = trainer.table.entries()
    keys = keys[:2]
    before = trainer.table.embed(keys).copy()
    grads = np.zeros_like(before)
    grads[0, :] = 1e-4  # a sampled negative's tiny gradient
    grads[1, :] = 1.0  # the target's
    trainer._rows_step(keys, grads)
    moved = np.abs(trainer.table.embed(keys) - before).max(axis=1)
    if init == 0.0:
        np.testing.assert_allclose(moved, [0.01, 0.01], rtol=1e-3)
    else:
        assert moved[0] < 1e-5 and moved[1] > 0.009
