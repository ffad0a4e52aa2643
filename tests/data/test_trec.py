from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retrec.data.errors import DataError
from retrec.data.trec import rank_scores, read_run, write_run
from retrec.index.retriever import top_k


def test_round_trip_keeps_scores_exactly(tmp_path: Path) -> None:
    run = {"q2": [("b", 3.25), ("a", 1.0000001192092896)], "q1": [("x", 0.1)]}
    path = write_run(tmp_path / "r.run", run, tag="t")
    lines = path.read_text().splitlines()
    assert lines[0] == "q1 Q0 x 1 0.1 t"
    assert read_run(path) == {q: dict(h) for q, h in run.items()}


def test_ties_follow_trec_eval_order() -> None:
    assert rank_scores({"a": 1.0, "c": 1.0, "b": 2.0}) == [("b", 2.0), ("c", 1.0), ("a", 1.0)]
    scores = np.array([1.0, 2.0, 1.0, 1.0], dtype=np.float32)
    ids = ["d0", "d1", "d2", "d3"]
    assert [d for d, _ in top_k(scores, ids, 3)] == ["d1", "d3", "d2"]
    assert [d for d, _ in top_k(scores, ids, 10)] == ["d1", "d3", "d2", "d0"]


def test_malformed_and_duplicate_lines(tmp_path: Path) -> None:
    f = tmp_path / "bad.run"
    f.write_text("q1 Q0 d1 1 2.0 t\nq1 Q0 d2 2 t\n")
    with pytest.raises(DataError, match=r"bad\.run:2: expected 6 fields"):
        read_run(f)
    f.write_text("q1 Q0 d1 1 2.0 t\nq1 Q0 d1 2 1.0 t\n")
    with pytest.raises(DataError, match=r"bad\.run:2: document 'd1' listed twice for query 'q1'"):
        read_run(f)
    f.write_text("q1 Q0 d1 one 2.0 t\n")
    with pytest.raises(DataError, match=r"bad\.run:1: rank must be an integer"):
        read_run(f)
