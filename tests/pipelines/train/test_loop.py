"""The shared training loop with a toy adapter: budget, schedule, resume, early stopping, atomic export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from retrec.bundle import Publication, load_bundle
from retrec.pipelines.train import loop as train_loop
from retrec.pipelines.train.dev_gate import PER_QUERY, paired_gain
from retrec.pipelines.train.loop import LoopConfig, LoopState, TorchAdapter, TrainRun, run_training


class ToyAdapter(TorchAdapter):
    """Linear regression on 32 fixed points, 4 batches an epoch; optionally scripted dev scores."""

    name = "toy"

    def __init__(self, scores: list[float] | None = None, fail_export: bool = False) -> None:
        torch.manual_seed(0)
        self.model = torch.nn.Linear(4, 1)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=0.1)
        gen = torch.Generator().manual_seed(1)
        self.x = torch.randn(32, 4, generator=gen)
        self.y = self.x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
        self.scores, self.fail_export = scores, fail_export
        self.snapshots: list[dict[str, torch.Tensor]] = []
        self.lrs: list[float] = []

    def steps_per_epoch(self) -> int:
        return 4

    def batches(self, epoch: int) -> list[np.ndarray]:
        return np.array_split(np.random.default_rng(epoch).permutation(32), 4)

    def step(self, batch: np.ndarray) -> tuple[torch.Tensor, dict[str, float]]:
        self.lrs.append(self.optimizer.param_groups[0]["lr"])
        loss = torch.nn.functional.mse_loss(self.model(self.x[batch]), self.y[batch])
        return loss, {"half": float(loss.detach()) / 2}

    def evaluate(self) -> dict[str, float | None]:
        self.snapshots.append({k: v.clone() for k, v in self.model.state_dict().items()})
        if self.scores is not None:
            return {"dev": self.scores[len(self.snapshots) - 1]}
        with torch.no_grad():
            return {"dev": -float(torch.nn.functional.mse_loss(self.model(self.x), self.y))}

    def export(self, pub: Publication, run: TrainRun) -> dict[str, Any]:
        save_file(dict(self.model.state_dict()), str(pub.path / "weights.safetensors"))
        if self.fail_export:
            raise RuntimeError("parity check failed")
        return {"kind": "model/toy", "name": "toy", "config": {"lr": 0.1},
                "metrics": {"steps": run.state.step, "epochs": run.state.epoch, "best_epoch": run.state.best_epoch}}


def _weights(bundle: Path) -> dict[str, torch.Tensor]:
    return load_file(str(load_bundle(bundle, kind="model/toy").file("weights.safetensors")))


def test_step_budget_schedule_curve_and_one_manifest(tmp_path: Path) -> None:
    adapter = ToyAdapter()
    loop = LoopConfig(lr=0.1, epochs=3, max_steps=6, lr_schedule="linear", warmup_steps=2, eval_at_start=True)
    out = run_training(adapter, loop, tmp_path / "toy", progress=False, command="retrec train toy")
    manifest = load_bundle(out, kind="model/toy")
    ran_on = {"device": "cpu", "precision": "fp32"}  # the loop records where the adapter trained
    assert manifest.metrics == {"steps": 6, "epochs": 1, "best_epoch": -1, **ran_on}
    assert manifest.command == "retrec train toy"
    assert set(manifest.files) == {"weights.safetensors", "training_curve.json"}
    assert adapter.lrs[0] == pytest.approx(0.05) and adapter.lrs[1] == pytest.approx(0.1 * (1 - 1 / 6))
    assert all(a > b for a, b in zip(adapter.lrs[1:], adapter.lrs[2:]))  # linear decay over the 6 steps
    curve = json.loads((out / "training_curve.json").read_text())
    assert curve[0]["step"] == 0 and "dev" in curve[0]  # the untrained model's point
    steps = [c for c in curve if "loss" in c]
    assert [c["step"] for c in steps] == [1, 2, 3, 4, 5, 6] and steps[0]["half"] == pytest.approx(steps[0]["loss"] / 2)
    assert [(c["epoch"], c["step"]) for c in curve if "dev" in c] == [(0, 0), (1, 4), (2, 6)]
    assert json.loads((tmp_path / "toy.ckpt" / "curve.json").read_text()) == curve
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy", "toy.ckpt"]  # no temporary leftovers


def test_a_parameter_group_lr_scale_multiplies_the_schedule(tmp_path: Path) -> None:
    adapter = ToyAdapter()
    adapter.optimizer = torch.optim.AdamW([{"params": [adapter.model.weight]},
                                           {"params": [adapter.model.bias], "lr_scale": 10.0}], lr=0.1)
    seen: list[tuple[float, float]] = []
    step = adapter.step

    def record(batch: np.ndarray) -> tuple[torch.Tensor, dict[str, float]]:
        seen.append((adapter.optimizer.param_groups[0]["lr"], adapter.optimizer.param_groups[1]["lr"]))
        return step(batch)

    adapter.step = record  # type: ignore[method-assign]
    run_training(adapter, LoopConfig(lr=0.1, epochs=1, max_steps=3, lr_schedule="linear"), tmp_path / "toy",
                 progress=False)
    assert len(seen) == 3 and seen[0][0] > seen[2][0] > 0
    assert all(head == pytest.approx(10 * base) for base, head in seen)


def test_resume_mid_epoch_gives_the_uninterrupted_weights(tmp_path: Path) -> None:
    loop = {"lr": 0.1, "epochs": 2, "checkpoint_every": 2}
    whole = run_training(ToyAdapter(), LoopConfig(**loop, max_steps=7), tmp_path / "whole", progress=False)
    run_training(ToyAdapter(), LoopConfig(**loop, max_steps=3), tmp_path / "cut", progress=False)
    ckpt = torch.load(tmp_path / "cut.ckpt" / "last.pt", weights_only=True)
    state = LoopState.from_tensors(ckpt["state"])
    assert (state.epoch, state.batch, state.step) == (0, 3, 3)
    resumed = run_training(ToyAdapter(), LoopConfig(**loop, max_steps=7), tmp_path / "cut", resume=True,
                           progress=False)
    for name, value in _weights(whole).items():
        assert torch.equal(value, _weights(resumed)[name])
    curve = json.loads((resumed / "training_curve.json").read_text())
    assert [c["step"] for c in curve if "loss" in c] == [1, 2, 3, 4, 5, 6, 7]
    # A fresh run (no --resume) starts over and removes the old checkpoints.
    run_training(ToyAdapter(), LoopConfig(**loop, max_steps=1), tmp_path / "cut", progress=False)
    assert load_bundle(tmp_path / "cut").metrics["steps"] == 1


def test_resume_reads_an_old_format_checkpoint(tmp_path: Path) -> None:
    adapter = ToyAdapter()
    ckpt = tmp_path / "old.ckpt"
    ckpt.mkdir()
    torch.save({"model": adapter.model.state_dict(), "optimizer": adapter.optimizer.state_dict(),
                "state": {k: torch.tensor(v) for k, v in {"epoch": 1, "batch": 0, "step": 4, "seconds": 2.0}.items()}},
               ckpt / "last.pt")
    (ckpt / "curve.json").write_text(json.dumps([{"step": 4, "epoch": 1, "loss": 1.0}]))
    out = run_training(adapter, LoopConfig(lr=0.1, epochs=2), tmp_path / "old", resume=True, progress=False)
    assert load_bundle(out).metrics == {"steps": 8, "epochs": 2, "best_epoch": -1, "device": "cpu", "precision": "fp32"}


def test_early_stopping_exports_the_best_epoch(tmp_path: Path) -> None:
    adapter = ToyAdapter(scores=[0.1, 0.5, 0.3, 0.2, 0.9])
    loop = LoopConfig(lr=0.1, epochs=5, monitor="dev", keep_best=True, patience=2, step_curve=False,
                      stop_within_epoch=False)
    out = run_training(adapter, loop, tmp_path / "best", progress=False)
    assert len(adapter.snapshots) == 4  # epochs 3 and 4 did not beat epoch 2: stopped before epoch 5
    assert load_bundle(out).metrics["best_epoch"] == 2
    for name, value in adapter.snapshots[1].items():
        assert torch.equal(_weights(out)[name], value)
    curve = json.loads((out / "training_curve.json").read_text())
    assert [c["epoch"] for c in curve] == [1, 2, 3, 4] and all("loss" in c and "lr" in c for c in curve)
    assert (tmp_path / "best.ckpt" / "best.safetensors").is_file()
    with pytest.raises(ValueError, match="monitored metric"):
        LoopConfig(lr=0.1, epochs=1, patience=2)


def test_a_failing_export_publishes_nothing(tmp_path: Path) -> None:
    out = run_training(ToyAdapter(), LoopConfig(lr=0.1, epochs=1), tmp_path / "toy", progress=False)
    before = load_bundle(out)
    with pytest.raises(RuntimeError, match="parity check failed"):
        run_training(ToyAdapter(fail_export=True), LoopConfig(lr=0.1, epochs=2), out, progress=False)
    assert load_bundle(out).version == before.version and load_bundle(out).metrics["epochs"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy", "toy.ckpt"]


def test_progress_prints_plain_lines_when_not_a_terminal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_training(ToyAdapter(), LoopConfig(lr=0.1, epochs=1), tmp_path / "toy", progress=True)
    out = capsys.readouterr().out
    assert "toy: epoch 1 step 1/4 loss" in out and "toy: epoch 1 step 4/4" in out
    assert "epoch 1: step 4/4 loss" in out and "\x1b[" not in out  # no terminal control codes in a log


def test_the_start_is_a_candidate_and_is_exported_when_training_does_not_beat_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    adapter = ToyAdapter(scores=[0.5, 0.3, 0.4])  # the start, then two epochs that are worse
    loop = LoopConfig(lr=0.1, epochs=2, monitor="dev", keep_best=True, eval_at_start=True, step_curve=False,
                      stop_within_epoch=False)
    out = run_training(adapter, loop, tmp_path / "start", progress=True)
    for name, value in adapter.snapshots[0].items():  # the untrained weights
        assert torch.equal(_weights(out)[name], value)
    assert "no gain on dev" in capsys.readouterr().out


def test_dev_evaluations_inside_an_epoch_pick_the_best_step(tmp_path: Path) -> None:
    adapter = ToyAdapter(scores=[0.1, 0.2, 0.7, 0.3, 0.2])  # start, steps 1, 2, 3 and the epoch end (step 4)
    loop = LoopConfig(lr=0.1, epochs=1, monitor="dev", keep_best=True, eval_at_start=True, eval_every=1)
    out = run_training(adapter, loop, tmp_path / "steps", progress=False)
    curve = json.loads((out / "training_curve.json").read_text())
    assert [c["step"] for c in curve if "dev" in c] == [0, 1, 2, 3, 4]
    for name, value in adapter.snapshots[2].items():  # after step 2
        assert torch.equal(_weights(out)[name], value)


class GatedAdapter(ToyAdapter):
    """Scripted dev scores with 40 dev queries each: the start's, then each evaluation's shifted by ``gains``."""

    def __init__(self, gains: list[np.ndarray]) -> None:
        super().__init__(scores=[0.5, *(0.5 + float(g.mean()) for g in gains)])
        self.per_query = [np.full(40, 0.5), *(0.5 + g for g in gains)]

    def evaluate(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(super().evaluate())
        out[PER_QUERY] = {f"q{i}": float(v) for i, v in enumerate(self.per_query[len(self.snapshots) - 1])}
        return out


@pytest.mark.parametrize(("gain", "gate", "exported"), [("noise", True, "start"), ("noise", False, "trained"),
                                                         ("consistent", True, "trained")])
def test_the_dev_gate_exports_the_start_unless_the_gain_is_significant(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], gain: str, gate: bool, exported: str) -> None:
    rng = np.random.default_rng(0)
    # noise: a mean gain of +0.01 under per-query swings of ±0.3; consistent: +0.05 on nearly every query
    gains = rng.normal(0.0, 0.3, 40) + 0.01 if gain == "noise" else rng.normal(0.05, 0.02, 40)
    adapter = GatedAdapter([gains - gains.mean() + (0.01 if gain == "noise" else 0.05)])
    loop = LoopConfig(lr=0.1, epochs=1, monitor="dev", keep_best=True, eval_at_start=True, dev_gate=gate,
                      step_curve=False)
    out = run_training(adapter, loop, tmp_path / "gated", progress=True)
    want = adapter.snapshots[0 if exported == "start" else 1]
    assert all(torch.equal(_weights(out)[name], value) for name, value in want.items())
    verdict = load_bundle(out).metrics.get("dev_gate")
    if not gate:
        assert verdict is None
        return
    assert verdict["exported"] == exported and verdict["queries"] == 40
    assert verdict["significant"] is (exported == "trained")
    assert verdict["interval"][0] <= verdict["lower_bound"] <= verdict["gain"] <= verdict["interval"][1]
    printed = capsys.readouterr().out
    assert ("not significant" in printed) is (exported == "start")
    assert (out.with_name("gated.ckpt") / "start.safetensors").is_file()


def test_the_gate_asks_whether_the_gain_is_above_zero_one_sided() -> None:
    # 100 dev queries, mean gain 0.018, standard error 0.01 (t = 1.8): the two-sided 95% interval reaches below 0,
    # the one-sided 95% lower bound does not — the gate exports (the SciFact sparse run's case: dev +0.029 with a
    # two-sided interval from -0.002 gained +0.068 on test)
    z = np.random.default_rng(1).normal(size=100)
    diffs = 0.018 + (z - z.mean()) / z.std() * 0.1
    verdict = paired_gain(dict.fromkeys(map(str, range(100)), 0.5), {str(i): 0.5 + d for i, d in enumerate(diffs)})
    assert verdict["interval"][0] < 0 < verdict["lower_bound"] and verdict["significant"], verdict
    verdict = paired_gain(dict.fromkeys(map(str, range(100)), 0.5), {str(i): 0.5 + d - 0.01 for i, d in
                                                                     enumerate(diffs)})  # t = 0.8: refused
    assert verdict["lower_bound"] < 0 and not verdict["significant"], verdict


class Clock:
    """The training loop's clock in a test: it moves only when a step or an evaluation says it took time, so timing
    rules are checked exactly, whatever the machine's speed or load."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


