"""The semantic-ID trie and the constrained beam search: valid, unique items; exact when the beam holds all."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from retrec.runtime.semantic_ids import BOS, CodeTree, beam_search

CODES = np.array([[0, 1, 0], [0, 1, 1], [0, 2, 0], [1, 0, 0], [1, 2, 0], [2, 2, 0], [2, 2, 1]])


def table_step(tree: CodeTree, seed: int = 0):
    """A deterministic 'model': log-probabilities from a hash of the user and the last token."""
    rng = np.random.default_rng(seed)
    table = rng.normal(size=(3, tree.vocab, tree.vocab))

    def step(users: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        assert (tokens[:, 0] == BOS).all()
        logits = table[users % 3, tokens[:, -1]] + 0.1 * tokens.shape[1]
        return logits - np.log(np.exp(logits).sum(1, keepdims=True))

    return step


def session_logp(step, tree: CodeTree, user: int, items: tuple[int, ...]) -> float:
    tokens = np.array([[BOS]])
    total = 0.0
    for tok in tree.tokens(np.array(items)).reshape(-1):
        total += step(np.array([user]), tokens)[0, tok]
        tokens = np.concatenate([tokens, [[tok]]], axis=1)
    return total


def test_tree_children_are_the_next_codes() -> None:
    tree = CodeTree(CODES)
    assert tree.depth == 3 and tree.vocab == 2 + 3 + 3 + 2
    root = range(tree.child_start[0][0], tree.child_end[0][0])
    assert tree.node_code[1][list(root)].tolist() == [0, 1, 2]
    leaves = [tree.leaf_item[i] for i in range(tree.items)]
    assert sorted(leaves) == list(range(len(CODES)))
    with pytest.raises(ValueError, match="unique"):
        CodeTree(np.array([[0, 1], [0, 1]]))


@pytest.mark.parametrize("items", [1, 2])
def test_a_wide_beam_is_exact_and_excludes(items: int) -> None:
    tree = CodeTree(CODES)
    step = table_step(tree)
    exclude = [np.array([3]), np.array([], np.int64)]
    got, scores = beam_search(step, tree, users=2, beam=1000, items=items, exclude=exclude)
    for user in range(2):
        sessions = [s for s in itertools.permutations(range(len(CODES)), items) if not set(s) & set(exclude[user])]
        expected = sorted(session_logp(step, tree, user, s) for s in sessions)[::-1]
        assert sorted(tuple(s) for s in got[user].tolist()) == sorted(sessions)  # every valid session, once
        np.testing.assert_allclose(scores[user], expected)  # best first
        np.testing.assert_allclose(scores[user], [session_logp(step, tree, user, tuple(s)) for s in got[user]])


def test_a_narrow_beam_gives_valid_unique_sessions() -> None:
    rng = np.random.default_rng(1)
    codes = np.unique(rng.integers(0, 4, size=(60, 3)), axis=0)
    tree = CodeTree(codes)
    got, scores = beam_search(table_step(tree, 2), tree, users=3, beam=4, items=5,
                              exclude=[np.arange(5), np.array([], np.int64), np.array([7])])
    for user, sessions in enumerate(got):
        assert sessions.shape == (4, 5) and np.all(np.diff(scores[user]) <= 0)
        for s in sessions:
            assert len(set(s.tolist())) == 5 and ((s >= 0) & (s < tree.items)).all()
        assert not set(got[0].ravel().tolist()) & set(range(5)) and 7 not in got[2]


def test_excluding_every_item_gives_no_sessions_not_an_error() -> None:
    tree = CodeTree(CODES)
    everything = np.arange(len(CODES))
    got, scores = beam_search(table_step(tree), tree, users=2, beam=3, items=2, exclude=[everything, everything[:6]])
    assert got[0].shape == (0, 2) and scores[0].shape == (0,)
    assert got[1].shape == (0, 2)  # one item left: no session of two
    one, _ = beam_search(table_step(tree), tree, users=1, beam=3, items=1, exclude=[everything[:6]])
    assert one[0].tolist() == [[6]]


def test_history_tokens_keep_the_last_items_and_their_rows() -> None:
    tree = CodeTree(CODES)
    plain = tree.history_tokens([np.array([0, 1, 2]), np.array([], np.int64)], 2)
    rows = tree.history_tokens([np.array([0, 1, 2]), np.array([], np.int64)], 2, rows=True)
    assert plain.shape == (2, 2, tree.depth) and rows.shape == (2, 2, tree.depth + 1)
    assert plain[0].tolist() == tree.tokens(np.array([1, 2])).tolist() and (plain[1] == 0).all()
    assert (rows[..., :tree.depth] == plain).all() and rows[0, :, -1].tolist() == [2, 3] and (rows[1] == 0).all()
