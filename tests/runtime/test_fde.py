"""retrec.runtime.fde (MUVERA fixed dimensional encodings): dimensions, the query/document asymmetry, empty-partition
filling, determinism by seed, Gray-code partitions, and FDE inner products that follow exact MaxSim."""

from __future__ import annotations

import numpy as np
import pytest

from retrec.runtime.fde import (
    FDEConfig,
    encode_documents,
    encode_queries,
    gray_partition,
    maxsim,
    partition_pattern,
)


def _normed(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    return _normed(rng.standard_normal((n, dim)))


def test_dimensions_follow_the_parameters() -> None:
    rng = np.random.default_rng(0)
    sets = [_unit(rng, n, 8) for n in (3, 1, 7)]
    for cfg, dim in [(FDEConfig(dim=8, repetitions=3, simhash_bits=2), 3 * 4 * 8),
                     (FDEConfig(dim=8, repetitions=2, simhash_bits=3, projection_dim=4), 2 * 8 * 4),
                     (FDEConfig(dim=8, repetitions=2, simhash_bits=3, final_dim=32), 32)]:
        assert cfg.output_dim == dim
        assert encode_documents(sets, cfg).shape == encode_queries(sets, cfg).shape == (3, dim)
        assert encode_documents(sets, cfg).dtype == np.float32
    with pytest.raises(ValueError, match="expected \\[tokens, 8\\]"):
        encode_queries([np.zeros((2, 5))], FDEConfig(dim=8))
    with pytest.raises(ValueError, match="simhash_bits"):
        FDEConfig(dim=8, simhash_bits=17)


def test_queries_sum_and_documents_average_within_a_partition() -> None:
    token = np.array([[0.6, 0.8, 0.0, 0.0]], dtype=np.float32)
    cfg = FDEConfig(dim=4, repetitions=2, simhash_bits=2, fill_empty=False)
    three = np.repeat(token, 3, axis=0)  # three identical tokens: one partition per repetition
    query, doc = encode_queries([three], cfg)[0], encode_documents([three], cfg)[0]
    np.testing.assert_allclose(query, 3 * doc, rtol=1e-6)
    blocks = doc.reshape(cfg.repetitions, cfg.partitions, cfg.dim)
    assert ((np.abs(blocks).sum(axis=2) > 0).sum(axis=1) == 1).all()  # the other partitions stay empty
    np.testing.assert_allclose(blocks.sum(axis=1), np.repeat(token, 2, axis=0), rtol=1e-6)


def test_empty_document_partitions_take_the_nearest_token_and_queries_stay_empty() -> None:
    rng = np.random.default_rng(1)
    tokens = _unit(rng, 2, 6)
    cfg = FDEConfig(dim=6, repetitions=3, simhash_bits=3)
    doc = encode_documents([tokens], cfg)[0].reshape(3, 8, 6)
    query = encode_queries([tokens], cfg)[0].reshape(3, 8, 6)
    assert (np.abs(doc).sum(axis=2) > 0).all()  # every partition of every repetition filled
    assert ((np.abs(query).sum(axis=2) > 0).sum(axis=1) <= 2).all()  # at most the two occupied ones
    for r in range(3):  # a filled partition holds one of the tokens: the one nearest by sign pattern
        for p in range(8):
            assert min(np.abs(doc[r, p] - t).max() for t in tokens) < 1e-6
    unfilled = encode_documents([tokens], FDEConfig(dim=6, repetitions=3, simhash_bits=3, fill_empty=False))
    assert ((np.abs(unfilled.reshape(3, 8, 6)).sum(axis=2) > 0).sum(axis=1) <= 2).all()


def test_gray_code_partitions_and_their_patterns_are_inverse() -> None:
    patterns = np.arange(64, dtype=np.int64)
    parts = gray_partition(patterns, 6)
    assert sorted(parts.tolist()) == list(range(64))  # a bijection
    np.testing.assert_array_equal(partition_pattern(parts), patterns)
    # neighbouring partitions differ in one hyperplane's sign
    neighbours = partition_pattern(np.arange(63, dtype=np.int64)) ^ partition_pattern(np.arange(1, 64, dtype=np.int64))
    assert all(bin(int(x)).count("1") == 1 for x in neighbours)


def test_encodings_are_deterministic_by_seed() -> None:
    rng = np.random.default_rng(2)
    sets = [_unit(rng, 5, 16), _unit(rng, 9, 16)]
    cfg = FDEConfig(dim=16, repetitions=4, simhash_bits=3, projection_dim=8, final_dim=64, seed=7)
    np.testing.assert_array_equal(encode_documents(sets, cfg), encode_documents(sets, cfg))
    np.testing.assert_array_equal(encode_queries(sets, cfg), encode_queries(sets, cfg))
    other = FDEConfig(dim=16, repetitions=4, simhash_bits=3, projection_dim=8, final_dim=64, seed=8)
    assert not np.allclose(encode_documents(sets, cfg), encode_documents(sets, other))
    # a set's encoding does not depend on the other sets encoded with it
    np.testing.assert_allclose(encode_documents(sets[1:], cfg)[0], encode_documents(sets, cfg)[1], atol=1e-6)


def test_fde_inner_products_follow_exact_maxsim() -> None:
    """Clustered token sets (documents on 3 of 12 topics; each query 6 noisy tokens of one document): FDE inner
    products correlate with MaxSim over all pairs (0.80 here; an unrelated encoding: ~0), and each query's
    MaxSim-best document is in its FDE top 5."""
    rng = np.random.default_rng(3)
    dim = 32
    topics = _normed(rng.standard_normal((12, dim)))
    docs = [_normed(topics[rng.integers(12, size=3)][rng.integers(3, size=20)] + 0.35 * rng.standard_normal((20, dim)))
            for _ in range(60)]
    queries = [_normed(docs[i][rng.choice(20, size=6, replace=False)] + 0.2 * rng.standard_normal((6, dim)))
               for i in range(15)]
    cfg = FDEConfig(dim=dim, repetitions=20, simhash_bits=4)
    approx = encode_queries(queries, cfg) @ encode_documents(docs, cfg).T
    exact = np.array([[maxsim(q, d) for d in docs] for q in queries])
    assert np.corrcoef(approx.ravel(), exact.ravel())[0, 1] > 0.7
    shuffled = approx[:, rng.permutation(len(docs))]
    assert abs(np.corrcoef(shuffled.ravel(), exact.ravel())[0, 1]) < 0.3
    top5 = np.argsort(-approx, axis=1)[:, :5]
    assert all(exact[i].argmax() in top5[i] for i in range(len(queries)))


def test_maxsim_is_the_sum_of_best_matches() -> None:
    q = np.array([[1.0, 0.0], [0.0, 1.0]])
    d = np.array([[0.5, 0.5], [1.0, 0.0], [0.0, 0.2]])
    assert maxsim(q, d) == pytest.approx(1.0 + 0.5)
    assert maxsim(np.zeros((0, 2)), d) == 0.0
