"""One training loop for every trainable kind, driven by a small per-model :class:`TrainAdapter`.

The loop owns what every trainer needs: the budget (epochs, ``max_steps``, ``max_minutes``), the
learning-rate schedule (:mod:`retrec.pipelines.train.lr_schedule`), checkpoints every N steps and at each
epoch end with ``resume``, a progress bar (periodic plain lines when the output is not a terminal),
the training curve, dev scoring each epoch with best tracking and early stopping, and the export:
the adapter writes its files into a :func:`retrec.bundle.publish` directory, the loop adds
``training_curve.json`` and the manifest is written once, last, and published atomically.

Checkpoints live beside the bundle in ``<out>.ckpt/``: ``last.pt`` (``{"model", "optimizer",
"state", …}``, loaded with ``weights_only=True``), ``curve.json`` and, when the best epoch is kept,
``best.safetensors``. Every checkpoint file is written atomically.

Example::

    loop = LoopConfig(lr=3e-5, epochs=3, max_minutes=10, lr_schedule="linear", checkpoint_every=50)
    bundle = run_training(MyAdapter(...), loop, "artifacts/model", resume=False)
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Protocol

import torch
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from safetensors.torch import load_file, save

from retrec.bundle import Publication, atomic_open, atomic_write_bytes, atomic_write_text, publish
from retrec.console import ProgressLog, make_console
from retrec.pipelines.train.dev_gate import PER_QUERY, paired_gain
from retrec.pipelines.train.lr_schedule import budget_progress, check_schedule, scheduled_lr
from retrec.pipelines.train.tracking import notify
from retrec.process_env import FreedMemoryKept, resident_bytes

log = logging.getLogger("retrec.train")
LAST, CURVE, BEST = "last.pt", "curve.json", "best.safetensors"
START, START_SCORES, BEST_SCORES = "start.safetensors", "start_per_query.json", "best_per_query.json"
CURVE_FILE = "training_curve.json"  # in the bundle


@dataclass
class LoopConfig:
    """How long and how to train; the model-specific parts stay in the adapter."""

    lr: float
    epochs: int
    max_minutes: float | None = None
    max_steps: int | None = None
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    warmup_fraction: float = 0.0  # warm-up over this share of the budget (time or steps; lr_schedule.py)
    keep_freed_memory: bool = False  # glibc malloc keeps freed blocks for the next step (process_env.py)
    memory_ceiling_gb: float | None = None  # with keep_freed_memory: past this RSS after a step, free pages are
    # returned to the system (the heap's fragmentation is bounded; the next step faults them in again)
    grad_clip: float | None = None
    checkpoint_every: int = 0  # steps between checkpoints within an epoch (0: at epoch ends only)
    seed: int = 0
    reseed_steps: bool = False  # torch.manual_seed per step: dropout reproducible across a resume
    stop_within_epoch: bool = True  # check the budget after every step (else at epoch ends)
    step_curve: bool = True  # one curve point per step (else per epoch, with the epoch's mean loss)
    eval_at_start: bool = False  # a curve point for the untrained model (with keep_best: a candidate too)
    eval_every: int = 0  # steps between dev evaluations inside an epoch (0: at epoch ends only)
    eval_share: float | None = None  # most of the elapsed time dev evaluation may take: a due evaluation that
    # would exceed it is skipped (the start's and the last one always run)
    monitor: str | None = None  # evaluate() key tracked for the best epoch
    keep_best: bool = False  # export the best evaluated weights (the start's included) instead of the last
    dev_gate: bool = False  # with keep_best and per-query dev values: the start unless the gain is significant
    patience: int | None = None  # epochs without a better ``monitor`` before stopping

    def __post_init__(self) -> None:
        check_schedule(self.lr_schedule)
        if (self.keep_best or self.patience is not None) and self.monitor is None:
            raise ValueError("keep_best and patience need a monitored metric (monitor=...)")


@dataclass
class LoopState:
    """The loop's counters, saved in every checkpoint under ``"state"``."""

    epoch: int = 0  # completed epochs
    batch: int = 0  # batches done in the current epoch
    step: int = 0
    seconds: float = 0.0
    best: float = -1.0
    best_epoch: int = -1
    best_step: int = -1  # 0: the starting weights (eval_at_start) are the best evaluated
    bad_epochs: int = 0
    eval_seconds: float = 0.0  # spent in dev evaluation
    eval_last: float = 0.0  # the last evaluation's duration

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: torch.tensor(v) for k, v in asdict(self).items()}

    @classmethod
    def from_tensors(cls, state: dict[str, torch.Tensor]) -> LoopState:
        known = {f.name: f.type for f in fields(cls)}
        values = {k: v.item() for k, v in state.items() if k in known}
        return cls(**{k: (float(v) if known[k] == "float" else int(v)) for k, v in values.items()})


