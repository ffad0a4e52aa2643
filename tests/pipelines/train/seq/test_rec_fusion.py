"""``retrec train fusion|markov``: weights chosen on validation, whole bundles, evaluable, refused when bad."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from retrec.bundle import BundleError, load_bundle, read_manifest, write_manifest
from retrec.cli import app
from retrec.data.interactions import leave_one_out, load_interactions, user_sequences
from retrec.pipelines.eval.rec import evaluate_recommender
from retrec.pipelines.eval.recommenders import build_recommender, load_recommender, vocabulary_of
from retrec.pipelines.train.seq.config import SASRecTrainConfig
from retrec.pipelines.train.seq.rec_fusion import simplex, train_fusion
from retrec.pipelines.train.seq.sasrec import train_sasrec
from retrec.runtime.count_recommender import CountBundle
from retrec.runtime.fused_recommender import FusedRecommender

TINY = SASRecTrainConfig(max_len=12, hidden=16, layers=1, heads=2, batch_size=64, epochs=2, eval_users=100,
                         negatives=64, warmup_steps=0)
runner = CliRunner()


@pytest.fixture(scope="module")
def sasrec(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_sasrec(tiny_data, tmp_path_factory.mktemp("fusion") / "sasrec", TINY, progress=False)


@pytest.fixture(scope="module")
def fusion(tiny_data: Path, sasrec: Path) -> Path:
    result = runner.invoke(app, ["train", "fusion", "--data", str(tiny_data), "--component", str(sasrec),
                                 "--component", "markov", "--out", str(sasrec.parent / "fusion"), "--grid-step", "0.1"])
    assert result.exit_code == 0, result.output
    return sasrec.parent / "fusion"


def test_simplex_grid() -> None:
    assert simplex(2, 0.5) == [(0.0, 1.0), (0.5, 0.5), (1.0, 0.0)]
    assert len(simplex(3, 0.1)) == 66 and all(abs(sum(w) - 1) < 1e-9 for w in simplex(3, 0.1))
    with pytest.raises(ValueError, match="divide 1"):
        simplex(2, 0.3)


def test_weights_are_the_best_on_validation_and_the_bundle_is_whole(tiny_data: Path, fusion: Path) -> None:
    m = read_manifest(fusion)
    specs = m.config["components"]
    assert [s["name"] for s in specs] == ["sasrec", "markov"] and [s["normalise"] for s in specs] == ["softmax", "sum"]
    assert load_bundle(fusion / "components" / "sasrec").kind == "model/sasrec"  # whole bundles inside
    assert abs(sum(s["weight"] for s in specs) - 1) < 1e-9
    assert m.metrics["valid_NDCG@10"] >= max(m.metrics["valid_NDCG@10 sasrec alone"],
                                              m.metrics["valid_NDCG@10 markov alone"])
    rec = load_recommender(fusion)
    assert isinstance(rec, FusedRecommender) and [c.name.split("@")[0] for c in rec.components] == ["sasrec", "markov"]
    # the published markov never saw a test item: it is the count model of every history but the last item
    seqs = user_sequences(load_interactions(tiny_data))
    expected = CountBundle.fit("markov", [s[:-1] if len(s) >= 3 else s for s in seqs.items])
    got = rec.components[1]
    assert got.item_ids == expected.item_ids
    assert (got.model.matrix != expected.model.matrix).nnz == 0


def test_fusion_is_evaluable_like_any_recommender(tiny_data: Path, fusion: Path, sasrec: Path) -> None:
    loo = leave_one_out(user_sequences(load_interactions(tiny_data)))
    vocab = vocabulary_of(loo)
    fused = evaluate_recommender(build_recommender(str(fusion), loo, vocab), loo, vocab, progress=False)
    alone = evaluate_recommender(build_recommender(str(sasrec), loo, vocab), loo, vocab, progress=False)
    assert fused.metrics["users"] == alone.metrics["users"] > 0
    assert 0.0 <= fused.metrics["NDCG@10"] <= 1.0
    result = runner.invoke(app, ["eval-rec", "--data", str(tiny_data), "--model", str(fusion), "--json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output.splitlines()[-1])["systems"]
    assert row["NDCG@10"] == pytest.approx(fused.metrics["NDCG@10"])


def test_bad_fusions_are_refused(tiny_data: Path, sasrec: Path, fusion: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="2 to 8 components"):
        train_fusion(tiny_data, tmp_path / "f1", [str(sasrec)])
    with pytest.raises(ValueError, match="grid_step must be"):
        train_fusion(tiny_data, tmp_path / "f1", [str(sasrec), "markov"], grid_step=0.0)
    with pytest.raises(ValueError, match="coarser"):
        train_fusion(tiny_data, tmp_path / "f1", [str(sasrec), "markov", "cooc"], grid_step=0.001)
    # a count bundle (fitted on validation items) or a fusion is no component: count models go by name
    runner.invoke(app, ["train", "markov", "--data", str(tiny_data), "--out", str(tmp_path / "mk")])
    for bundle in (tmp_path / "mk", fusion):
        with pytest.raises(ValueError, match="records no validation split"):
            train_fusion(tiny_data, tmp_path / "f4", [str(sasrec), str(bundle)])
    # other data than the component was validated on: its validation users differ
    seqs = user_sequences(load_interactions(tiny_data))
    other_data = tmp_path / "other.txt"
    other_data.write_text("".join(f"{u} {i}\n" for u, s in zip(seqs.users[5:], seqs.items[5:]) for i in s))
    with pytest.raises(ValueError, match="validated on other users"):
        train_fusion(other_data, tmp_path / "f5", [str(sasrec), "markov"])
    with pytest.raises(ValueError, match="not a bundle folder"):
        train_fusion(tiny_data, tmp_path / "f2", [str(tmp_path / "missing"), "markov"])
    other = train_sasrec(tiny_data, tmp_path / "other", SASRecTrainConfig(**{**TINY.__dict__, "seed": 1,
                                                                              "epochs": 1}), progress=False)
    with pytest.raises(ValueError, match="different validation splits"):
        train_fusion(tiny_data, tmp_path / "f3", [str(sasrec), str(other)])
    forged = Path(shutil.copytree(fusion, tmp_path / "forged"))
    m = read_manifest(forged)
    config = {**m.config, "components": [{**m.config["components"][0], "name": "../sasrec"}]}
    write_manifest(forged, kind=m.kind, name=m.name, config=config, dims=m.dims, metrics=m.metrics)
    with pytest.raises(BundleError, match="plain name"):
        load_recommender(forged)
    config = {**m.config, "components": [{**m.config["components"][0], "weight": float("nan")}]}
    write_manifest(forged, kind=m.kind, name=m.name, config=config, dims=m.dims, metrics=m.metrics)
    with pytest.raises(BundleError, match="weight must be"):
        load_recommender(forged)
    config = {**m.config, "components": [{**s, "weight": 0.0} for s in m.config["components"]]}
    write_manifest(forged, kind=m.kind, name=m.name, config=config, dims=m.dims, metrics=m.metrics)
    with pytest.raises(BundleError, match="sum to 0"):
        load_recommender(forged)


def test_markov_command_writes_a_servable_bundle(tiny_data: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "markov", "--data", str(tiny_data), "--out", str(tmp_path / "mk")])
    assert result.exit_code == 0, result.output
    rec = load_recommender(tmp_path / "mk")
    assert isinstance(rec, CountBundle)
    scores = rec.score([[rec.item_ids[0]]])
    assert scores.shape == (1, len(rec.item_ids)) and np.all(np.isfinite(scores))


def test_loading_and_scoring_a_fusion_imports_no_torch(fusion: Path) -> None:
    import subprocess
    import sys

    code = ("import sys; from retrec.api import load; rec = load(sys.argv[1]); "
            "rec.recommend([list(rec.item_ids[:3])], k=5); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(fusion)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr
