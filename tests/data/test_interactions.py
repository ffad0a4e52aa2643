from __future__ import annotations

from pathlib import Path

import pytest

from retrec.data.errors import DataError
from retrec.data.interactions import leave_one_out, load_interactions, user_sequences


def test_sequential_keeps_file_order(tmp_path: Path) -> None:
    f = tmp_path / "seq.txt"
    f.write_text("1 10\n1 11\n2 20\n1 12\n2 21\n2 22\n")
    seqs = user_sequences(load_interactions(f))
    assert seqs.users == ["1", "2"]
    assert seqs.items == [["10", "11", "12"], ["20", "21", "22"]]
    loo = leave_one_out(seqs)
    assert loo.train == [["10"], ["20"]] and loo.valid == ["11", "21"] and loo.test == ["12", "22"]


def test_sequential_malformed_line(tmp_path: Path) -> None:
    f = tmp_path / "seq.txt"
    f.write_text("1 10\n1 11 5\n")
    with pytest.raises(DataError, match=r"seq\.txt:2: expected 2 fields 'user item', got 3"):
        load_interactions(f)


def test_movielens_formats_sort_by_timestamp_with_stable_ties(tmp_path: Path) -> None:
    (tmp_path / "u.data").write_text("7\t3\t5\t300\n7\t1\t4\t100\n7\t2\t4\t100\n8\t9\t1\t5\n")
    seqs = user_sequences(load_interactions(tmp_path))
    assert seqs.items == [["1", "2", "3"], ["9"]]
    dat = tmp_path / "ml1m" / "ratings.dat"
    dat.parent.mkdir()
    dat.write_text("1::1193::5::978300760\n1::661::3::978302109\n")
    assert user_sequences(load_interactions(dat)).items == [["1193", "661"]]


def test_movielens_bad_values(tmp_path: Path) -> None:
    f = tmp_path / "u.data"
    f.write_text("1\t2\t5\t100\n1\t3\tfive\t101\n")
    with pytest.raises(DataError, match=r"u\.data:2: rating/timestamp not numeric"):
        load_interactions(f)
    f.write_text("1\t2\t5\n")
    with pytest.raises(DataError, match=r"u\.data:1: expected 4 fields"):
        load_interactions(f)


def test_empty_and_missing(tmp_path: Path) -> None:
    f = tmp_path / "seq.txt"
    f.write_text("\n\n")
    with pytest.raises(DataError, match="no interactions"):
        load_interactions(f)
    with pytest.raises(DataError, match="file not found"):
        load_interactions(tmp_path / "nope.txt")


def test_short_users_are_not_evaluated(tmp_path: Path) -> None:
    f = tmp_path / "seq.txt"
    f.write_text("1 10\n1 11\n2 20\n2 21\n2 22\n")
    loo = leave_one_out(user_sequences(load_interactions(f)))
    assert loo.users == ["2"]
