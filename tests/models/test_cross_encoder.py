"""Cross-encoder re-ranker: pair tokenisation, ONNX export parity, re-ranking order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from retrec import kinds
from retrec.bundle import BundleError, load_bundle
from retrec.models.cross_encoder import CrossEncoder, RerankerConfig, export_reranker, score_pairs
from retrec.runtime.reranker import OnnxReranker
from retrec.runtime.tokenizer import load_tokenizer

PAIRS = [("what causes scurvy", "Scurvy is caused by a lack of vitamin C in the diet."),
         ("gene expression", "A much longer document about the regulation of gene expression in cells. " * 20),
         ("q", "d")]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[CrossEncoder, Path]:
    torch.manual_seed(0)
    model = CrossEncoder.from_pretrained()
    with torch.no_grad():  # a head that is not near zero, so parity is checked on real magnitudes
        model.head.weight.normal_(std=1.0)
        model.head.bias.fill_(0.5)
    out = tmp_path_factory.mktemp("reranker") / "bundle"
    export_reranker(model, out, name="toy-reranker", config=RerankerConfig(max_length=64))
    return model, out


def test_pairs_are_one_sequence_with_segment_ids_cut_on_the_long_side() -> None:
    tok = load_tokenizer()
    (ids, types), = tok.encode_pairs([("what causes scurvy", "scurvy is a disease " * 40)], 24)
    assert len(ids) == 24 and ids[0] == 101 and ids.count(102) == 2  # [CLS] q [SEP] d [SEP]
    first_sep = ids.index(102)
    assert types[: first_sep + 1] == [0] * (first_sep + 1) and set(types[first_sep + 1:]) == {1}
    assert first_sep == 6  # the query is kept whole; the document is cut
    feeds = tok.pad_pairs(tok.encode_pairs([("a", "b"), ("a longer query", "and a longer document")], 32))
    assert feeds["token_type_ids"].shape == feeds["input_ids"].shape
    assert (feeds["token_type_ids"][feeds["attention_mask"] == 0] == 0).all()


def test_onnx_scores_match_torch_and_the_bundle_is_registered(exported: tuple[CrossEncoder, Path]) -> None:
    model, out = exported
    manifest = load_bundle(out, kind="model/reranker")
    assert manifest.config["max_length"] == 64 and manifest.config["output"] == "scores"
    assert kinds.get("model/reranker").role == "reranker"
    reranker = kinds.call(kinds.get("model/reranker").load, out)
    expected = score_pairs(model, load_tokenizer(), PAIRS, 64)
    got = reranker.score_pairs(PAIRS)
    assert got.shape == (3,) and np.abs(got - expected).max() < 1e-4
    assert np.ptp(got) > 0.01  # the pairs score differently: the test could fail


def test_rerank_orders_the_head_by_score_and_keeps_the_tail(exported: tuple[CrossEncoder, Path]) -> None:
    reranker = OnnxReranker(exported[1])
    texts = {"a": PAIRS[0][1], "b": PAIRS[1][1], "c": "unrelated words", "d": "tail one", "e": "tail two"}
    scores = reranker.score("what causes scurvy", [texts[i] for i in "abc"])
    ids, out = reranker.rerank("what causes scurvy", list("abcde"), texts.__getitem__, depth=3)
    head = [x for _, x in sorted(zip(-scores, "abc"))]
    assert ids == [*head, "d", "e"]
    assert np.all(np.diff(out) < 0)  # one descending list, the tail below the head
    assert np.allclose(out[:3], np.sort(scores)[::-1], atol=1e-6)
    assert reranker.rerank("q", [], texts.__getitem__, depth=5)[0] == []


def test_a_bundle_of_another_kind_is_refused(exported: tuple[CrossEncoder, Path], tmp_path: Path) -> None:
    from retrec.models.text_encoder import zero_shot_bundle

    with pytest.raises(BundleError, match="expected 'model/reranker'"):
        OnnxReranker(zero_shot_bundle(cache=tmp_path))


def test_a_reranker_that_lost_to_its_first_stage_on_dev_says_so(exported: tuple[CrossEncoder, Path],
                                                                 tmp_path: Path) -> None:
    import shutil

    from retrec.bundle import read_manifest, write_manifest

    assert OnnxReranker(exported[1]).dev_warning() is None  # no training record: nothing to say
    copy = tmp_path / "weak"
    shutil.copytree(exported[1], copy)
    m = read_manifest(copy)
    write_manifest(copy, kind=m.kind, name=m.name, config=m.config, dims=m.dims, command=m.command,
                   metrics={"dev_nDCG@10": 0.47, "dev_nDCG@10_first_stage": 0.63, "beats_first_stage": False})
    warning = OnnxReranker(copy).dev_warning()
    assert warning is not None and "0.4700 vs 0.6300" in warning


def test_segments_pooling_starts_where_the_bi_encoder_ranks_and_exports(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = CrossEncoder.from_pretrained(pooling="segments")
    tok = load_tokenizer()
    query = "what causes scurvy"
    docs = ["Scurvy is caused by a lack of vitamin C in the diet.", "The stock market rose on Tuesday.",
            "Graphene conducts electricity at room temperature."]
    fresh = score_pairs(model, tok, [(query, d) for d in docs], 64)
    assert fresh.argmax() == 0 and fresh[0] - fresh[1:].max() > 1.0  # a fresh head already ranks, not at random
    assert np.all(np.abs(fresh) <= 20.0 + 1e-4)  # the head is zero: scale x a cosine
    with torch.no_grad():
        model.head.weight.normal_(std=1.0)
    out = tmp_path / "segments"
    export_reranker(model, out, name="segments", config=RerankerConfig(pooling="segments", max_length=64))
    expected = score_pairs(model, tok, PAIRS, 64)
    assert np.abs(OnnxReranker(out).score_pairs(PAIRS) - expected).max() < 1e-3
    with pytest.raises(ValueError, match="pooling must be one of"):
        RerankerConfig(pooling="max")


def test_interpolation_mixes_both_scales_and_weight_one_keeps_the_first_stage() -> None:
    from retrec.runtime.reranker import interpolate

    model = np.array([3.0, 1.0, 2.0])
    bm25 = np.array([40.0, 30.0, 10.0])  # another scale entirely
    assert list(np.argsort(-interpolate(model, bm25, 0.0))) == [0, 2, 1]
    assert list(np.argsort(-interpolate(model, bm25, 1.0))) == [0, 1, 2]
    assert np.allclose(interpolate(model, bm25, 0.5), [1.0, 0.5 * 2 / 3, 0.5 * 0.5])
    assert np.allclose(interpolate(np.ones(3), bm25, 0.0), 0.0)  # a constant list: no order of its own
    with pytest.raises(ValueError, match="first-stage scores"):
        interpolate(model, bm25[:2], 0.5)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        interpolate(model, bm25, 1.5)


def test_rerank_mixes_first_stage_scores_by_the_bundles_weight(exported: tuple[CrossEncoder, Path]) -> None:
    reranker = OnnxReranker(exported[1])
    texts = {"a": PAIRS[0][1], "b": PAIRS[1][1], "c": "unrelated words"}
    alone, _ = reranker.rerank("what causes scurvy", list("abc"), texts.__getitem__, first_scores=[3.0, 2.0, 1.0])
    reranker.first_stage_weight = 1.0  # as a bundle whose dev chose the first stage's order
    kept, _ = reranker.rerank("what causes scurvy", list("abc"), texts.__getitem__, first_scores=[3.0, 2.0, 1.0])
    assert kept == list("abc")
    assert alone == reranker.rerank("what causes scurvy", list("abc"), texts.__getitem__)[0]  # no scores: the model