@dataclass
class TrainRun:
    """What the adapter's export gets: the curve, the final counters and the planned steps."""

    curve: list[dict[str, Any]]
    state: LoopState
    total_steps: int
    gate: dict[str, Any] | None = None  # the dev gate's verdict (dev_gate.paired_gain + "exported")


class TrainAdapter(Protocol):
    """The per-model part of training. ``model`` and ``optimizer`` are the loop's to step."""

    name: str
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer

    def steps_per_epoch(self) -> int:
        """Planned optimizer steps per epoch (the budget and the schedule's length)."""

    def batches(self, epoch: int) -> list[Any]:
        """Epoch ``epoch``'s batches (1-based); the same list on a resume when ``stop_within_epoch``."""

    def step(self, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of one batch (the loop back-propagates and steps) and any parts to record in the curve."""

    def evaluate(self) -> dict[str, Any]:
        """Dev metrics after each epoch (keys go into the curve; ``monitor`` is one of them), and optionally each
        dev query's value of ``monitor`` under :data:`~retrec.pipelines.train.dev_gate.PER_QUERY` (not in the curve:
        the dev gate's input)."""

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint holds besides the loop's state (tensors only: loaded with weights_only)."""

    def load_state_dict(self, checkpoint: dict[str, Any]) -> None:
        """Restore from a checkpoint; ``checkpoint["state"]`` has the loop's counters."""

    def export(self, pub: Publication, run: TrainRun) -> dict[str, Any]:
        """Write the bundle's files under ``pub.path``; return its manifest fields (kind, name, config, …)."""


class TorchAdapter:
    """Defaults for adapters: where they run (:meth:`place`), checkpoints of the model's and the optimizer's state.

    An adapter calls ``self.place(cfg.device, cfg.precision)`` first, puts its model on ``self.device`` and runs
    its forward passes under ``autocast(self.precision, self.device)``; the loop records both in the bundle
    (``metrics.device``, ``metrics.precision``). Exports and their parity checks run on the CPU.
    """

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    name: str
    device: str = "cpu"
    precision: str = "fp32"

    def place(self, device: str, precision: str) -> None:
        """Resolve ``auto`` and check the device (a GPU asked for that torch does not see is refused)."""
        from retrec.models.precision import resolve_device, resolve_precision

        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        log.info("%s: training on %s, %s", getattr(self, "name", "model"), self.device, self.precision)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, checkpoint: dict[str, Any]) -> None:
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])


class _Reporter(ProgressLog):
    """The training loop's progress: epoch, step and loss on a bar, or a plain line every ``every_s`` seconds."""

    def __init__(self, name: str, total: int, enabled: bool, every_s: float = 30.0) -> None:
        super().__init__(name, total, enabled=enabled, every_s=every_s, out=make_console(), transient=False,
                         columns=(TextColumn(f"[bold]{name}[/] epoch {{task.fields[epoch]}}"), BarColumn(),
                                  MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.4f}"),
                                  TimeElapsedColumn()),
                         fields={"epoch": 0, "loss": 0.0})

    def update(self, step: int, epoch: int, loss: float, lr: float, seconds: float) -> None:
        self.set(step, f"{self.name}: epoch {epoch} step {step}/{self.total} loss {loss:.4f} lr {lr:.3g} "
                       f"({seconds / 60:.1f} min)", epoch=epoch, loss=loss)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _save_checkpoint(ckpt_dir: Path, adapter: TrainAdapter, state: LoopState, curve: list[dict]) -> None:
    with atomic_open(ckpt_dir / LAST) as fh:
        torch.save({**adapter.state_dict(), "state": state.tensors()}, fh)
    atomic_write_text(ckpt_dir / CURVE, json.dumps(curve))


