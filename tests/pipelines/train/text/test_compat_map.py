"""The query-side compatibility map: closed-form fits, the bundle, its encoder, the index checks and the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from retrec.bundle import BundleError, load_bundle
from retrec.index.encoder_check import check_encoder
from retrec.pipelines.train.text.compat_map import fit_compat_map, fit_map
from retrec.runtime.compat_map import CompatMapEncoder
from retrec.runtime.onnx_encoder import OnnxEncoder


def test_procrustes_recovers_a_rotation_and_affine_a_shifted_stretch() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 8))
    q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    w, b = fit_map(x, x @ q)
    assert np.allclose(w, q, atol=1e-5) and not b.any()
    assert np.allclose(w.T @ w, np.eye(8), atol=1e-5)  # orthogonal: it never stretches
    m = rng.normal(size=(8, 6))
    w, b = fit_map(x, x @ m + 3.0, "affine", ridge=0.0)
    assert np.allclose(w, m, atol=1e-4) and np.allclose(b, 3.0, atol=1e-4)
    low, _ = fit_map(x, x @ m, "affine", rank=2, ridge=0.0)
    assert np.linalg.matrix_rank(low, tol=1e-4) == 2
    narrow, _ = fit_map(x, x[:, :3], "procrustes")  # 8 -> 3 wide: semi-orthogonal
    assert narrow.shape == (8, 3) and np.allclose(narrow.T @ narrow, np.eye(3), atol=1e-5)
    with pytest.raises(ValueError, match="paired vectors"):
        fit_map(x, x[:10])
    with pytest.raises(ValueError, match="unknown method"):
        fit_map(x, x, "spline")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def narrow_encoder(tiny_data: Path, tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 32-wide dense bundle from the tiny BERT (one training step): a new encoder the old index cannot read."""
    from retrec.pipelines.train.text.dense import DenseTrainConfig, train_dense

    cfg = DenseTrainConfig(batch_size=4, epochs=1, max_query_length=16, max_doc_length=32, quantize=False,
                           dev_max_queries=0, queries_per_cluster=8, max_minutes=None, max_steps=1,
                           base_model=str(tiny_bert))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RETREC_CACHE", str(tmp_path_factory.mktemp("cache")))
        return train_dense(tiny_data, tmp_path_factory.mktemp("narrow") / "dense", cfg, progress=False)


def test_a_fitted_map_is_a_query_encoder_for_the_old_index_and_refuses_a_changed_encoder(
        tiny_data: Path, narrow_encoder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from retrec.cli import app
    from retrec.models.text_encoder import zero_shot_bundle
    from retrec.pipelines.eval.compat import compat_report

    monkeypatch.setenv("RETREC_CACHE", str(tmp_path / "cache"))
    old = zero_shot_bundle()
    out = fit_compat_map(old, narrow_encoder, tiny_data, tmp_path / "map")
    manifest = load_bundle(out, kind="model/compat-map")
    assert manifest.dims["dim"] == 384 and manifest.config["compat"]["old"]["version"] == load_bundle(old).version
    assert 0.0 < manifest.metrics["held_out_mean_cos"] <= 1.0 and manifest.metrics["held_out_documents"] > 0
    enc = CompatMapEncoder(out)
    vectors = enc.encode_queries(["vitamin c and scurvy", "protein folding"])
    assert vectors.shape == (2, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    raw = OnnxEncoder(narrow_encoder).encode_queries(["vitamin c and scurvy"])
    assert np.allclose(vectors[0], enc.map(raw)[0], atol=1e-6)
    # an index the old encoder built takes the map's queries (its whole width is the old space); not the encoder
    index_ref = {"dim": 384, "similarity": "cosine", "encoder_name": load_bundle(old).name,
                 "encoder_version": load_bundle(old).version}
    assert check_encoder(index_ref, enc.manifest) == 384
    with pytest.raises(BundleError, match="records no compatibility"):
        check_encoder(index_ref, load_bundle(narrow_encoder))

    cells = compat_report(old, out, tiny_data)
    assert cells["backfill 0%"] == cells["new/old"] and "new/new" in cells

    new = tmp_path / "new"  # the encoder a map names, replaced by another one or removed: refused, naming the fix
    shutil.copytree(narrow_encoder, new)
    named = fit_compat_map(old, new, tiny_data, tmp_path / "map-named", method="affine")
    assert json.loads((named / "manifest.json").read_text())["config"]["new"]["path"] == str(new.resolve())
    shutil.rmtree(new)
    with pytest.raises(BundleError, match="cannot be loaded"):
        CompatMapEncoder(named)
    shutil.copytree(old, new)
    with pytest.raises(BundleError, match="fit the map again"):
        CompatMapEncoder(named)

    result = CliRunner().invoke(app, ["compat", "fit", "--old", str(old), "--new", str(narrow_encoder), "--data",
                                      str(tiny_data), "--out", str(tmp_path / "cli-map"), "--method", "affine",
                                      "--rank", "16"])
    assert result.exit_code == 0, result.output
    assert load_bundle(tmp_path / "cli-map").config["rank"] == 16
    refused = CliRunner().invoke(app, ["compat", "fit", "--old", str(old), "--new", str(narrow_encoder), "--data",
                                       str(tiny_data), "--out", str(tmp_path / "x"), "--method", "spline"])
    assert refused.exit_code == 2 and "procrustes" in refused.output
