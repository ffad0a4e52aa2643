"""retrec.runtime.online_model and the online Recommender deployment (in-process): deltas applied in seq order with
rows bit-identical to the trainer's table, a new item recommendable once its delta is in, a new snapshot loaded
whole, a delta that does not fit never half-applied, the served version naming the seq."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from retrec.bundle import write_manifest
from retrec.events import Event, open_log
from retrec.runtime.online_model import CURRENT, SNAPSHOTS, DeltaFollower, delta_path
from retrec.runtime.sequence_recommender import SequenceRecommender
from retrec.tables import EmbeddingTable
from tests.tiny_models import ITEMS, tiny_sequence_recommender

DIM = 4


class Trainer:
    """Stands in for the online trainer: a live table, snapshots and deltas in the online layout."""

    def __init__(self, root: Path, seed: int = 0) -> None:
        self.root, self.rng = root, np.random.default_rng(seed)
        self.table = EmbeddingTable(DIM)
        self.table.observe(list(ITEMS), now=0.0)
        self.table.update(list(ITEMS), self.rng.standard_normal((len(ITEMS), DIM)), now=0.0)
        self.seq = 0

    def snapshot(self, name: str) -> Path:
        folder = self.root / SNAPSHOTS / name
        tiny_sequence_recommender(folder, kind="model/sasrec", dim=DIM)  # the user encoder; its table replaced
        shutil.rmtree(folder / "items")
        self.table.snapshot(folder / "items", name="items")
        write_manifest(folder, kind="model/sasrec", name="tiny-seq", dims={"history_len": 4, "row_dim": DIM})
        link = self.root / CURRENT
        tmp = self.root / f".{CURRENT}.tmp"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(Path(SNAPSHOTS) / name)
        os.replace(tmp, link)
        self.name, self.seq = name, 0
        return folder

    def delta(self, items: list[str]) -> Path:
        self.table.observe(items, now=1.0)
        self.table.update(items, self.rng.standard_normal((len(items), DIM)), now=1.0)
        self.seq += 1
        path = delta_path(self.root, self.name, self.seq)
        self.table.export_delta(path, name="items")
        return path

    def rows(self, items: list[str]) -> np.ndarray:
        return self.table.embed(items)


def test_deltas_apply_in_order_bit_identical_and_a_new_item_becomes_recommendable(tmp_path: Path) -> None:
    trainer = Trainer(tmp_path)
    trainer.snapshot("v1")
    follower = DeltaFollower(tmp_path, SequenceRecommender.load)
    assert (follower.seq, follower.poll()) == (0, False)
    before = follower.model
    trainer.delta([ITEMS[0], ITEMS[1]])
    trainer.delta([ITEMS[1], "brand-new"])
    assert follower.poll() and follower.seq == 2
    held = follower.model.table.embed([*ITEMS, "brand-new"])
    assert np.array_equal(held, trainer.rows([*ITEMS, "brand-new"]))  # bit-identical to the trainer's rows
    assert "brand-new" in follower.model.item_ids and "brand-new" not in before.item_ids  # the old object intact
    top = follower.model.recommend([[ITEMS[2]]], k=len(ITEMS) + 1, exclude_seen=True)[0]
    assert "brand-new" in [i for i, _ in top]
    assert follower.describe()["seq"] == 2 and follower.describe()["last_delta_age_s"] is not None

    trainer.snapshot("v2")  # new dense weights: loaded whole, deltas counted from 1 again
    trainer.delta([ITEMS[3]])
    assert follower.poll() and (follower.snapshot.name, follower.seq) == ("v2", 1)
    assert np.array_equal(follower.model.table.embed(list(ITEMS)), trainer.rows(list(ITEMS)))


def test_a_delta_that_does_not_fit_reloads_the_snapshot_never_half_applied(tmp_path: Path) -> None:
    trainer = Trainer(tmp_path)
    trainer.snapshot("v1")
    follower = DeltaFollower(tmp_path, SequenceRecommender.load)
    other = Trainer(tmp_path / "elsewhere", seed=1)
    other.snapshot("x")
    stray = other.delta([ITEMS[0]])  # based on another table's version
    target = delta_path(tmp_path, "v1", 1)
    target.parent.mkdir(parents=True)
    stray.rename(target)
    assert follower.poll() and follower.seq == 0 and follower.reloads == 2
    assert np.array_equal(follower.model.table.embed(list(ITEMS)), trainer.rows(list(ITEMS)))


def test_the_online_recommender_deployment_follows_and_names_the_seq(tmp_path: Path) -> None:
    from retrec.serving.recommenders import Recommender

    trainer = Trainer(tmp_path)
    trainer.snapshot("v1")
    rec = Recommender.func_or_class(str(tmp_path), online=True, poll_s=0.05)
    try:
        first = rec._recommend([ITEMS[0]], 3, True)
        assert first["version"].endswith("+0")
        trainer.delta(["brand-new"])
        deadline = time.monotonic() + 10
        while rec.info()["online"]["seq"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        info = rec.info()
        assert info["online"]["seq"] == 1 and info["items"] == len(ITEMS) + 1
        assert rec._recommend([ITEMS[0]], 3, True)["version"].endswith("+1")
        time.sleep(0.2)  # a poll after the delta: the freshness gauges follow it
        metrics = rec.metrics.registry
        model = rec.manifest.name
        assert metrics.get_sample_value("retrec_online_seq", {"model": model}) == 1
        assert 0 <= metrics.get_sample_value("retrec_online_staleness_seconds", {"model": model}) < 30
    finally:
        rec._stop.set()
    events = open_log(tmp_path / "events")
    events.append([Event("u1", ITEMS[0], 1.0), Event("u1", ITEMS[1], 2.0)])
    with_users = Recommender.func_or_class(str(tmp_path), online=True, poll_s=0.05, events=str(tmp_path / "events"))
    try:
        assert with_users.histories is not None and with_users.histories.get("u1") == [ITEMS[0], ITEMS[1]]
        events.append([Event("u1", ITEMS[2], 3.0)])
        deadline = time.monotonic() + 10
        while len(with_users.histories.get("u1")) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        by_user = with_users._recommend([], 6, True, user="u1")
        assert [i for i, _ in by_user["items"]] == [i for i, _ in with_users._recommend(
            [ITEMS[0], ITEMS[1], ITEMS[2]], 6, True)["items"]]
        assert not {ITEMS[0], ITEMS[1], ITEMS[2]} & {i for i, _ in by_user["items"]}  # its history excluded
    finally:
        with_users._stop.set()
    assert rec._recommend([], 3, True, user="u1")["error"]["code"] == "no_user_histories"
    away = Recommender.func_or_class(str(tmp_path), online=True, poll_s=60, events="redis://127.0.0.1:1/0?key=k")
    try:  # a broker away: the replica starts and serves histories given; a user is a failure (503) until it returns
        assert away.histories is None and away._recommend([ITEMS[0]], 3, True)["items"]
        with pytest.raises(RuntimeError, match="user histories unavailable"):
            away._recommend([], 3, True, user="u1")
    finally:
        away._stop.set()
    with pytest.raises(Exception, match=r"current: no manifest\.json"):
        Recommender.func_or_class(str(tmp_path / "empty"), online=True)


def test_models_asks_an_online_recommender_each_time_and_keeps_its_last_entry_when_it_is_away() -> None:
    import asyncio

    from retrec.serving.errors import ApiError
    from retrec.serving.recommenders import model_info

    class Handle:  # what a deployment handle's ``info.remote()`` gives: an awaitable
        def __init__(self, answers: list) -> None:
            self.answers, self.info = answers, self

        def remote(self) -> object:
            answer = self.answers.pop(0)

            async def reply() -> dict:
                if isinstance(answer, Exception):
                    raise answer
                return answer
            return reply()

    async def scenario() -> None:
        online = Handle([{"name": "m", "online": {"seq": 1}}, {"name": "m", "online": {"seq": 2}}, RuntimeError()])
        first = await model_info("m", online, None)
        second = await model_info("m", online, first)
        assert (first["online"]["seq"], second["online"]["seq"]) == (1, 2)  # asked again: the seq moved
        away = await model_info("m", online, second)
        assert away["online"] == {"seq": 2, "unreachable": True}
        batch = Handle([{"name": "b"}])
        held = await model_info("b", batch, None)
        assert await model_info("b", batch, held) is held  # a batch model is asked once
        with pytest.raises(ApiError):
            await model_info("x", Handle([RuntimeError()]), None)

    asyncio.run(scenario())
