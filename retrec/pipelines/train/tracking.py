"""Experiment tracking: a training run's config, its curve as it grows, its final metrics and its bundle, logged
to MLflow (``retrec train KIND --track mlflow``; the ``track`` extra).

The training loop announces each point it adds to the curve (a dev evaluation, an epoch's loss) to whoever
:func:`observe_curve` registered for the current context; :class:`MlflowTracker` is one such observer. A tracking
store that fails never stops the training: the failure is logged once and tracking stops.

The store is ``$MLFLOW_TRACKING_URI`` when set (a server, ``sqlite:///…``), else MLflow's local file store in
``./mlruns`` (MLflow 3 keeps it in maintenance mode: this module opts in to it, ``MLFLOW_ALLOW_FILE_STORE``).

Example::

    with MlflowTracker(experiment="scifact") as tracker:
        tracker.start(kind="model/dense", config=cfg, command="retrec train dense ...")
        bundle = train(...)            # the loop's curve points reach tracker.point as they are made
        tracker.finish(bundle)         # final metrics, the bundle's path, training_curve.json and the manifest

    mlflow.MlflowClient().get_metric_history(run_id, "nDCG@10")   # one value per dev evaluation
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

log = logging.getLogger("retrec.train")
TRACKERS = ("mlflow",)
_OBSERVERS: contextvars.ContextVar[tuple[Callable[[dict[str, Any]], None], ...]] = contextvars.ContextVar(
    "retrec_curve_observers", default=())


@contextlib.contextmanager
def observe_curve(callback: Callable[[dict[str, Any]], None]) -> Iterator[None]:
    """Call ``callback(point)`` for every point the training loop adds to its curve inside the block."""
    token = _OBSERVERS.set((*_OBSERVERS.get(), callback))
    try:
        yield
    finally:
        _OBSERVERS.reset(token)


def notify(point: dict[str, Any]) -> dict[str, Any]:
    """The loop's side: hand ``point`` to the observers (an observer's failure is logged, never raised)."""
    for callback in _OBSERVERS.get():
        try:
            callback(point)
        except Exception:
            log.exception("a training-curve observer failed; training goes on")
    return point


def numeric(values: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of a (nested) mapping, keys joined by dots; booleans, text and NaN left out.

    >>> numeric({"nDCG@10": 0.5, "gate": {"gain": 0.1, "exported": "trained"}, "ok": True})
    {'nDCG@10': 0.5, 'gate.gain': 0.1}
    """
    out: dict[str, float] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(numeric(value, f"{name}."))
        elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out


def _params(config: Any) -> dict[str, str]:
    """A config's fields as MLflow params (text, at most 500 characters each)."""
    fields = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config or {})
    return {key: str(value)[:500] for key, value in fields.items()}


def _metric_name(name: str) -> str:
    """MLflow's allowed characters (letters, digits, ``_ - . space : /``); ``nDCG@10`` becomes ``nDCG_at_10``."""
    name = name.replace("@", "_at_")
    return "".join(c if c.isalnum() or c in "_-. :/" else "_" for c in name)


class MlflowTracker:
    """One MLflow run per training: params from the config, the curve's numbers by step, the bundle's final
    metrics, its path (tag ``bundle``) and files (``training_curve.json``, ``manifest.json``) as artifacts."""

    def __init__(self, experiment: str = "retrec", uri: str | None = None) -> None:
        import mlflow  # the `track` extra: a missing one is named by the CLI

        self.mlflow = mlflow
        self.uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or (Path.cwd() / "mlruns").as_uri()
        if self.uri.startswith("file:") or "://" not in self.uri:
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # a local folder, as the issue asks
        self.experiment = experiment
        self.run_id: str | None = None
        self._broken = False

    def __enter__(self) -> MlflowTracker:
        try:
            self.mlflow.set_tracking_uri(self.uri)
            self.mlflow.set_experiment(self.experiment)
            self.run_id = self.mlflow.start_run().info.run_id
        except Exception as exc:  # refused before any training: the user fixes the store or drops --track
            raise ValueError(f"--track mlflow: the tracking store {self.uri} cannot be opened "
                             f"({type(exc).__name__}: {str(exc)[:300]})") from exc
        log.info("tracking run %s in %s (experiment %s)", self.run_id, self.uri, self.experiment)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.mlflow.end_run(status="FINISHED" if kind is None else "FAILED")

    def _safely(self, what: str, fn: Callable[[], Any]) -> None:
        if self._broken:
            return
        try:
            fn()
        except Exception:  # a store that went away: training is worth more than its tracking
            self._broken = True
            log.exception("tracking: %s failed; tracking stops, training goes on", what)

    def start(self, kind: str, config: Any, command: str | None = None) -> None:
        self._safely("logging the config", lambda: (
            self.mlflow.log_params(_params(config)),
            self.mlflow.set_tags({"kind": kind, **({"command": command[:5000]} if command else {})})))

    def point(self, point: dict[str, Any]) -> None:
        """One curve point: its numbers (not step, epoch) at its step."""
        step = int(point.get("step", 0))
        values = {_metric_name(k): v for k, v in numeric(point).items() if k not in ("step", "epoch")}
        self._safely("logging a curve point", lambda: self.mlflow.log_metrics(values, step=step))

    def finish(self, bundle: str | Path) -> None:
        """The bundle's final metrics (prefixed ``final.``), its path and its curve and manifest files."""
        from retrec.bundle import MANIFEST, read_manifest

        path = Path(bundle).resolve()
        manifest = read_manifest(path)
        final = {_metric_name(f"final.{k}"): v for k, v in numeric(manifest.metrics).items()}

        def log_all() -> None:
            self.mlflow.log_metrics(final)
            self.mlflow.set_tags({"bundle": str(path), "bundle_version": manifest.version})
            for name in ("training_curve.json", MANIFEST):
                if (path / name).is_file():
                    self.mlflow.log_artifact(str(path / name))

        self._safely("logging the bundle", log_all)


def open_tracker(name: str | None, experiment: str) -> contextlib.AbstractContextManager[MlflowTracker | None]:
    """The tracker a ``--track`` value names, entered by the caller (``None``: no tracking)."""
    if name is None:
        return contextlib.nullcontext()
    if name not in TRACKERS:
        raise ValueError(f"--track {name!r}: one of {', '.join(TRACKERS)}")
    return MlflowTracker(experiment)
