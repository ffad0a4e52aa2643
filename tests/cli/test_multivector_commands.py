"""`retrec index muvera|maxsim`, `retrec eval --retriever maxsim|muvera` and the generic `--param NAME=VALUE`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from retrec.bundle import read_manifest
from retrec.cli import app
from tests.tiny_models import tiny_multivector_encoder

runner = CliRunner()


@pytest.fixture(scope="module")
def mv_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_multivector_encoder(tmp_path_factory.mktemp("mv") / "model")


def _json(args: list[str]) -> dict:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    (system,) = json.loads(result.stdout.strip().splitlines()[-1])["systems"]
    return system


def test_index_and_eval_muvera_against_maxsim(tiny_data: Path, mv_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "muvera"
    result = runner.invoke(app, ["index", "muvera", "--data", str(tiny_data), "--model", str(mv_model), "--out",
                                 str(out), "--shards", "2", "--param", "repetitions=4", "--param", "candidates=400"])
    assert result.exit_code == 0, result.output
    manifest = read_manifest(out)
    assert manifest.kind == "index/muvera" and manifest.config["fde"]["repetitions"] == 4
    assert manifest.config["candidates"] == 400 and manifest.config["encoder"]["path"] == str(mv_model.resolve())
    exact = _json(["eval", "--data", str(tiny_data), "--retriever", "maxsim", "--model", str(mv_model), "--json"])
    indexed = _json(["eval", "--data", str(tiny_data), "--index", str(out), "--json"])
    assert indexed["nDCG@10"] == pytest.approx(exact["nDCG@10"], abs=1e-9)  # 400 candidates: the whole corpus
    few = _json(["eval", "--data", str(tiny_data), "--index", str(out), "--param", "candidates=2", "--json"])
    assert few["R@100"] < exact["R@100"]  # two candidates per query: at most two hits
    built = _json(["eval", "--data", str(tiny_data), "--retriever", "muvera", "--model", str(mv_model),
                   "--param", "candidates=1000", "--json"])
    assert built["nDCG@10"] == pytest.approx(exact["nDCG@10"], abs=1e-9)


def test_unknown_params_are_refused_naming_what_the_kind_takes(tiny_data: Path, mv_model: Path,
                                                               tmp_path: Path) -> None:
    bad = runner.invoke(app, ["eval", "--data", str(tiny_data), "--retriever", "muvera", "--model", str(mv_model),
                              "--param", "repetitoins=3"])
    assert bad.exit_code == 2 and "repetitoins" in bad.output and "repetitions" in bad.output
    encoder_arg = runner.invoke(app, ["eval", "--data", str(tiny_data), "--retriever", "muvera", "--model",
                                      str(mv_model), "--param", "encoder=x"])
    assert encoder_arg.exit_code == 2 and "takes no parameter encoder" in encoder_arg.output
    malformed = runner.invoke(app, ["eval", "--data", str(tiny_data), "--retriever", "bm25", "--param", "k1"])
    assert malformed.exit_code == 2 and "NAME=VALUE" in malformed.output
    dense = runner.invoke(app, ["index", "bm25", "--data", str(tiny_data), "--out", str(tmp_path / "b"),
                                "--param", "candidates=3"])
    assert dense.exit_code == 2 and "candidates" in dense.output
    wrong_model = runner.invoke(app, ["eval", "--data", str(tiny_data), "--retriever", "dense", "--model",
                                      str(mv_model)])
    assert wrong_model.exit_code == 2 and "model/multivector" in wrong_model.output
