"""SASRec: tiny training, ONNX parity through the shared sequence runtime, losses, data-derived defaults."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from retrec.bundle import load_bundle
from retrec.data.interactions import Sequences
from retrec.models.sasrec import SASRec, SASRecConfig
from retrec.pipelines.train.seq.config import BERT4RecTrainConfig, SASRecTrainConfig
from retrec.pipelines.train.seq.data import resolve_defaults
from retrec.pipelines.train.seq.item_softmax import loss_fn
from retrec.pipelines.train.seq.sasrec import train_sasrec
from retrec.runtime.sequence_recommender import SequenceRecommender

TINY = SASRecTrainConfig(max_len=12, hidden=16, layers=1, heads=2, batch_size=64, epochs=2, patience=2,
                         eval_users=100, negatives=64, warmup_steps=0)


@pytest.fixture(scope="module")
def bundle(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_sasrec(tiny_data, tmp_path_factory.mktemp("sas") / "bundle", TINY, progress=False)


def test_bundle_serves_what_torch_scores(bundle: Path) -> None:
    manifest = load_bundle(bundle, kind="model/sasrec")
    assert manifest.metrics["onnx_top10_identical"] == 1.0
    assert manifest.dims["history_len"] == 12 and manifest.metrics["epochs_run"] == 2
    rec = SequenceRecommender.load(bundle)
    long_history = list(rec.item_ids[3:40])  # longer than max_len: the last 12 are read
    top = rec.recommend([long_history, long_history[-12:], []], k=5)
    assert [i for i, _ in top[0]] != [] and not {i for i, _ in top[0]} & set(long_history)
    np.testing.assert_allclose(rec.score([long_history]), rec.score([long_history[-12:]]), atol=1e-5)
    assert len(top[2]) == 5  # an empty history still gets a list


def test_the_bundle_carries_the_weights_training_continues_from(bundle: Path) -> None:
    from retrec.models.seq_weights import load_sequence_model

    model, item_keys = load_sequence_model(bundle)
    rec = SequenceRecommender.load(bundle)
    rows = rec.table.lookup(item_keys)  # model row -> served table row
    with torch.no_grad():
        np.testing.assert_array_equal(model.table_rows().numpy(), rec.matrix[rows])
        histories = [rows[:5], rows[7:19]]
        model_rows = [np.arange(5), np.arange(7, 19)]
        np.testing.assert_allclose(model.score_next(model_rows).numpy(), rec.score_rows(histories)[:, rows],
                                   rtol=1e-4, atol=1e-4)


def test_bert_layout_still_trains_and_serves(tiny_data: Path, tmp_path: Path) -> None:
    """Bundles trained before the paper's layout (``--block bert``) keep training, exporting and loading."""
    out = train_sasrec(tiny_data, tmp_path / "b", SASRecTrainConfig(**{**TINY.__dict__, "block": "bert",
                                                                        "epochs": 1}), progress=False)
    manifest = load_bundle(out, kind="model/sasrec")
    assert manifest.config["model"]["block"] == "bert" and manifest.metrics["onnx_top10_identical"] == 1.0
    bert, paper = (set(SASRec(SASRecConfig(num_items=5, block=b)).state_dict()) for b in ("bert", "sasrec"))
    assert bert != paper  # different layers: a bundle's config says which to rebuild
    with pytest.raises(ValueError, match="unknown block layout"):
        SASRec(SASRecConfig(num_items=5, block="gpt"))


def test_bf16_training_exports_an_fp32_model_with_parity(tiny_data: Path, tmp_path: Path) -> None:
    out = train_sasrec(tiny_data, tmp_path / "bf", SASRecTrainConfig(**{**TINY.__dict__, "precision": "bf16",
                                                                         "epochs": 1}), progress=False)
    manifest = load_bundle(out, kind="model/sasrec")
    assert manifest.metrics["precision"] == "bf16" and manifest.metrics["device"] == "cpu"
    assert manifest.metrics["onnx_top10_identical"] == 1.0 and np.isfinite(manifest.metrics["valid_NDCG@10"])


def test_configs_without_a_block_are_the_bert_layout() -> None:
    """Bundles written before ``block`` existed rebuild with the layers they were trained with."""
    old = {"num_items": 5, "max_len": 4, "hidden": 8, "layers": 1, "heads": 1, "dropout": 0.1,
           "attention_dropout": 0.1}
    model = SASRec(SASRecConfig(**old))
    assert model.cfg.block == "bert" and "blocks.0.qkv.weight" in model.state_dict()
    with pytest.raises(ValueError, match="unknown block layout"):
        SASRec(SASRecConfig(**old, block="pre-ln"))


@pytest.mark.parametrize("block", ["sasrec", "bert"])
def test_left_padding_changes_nothing(block: str) -> None:
    """Padded positions are masked out of attention (and zeroed in the paper's layout): the real positions'
    outputs are the same at any padding length (positions are right-aligned)."""
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(num_items=50, max_len=8, hidden=16, layers=2, heads=2, block=block)).eval()
    with torch.no_grad():
        short = model(torch.tensor([[3, 4, 5]]))
        padded = model(torch.tensor([[50, 50, 50, 50, 50, 3, 4, 5]]))
    torch.testing.assert_close(padded[:, -3:], short, atol=1e-5, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the trainers pick one by themselves)")
