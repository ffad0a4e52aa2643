"""OneRec end to end on tiny data: semantic IDs, training, ONNX agreement, valid unique generations, the bundle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from retrec.bundle import BundleError, load_bundle, write_manifest
from retrec.kinds import ONEREC_MODEL
from retrec.pipelines.train.seq.onerec import REWARD_FILE, OneRecTrainConfig, default_codes, train_onerec
from retrec.runtime.onerec import IDS_FILE, OneRecRecommender, read_semantic_ids, write_semantic_ids
from retrec.runtime.recommender import SkipReport

TINY = OneRecTrainConfig(max_len=10, levels=2, hidden=16, layers=1, heads=2, experts=3, top_k=2, session=3,
                         batch_size=64, epochs=2, patience=2, eval_users=40, beam=5, list_beam=12, dpo_rounds=1,
                         dpo_session=2, dpo_users=40, dpo_steps=3, reward_steps=20, dpo_lr=1e-3)


@pytest.fixture(scope="module")
def bundle(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_onerec(tiny_data, tmp_path_factory.mktemp("onerec") / "bundle", TINY, progress=False)


def test_bundle_records_training_and_onnx_agrees_with_torch(bundle: Path) -> None:
    manifest = load_bundle(bundle, kind=ONEREC_MODEL)
    m = manifest.metrics
    assert m["epochs_run"] == 2 and m["onnx_top10_identical"] == 1.0 and m["onnx_top_session_identical"] == 1.0
    assert len(m["expert_share"]) == 1 and sum(m["expert_share"][0]) == pytest.approx(1.0, abs=1e-3)
    curve = json.loads((bundle / "training_curve.json").read_text())
    assert [c["epoch"] for c in curve] == [1, 2] and all(0 <= c["valid_NDCG@10"] <= 1 for c in curve)
    (dpo,) = m["dpo"]  # one preference-alignment round, its figures before and after
    assert dpo["pairs"] > 0 and dpo["dpo_loss_first"] > 0 and 0 < dpo["reward_before"] < 1
    assert 0 < dpo["reward_after"] < 1 and 0 <= dpo["valid_NDCG@10_after"] <= 1
    assert (bundle / REWARD_FILE).is_file() and REWARD_FILE in manifest.files
    item_ids, codes = read_semantic_ids(bundle / IDS_FILE)
    assert len(np.unique(codes, axis=0)) == len(item_ids) == manifest.dims["items"]


def test_every_generated_item_is_valid_unique_and_unseen(bundle: Path) -> None:
    rec = OneRecRecommender.load(bundle)
    histories = [rec.item_ids[i:i + 4] for i in range(0, 60, 3)]
    sessions = rec.generate_sessions(histories)
    lists = rec.recommend(histories, k=8)
    for history, session, ranked in zip(histories, sessions, lists):
        assert len(session) == 3 == len(set(session)) and not set(session) & set(history)
        items = [i for i, _ in ranked]
        assert len(items) == 8 == len(set(items)) and not set(items) & set(history)
        assert set(items) <= set(rec.item_ids)
    with_seen = rec.recommend(histories[:1], k=len(rec.item_ids), exclude_seen=False)[0]
    assert set(histories[0]) <= {i for i, _ in with_seen}  # nothing excluded when asked
    with pytest.raises(ValueError, match=r"sessions of 1\.\.3 items"):
        rec.generate_sessions(histories, items=4)
    assert (rec.beam, rec.list_beam, rec.generate_k) == (5, 12, 12)  # lists search wider than sessions
    assert rec.item_inputs and rec.encoder.get_inputs()[0].shape[2] == rec.tree.depth + 1  # codes + item row
    beams = []
    generate_rows = rec.generate_rows
    rec.generate_rows = lambda rows, beam, items, *a: (  # type: ignore[method-assign]
        beams.append((beam, items)) or generate_rows(rows, beam, items, *a))
    rec.recommend(histories[:1], k=3)
    rec.recommend(histories[:1], k=20)
    rec.generate_sessions(histories[:1])
    assert beams == [(12, 1), (20, 1), (5, 3)]  # max(k, list_beam) for lists, beam for sessions


def test_unknown_history_items_are_skipped_and_counted(bundle: Path) -> None:
    rec = OneRecRecommender.load(bundle)
    report = SkipReport()
    known = rec.item_ids[:2]
    assert rec.generate([[known[0], "nope", known[1]]], 5, report) == rec.generate([known], 5)
    assert report.unknown_items == 1 and report.examples == ["nope"]
    scores = rec.score([known])
    assert np.isfinite(scores).sum() == rec.generate_k and scores.shape == (1, len(rec.item_ids))


def test_malformed_semantic_ids_are_refused(bundle: Path, tmp_path: Path) -> None:
    """A changed file fails its checksum; a re-manifested bundle whose ids do not fit the model is refused too."""
    copy = Path(shutil.copytree(bundle, tmp_path / "copy"))
    item_ids, codes = read_semantic_ids(copy / IDS_FILE)
    duplicate = codes.copy()
    duplicate[1] = duplicate[0]  # two items, one tuple
    write_semantic_ids(copy / IDS_FILE, item_ids, duplicate)
    with pytest.raises(BundleError, match="checksum mismatch"):
        OneRecRecommender.load(copy)
    m = load_bundle(bundle)
    fields = {"kind": m.kind, "name": m.name, "config": m.config, "dims": m.dims, "metrics": m.metrics}
    write_manifest(copy, **fields)
    with pytest.raises(BundleError, match="unique"):
        OneRecRecommender.load(copy)
    wider = codes.copy()
    wider[0, 0] = codes[:, 0].max() + 1  # a code the decoder has no token for
    write_semantic_ids(copy / IDS_FILE, item_ids, wider)
    write_manifest(copy, **fields)
    with pytest.raises(BundleError, match="tokens, the model's are"):
        OneRecRecommender.load(copy)
    write_semantic_ids(copy / IDS_FILE, item_ids, codes)
    write_manifest(copy, **{**fields, "dims": {**m.dims, "list_beam": 0}})
    with pytest.raises(BundleError, match="list_beam"):
        OneRecRecommender.load(copy)
    for items, match in ((3, "config.model.items"), ("54542", "config.model.items"), (True, "config.model.items"),
                         (0, "encoder.onnx reads 3 columns")):  # 0: the manifest disowns the encoder's item column
        write_manifest(copy, **{**fields, "config": {**m.config, "model": {**m.config["model"], "items": items}}})
        with pytest.raises(BundleError, match=match):
            OneRecRecommender.load(copy)
    write_manifest(copy, **{**fields, "config": {**m.config, "model": ["not", "an", "object"]}})
    with pytest.raises(BundleError, match=r"config\.model must be an object"):
        OneRecRecommender.load(copy)


def test_code_tokens_alone_train_export_and_agree(tiny_data: Path, tmp_path: Path) -> None:
    from dataclasses import replace

    cfg = replace(TINY, item_inputs=False, epochs=1, dpo_rounds=0)
    out = train_onerec(tiny_data, tmp_path / "codes-only", cfg, progress=False)
    manifest = load_bundle(out, kind=ONEREC_MODEL)
    assert manifest.config["model"]["items"] == 0 and manifest.metrics["onnx_top10_identical"] == 1.0
    rec = OneRecRecommender.load(out)
    assert not rec.item_inputs and rec.encoder.get_inputs()[0].shape[2] == rec.tree.depth
    old = Path(shutil.copytree(out, tmp_path / "before-list-beam"))  # a bundle written before list_beam and items
    model = {k: v for k, v in manifest.config["model"].items() if k != "items"}
    write_manifest(old, kind=manifest.kind, name=manifest.name, config={**manifest.config, "model": model},
                   dims={k: v for k, v in manifest.dims.items() if k != "list_beam"}, metrics=manifest.metrics)
    legacy = OneRecRecommender.load(old)
    assert (legacy.list_beam, legacy.item_inputs) == (legacy.beam, False)
    rec.list_beam = rec.beam  # what the bundle meant then: one beam for lists and sessions
    assert legacy.recommend([rec.item_ids[:3]], k=5) == rec.recommend([rec.item_ids[:3]], k=5)


def test_codes_per_level_follow_the_catalogue() -> None:
    assert default_codes(54_542, 2) == 1024 and default_codes(54_542, 3) == 128 and default_codes(100, 3) == 16
    assert default_codes(10**9, 2) == 1024 and default_codes(3, 2) == 8 and OneRecTrainConfig().levels == 2
    with pytest.raises(ValueError, match="top_k"):
        OneRecTrainConfig(experts=2, top_k=3)
    with pytest.raises(ValueError, match="dpo_session"):
        OneRecTrainConfig(session=3, dpo_session=4)


def test_first_weight_weighs_the_next_items_tokens(tiny_data: Path) -> None:
    from dataclasses import replace

    import torch

    from retrec.data.interactions import load_interactions, user_sequences
    from retrec.models.onerec import PAD
    from retrec.models.semantic_ids import semantic_ids
    from retrec.pipelines.train.seq.data import prepare, resolve_defaults
    from retrec.pipelines.train.seq.onerec import OneRecAdapter, item_vectors
    from retrec.tables import EmbeddingTable

    seqs = user_sequences(load_interactions(tiny_data))
    cfg = resolve_defaults(replace(TINY, codes=8), seqs)
    prep = prepare(seqs, EmbeddingTable(1, initial_capacity=1024), cfg.eval_users, cfg.valid_fraction, cfg.seed)
    adapter = OneRecAdapter(prep, cfg, semantic_ids(item_vectors(cfg, prep), cfg.levels, 8, seed=0))
    adapter.model.eval()  # no dropout: the same batch gives the same token losses
    with torch.no_grad():  # context-dependent predictions: the first item's tokens lose differently
        for weight in adapter.model.parameters():
            weight.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(0))
    batch, state = adapter.batches(1)[0], adapter.gen.get_state()
    target = adapter.tensors(batch)[-1]
    first = int((target[:, :adapter.tree.depth] != PAD).sum())
    later = int((target != PAD).sum()) - first

    def nll(weight: float) -> float:
        adapter.cfg = replace(cfg, first_weight=weight)
        adapter.gen.set_state(state)
        with torch.no_grad():
            return adapter.step(batch)[1]["nll"]

    first_mean, later_mean = nll(1e6), nll(1e-6)
    assert abs(first_mean - later_mean) > 0.01
    expected = (3 * first * first_mean + later * later_mean) / (3 * first + later)
    assert nll(3.0) == pytest.approx(expected, abs=1e-4) and abs(nll(3.0) - nll(1.0)) > 1e-3
    with pytest.raises(ValueError, match="first_weight"):
        OneRecTrainConfig(first_weight=0)
