"""`retrec train NAME` comes from the registry: one command per trainable kind, its options from the kind's config,
``--device`` and ``--precision`` for every trainer, recorded in the bundle; a plugin's kind trains without an edit
under retrec/ (the toy kind of tests/toy_kinds.py)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from retrec import kinds
from retrec.cli import app
from retrec.cli.train import train_app

runner = CliRunner()
REPO = Path(__file__).resolve().parents[2]
BUILTIN_TRAINERS = {"dense", "multivector", "sparse", "reranker", "bert4rec", "sasrec", "onerec", "markov",
                    "markov-decay", "cooc", "fusion"}


def _cli(args: list, plugins: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "RETREC_PLUGINS": plugins, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-c", "from retrec.cli import main; main()", *map(str, args)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_every_trainable_kind_is_a_command_with_its_config_options() -> None:
    trainable = {k.command_name: k for k in kinds.registry().values() if k.train is not None}
    assert set(trainable) >= BUILTIN_TRAINERS
    group = typer.main.get_group(train_app)
    commands = set(group.list_commands(typer.Context(group)))
    # nothing missing, and nothing wired by hand but `online` (it continues a kind's bundle: no kind of its own)
    assert commands == set(trainable) | {"online"}
    for name, kind in trainable.items():
        config = kinds.resolve(kind.train_config)
        fields = dataclasses.fields(config)
        assert {"device", "precision"} <= {f.name for f in fields}, f"{name}: every trainer takes both"
        help_text = runner.invoke(app, ["train", name, "--help"], env={"COLUMNS": "200"}).stdout
        for f in fields:
            option = f.metadata["flag"].split("/")[0] if "flag" in f.metadata else f"--{f.name.replace('_', '-')}"
            assert option in help_text, f"{name}: {option} missing"
        assert callable(kinds.resolve(kind.train))


def test_a_kind_names_a_whole_trainer_and_indexes_are_not_trained() -> None:
    with pytest.raises(ValueError, match="names both train and train_config"):
        kinds.Kind("model/x", "recommender", "x", train="a.b:c")
    with pytest.raises(ValueError, match="indexes are built"):
        kinds.Kind("index/x", "index", "x", payload="text", train="a.b:c", train_config="a.b:D")
    assert kinds.Kind("model/x-y", "recommender", "x", train="a:b", train_config="a:C").command_name == "x-y"
    assert kinds.get(kinds.FUSION_MODEL).command_name == "fusion"


def test_bad_devices_are_refused_with_what_is_accepted(tiny_data: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "sasrec", "--data", tiny_data, "--out", tmp_path / "s", "--device", "gpu"])
    assert result.exit_code == 2 and "device must be auto, cpu, cuda or cuda:N, not 'gpu'" in result.output
    result = runner.invoke(app, ["train", "markov", "--data", tiny_data, "--out", tmp_path / "m", "--device", "cuda"])
    assert result.exit_code == 2 and "count models fit on the CPU" in result.output
    import torch

    if not torch.cuda.is_available():  # asked for a GPU that is not there: refused before any work
        result = runner.invoke(app, ["train", "sasrec", "--data", tiny_data, "--out", tmp_path / "s",
                                     "--device", "cuda:0"])
        assert result.exit_code == 2 and "torch sees no CUDA GPU" in result.output
        assert not (tmp_path / "s").exists() and not (tmp_path / "s.ckpt").exists()


def test_device_and_precision_are_recorded_in_the_bundle(tiny_data: Path, tmp_path: Path) -> None:
    args = ["--max-len", "12", "--hidden", "16", "--layers", "1", "--heads", "2", "--batch-size", "64", "--epochs",
            "1", "--eval-users", "50", "--negatives", "32"]
    result = runner.invoke(app, ["train", "sasrec", "--data", tiny_data, "--out", tmp_path / "s", *args,
                                 "--device", "cpu", "--precision", "fp32"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert (manifest["metrics"]["device"], manifest["metrics"]["precision"]) == ("cpu", "fp32")  # what ran
    assert (manifest["config"]["train"]["device"], manifest["config"]["train"]["precision"]) == ("cpu", "fp32")
    result = runner.invoke(app, ["train", "cooc", "--data", tiny_data, "--out", tmp_path / "c"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert (manifest["metrics"]["device"], manifest["metrics"]["precision"]) == ("cpu", "fp32")
    assert manifest["config"]["train"] == {"device": "cpu", "precision": "fp32"}


def test_a_kind_registered_after_the_cli_was_imported_gets_its_command(tiny_data: Path, tmp_path: Path) -> None:
    import tests.toy_kinds  # noqa: F401  (registers model/toy-popular, trained by `retrec train toy`)

    result = runner.invoke(app, ["train", "toy", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "--min-count" in result.stdout and "model/toy-popular" in result.stdout
    result = runner.invoke(app, ["train", "toy", "--data", tiny_data, "--out", tmp_path / "t"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "t" / "manifest.json").read_text())["kind"] == "model/toy-popular"


def test_a_plugin_kind_trains_without_an_edit_under_retrec(tiny_data: Path, tmp_path: Path) -> None:
    assert "toy" not in _cli(["train", "--help"]).stdout  # not a built-in
    listed = _cli(["train", "--help"], plugins="tests.toy_kinds")
    assert listed.returncode == 0 and "toy" in listed.stdout and "model/toy-popular" in listed.stdout
    bad = _cli(["train", "toy", "--data", tiny_data, "--out", tmp_path / "t", "--min-count", "0"],
               plugins="tests.toy_kinds")
    assert bad.returncode == 2 and "min_count must be at least 1" in bad.stderr
    done = _cli(["train", "toy", "--data", tiny_data, "--out", tmp_path / "t", "--min-count", "3"],
                plugins="tests.toy_kinds")
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "t" / "manifest.json").read_text())
    assert manifest["kind"] == "model/toy-popular" and manifest["config"]["train"]["min_count"] == 3
    assert manifest["command"].startswith("retrec train toy")
    counts = json.loads((tmp_path / "t" / "counts.json").read_text())
    assert counts and min(counts.values()) >= 3  # the option reached the trainer


def test_every_trainer_fits_the_trainer_contract() -> None:
    from retrec.contracts import is_trainer

    for kind in kinds.registry().values():
        if kind.train is not None:
            assert is_trainer(kinds.resolve(kind.train)), kind.kind
    assert not is_trainer(lambda data, out: None)  # no config, no resume