def run_training(adapter: TrainAdapter, loop: LoopConfig, out: str | Path, *, resume: bool = False,
                 progress: bool = True, command: str | None = None) -> Path:
    """Train ``adapter`` within ``loop``'s budget and publish its bundle at ``out`` (checkpoints: ``out.ckpt/``)."""
    out = Path(out)
    ckpt_dir = out.with_name(out.name + ".ckpt")
    per_epoch = max(1, adapter.steps_per_epoch())
    total = loop.epochs * per_epoch if loop.max_steps is None else min(loop.max_steps, loop.epochs * per_epoch)
    state, curve = LoopState(), []
    if resume and (ckpt_dir / LAST).is_file():
        checkpoint = torch.load(ckpt_dir / LAST, weights_only=True, map_location="cpu")
        state = LoopState.from_tensors(checkpoint["state"])
        adapter.load_state_dict(checkpoint)
        curve = json.loads((ckpt_dir / CURVE).read_text()) if (ckpt_dir / CURVE).is_file() else []
        log.warning("resumed from %s at epoch %d, step %d", ckpt_dir, state.epoch, state.step)
    elif not resume and ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter() - state.seconds
    model, opt = adapter.model, adapter.optimizer

    def elapsed() -> float:
        return time.perf_counter() - started

    def minutes_left_for_steps() -> float | None:
        """The budget less the closing dev evaluation (as long as the last one): the budget covers it too."""
        return None if loop.max_minutes is None else max(loop.max_minutes - state.eval_last / 60, 1e-3)

    def out_of_time() -> bool:
        budget = minutes_left_for_steps()
        return budget is not None and elapsed() > 60 * budget

    def evaluate(point: dict[str, Any]) -> dict[str, float | None]:
        """Dev metrics as a curve point; the best evaluated weights are kept (``keep_best``)."""
        log.info("%s: dev evaluation at step %d", adapter.name, state.step)
        began = time.perf_counter()
        metrics = dict(adapter.evaluate())
        per_query = metrics.pop(PER_QUERY, None)
        state.eval_last = time.perf_counter() - began
        state.eval_seconds += state.eval_last
        state.seconds = elapsed()
        curve.append(notify({**point, **metrics, "seconds": round(state.seconds, 1)}))  # and to a tracker
        gated = loop.dev_gate and loop.keep_best and per_query is not None
        if _track_best(loop, state, metrics, point["epoch"]) and loop.keep_best:
            state.best_step = state.step
            weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
            atomic_write_bytes(ckpt_dir / BEST, save(weights))
            if state.step == 0 and gated:
                atomic_write_bytes(ckpt_dir / START, save(weights))
                atomic_write_text(ckpt_dir / START_SCORES, json.dumps(per_query))
            if gated:
                atomic_write_text(ckpt_dir / BEST_SCORES, json.dumps(per_query))
        return metrics

    def eval_fits() -> bool:
        """Whether one more evaluation (as long as the last) keeps evaluation within ``eval_share`` of the time."""
        if loop.eval_share is None or not state.eval_last:
            return True
        return state.eval_seconds + state.eval_last <= loop.eval_share * (elapsed() + state.eval_last)

    if loop.eval_at_start and not curve:
        evaluate({"step": 0, "epoch": 0})
        state.bad_epochs = 0
    log.info("%s: training, %d steps at most (%d per epoch)", adapter.name, total, per_epoch)
    memory = FreedMemoryKept(loop.keep_freed_memory, loop.memory_ceiling_gb)
    with _Reporter(adapter.name, total, progress) as report, memory:
        if loop.keep_freed_memory and not memory.available:
            log.info("%s: not glibc; freed memory is managed by the C library's defaults", adapter.name)
        while state.epoch < loop.epochs and state.step < total and not out_of_time():
            epoch = state.epoch + 1
            log.info("%s: planning epoch %d", adapter.name, epoch)
            batches = adapter.batches(epoch)
            log.info("%s: training epoch %d", adapter.name, epoch)
            model.train()
            window: list[float] = []
            epoch_loss, count, lr = 0.0, 0, loop.lr
            for b in range(state.batch, len(batches)):
                budget = minutes_left_for_steps()
                lr = scheduled_lr(loop.lr, state.step, budget_progress(elapsed(), budget, state.step, total),
                                  loop.lr_schedule, loop.warmup_steps, loop.warmup_fraction,
                                  budget_progress(elapsed(), budget, state.step + 1, total))
                for group in opt.param_groups:  # a group may scale the schedule (e.g. a new head's own rate)
                    group["lr"] = lr * group.get("lr_scale", 1.0)
                if loop.reseed_steps:
                    torch.manual_seed(loop.seed * 1_000_003 + state.step)
                log.debug("%s: step %d", adapter.name, state.step + 1)  # phases for memory profiles
                loss, parts = adapter.step(batches[b])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if loop.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), loop.grad_clip)
                opt.step()
                value = float(loss.detach())
                trimmed = memory.after_step()
                state.step, state.batch, state.seconds = state.step + 1, b + 1, elapsed()
                epoch_loss, count, window = epoch_loss + value, count + 1, [*window, value][-20:]
                if loop.step_curve:
                    curve.append({"step": state.step, "epoch": epoch, "lr": lr, "loss": value, **parts,
                                  "seconds": round(state.seconds, 1), "rss_gib": round(resident_bytes() / 2**30, 3),
                                  **({"released_memory": True} if trimmed else {})})
                report.update(state.step, epoch, sum(window) / len(window), lr, state.seconds)
                stopping = loop.stop_within_epoch and (state.step >= total or out_of_time())
                if (loop.eval_every and state.step % loop.eval_every == 0 and b + 1 < len(batches) and not stopping
                        and eval_fits()):
                    metrics = evaluate({"step": state.step, "epoch": epoch})
                    report.say(f"step {state.step}/{total}: " + " ".join(f"{k} {_fmt(v)}" for k, v in metrics.items()))
                    log.info("%s: training", adapter.name)
                    model.train()
                if loop.checkpoint_every and state.step % loop.checkpoint_every == 0:
                    _save_checkpoint(ckpt_dir, adapter, state, curve)
                if stopping:
                    break
            if state.batch >= len(batches):
                state.epoch, state.batch = epoch, 0
            point: dict[str, Any] = {"step": state.step, "epoch": epoch}
            if not loop.step_curve:
                point.update(loss=epoch_loss / max(count, 1), lr=lr)
            last = state.epoch >= loop.epochs or state.step >= total or out_of_time()
            if last or eval_fits():
                metrics = evaluate(point)
            else:  # evaluation would take more than eval_share of the time: the next epoch end decides again
                metrics = {}
                if not loop.step_curve:
                    curve.append(notify({**point, "seconds": round(elapsed(), 1)}))
            report.say(f"epoch {epoch}: step {state.step}/{total} loss {epoch_loss / max(count, 1):.4f} "
                       + " ".join(f"{k} {_fmt(v)}" for k, v in metrics.items())
                       + f" ({state.seconds / 60:.1f} min)")
            _save_checkpoint(ckpt_dir, adapter, state, curve)
            if loop.patience is not None and state.bad_epochs >= loop.patience:
                log.warning("early stop at epoch %d (best epoch %d)", epoch, state.best_epoch)
                break
    cut = {"epochs": round(state.step / per_epoch, 3), "cut_short": state.step < per_epoch} if out_of_time() else {}
    if cut:  # the epoch reported is the one cut (the next one); under one epoch of the data is "cut short"
        log.warning("time budget of %.1f min reached in epoch %d, step %d%s", loop.max_minutes, state.epoch + (
            1 if state.batch else 0), state.step, f": cut short, {cut['epochs']:.0%} of one epoch of the training "
                    "data (--max-minutes trains longer)" if cut["cut_short"] else "")
    gate = None
    if loop.keep_best and (ckpt_dir / BEST).is_file():
        model.load_state_dict(load_file(str(ckpt_dir / BEST)))
        if state.best_step > 0 and loop.dev_gate:
            gate = _dev_gate(ckpt_dir, model, state, curve, loop.monitor, report if progress else None)
        if state.best_step == 0 and gate is None:
            trained = [c.get(loop.monitor) for c in curve if c.get("step") and c.get(loop.monitor) is not None]
            message = (f"no gain on dev: training did not beat the starting model ({loop.monitor} "
                       f"{_fmt(state.best)} at the start, best after training {_fmt(max(trained, default=None))}); "
                       "exporting the starting model") if total else "no training steps asked: the start exported"
            report.say(message) if progress else log.warning(message)
    model.eval()
    run = TrainRun(curve, state, total, gate)
    log.info("%s: exporting to %s", adapter.name, out)
    with publish(out) as pub:
        manifest_fields = adapter.export(pub, run)
        ran_on = {k: getattr(adapter, k) for k in ("device", "precision") if isinstance(getattr(adapter, k, None),
                                                                                      str)}
        manifest_fields["metrics"] = {**manifest_fields.get("metrics", {}), **ran_on,  # where it trained
                                      **({"dev_gate": gate} if gate is not None else {}),
                                      **({"time_budget": cut} if cut else {})}
        (pub.path / CURVE_FILE).write_text(json.dumps(curve, indent=1))
        pub.set_manifest(**{"command": command, **manifest_fields})
    return out


