"""Any encoder (issue 45, item 2): a sentence-transformers folder the test makes evaluates zero-shot through
``--model``, matches the sentence-transformers library's own vectors, trains with ``--base-model``; a Hub id
resolves from the HF cache offline, and one that is not cached fails with one line naming the id, the cache and
HF_HUB_OFFLINE — never the network."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import retrec
from retrec.bundle import load_bundle
from retrec.models.hf_encoders import as_encoder_bundle
from retrec.models.hub import ModelNotFoundError, model_folder

RETREC = str(Path(sys.executable).with_name("retrec"))
TEXTS = ["what causes scurvy", "vitamin c deficiency in sailors", "a protein that binds dna"]


@pytest.fixture(scope="module")
def st_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-layer BERT saved by sentence-transformers with CLS pooling and a Normalize module."""
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel

    from retrec.runtime.tokenizer import TOKENIZER_FILES, minilm_dir

    root = tmp_path_factory.mktemp("st")
    bert = root / "bert"
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64), add_pooling_layer=False).save_pretrained(bert)
    for name in TOKENIZER_FILES:
        shutil.copyfile(minilm_dir() / name, bert / name)
    transformer = models.Transformer(str(bert), max_seq_length=48)
    pooling = models.Pooling(32, pooling_mode="cls")
    model = SentenceTransformer(modules=[transformer, pooling, models.Normalize()], device="cpu")
    model.save(str(root / "tiny-st"))
    return root / "tiny-st"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RETREC_CACHE", str(tmp_path / "retrec-cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


def test_a_sentence_transformers_folder_is_exported_once_and_matches_the_library(st_folder: Path,
                                                                               cache: Path) -> None:
    from sentence_transformers import SentenceTransformer

    bundle = as_encoder_bundle(st_folder)
    manifest = load_bundle(bundle, kind="model/dense")
    assert manifest.config["pooling"] == "cls" and manifest.config["normalize"] is True  # read from its modules
    assert manifest.config["max_doc_length"] == 48 and manifest.config["base_model"] == "tiny-st"
    assert manifest.config["base_model_revision"].startswith("sha256:")
    assert as_encoder_bundle(st_folder) == bundle and load_bundle(bundle).version == manifest.version  # reused
    ours = retrec.load(st_folder).encode_queries(TEXTS)
    theirs = SentenceTransformer(str(st_folder), device="cpu").encode(TEXTS, convert_to_numpy=True)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_eval_takes_the_folder_as_model_zero_shot(st_folder: Path, cache: Path, tiny_data: Path) -> None:
    env = {"RETREC_CACHE": str(cache / "retrec-cache"), "HF_HUB_CACHE": str(cache / "hub"), "HF_HUB_OFFLINE": "1"}
    import os

    done = subprocess.run([RETREC, "eval", "--data", str(tiny_data), "--retriever", "dense", "--model",
                           str(st_folder), "--json"], capture_output=True, text=True, env={**os.environ, **env},
                          timeout=600)
    assert done.returncode == 0, done.stderr
    (system,) = json.loads(done.stdout)["systems"]
    assert system["retriever"] == "dense" and 0.0 <= system["nDCG@10"] <= 1.0 and system["queries"] == 30


def _cached_hub_snapshot(hub: Path, repo: str, source: Path, commit: str = "a" * 40) -> None:
    """The layout huggingface_hub leaves in its cache: models--ORG--NAME/{refs/main, snapshots/COMMIT/...}."""
    root = hub / ("models--" + repo.replace("/", "--"))
    shutil.copytree(source, root / "snapshots" / commit)
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)


def test_a_cached_hub_id_resolves_offline_and_records_its_revision(st_folder: Path, cache: Path) -> None:
    _cached_hub_snapshot(cache / "hub", "tiny-org/tiny-st", st_folder)
    assert model_folder("tiny-org/tiny-st").name == "a" * 40
    manifest = load_bundle(as_encoder_bundle("tiny-org/tiny-st"))
    assert manifest.config["base_model"] == "tiny-org/tiny-st" and manifest.config["base_model_revision"] == "a" * 40
    assert retrec.load("tiny-org/tiny-st").encode_queries(TEXTS[:1]).shape == (1, 32)


def test_an_uncached_hub_id_offline_is_one_clear_line(cache: Path, tiny_data: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE"):
        retrec.load("nobody/no-such-model")
    import os

    env = {**os.environ, "HF_HUB_CACHE": str(cache / "hub"), "HF_HUB_OFFLINE": "1",
           "RETREC_CACHE": str(cache / "retrec-cache")}
    done = subprocess.run([RETREC, "eval", "--data", str(tiny_data), "--retriever", "dense", "--model",
                           "nobody/no-such-model"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2
    (line,) = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert "'nobody/no-such-model'" in line and str(cache / "hub") in line and "HF_HUB_OFFLINE" in line


def test_training_starts_from_the_sentence_transformers_folder(st_folder: Path, cache: Path,
                                                              tiny_data: Path) -> None:
    from retrec.pipelines.train.text.config import DenseTrainConfig
    from retrec.pipelines.train.text.dense import train_dense
    from tests.pipelines.train.text.test_dense import TINY

    out = cache / "dense"
    train_dense(tiny_data, out, DenseTrainConfig(**{**TINY, "dev_max_queries": 0}, max_steps=1,
                                                 base_model=str(st_folder)), progress=False)
    manifest = load_bundle(out, kind="model/dense")
    assert manifest.config["base_model"] == "tiny-st" and manifest.config["pooling"] == "cls"
    assert manifest.dims["dim"] == 32
