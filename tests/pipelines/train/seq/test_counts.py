"""Count models whose parameters are chosen on the validation item (markov-decay's decay)."""

from __future__ import annotations

import numpy as np

from retrec.pipelines.train.seq.counts import CHOICES, choose_params, fit_count_model, validation_ndcg
from retrec.runtime.count_recommender import CountBundle
from retrec.runtime.count_scoring import MarkovRecommender


def _histories(rng: np.random.Generator, noisy_last: bool) -> list[list[str]]:
    """Chains c, c+1, ... (mod 30); with ``noisy_last`` a never-seen-before item comes before the last one, so the
    validation history ends in an item without transitions and only the earlier items can tell the next one."""
    out = []
    for _ in range(400):
        c = int(rng.integers(0, 30))
        seq = [f"i{(c + k) % 30}" for k in range(6)]
        if noisy_last:
            seq.insert(4, f"noise{int(rng.integers(0, 10_000))}")
        out.append(seq)
    return out


def test_the_decay_is_chosen_on_validation() -> None:
    rng = np.random.default_rng(0)
    for second_order, expect_decay in ((True, True), (False, False)):
        seqs = _histories(rng, second_order)
        train = [s[:-2] for s in seqs]
        valid = ([s[:-2] for s in seqs], [s[-2] for s in seqs])
        params = choose_params("markov-decay", train, valid)
        assert (params["decay"] > 0) == expect_decay, params
        assert params["decay"] in CHOICES["markov-decay"]["decay"]
    assert choose_params("markov", train, valid) == {}  # nothing to choose


def test_decay_zero_is_the_first_order_chain() -> None:
    seqs = _histories(np.random.default_rng(1), False)
    first = CountBundle.fit("markov", seqs)
    zero = CountBundle.fit("markov-decay", seqs, decay=0.0)
    hist = [s[:-1] for s in seqs[:20]]
    np.testing.assert_array_equal(first.score(hist), zero.score(hist))
    index = {item: j for j, item in enumerate(first.item_ids)}
    plain = MarkovRecommender(len(index)).fit([[index[i] for i in s] for s in seqs])
    np.testing.assert_allclose(first.score(hist), plain.score([[index[i] for i in h] for h in hist]), rtol=1e-6)


def test_fit_count_model_refits_on_what_the_final_model_may_see() -> None:
    seqs = _histories(np.random.default_rng(2), True)
    train, valid = [s[:-2] for s in seqs], ([s[:-2] for s in seqs], [s[-2] for s in seqs])
    rec = fit_count_model("markov-decay", train, valid, refit=[s[:-1] for s in seqs])
    chosen = CountBundle.fit("markov-decay", [s[:-1] for s in seqs], decay=rec.model.decay)
    np.testing.assert_array_equal(rec.model.matrix.toarray(), chosen.model.matrix.toarray())
    assert validation_ndcg(rec, *valid) >= 0.0


def test_next_item_ranks_exclude_seen_and_rank_unknown_targets_last() -> None:
    from retrec.pipelines.eval.ir_metrics import next_item_ranks

    scores = np.array([[0.9, 0.8, 0.1, 0.5], [0.9, 0.8, 0.1, 0.5]])
    greater, ties = next_item_ranks(scores, [np.array([0, -1]), np.array([], np.int64)], np.array([3, -1]))
    assert greater.tolist() == [1, 4] and ties.tolist() == [0, 0]  # item 0 seen: only item 1 above item 3