def _track_best(loop: LoopConfig, state: LoopState, metrics: dict[str, float | None], epoch: int) -> bool:
    """Update best / best_epoch / bad_epochs from the monitored metric; True when this epoch is the best."""
    if loop.monitor is None:
        return False
    value = metrics.get(loop.monitor)
    if value is not None and value > state.best:
        state.best, state.best_epoch, state.bad_epochs = float(value), epoch, 0
        return True
    state.bad_epochs += 1
    return False


def _dev_gate(ckpt_dir: Path, model: torch.nn.Module, state: LoopState, curve: list[dict[str, Any]],
              monitor: str | None, report: Any) -> dict[str, Any] | None:
    """The best evaluated weights (trained: ``state.best_step > 0``) against the start's, dev query by dev query
    (:func:`~retrec.pipelines.train.dev_gate.paired_gain`); the start's weights are loaded back when the gain is
    not significant. None when the per-query values are missing (the adapter gives none)."""
    start_w, start_q, best_q = (ckpt_dir / name for name in (START, START_SCORES, BEST_SCORES))
    if not (start_w.is_file() and start_q.is_file() and best_q.is_file()):
        return None
    gate = paired_gain(json.loads(start_q.read_text()), json.loads(best_q.read_text()))
    if gate["significant"]:
        return {**gate, "exported": "trained"}
    model.load_state_dict(load_file(str(start_w)))
    start = next((c[monitor] for c in curve if c.get("step") == 0 and c.get(monitor) is not None), None)
    state.best_step, state.best = 0, state.best if start is None else float(start)
    interval = gate["interval"] or [None, None]
    message = (f"dev gain {_fmt(gate['gain'])} over the start is not significant (one-sided {gate['level']:.0%} "
               f"lower bound {_fmt(gate['lower_bound'])}, interval [{_fmt(interval[0])}, {_fmt(interval[1])}] over "
               f"{gate['queries']} dev queries): exporting the starting model (--no-dev-gate exports the trained one)")
    if report is not None:
        report.say(message)
    else:
        log.warning(message)
    return {**gate, "exported": "start"}
