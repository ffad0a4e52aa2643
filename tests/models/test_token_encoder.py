"""The multi-vector token encoder: MaxSim, PCA initialisation, query augmentation, skip-list, ONNX parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from retrec.bundle import BundleError, load_bundle
from retrec.models.token_encoder import (
    MultivectorConfig,
    TokenEncoder,
    encode_documents,
    export_multivector,
    maxsim_scores,
    pca_projection,
    token_vectors,
)
from retrec.runtime.fde import maxsim
from retrec.runtime.token_encoder import OnnxTokenEncoder
from retrec.runtime.tokenizer import load_tokenizer, punctuation_ids

DOCS = ["Scurvy is caused by a lack of vitamin C, found in citrus fruit.",
        "Ray Serve routes requests; replicas scale.", "short", "Tokens, tokens, and more (tokens)!"]


def tiny_model(dim: int = 8, seed: int = 0) -> TokenEncoder:
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    bert = BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=64), add_pooling_layer=False)
    return TokenEncoder(bert, dim).eval()


def test_maxsim_scores_match_the_definition() -> None:
    rng = np.random.default_rng(0)
    q = torch.from_numpy(rng.standard_normal((2, 3, 4)).astype(np.float32))
    qmask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    d = torch.from_numpy(rng.standard_normal((3, 5, 4)).astype(np.float32))
    keep = torch.tensor([[True] * 5, [True, True, False, False, False], [False, True, True, True, False]])
    got = maxsim_scores(q, qmask, d, keep).numpy()
    for i in range(2):
        for j in range(3):
            qi = q[i][qmask[i].bool()].numpy()
            dj = d[j][keep[j]].numpy()
            assert got[i, j] == pytest.approx(maxsim(qi, dj), rel=1e-5)


def test_pca_projection_is_orthonormal_and_keeps_the_largest_directions() -> None:
    model = tiny_model()
    tok = load_tokenizer()
    w = pca_projection(model.bert, tok, DOCS, 8)
    assert w.shape == (8, 32)
    np.testing.assert_allclose(w @ w.T, np.eye(8), atol=1e-5)
    with torch.no_grad():
        feeds = tok(DOCS, 64)
        states = model.bert(input_ids=torch.from_numpy(feeds["input_ids"]),
                            attention_mask=torch.from_numpy(feeds["attention_mask"])).last_hidden_state
        tokens = torch.nn.functional.normalize(states[torch.from_numpy(feeds["attention_mask"]).bool()], dim=-1)
    kept = float((tokens.numpy() @ w.T).__pow__(2).sum())
    random = np.linalg.qr(np.random.default_rng(1).standard_normal((32, 8)))[0].T
    assert kept > float((tokens.numpy() @ random.T).__pow__(2).sum())  # more energy than a random subspace


def test_documents_skip_punctuation_and_queries_augment_with_mask(tmp_path) -> None:
    model = tiny_model()
    tok = load_tokenizer()
    skip = np.asarray(punctuation_ids(tok))
    assert tok._base.token_to_id(",") in skip and tok._base.token_to_id("the") not in skip
    cfg = MultivectorConfig(dim=8, max_query_length=12, max_doc_length=64, query_augment=True)
    _, keep = encode_documents(model, tok, DOCS, cfg, skip)
    ids = tok.encode([DOCS[3]], 64)[0]
    assert int(keep[3].sum()) == sum(1 for i in ids if i not in set(skip.tolist()))
    queries = token_vectors(model, tok, ["what causes scurvy", "a"], cfg, skip, query=True)
    assert [q.shape for q in queries] == [(12, 8), (12, 8)]  # padded with [MASK] to the query length
    plain = token_vectors(model, tok, ["what causes scurvy"], MultivectorConfig(dim=8), skip, query=True)
    assert plain[0].shape == (len(tok.encode(["what causes scurvy"], 32)[0]), 8)


@pytest.mark.parametrize("augment", [False, True])
def test_onnx_export_matches_torch(tmp_path, augment: bool) -> None:
    model = tiny_model()
    tok = load_tokenizer()
    cfg = MultivectorConfig(dim=8, max_query_length=16, max_doc_length=48, query_augment=augment)
    manifest = export_multivector(model, tmp_path / "mv", tokenizer=tok, config=cfg, name="tiny-mv", quantize=True)
    assert manifest.kind == "model/multivector" and manifest.config["similarity"] == "maxsim"
    encoder = OnnxTokenEncoder(tmp_path / "mv")
    skip = encoder.skip_ids
    for query in (True, False):
        texts = ["what causes scurvy", "vitamin c"] if query else DOCS
        expected = token_vectors(model, tok, texts, cfg, skip, query=query)
        got = encoder.encode_queries(texts) if query else encoder.encode_documents(texts)
        assert [g.shape for g in got] == [e.shape for e in expected]
        for g, e in zip(got, expected):
            np.testing.assert_allclose(g, e, atol=1e-4)
            np.testing.assert_allclose(np.linalg.norm(g, axis=1), 1.0, atol=1e-4)
    int8 = OnnxTokenEncoder(tmp_path / "mv", variant="int8").encode_documents(DOCS[:1])[0]
    assert float(np.mean(np.sum(int8 * encoder.encode_documents(DOCS[:1])[0], axis=1))) > 0.9


def test_a_bundle_of_another_kind_is_refused(tmp_path) -> None:
    from tests.tiny_models import tiny_dense_encoder

    with pytest.raises(BundleError, match="model/multivector"):
        OnnxTokenEncoder(tiny_dense_encoder(tmp_path / "dense"))
    assert load_bundle(tmp_path / "dense").kind == "model/dense"
