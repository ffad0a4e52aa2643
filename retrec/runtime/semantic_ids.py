"""Semantic-ID trie and constrained beam search (NumPy only: the ONNX runtime and the torch generator share it).

:class:`CodeTree` is the code → item trie of a catalogue's semantic IDs (``codes``: ``[items, depth]``, one unique
tuple per item): nodes of each depth in lexicographic order, each node's children a contiguous range of the next
depth's nodes, so that expanding a batch of beams is a few array operations. Decoder tokens: ``0`` PAD, ``1``
BOS, then the codes of each level at its own offset (``token = offsets[level] + code``).

:func:`beam_search` generates, for each user, the ``beam`` best sessions of ``items`` items: only valid items (every
step is restricted to the trie's children), no item twice in a session, and a user's ``exclude`` items (e.g. the
history) never. ``step(users, tokens) -> log-probabilities [B, vocab]`` is the model: the torch module in
training, one ONNX decoder step at serving, the same search around both.

Example::

    tree = CodeTree(codes)
    items, scores = beam_search(step, tree, users=2, beam=10, items=1)   # top-10 next items of 2 users
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

PAD, BOS = 0, 1
Step = Callable[[np.ndarray, np.ndarray], np.ndarray]


class CodeTree:
    def __init__(self, codes: np.ndarray) -> None:
        codes = np.asarray(codes)
        if codes.ndim != 2 or not len(codes) or codes.min() < 0:
            raise ValueError("semantic ids must be a non-empty [items, depth] matrix of codes >= 0")
        self.codes = codes.astype(np.int64)
        self.depth = codes.shape[1]
        self.sizes = self.codes.max(0) + 1
        self.offsets = BOS + 1 + np.concatenate([[0], np.cumsum(self.sizes)[:-1]])
        self.vocab = int(BOS + 1 + self.sizes.sum())
        order = np.lexsort(self.codes.T[::-1])
        ordered = self.codes[order]
        if len(ordered) > 1 and not (ordered[1:] != ordered[:-1]).any(axis=1).all():
            raise ValueError("semantic ids must be unique: two items share a code tuple")
        first_rows = [np.zeros(1, np.int64)]  # depth 0: the root, starting at row 0
        for t in range(1, self.depth + 1):
            new = np.concatenate([[True], (ordered[1:, :t] != ordered[:-1, :t]).any(axis=1)])
            first_rows.append(np.flatnonzero(new))
        self.node_code = [np.zeros(1, np.int64)] + [ordered[f, t - 1] for t, f in enumerate(first_rows) if t]
        self.child_start, self.child_end = [], []
        for t in range(self.depth):
            parent = np.searchsorted(first_rows[t], first_rows[t + 1], side="right") - 1
            nodes = np.arange(len(first_rows[t]))
            self.child_start.append(np.searchsorted(parent, nodes, side="left"))
            self.child_end.append(np.searchsorted(parent, nodes, side="right"))
        self.leaf_lo = first_rows  # node i of depth t covers leaves leaf_lo[t][i] .. leaf_hi[t][i] - 1
        self.leaf_hi = [np.append(f[1:], len(codes)) for f in first_rows]
        self.leaf_item = order  # depth-``depth`` node i is item ``order[i]``
        self.leaf_of = np.argsort(order)  # item row → its leaf
        self.items = len(codes)

    def tokens(self, items: np.ndarray) -> np.ndarray:
        """Decoder tokens of item rows: ``[..., depth]``."""
        return self.codes[items] + self.offsets

    def history_tokens(self, histories: Sequence[np.ndarray], length: int, rows: bool = False) -> np.ndarray:
        """``int64 [B, length, depth]``: each history's last ``length`` items' tokens, oldest first, PAD after;
        ``rows``: one more column, the item's row + 1 (0 after the history), for a model that embeds items too."""
        out = np.full((len(histories), length, self.depth + rows), PAD, np.int64)
        for i, h in enumerate(histories):
            h = np.asarray(h, np.int64)[-length:]
            if len(h):
                out[i, :len(h), :self.depth] = self.tokens(h)
                if rows:
                    out[i, :len(h), self.depth] = h + 1
        return out


