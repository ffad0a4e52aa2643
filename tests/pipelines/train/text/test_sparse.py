"""`retrec train sparse`: tiny end-to-end runs (siamese and inference-free), their verified ONNX bundles, the
FLOPS warm-up, resume, and an index built and searched through the registry."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from retrec.bundle import load_bundle
from retrec.data.beir import load_retrieval_data
from retrec.index.generic import build_index, index_kind, load_query_encoder
from retrec.models.splade import flops, idf_weights
from retrec.pipelines.train.text.config import SparseTrainConfig
from retrec.pipelines.train.text.contrastive import contrastive_inputs
from retrec.pipelines.train.text.sparse import SparseAdapter, csr_rows, flops_weight, idf_flops_scale, train_sparse
from retrec.runtime.sparse_encoder import OnnxSparseEncoder

# the tiny corpus thins out fast (as the demo's: RESULTS, stop 28); at the SciFact default rate, 1e-4, two steps
# leave its documents empty
TINY = {"batch_size": 4, "epochs": 1, "lr": 3e-5, "max_query_length": 16, "max_doc_length": 32, "quantize": False,
        "dev_max_queries": 4, "dev_candidates": 5, "queries_per_cluster": 8, "checkpoint_every": 1,
        "max_minutes": None, "calibration_documents": 20, "start_terms": 50, "flops_warmup_steps": 2}


@pytest.fixture(scope="module")
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("retrec-cache-sparse")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RETREC_CACHE", str(root))
        yield root


def test_siamese_training_writes_a_verified_bundle_and_resumes(tiny_data: Path, tmp_path: Path,
                                                              private_cache: Path) -> None:
    out = tmp_path / "sp"
    train_sparse(tiny_data, out, SparseTrainConfig(**TINY, max_steps=2, distill_weight=1.0, mode="siamese"),
                 progress=False)
    manifest = load_bundle(out, kind="model/sparse")
    metrics, config = manifest.metrics, manifest.config
    assert metrics["steps"] == 2 and metrics["onnx_max_abs_diff"] <= 1e-4 and metrics["dev_nDCG@10_start"] is not None
    assert metrics["dev_terms_per_document"] > 0 and metrics["dev_terms_per_query"] > 0
    assert config["mode"] == "siamese" and config["similarity"] == "dot" and config["head"]["scale"] > 0
    assert config["lexical"] is None and config["train"]["scale"] == 1.0  # the siamese defaults
    curve = [c for c in json.loads((out / "training_curve.json").read_text()) if "loss" in c]
    assert [c["step"] for c in curve] == [1, 2]
    assert all(np.isfinite(c["loss"]) and c["ce"] > 0 and c["flops_d"] > 0 and c["terms_d"] > 0 for c in curve)
    train_sparse(tiny_data, out, SparseTrainConfig(**TINY, max_steps=3, mode="siamese"), resume=True, progress=False)
    assert [c["step"] for c in json.loads((out / "training_curve.json").read_text()) if "loss" in c] == [1, 2, 3]

    kind = index_kind("sparse")
    encoder = load_query_encoder(kind, out)
    index = build_index(kind, ["a", "b"], ["vitamin C and scurvy", "ray serve replicas"], encoder=encoder, shards=2)
    (hits,) = index.search(encoder.encode_queries(["scurvy vitamin"]), k=2)
    assert hits and hits[0][0] == "a"


def test_inference_free_training_uses_the_idf_table(tiny_data: Path, tmp_path: Path, private_cache: Path) -> None:
    out = tmp_path / "if"
    train_sparse(tiny_data, out, SparseTrainConfig(**TINY, max_steps=1, mode="inference-free"), progress=False)
    manifest = load_bundle(out, kind="model/sparse")
    assert manifest.config["mode"] == "inference-free" and "query_weights" in manifest.config
    assert 0 < manifest.config["head"]["idf_flops_scale"] < 1  # IDF ~ log(N / df) > 1 on most terms
    encoder = OnnxSparseEncoder(out)
    _, texts = load_retrieval_data(tiny_data, split="train").doc_texts(with_title=True)
    idf = idf_weights(encoder.tokenizer, texts, 32)  # the corpus IDF at the document length, specials zeroed
    np.testing.assert_allclose(encoder.query_weights, idf, rtol=1e-6)
    terms, weights = encoder.encode_queries(["gene expression"])[0]
    assert len(terms) and np.array_equal(weights, idf[terms])
    assert manifest.config["lexical"]["avg_length"] > 0  # auto: on for inference-free
    assert manifest.config["train"]["scale"] == 0.2  # its IDF-weighted scores need a softer cross-entropy
    (doc_terms, _), = encoder.encode_documents(["gene expression"])
    assert set(terms) <= set(doc_terms.tolist())  # the lexical channel keeps a document's own terms


def test_a_learned_query_table_starts_at_the_idf_and_trains_on_the_batch_terms(tiny_data: Path,
                                                                               private_cache: Path) -> None:
    cfg = SparseTrainConfig(**TINY, mode="inference-free", query_weights="learned")
    base, ts, miners, teacher, labels = contrastive_inputs(tiny_data, cfg, False, "sparse")
    adapter = SparseAdapter(ts, cfg, miners, teacher, labels, base, "tiny")
    table = adapter.model.query_table
    assert adapter.idf is not None and torch.equal(table.detach(), adapter.idf)
    assert any(table is p for g in adapter.optimizer.param_groups for p in g["params"] if g.get("lr_scale") == 100)
    batch = adapter.batches(0)[0]
    loss, _ = adapter.step(batch)
    loss.backward()
    assert table.grad is not None
    words = {t for q in batch.queries for t in adapter.tokenizer.encode([ts.query_texts[q]], 16)[0]}
    assert set(torch.nonzero(table.grad).flatten().tolist()) <= words  # only the batch's query terms move
    assert torch.count_nonzero(table.grad) > 0


def test_the_idf_aware_penalty_starts_at_the_plain_penalty() -> None:
    docs = torch.tensor([[1.0, 0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 0.5, 1.0, 0.0]])
    idf = torch.tensor([0.5, 9.0, 4.0, 2.0, 7.0])
    scale = idf_flops_scale(docs, idf)
    assert abs(float(flops(docs * idf)) * scale - float(flops(docs))) < 1e-6 and scale < 1 / 4
    assert idf_flops_scale(docs, torch.full((5,), 2.0)) == pytest.approx(0.25)
    assert idf_flops_scale(torch.zeros(2, 5), idf) == 1.0


def test_csr_rows_hold_the_vectors() -> None:
    vectors = [(np.array([0, 2]), np.array([1.0, 2.0])), (np.array([], np.int64), np.array([])),
               (np.array([4]), np.array([0.5]))]
    matrix = csr_rows(vectors, 5)
    np.testing.assert_array_equal(matrix.toarray(), [[1, 0, 2, 0, 0], [0] * 5, [0, 0, 0, 0, 0.5]])
    assert matrix.shape == (3, 5) and csr_rows([], 5).shape == (0, 5)


def test_flops_weight_warms_up_quadratically() -> None:
    assert [flops_weight(s, 4) for s in (0, 2, 4, 8)] == [0.0, 0.25, 1.0, 1.0]
    assert flops_weight(0, 0) == 1.0


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="lambda_q"):
        SparseTrainConfig(lambda_d=-1.0)
    with pytest.raises(ValueError, match="start_terms"):
        SparseTrainConfig(start_terms=0)
    with pytest.raises(ValueError, match="mode"):
        SparseTrainConfig(mode="dual")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="attention_dropout"):
        SparseTrainConfig(attention_dropout=1.0)
    with pytest.raises(ValueError, match="head_lr_scale"):
        SparseTrainConfig(head_lr_scale=0.0)
    with pytest.raises(ValueError, match="scale must be positive"):
        SparseTrainConfig(scale=0.0)
    assert SparseTrainConfig(mode="inference-free", scale=0.5).logit_scale == 0.5
    with pytest.raises(ValueError, match="inference-free query table"):
        SparseTrainConfig(mode="siamese", query_weights="learned")
