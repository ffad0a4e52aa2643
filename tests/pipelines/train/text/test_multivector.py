"""`retrec train multivector`: a tiny end-to-end run (PCA-initialised projection, MaxSim losses with distillation,
query augmentation), its verified ONNX bundle, and resume."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from retrec.bundle import load_bundle
from retrec.pipelines.train.text.config import MultivectorTrainConfig
from retrec.pipelines.train.text.multivector import train_multivector
from retrec.runtime.token_encoder import OnnxTokenEncoder

TINY = {"batch_size": 4, "epochs": 1, "max_query_length": 16, "max_doc_length": 32, "quantize": False,
        "dev_max_queries": 4, "dev_candidates": 5, "queries_per_cluster": 8, "checkpoint_every": 1,
        "max_minutes": None, "dim": 24, "pca_documents": 30}


@pytest.fixture(scope="module")
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("retrec-cache-mv")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RETREC_CACHE", str(root))
        yield root


def test_tiny_training_writes_a_verified_bundle_and_resumes(tiny_data: Path, tmp_path: Path,
                                                           private_cache: Path) -> None:
    out = tmp_path / "mv"
    cfg = MultivectorTrainConfig(**TINY, max_steps=2, distill_weight=1.0, query_augment=True)
    train_multivector(tiny_data, out, cfg, progress=False)
    manifest = load_bundle(out, kind="model/multivector")
    assert manifest.metrics["steps"] == 2 and manifest.metrics["onnx_max_abs_diff"] <= 1e-4
    assert manifest.metrics["dev_nDCG@10_start"] is not None  # the PCA-initialised start is evaluated
    config = manifest.config
    assert config["dim"] == 24 and config["query_augment"] is True and config["similarity"] == "maxsim"
    assert len(config["skip_ids"]) > 20 and config["train"]["pca_documents"] == 30
    curve = json.loads((out / "training_curve.json").read_text())
    steps = [c for c in curve if "loss" in c]
    assert [c["step"] for c in steps] == [1, 2]
    assert all(np.isfinite(c["loss"]) and c["margin_mse"] >= 0 and c["ce"] > 0 for c in steps)
    encoder = OnnxTokenEncoder(out)
    (query,) = encoder.encode_queries(["a query about genes"])
    assert query.shape == (16, 24)  # augmented with [MASK] to the query length
    np.testing.assert_allclose(np.linalg.norm(query, axis=1), 1.0, atol=1e-5)
    (doc,) = encoder.encode_documents(["Genes, proteins; and cells."])
    assert len(doc) == len(encoder.tokenizer.encode(["Genes, proteins; and cells."], 32)[0]) - 3  # , ; . skipped

    train_multivector(tiny_data, out, MultivectorTrainConfig(**TINY, max_steps=3, distill_weight=1.0,
                                                             query_augment=True), resume=True, progress=False)
    curve = json.loads((out / "training_curve.json").read_text())
    assert [c["step"] for c in curve if "loss" in c] == [1, 2, 3]


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="dim and pca_documents"):
        MultivectorTrainConfig(dim=0)
    with pytest.raises(ValueError, match="batch_size"):
        MultivectorTrainConfig(batch_size=1)
