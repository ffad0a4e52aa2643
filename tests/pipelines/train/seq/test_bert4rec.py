"""BERT4Rec: training on tiny data, ONNX parity, unknown ids, resume, verified bundle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from retrec.bundle import BundleError, load_bundle
from retrec.models.bert4rec import BERT4Rec, BERT4RecConfig
from retrec.pipelines.train.seq.bert4rec import BERT4RecTrainConfig, cloze_batch, train_bert4rec
from retrec.pipelines.train.seq.data import batch_count, length_batches, windows
from retrec.runtime.sequence_recommender import SequenceRecommender, SkipReport

TINY = BERT4RecTrainConfig(max_len=12, mask_prob=0.4, hidden=16, layers=1, heads=2, batch_size=64, epochs=2, patience=2,
                           eval_users=100)


@pytest.fixture(scope="module")
def bundle(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_bert4rec(tiny_data, tmp_path_factory.mktemp("b4r") / "bundle", TINY, progress=False)


def test_bundle_is_verified_and_onnx_matches_torch(bundle: Path) -> None:
    manifest = load_bundle(bundle, kind="model/bert4rec")
    assert manifest.metrics["onnx_top10_identical"] == 1.0
    assert manifest.dims["row_dim"] == 17 and manifest.metrics["epochs_run"] == 2
    assert len(json.loads((bundle / "training_curve.json").read_text())) == 2


def test_unknown_items_are_skipped_and_reported(bundle: Path) -> None:
    rec = SequenceRecommender.load(bundle)
    known = rec.item_ids[:3]
    report = SkipReport()
    with_unknown = rec.recommend([[known[0], "no-such-item", known[1], "x"]], k=5, report=report)
    clean = rec.recommend([[known[0], known[1]]], k=5)
    assert report.unknown_items == 2 and report.examples == ["no-such-item", "x"]
    assert with_unknown == clean and len(clean[0]) == 5
    assert not {known[0], known[1]} & {item for item, _ in clean[0]}  # seen items excluded
    assert len(rec.recommend([["nothing-known"]], k=3)[0]) == 3


def test_corrupted_model_is_refused(bundle: Path, tmp_path: Path) -> None:
    import shutil

    copy = Path(shutil.copytree(bundle, tmp_path / "copy"))
    data = bytearray((copy / "user_encoder.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "user_encoder.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"checksum mismatch for user_encoder\.onnx"):
        SequenceRecommender.load(copy)


def test_resume_continues_from_checkpoint(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "b"
    train_bert4rec(tiny_data, out, BERT4RecTrainConfig(**{**TINY.__dict__, "epochs": 1}), progress=False)
    train_bert4rec(tiny_data, out, BERT4RecTrainConfig(**{**TINY.__dict__, "epochs": 2}), resume=True, progress=False)
    curve = json.loads((out / "training_curve.json").read_text())
    assert [c["epoch"] for c in curve] == [1, 2]


def test_cloze_masks_only_real_positions_and_at_least_one() -> None:
    model = BERT4Rec(BERT4RecConfig(num_items=50, max_len=6))
    rows = torch.tensor([[50, 50, 3, 4, 5, 6], [50, 50, 50, 50, 50, 7]])
    gen = torch.Generator().manual_seed(0)
    inputs, masked, targets = cloze_batch(rows, model, 0.0, gen)  # p=0: only the forced last position
    assert masked.sum(dim=1).tolist() == [1, 1] and targets.tolist() == [6, 7]
    assert (inputs[masked] == model.mask).all() and (inputs[rows == model.pad] == model.pad).all()


def test_cloze_last_share_masks_only_the_last_item() -> None:
    model = BERT4Rec(BERT4RecConfig(num_items=50, max_len=6))
    rows = torch.randint(0, 50, (400, 6))
    rows[::2, :2] = model.pad
    gen = torch.Generator().manual_seed(0)
    _, masked, _ = cloze_batch(rows, model, 0.9, gen, last=0.25)
    only_last = masked[:, -1] & (masked.sum(dim=1) == 1)
    assert 0.15 < only_last.float().mean().item() < 0.35  # ~25% (+ the rare p=0.9 rows masking just the last)
    _, masked, _ = cloze_batch(rows, model, 0.9, gen, last=1.0)
    assert masked[:, -1].all() and (masked.sum(dim=1) == 1).all()
    with pytest.raises(ValueError, match="mask_last"):
        BERT4RecTrainConfig(mask_last=1.5)


def test_batch_count_is_the_number_of_length_batches() -> None:
    gen = torch.Generator().manual_seed(0)
    for n, size in ((1, 4), (7, 4), (400, 3), (1000, 7), (4000, 2)):
        lengths = np.random.default_rng(n).integers(1, 20, n)
        assert batch_count(n, size) == len(length_batches(lengths, size, gen))


def test_windows_cover_long_sequences() -> None:
    w = windows([np.arange(25)], max_len=10)
    assert [x.tolist()[-1] for x in w] == [24, 14, 4] and all(len(x) <= 10 for x in w)


def test_cosine_schedule_decays_over_the_epochs(tiny_data: Path, tmp_path: Path) -> None:
    cfg = BERT4RecTrainConfig(**{**TINY.__dict__, "epochs": 2, "patience": 10, "lr_schedule": "cosine",
                                 "warmup_steps": 1})
    train_bert4rec(tiny_data, tmp_path / "cos", cfg, progress=False)
    lrs = [c["lr"] for c in json.loads((tmp_path / "cos" / "training_curve.json").read_text())]
    assert 0 < lrs[1] < 0.1 * cfg.lr < lrs[0] <= cfg.lr
    with pytest.raises(ValueError, match="unknown lr schedule"):
        train_bert4rec(tiny_data, tmp_path / "bad", BERT4RecTrainConfig(**{**TINY.__dict__, "lr_schedule": "step"}),
                       progress=False)


def test_step_budget_decays_the_rate_and_ends_training(tiny_data: Path, tmp_path: Path) -> None:
    """``max_steps``: the learning rate decays over the step budget; training ends with the epoch that reaches it."""
    cfg = BERT4RecTrainConfig(**{**TINY.__dict__, "epochs": 50, "patience": 50, "max_steps": 2, "warmup_steps": 1})
    train_bert4rec(tiny_data, tmp_path / "steps", cfg, progress=False)
    curve = json.loads((tmp_path / "steps" / "training_curve.json").read_text())
    assert len(curve) == 1 and curve[0]["lr"] < 0.1 * cfg.lr  # one epoch (it holds more than 2 steps), decayed


def test_validation_ranks_equal_the_shared_metric() -> None:
    """``validate`` ranks on the model's device; its counts are :func:`target_ranks`' with seen items excluded."""
    from retrec.pipelines.eval.ir_metrics import mean_metrics, next_item_ranks, rec_metrics_from_ranks
    from retrec.pipelines.train.seq.item_softmax import validate

    torch.manual_seed(0)
    model = BERT4Rec(BERT4RecConfig(num_items=40, max_len=6, hidden=8, layers=1, heads=1)).eval()
    rng = np.random.default_rng(0)
    histories = [rng.choice(40, size=int(rng.integers(1, 9)), replace=False) for _ in range(300)]
    targets = np.array([int(rng.integers(0, 40)) for _ in histories])  # sometimes a seen item: ranks last
    targets[:5] = -1  # an item the model does not know: ranks last
    with torch.no_grad():
        scores = model.score_next(histories).double().numpy()
    greater, ties = next_item_ranks(scores, histories, targets)
    expected = mean_metrics(rec_metrics_from_ranks(greater, ties, 40, (10,)))
    got = validate(model, histories, targets, batch_size=64)
    assert got == pytest.approx(expected, abs=1e-6) and 0 < got["NDCG@10"] < 1


def test_sasrec_blocks_train_and_export_bidirectionally(tiny_data: Path, tmp_path: Path) -> None:
    """``--block sasrec`` gives BERT4Rec SASRec's pre-LN layers; attention stays bidirectional and padding-free."""
    torch.manual_seed(0)
    model = BERT4Rec(BERT4RecConfig(num_items=50, max_len=8, hidden=16, layers=2, heads=2, block="sasrec")).eval()
    rows = torch.tensor([[3, 4, 5, 51]])
    changed = torch.tensor([[3, 4, 6, 51]])
    with torch.no_grad():
        a, b = model(rows), model(changed)
        padded = model(torch.tensor([[50, 50, 50, 50, 3, 4, 5, 51]]))
    assert not torch.allclose(a[:, 0], b[:, 0])  # an earlier position sees a later item
    torch.testing.assert_close(padded[:, -4:], a, atol=1e-5, rtol=0)
    out = train_bert4rec(tiny_data, tmp_path / "paper", BERT4RecTrainConfig(**{**TINY.__dict__, "epochs": 1,
                                                                       "block": "sasrec"}), progress=False)
    manifest = load_bundle(out, kind="model/bert4rec")
    assert manifest.metrics["onnx_top10_identical"] == 1.0
    assert manifest.config["model"]["block"] == "sasrec"