class SlowEvalAdapter(ToyAdapter):
    """A step costs 10 ms, an evaluation 50 ms (on ``clock``): evaluating after every step would take most of the
    time."""

    def __init__(self, clock: Clock, eval_s: float = 0.05, step_s: float = 0.01) -> None:
        super().__init__()
        self.clock, self.eval_s, self.step_s = clock, eval_s, step_s

    def step(self, batch: np.ndarray) -> tuple[torch.Tensor, dict[str, float]]:
        self.clock.now += self.step_s
        return super().step(batch)

    def evaluate(self) -> dict[str, float | None]:
        self.clock.now += self.eval_s
        return super().evaluate()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(train_loop, "time", fake)
    return fake


def test_eval_share_skips_evaluations_that_would_take_too_much_of_the_time(tmp_path: Path, clock: Clock) -> None:
    adapter = SlowEvalAdapter(clock)
    loop = LoopConfig(lr=0.1, epochs=3, monitor="dev", keep_best=True, eval_at_start=True, eval_every=1,
                      eval_share=0.5)
    out = run_training(adapter, loop, tmp_path / "share", progress=False)
    evaluated = [c["step"] for c in json.loads((out / "training_curve.json").read_text()) if "dev" in c]
    assert evaluated[0] == 0 and evaluated[-1] == 12  # the start and the last always run
    assert 2 < len(evaluated) < 13  # some, not all, of the 12 due evaluations ran
    unlimited = run_training(SlowEvalAdapter(clock), LoopConfig(lr=0.1, epochs=3, monitor="dev", keep_best=True,
                                                                eval_at_start=True, eval_every=1),
                             tmp_path / "all", progress=False)
    assert len([c for c in json.loads((unlimited / "training_curve.json").read_text()) if "dev" in c]) == 13