def _counts_in(keys: np.ndarray, owner: np.ndarray, lo: np.ndarray, hi: np.ndarray, n: int) -> np.ndarray:
    """How many of the sorted ``owner * n + leaf`` keys fall in each ``[lo, hi)`` leaf range of its owner."""
    return np.searchsorted(keys, owner * n + hi) - np.searchsorted(keys, owner * n + lo)


def beam_search(step: Step, tree: CodeTree, users: int, beam: int, items: int = 1,
                exclude: Sequence[np.ndarray] | None = None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """For each user the best ``beam`` sessions (item rows ``[n, items]``, best first) and their log-probabilities.

    ``n`` can be under ``beam`` when fewer valid sessions exist (a tiny catalogue, most items excluded)."""
    if beam < 1 or items < 1:
        raise ValueError("beam and items must be at least 1")
    n = tree.items
    seen_keys = np.unique(np.concatenate(
        [u * n + tree.leaf_of[np.asarray(e, np.int64)[np.asarray(e) >= 0]] for u, e in enumerate(exclude or [])]
        or [np.zeros(0, np.int64)]))  # user * items + leaf, once per user (not per beam)
    user = np.arange(users)
    node = np.zeros(users, np.int64)
    score = np.zeros(users)
    tokens = np.full((users, 1), BOS, np.int64)
    made = np.zeros((users, 0), np.int64)
    for _ in range(items):
        for t in range(tree.depth):
            if not len(user):
                break
            logp = np.asarray(step(user, tokens), np.float64)
            start, end = tree.child_start[t][node], tree.child_end[t][node]
            count = end - start
            of = np.repeat(np.arange(len(user)), count)
            child = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count) + np.repeat(start, count)
            code = tree.node_code[t + 1][child]
            cand = score[of] + logp[of, tree.offsets[t] + code]
            # a prefix is dead when every item under it is excluded: seen by its user, or already in the session
            lo, hi = tree.leaf_lo[t + 1][child], tree.leaf_hi[t + 1][child]
            excluded = _counts_in(seen_keys, user[of], lo, hi, n)
            if made.shape[1]:
                made_keys = np.sort((np.arange(len(user))[:, None] * n + tree.leaf_of[made]).ravel())
                excluded += _counts_in(made_keys, of, lo, hi, n)  # never seen items: the two sets are disjoint
            cand[hi - lo <= excluded] = -np.inf
            keep = np.flatnonzero(np.isfinite(cand))
            order = keep[np.lexsort((child[keep], -cand[keep], user[of[keep]]))]
            grouped = user[of[order]]
            rank = np.arange(len(order)) - np.searchsorted(grouped, grouped, side="left")
            chosen = order[rank < beam]
            parent = of[chosen]
            user, score = user[parent], cand[chosen]
            tokens = np.concatenate([tokens[parent], (tree.offsets[t] + code[chosen])[:, None]], axis=1)
            if t == tree.depth - 1:
                node = np.zeros(len(chosen), np.int64)
                made = np.concatenate([made[parent], tree.leaf_item[child[chosen]][:, None]], axis=1)
            else:
                node, made = child[chosen], made[parent]
    out_items, out_scores = [], []
    bounds = np.searchsorted(user, np.arange(users + 1))  # beams stay grouped by user, best first
    complete = made.shape[1] == items  # every beam died early (all items excluded): no sessions at all
    for u in range(users):
        out_items.append(made[bounds[u]:bounds[u + 1]] if complete else np.zeros((0, items), np.int64))
        out_scores.append(score[bounds[u]:bounds[u + 1]] if complete else np.zeros(0))
    return out_items, out_scores
