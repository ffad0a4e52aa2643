"""Teachers of dense training: the cross-encoder member, its use through `--teacher BUNDLE`, and the
judged-negative masking switch."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from retrec.bundle import load_bundle
from retrec.pipelines.train.text.contrastive import Step
from retrec.pipelines.train.text.data import TrainingSet
from retrec.pipelines.train.text.dense import DenseTrainConfig, step_loss, train_dense
from retrec.pipelines.train.text.teachers import CrossEncoderMember


class _Overlap:
    """Scores a pair by the words it shares (a stand-in cross-encoder); counts the pairs it was asked."""

    name = "overlap"

    def __init__(self) -> None:
        self.asked = 0

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        self.asked += len(pairs)
        return np.array([len(set(q.split()) & set(d.split())) for q, d in pairs], dtype=np.float32)


def test_cross_encoder_member_scores_each_candidate_once_and_normalises_per_query() -> None:
    docs = ["vitamin c scurvy", "scurvy", "genes", "vitamin c scurvy sailors"]
    scorer = _Overlap()
    seen: list[tuple[int, int]] = []
    member = CrossEncoderMember(scorer, {"q": "vitamin c scurvy", "r": "genes"}, docs,
                                {"q": np.array([0, 1, 2]), "r": np.array([2, 3])},
                                progress=lambda done, of: seen.append((done, of)))
    assert scorer.asked == 5 and member.pairs == 5 and seen == [(2, 2)]
    assert member.scores("q", np.array([0, 1, 2])).tolist() == pytest.approx([1.0, 1 / 3, 0.0])
    assert member.scores("q", np.array([3])).tolist() == [0.0]  # not scored: the query's lowest
    assert member.scores("r", np.array([2, 3])).tolist() == [1.0, 0.0]
    assert member.scores("unknown", np.array([0])).tolist() == [0.0]
    assert member.name == "cross-encoder:overlap"


@pytest.fixture(scope="module")
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RETREC_CACHE", str(tmp_path_factory.mktemp("retrec-cache-teachers")))
        yield


def test_a_reranker_bundle_is_a_teacher(tiny_data: Path, tmp_path: Path, private_cache: None) -> None:
    from retrec.models.cross_encoder import CrossEncoder, RerankerConfig, export_reranker

    bundle = tmp_path / "reranker"
    export_reranker(CrossEncoder.from_pretrained(), bundle, name="toy-ce", config=RerankerConfig(max_length=32))
    cfg = DenseTrainConfig(batch_size=4, epochs=1, max_query_length=16, max_doc_length=32, quantize=False,
                           dev_max_queries=4, dev_candidates=5, negative_depth=5, max_minutes=None, max_steps=1,
                           distill_weight=10.0, teacher=str(bundle))
    out = train_dense(tiny_data, tmp_path / "dense", cfg, progress=False)
    assert load_bundle(out).config["teacher"] == {"cross-encoder:toy-ce": 1.0, "labels": 1.0}


def test_masking_switch_changes_the_loss_but_not_the_count() -> None:
    from retrec.models.text_encoder import TextEncoder
    from retrec.runtime.tokenizer import load_tokenizer

    qrels = {"A": {0: 1, 1: 1}, "B": {1: 1}, "C": {2: 1}}  # B's positive (doc 1) is judged relevant to A
    texts = ["vitamin c and scurvy", "scurvy in sailors", "gene expression", "heart", "bones", "the moon"]
    ts = TrainingSet(doc_ids=[f"d{i}" for i in range(6)], doc_texts=texts, query_ids=list(qrels), positives={},
                     dev_ids=[], dev_qrels={}, query_texts={"A": "scurvy", "B": "sailors", "C": "genes"},
                     qrels_rows=qrels)
    step = Step(["A", "B", "C"], positives=np.array([0, 1, 2]), negatives=np.array([3, 4, 5]))
    model, tok = TextEncoder.from_pretrained(), load_tokenizer()
    with torch.no_grad():
        on, parts_on = step_loss(model, tok, step, ts, None, DenseTrainConfig(), "fp32")  # type: ignore[arg-type]
        off, parts_off = step_loss(model, tok, step, ts, None, DenseTrainConfig(mask_judged=False),  # type: ignore[arg-type]
                                   "fp32")
    assert parts_on["judged_negatives"] == parts_off["judged_negatives"] == 1.0
    assert float(off) > float(on)  # a relevant document counted as A's negative pushes A's loss up
