"""The semantic-ID file of a OneRec bundle: written and read back; every malformed shape is a BundleError."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from retrec.bundle import BundleError
from retrec.runtime.onerec import read_semantic_ids, write_semantic_ids


def test_round_trip(tmp_path: Path) -> None:
    write_semantic_ids(tmp_path / "ids.parquet", ["a", "b"], np.array([[0, 1], [2, 0]]))
    ids, codes = read_semantic_ids(tmp_path / "ids.parquet")
    assert ids == ["a", "b"] and codes.tolist() == [[0, 1], [2, 0]] and codes.dtype == np.int64


@pytest.mark.parametrize("ids, codes, match", [
    (pa.array(["a", None]), pa.array([[0], [1]]), "non-null"),
    (pa.array(["a", "b"]), pa.array([[0], None], pa.list_(pa.int64())), "non-null"),
    (pa.array(["a", "b"]), pa.array([[0.5], [1.0]]), "lists of integers"),
    (pa.array(["a", "b"]), pa.array([[0, 1], [1]]), "same length"),
    (pa.array(["a", "b"]), pa.array([[0, None], [1, 2]]), "without nulls"),
    (pa.array(["a", "b"]), pa.array([[0], [-1]]), "codes must be in"),
    (pa.array(["a", "b"]), pa.array([[0], [2**40]]), "codes must be in"),
    (pa.array(["a", "a"]), pa.array([[0], [1]]), "appears twice"),
    (pa.array([1, 2]), pa.array([[0], [1]]), "non-null strings"),
])
def test_malformed_files_are_refused(tmp_path: Path, ids: pa.Array, codes: pa.Array, match: str) -> None:
    pq.write_table(pa.table({"item_id": ids, "codes": codes}), tmp_path / "ids.parquet")
    with pytest.raises(BundleError, match=match):
        read_semantic_ids(tmp_path / "ids.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(BundleError, match="not a readable Parquet file"):
        read_semantic_ids(tmp_path / "junk.parquet")
