"""The SPLADE encoder: pooling, special tokens, calibration, FLOPS, ONNX parity (siamese and inference-free),
empty / punctuation-only / out-of-vocabulary texts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from retrec.bundle import BundleError, load_bundle
from retrec.models.splade import (
    MaxPooledProduct,
    SparseConfig,
    SpladeEncoder,
    export_sparse,
    flops,
    idf_weights,
    mean_pooled_length,
    sparse_vectors,
)
from retrec.runtime.sparse_encoder import CPU_BATCH_TOKENS, OnnxSparseEncoder
from retrec.runtime.tokenizer import load_tokenizer, special_ids

DOCS = ["Scurvy is caused by a lack of vitamin C, found in citrus fruit.",
        "Ray Serve routes requests; replicas scale.", "short", "Tokens, tokens, and more (tokens)!",
        "Vitamin C deficiency causes scurvy in sailors on long voyages without fresh food."]
ODD = ["", "!!! ... ???", "qqqzzzxxyy ẞ∰ 𝔘", "∰ 𝔘 ☃"]  # the last: [UNK] tokens only


def tiny_model(seed: int = 0) -> SpladeEncoder:
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    bert = BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=64), add_pooling_layer=False)
    return SpladeEncoder(bert, special_ids(load_tokenizer())).eval()


def assert_same_vectors(got: list[tuple[np.ndarray, np.ndarray]], expected: list[tuple[np.ndarray, np.ndarray]],
                        atol: float = 1e-4) -> None:
    """ONNX Runtime and torch give the same sparse vectors within ``atol``: compared over the vocabulary, since a
    term whose weight is within float32 rounding of zero may be kept by one and dropped by the other."""
    assert len(got) == len(expected)
    for (gi, gw), (ei, ew) in zip(got, expected):
        a, b = np.zeros(30522), np.zeros(30522)
        a[gi], b[ei] = gw, ew
        np.testing.assert_allclose(a, b, atol=atol)
        assert len(set(gi.tolist()) ^ set(ei.tolist())) <= 2  # the same terms, but for such borderline ones


def test_weights_are_max_pooled_log_saturated_logits_without_special_tokens() -> None:
    model, tok = tiny_model(), load_tokenizer()
    model.set_head(3.0, 0.0)
    feeds = tok(DOCS[:2], 32)
    ids, mask = torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"])
    with torch.no_grad():
        weights = model(ids, mask)
        logits = model.logits(ids, mask)
    specials = torch.as_tensor(special_ids(tok))
    assert weights.shape == (2, 30522) and (weights >= 0).all() and (weights[:, specials] == 0).all()
    keep = mask.bool() & (model.allowed[ids] > 0)  # [CLS] / [SEP] / padding not pooled
    expected = torch.stack([torch.log1p(torch.relu(logits[r][keep[r]])).amax(0) for r in range(2)])
    expected[:, specials] = 0
    torch.testing.assert_close(weights, expected)


def test_max_pooled_product_equals_autograd_through_the_full_product() -> None:
    torch.manual_seed(1)
    states = torch.randn(3, 6, 5, dtype=torch.float64, requires_grad=True)
    table = torch.randn(13, 5, dtype=torch.float64, requires_grad=True)
    keep = torch.rand(3, 6) > 0.3
    keep[2] = False  # a row that pools nothing stays -inf and gets no gradient
    bias, upstream = torch.randn(13, dtype=torch.float64), torch.randn(3, 13, dtype=torch.float64)

    def full(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (s @ t.T).masked_fill(~keep.unsqueeze(-1), float("-inf")).amax(1)

    def pooled(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return MaxPooledProduct.apply(s, t, keep)

    got, expected = pooled(states, table), full(states, table)
    # Two computation orders of the same float64 dot products (5 terms of N(0, 1) products): they agree to a few
    # ulps of the sum of |terms| (~1e-15), and exactly only for some BLAS kernels, so a 1e-12 tolerance.
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert torch.isinf(got[2]).all() and torch.isfinite(got[:2]).all()
    grads = [torch.autograd.grad((torch.log1p(torch.relu(f(states, table) + bias)) * upstream).sum(), (states, table))
             for f in (pooled, full)]
    assert grads[0][0].abs().sum() > 0 and grads[0][1].abs().sum() > 0
    for mine, reference in zip(*grads):
        torch.testing.assert_close(mine, reference, rtol=1e-6, atol=1e-6)  # the backward pass adds in float32


def test_training_forward_equals_the_inference_forward_with_gradients_to_the_head() -> None:
    model, tok = tiny_model(), load_tokenizer()
    model.calibrate(tok, DOCS, start_terms=40, max_length=32)
    feeds = tok(DOCS, 32)
    ids, mask = torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"])
    with torch.no_grad():
        plain = model(ids, mask)
    trained = model(ids, mask)  # eval mode (no dropout), gradients on: the MaxPooledProduct path
    torch.testing.assert_close(trained.detach(), plain)
    trained.sum().backward()
    assert model.transform.weight.grad.abs().sum() > 0 and model.bias.grad.abs().sum() > 0


def test_attention_dropout_can_be_switched_off_for_training() -> None:
    from retrec.models.text_encoder import set_attention_dropout

    model = tiny_model()
    attention = [m for m in model.bert.modules() if type(m).__name__.endswith("SelfAttention")]
    assert attention and all(m.dropout.p == pytest.approx(0.1) for m in attention)  # BERT's default
    set_attention_dropout(model.bert, 0.0)
    assert all(m.dropout.p == 0.0 for m in attention)
    hidden = [m for m in model.bert.modules() if isinstance(m, torch.nn.Dropout) and m not in
              [a.dropout for a in attention]]
    assert hidden and all(m.p == pytest.approx(0.1) for m in hidden)  # the hidden states' dropout is kept


def test_calibration_sets_the_median_document_terms() -> None:
    model, tok = tiny_model(), load_tokenizer()
    head = model.calibrate(tok, DOCS, start_terms=40, max_length=32)
    terms = sorted(len(ids) for ids, _ in sparse_vectors(model, tok, DOCS, 32))
    assert 30 <= terms[len(terms) // 2] <= 40 and head["scale"] > 0
    top = max(float(w.max()) for _, w in sparse_vectors(model, tok, DOCS, 32))
    assert 1.0 < top < 4.0  # around log(1 + 10)


def test_calibration_refuses_texts_without_words() -> None:
    with pytest.raises(ValueError, match="no word to pool"):
        tiny_model().calibrate(load_tokenizer(), ["", "∰ 𝔘"], max_length=16)


def test_flops_is_the_sum_of_squared_mean_activations() -> None:
    w = torch.tensor([[1.0, 0.0, 2.0], [3.0, 0.0, 0.0]])
    assert float(flops(w)) == pytest.approx(2.0**2 + 0 + 1.0**2)


def test_onnx_export_matches_torch_siamese(tmp_path: Path) -> None:
    model, tok = tiny_model(), load_tokenizer()
    model.calibrate(tok, DOCS, start_terms=60, max_length=32)
    config = SparseConfig(max_query_length=16, max_doc_length=32)
    export_sparse(model, tmp_path / "b", tokenizer=tok, config=config, name="tiny-sparse")
    encoder = OnnxSparseEncoder(tmp_path / "b")
    for texts, got, length in ((DOCS + ODD, encoder.encode_documents(DOCS + ODD), 32),
                               (DOCS + ODD, encoder.encode_queries(DOCS + ODD), 16)):
        assert_same_vectors(got, sparse_vectors(model, tok, texts, length))
    assert_same_vectors(encoder.encode_documents(DOCS + ODD, batch_size=2), encoder.encode_documents(DOCS + ODD))
    assert encoder.document_batch_size == 32  # 32 documents of 32 tokens: CPU_BATCH_TOKENS
    encoder.max_doc_length = 512
    assert encoder.document_batch_size == CPU_BATCH_TOKENS // 512 == 2  # long documents: smaller CPU batches
    encoder.max_doc_length = 32
    empty, punctuation, _, unknown = encoder.encode_queries(ODD)
    assert len(empty[0]) == 0 and len(unknown[0]) == 0  # no word: nothing pooled
    assert len(punctuation[0]) > 0  # punctuation is text: it has expansions
    assert all(w.dtype == np.float32 and i.dtype == np.int64 for i, w in encoder.encode_documents(DOCS))
    manifest = load_bundle(tmp_path / "b")
    assert manifest.kind == "model/sparse" and manifest.dims["dim"] == 30522 and manifest.config["mode"] == "siamese"


def test_lexical_channel_adds_bm25_saturation_and_exports(tmp_path: Path) -> None:
    model, tok = tiny_model(), load_tokenizer()
    model.calibrate(tok, DOCS, start_terms=60, max_length=32)
    plain = sparse_vectors(model, tok, DOCS + ODD, 32)
    with pytest.raises(ValueError, match="lexical"):
        model.enable_lexical(0.0)
    model.enable_lexical(avg_length=mean_pooled_length(model, tok, DOCS, 32), k1=1.2, b=0.75)
    avg = model.lexical["avg_length"]
    assert 5 < avg < 32
    with_lex = sparse_vectors(model, tok, DOCS + ODD, 32)
    allowed = model.allowed.numpy()
    for text, ids, (pi, pw), (li, lw) in zip(DOCS + ODD, tok.encode(DOCS + ODD, 32), plain, with_lex):
        own = [t for t in ids if allowed[t] > 0]
        base, got = np.zeros(30522), np.zeros(30522)
        base[pi], got[li] = pw, lw
        tf = np.bincount(own, minlength=30522).astype(float)
        expected = tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * len(own) / avg))
        np.testing.assert_allclose(got - base, expected, atol=1e-5, err_msg=text)
    assert len(with_lex[-1][0]) == 0  # [UNK] only: still nothing
    export_sparse(model, tmp_path / "b", tokenizer=tok, config=SparseConfig(max_doc_length=32), name="lex")
    encoder = OnnxSparseEncoder(tmp_path / "b")
    assert load_bundle(tmp_path / "b").config["lexical"] == model.lexical
    assert_same_vectors(encoder.encode_documents(DOCS + ODD), with_lex)


def test_document_top_k_keeps_the_largest_weights(tmp_path: Path) -> None:
    model, tok = tiny_model(), load_tokenizer()
    model.calibrate(tok, DOCS, start_terms=60, max_length=32)
    export_sparse(model, tmp_path / "b", tokenizer=tok, config=SparseConfig(max_doc_length=32, doc_top_k=5))
    full = sparse_vectors(model, tok, DOCS, 32)
    for (ids, w), (fi, fw) in zip(OnnxSparseEncoder(tmp_path / "b").encode_documents(DOCS), full):
        assert len(ids) == min(5, len(fi)) and set(ids) <= set(fi)
        if len(ids):
            assert w.min() >= np.sort(fw)[-len(ids)] - 1e-4
    assert max(len(fi) for fi, _ in full) > 5  # the cut was exercised


def test_inference_free_queries_are_table_lookups(tmp_path: Path) -> None:
    model, tok = tiny_model(), load_tokenizer()
    table = idf_weights(tok, DOCS, 32)
    assert (table[special_ids(tok)] == 0).all() and table[tok.encode(["scurvy"], 8)[0][1]] > 0
    with pytest.raises(ValueError, match="query weight table"):
        export_sparse(model, tmp_path / "x", tokenizer=tok, config=SparseConfig(mode="inference-free"))
    export_sparse(model, tmp_path / "b", tokenizer=tok, config=SparseConfig(mode="inference-free"),
                  query_weights=table)
    encoder = OnnxSparseEncoder(tmp_path / "b")
    (ids, weights), (empty, _), _ = encoder.encode_queries(["vitamin scurvy scurvy", "", "!!!"])
    tokens = sorted(set(tok.encode(["vitamin scurvy scurvy"], 16)[0]) - set(special_ids(tok)))
    assert ids.tolist() == [t for t in tokens if table[t] > 0]
    np.testing.assert_array_equal(weights, table[ids])
    assert len(empty) == 0


def test_a_bundle_of_another_kind_or_a_bad_table_is_refused(tmp_path: Path) -> None:
    model, tok = tiny_model(), load_tokenizer()
    with pytest.raises(ValueError, match="finite non-negative"):
        export_sparse(model, tmp_path / "b", tokenizer=tok, config=SparseConfig(mode="inference-free"),
                      query_weights=-np.ones(30522, np.float32))
    from tests.tiny_models import tiny_dense_encoder

    with pytest.raises(BundleError, match="model/sparse"):
        OnnxSparseEncoder(tiny_dense_encoder(tmp_path / "dense"))