def test_the_time_budget_covers_the_closing_evaluation(tmp_path: Path, clock: Clock) -> None:
    # a start evaluation of 0.45 s, steps of 10 ms, a 1.2 s budget: steps stop early enough for the closing
    # evaluation to end within the budget (before, it ran after the budget: ~1.65 s)
    adapter = SlowEvalAdapter(clock, eval_s=0.45)
    loop = LoopConfig(lr=0.1, epochs=1000, max_minutes=1.2 / 60, monitor="dev", keep_best=True, eval_at_start=True,
                      lr_schedule="linear", eval_share=0.3)  # only the start and the closing evaluation run
    out = run_training(adapter, loop, tmp_path / "budget", progress=False)
    curve = json.loads((out / "training_curve.json").read_text())
    assert [c["step"] for c in curve if "dev" in c] == [0, curve[-1]["step"]]
    assert clock.now <= 1.2 + 1e-9 and curve[-1]["step"] > 5, (clock.now, curve[-1])
    assert adapter.lrs[-1] < 0.25 * adapter.lrs[len(adapter.lrs) // 4]  # the schedule decays over the shorter time


def test_a_budget_that_ends_inside_the_first_epoch_says_it_cut_training_short(
        tmp_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    # steps of 25 ms, 4 an epoch: a 60 ms budget ends after 3 steps, inside the first epoch
    loop = LoopConfig(lr=0.1, epochs=3, max_minutes=0.06 / 60)
    with caplog.at_level("WARNING", logger="retrec.train"):
        out = run_training(SlowEvalAdapter(clock, step_s=0.025), loop, tmp_path / "short", progress=False)
    budget = load_bundle(out).metrics["time_budget"]
    assert budget == {"epochs": 0.75, "cut_short": True}
    assert "cut short" in caplog.text and "of one epoch" in caplog.text
    out = run_training(SlowEvalAdapter(clock, eval_s=0.0), LoopConfig(lr=0.1, epochs=30, max_minutes=0.1 / 60),
                       tmp_path / "b", progress=False)  # 10-11 steps of 10 ms: over two epochs, not cut short
    budget = load_bundle(out).metrics["time_budget"]
    assert not budget["cut_short"] and budget["epochs"] >= 2.5, budget
    out = run_training(SlowEvalAdapter(clock), LoopConfig(lr=0.1, epochs=1), tmp_path / "c", progress=False)
    assert "time_budget" not in load_bundle(out).metrics  # no budget reached: nothing said


def test_place_resolves_the_device_and_the_loop_records_it(tmp_path: Path) -> None:
    adapter = ToyAdapter()
    adapter.place("auto", "fp32")  # auto: a GPU when torch sees one
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert (adapter.device, adapter.precision) == (expected, "fp32")
    adapter.model.to(adapter.device)
    adapter.x, adapter.y = adapter.x.to(adapter.device), adapter.y.to(adapter.device)
    out = run_training(adapter, LoopConfig(lr=0.1, epochs=1), tmp_path / "b", progress=False)
    assert load_bundle(out).metrics["device"] == expected
    with pytest.raises(ValueError, match="device must be auto, cpu, cuda or cuda:N"):
        ToyAdapter().place("tpu", "fp32")
    with pytest.raises(ValueError, match="precision must be auto, bf16 or fp32"):
        ToyAdapter().place("cpu", "fp16")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="torch sees no CUDA GPU"):
            ToyAdapter().place("cuda:0", "auto")
