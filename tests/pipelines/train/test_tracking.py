"""``retrec train KIND --track mlflow`` (issue 45, item 4): a run with the config as params, the curve's metrics by
step, the final metrics and the bundle's path, read back through MLflow's client from a local file store; a
store that fails mid-run costs the tracking, never the training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from retrec.cli import app
from retrec.pipelines.train.tracking import notify, numeric, observe_curve

mlflow = pytest.importorskip("mlflow", reason="the `track` extra (mlflow-skinny) is not installed")
runner = CliRunner()
SMALL = ["--max-len", "12", "--hidden", "16", "--layers", "1", "--heads", "2", "--batch-size", "64", "--epochs", "2",
         "--eval-users", "50", "--negatives", "32"]


def _runs(store: Path) -> list[Any]:
    client = mlflow.MlflowClient(store.as_uri())
    experiment = client.get_experiment_by_name("tiny")
    return client.search_runs([experiment.experiment_id]) if experiment else []


def test_a_tracked_training_logs_params_curve_metrics_and_bundle(tiny_data: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "mlruns"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    result = runner.invoke(app, ["train", "sasrec", "--data", str(tiny_data), "--out", str(tmp_path / "s"), *SMALL,
                                 "--track", "mlflow", "--experiment", "tiny", "--json"])
    assert result.exit_code == 0, result.output
    (run,) = _runs(store)
    assert run.info.status == "FINISHED"
    assert run.data.params["hidden"] == "16" and run.data.params["epochs"] == "2"
    assert run.data.tags["bundle"] == str((tmp_path / "s").resolve()) and run.data.tags["kind"] == "model/sasrec"
    curve = json.loads((tmp_path / "s" / "training_curve.json").read_text())
    client = mlflow.MlflowClient(store.as_uri())
    assert len(curve) == 2  # each epoch's point, logged as it was made
    for name, key in (("loss", "loss"), ("valid_NDCG_at_10", "valid_NDCG@10")):
        history = client.get_metric_history(run.info.run_id, name)
        assert [(h.step, h.value) for h in history] == [(p["step"], pytest.approx(p[key])) for p in curve]
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    finals = {k: v for k, v in run.data.metrics.items() if k.startswith("final.")}
    assert finals and all(pytest.approx(v) == numeric(manifest["metrics"])[k[6:].replace("_at_", "@")]
                          for k, v in finals.items())
    artifacts = {a.path for a in mlflow.MlflowClient(store.as_uri()).list_artifacts(run.info.run_id)}
    assert {"training_curve.json", "manifest.json"} <= artifacts


def test_a_count_model_is_tracked_too_and_a_bad_tracker_is_refused(tiny_data: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "mlruns"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    result = runner.invoke(app, ["train", "markov", "--data", str(tiny_data), "--out", str(tmp_path / "m"),
                                 "--track", "mlflow", "--experiment", "tiny"])
    assert result.exit_code == 0, result.output
    (run,) = _runs(store)
    assert run.data.tags["kind"] == "model/markov" and run.data.tags["bundle"] == str((tmp_path / "m").resolve())
    assert run.data.params["device"] == "auto"  # a count model has no curve: its config and bundle still are
    refused = runner.invoke(app, ["train", "markov", "--data", str(tiny_data), "--out", str(tmp_path / "x"),
                                  "--track", "wandb"])
    assert refused.exit_code == 2 and "one of mlflow" in refused.output and not (tmp_path / "x").exists()


def test_an_observer_that_fails_never_stops_training(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[dict] = []

    def broken(point: dict) -> None:
        raise OSError("the tracking server went away")

    with observe_curve(seen.append), observe_curve(broken):
        assert notify({"step": 1, "loss": 0.5}) == {"step": 1, "loss": 0.5}
    notify({"step": 2})  # outside the block: nobody is told
    assert seen == [{"step": 1, "loss": 0.5}] and "training goes on" in caplog.text
