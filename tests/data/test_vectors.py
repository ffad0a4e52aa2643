from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from retrec.data.errors import DataError
from retrec.data.vectors import ArraySource, open_vectors


def _vectors(n: int = 50, dim: int = 8) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(3)
    return rng.normal(size=(n, dim)).astype(np.float32), [f"doc-{i}" for i in range(n)]


def test_parquet_and_npy_give_the_same_rows_and_ids(tmp_path: Path) -> None:
    x, ids = _vectors()
    pq.write_table(pa.table({"doc_id": ids, "embedding": pa.FixedSizeListArray.from_arrays(x.ravel(), 8)}),
                   tmp_path / "v.parquet", row_group_size=7)
    np.save(tmp_path / "v.npy", x)
    (tmp_path / "ids.txt").write_text("\n".join(ids) + "\n")
    (tmp_path / "ids.json").write_text(json.dumps(ids))
    sources = [open_vectors(tmp_path / "v.parquet"), open_vectors(tmp_path / "v.npy", ids=tmp_path / "ids.txt"),
               open_vectors(tmp_path / "v.npy", ids=tmp_path / "ids.json")]
    for source in sources:
        assert (source.count, source.dim) == (50, 8)
        assert source.ids().to_pylist() == ids
        batches = list(source.batches(16))
        assert [start for start, _ in batches] == [0, 16, 32, 48]
        np.testing.assert_array_equal(np.concatenate([b for _, b in batches]), x)
        np.testing.assert_array_equal(source.rows(np.array([40, 3, 17])), x[[3, 17, 40]])
    # a variable-length list column works too when every row has the same length
    pq.write_table(pa.table({"doc_id": ids, "vector": [list(map(float, r)) for r in x]}), tmp_path / "l.parquet")
    np.testing.assert_allclose(open_vectors(tmp_path / "l.parquet").rows(np.arange(50)), x)


def test_bad_vector_files_name_the_file_and_row(tmp_path: Path) -> None:
    x, ids = _vectors(10, 4)
    rows = [list(map(float, r)) for r in x]
    rows[6] = rows[6][:3]
    pq.write_table(pa.table({"doc_id": ids, "vector": rows}), tmp_path / "short.parquet")
    with pytest.raises(DataError, match=r"short.parquet:7: vector of length 3 \(the first has 4\)"):
        list(open_vectors(tmp_path / "short.parquet").batches(4))
    bad = x.copy()
    bad[4, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    (tmp_path / "ids.txt").write_text("\n".join(ids))
    with pytest.raises(DataError, match=r"nan.npy:5: .*NaN"):
        list(open_vectors(tmp_path / "nan.npy", ids=tmp_path / "ids.txt").batches(3))
    (tmp_path / "few.txt").write_text("\n".join(ids[:9]))
    with pytest.raises(DataError, match=r"few\.txt: 9 doc ids for 10 vectors"):
        open_vectors(tmp_path / "nan.npy", ids=tmp_path / "few.txt")
    with pytest.raises(DataError, match="needs its doc ids"):
        open_vectors(tmp_path / "nan.npy")
    pq.write_table(pa.table({"id": ids}), tmp_path / "noid.parquet")
    with pytest.raises(DataError, match="no doc_id column"):
        open_vectors(tmp_path / "noid.parquet")
    with pytest.raises(DataError, match="vectors file not found"):
        open_vectors(tmp_path / "missing.parquet")
    with pytest.raises(ValueError, match="2-d"):
        ArraySource(np.zeros(3, np.float32), ["a", "b", "c"])