def test_trains_on_a_gpu_and_exports_for_the_cpu(tiny_data: Path, tmp_path: Path) -> None:
    out = train_sasrec(tiny_data, tmp_path / "g", SASRecTrainConfig(**{**TINY.__dict__, "device": "auto"}),
                       progress=False)
    manifest = load_bundle(out, kind="model/sasrec")
    assert manifest.metrics["device"].startswith("cuda") and manifest.metrics["onnx_top10_identical"] == 1.0


@pytest.mark.parametrize("block", ["sasrec", "bert"])
def test_attention_is_causal(block: str) -> None:
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(num_items=50, max_len=8, hidden=16, layers=2, heads=2, block=block)).eval()
    rows = torch.tensor([[3, 4, 5, 6, 7, 8, 9, 10]])
    changed = rows.clone()
    changed[0, -1] = 11
    with torch.no_grad():
        a, b = model(rows), model(changed)
    torch.testing.assert_close(a[:, :-1], b[:, :-1])  # earlier positions never see a later item
    assert not torch.allclose(a[:, -1], b[:, -1])
    inputs, targets = model.shifted(torch.tensor([[50, 50, 1, 2, 3]]))
    assert inputs.tolist() == [[50, 50, 1, 2]] and targets.tolist() == [[50, 50, 2, 3]]  # no target without history


@pytest.mark.parametrize("loss", ["sampled", "gbce", "ce"])
def test_losses_fall_when_the_target_scores_higher(loss: str) -> None:
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(num_items=200, max_len=4, hidden=8, layers=1, heads=1))
    cfg = SASRecTrainConfig(loss=loss, negatives=50)  # type: ignore[arg-type]
    with torch.no_grad():
        model.items.weight.normal_()
    targets, others = torch.tensor([3, 9]), torch.tensor([120, 77])
    hidden = model.item_matrix().detach()[targets]  # scores its own target highest
    low = loss_fn(model, hidden, targets, cfg, torch.Generator().manual_seed(1))
    high = loss_fn(model, hidden, others, cfg, torch.Generator().manual_seed(1))
    assert torch.isfinite(low) and low < high


def test_gbce_beta_one_at_full_sampling_is_plain_bce() -> None:
    """With every item a negative (alpha = 1) gBCE is BCE whatever t is."""
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(num_items=5, max_len=4, hidden=4, layers=1, heads=1))
    hidden, targets = torch.randn(3, 4), torch.tensor([0, 2, 4])
    a = loss_fn(model, hidden, targets, SASRecTrainConfig(loss="gbce", negatives=4, gbce_t=0.0),
                torch.Generator().manual_seed(2))
    b = loss_fn(model, hidden, targets, SASRecTrainConfig(loss="gbce", negatives=4, gbce_t=1.0),
                torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b)


def test_lengths_and_mask_come_from_the_data() -> None:
    short = Sequences(users=[str(i) for i in range(100)], items=[["a"] * (5 + i % 10) for i in range(100)])
    long = Sequences(users=[str(i) for i in range(100)], items=[["a"] * (100 + 5 * i) for i in range(100)])
    b4r = BERT4RecTrainConfig()
    assert (resolve_defaults(b4r, short).max_len, resolve_defaults(b4r, short).mask_prob) == (20, 0.6)
    # BERT4Rec's pre-LN default takes at most 50 positions
    assert (resolve_defaults(b4r, long).max_len, resolve_defaults(b4r, long).mask_prob) == (50, 0.2)
    assert resolve_defaults(BERT4RecTrainConfig(block="bert"), long).max_len == 200
    assert resolve_defaults(SASRecTrainConfig(), long).max_len == 200
    assert resolve_defaults(BERT4RecTrainConfig(max_len=30, mask_prob=0.3), long).max_len == 30
    assert resolve_defaults(SASRecTrainConfig(), short).max_len == 20


def test_one_item_users_give_no_empty_batch(tmp_path: Path) -> None:
    """A window of one item has nothing to predict: dropped, so no batch of them makes a NaN loss."""
    import json

    lines = [f"u{u} i{u % 7}\n" for u in range(200)]  # 200 one-item users: sorted into batches of their own
    lines += [f"v{u} i{(u + k) % 9}\n" for u in range(40) for k in range(6)]
    (tmp_path / "seq.txt").write_text("".join(lines))
    cfg = SASRecTrainConfig(**{**TINY.__dict__, "epochs": 1, "batch_size": 16})
    out = train_sasrec(tmp_path / "seq.txt", tmp_path / "b", cfg, progress=False)
    curve = json.loads((out / "training_curve.json").read_text())
    assert all(np.isfinite(c["loss"]) for c in curve)
