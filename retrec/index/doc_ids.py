"""The doc ids of a sharded index, held compactly, with the tie-break key of the deterministic top-k.

A million Python strings cost ~60–80 bytes each, twice over when an index keeps both a per-shard list and a
by-rank table; at 5 M documents that alone is most of a gigabyte. :class:`DocIdTable` keeps every id once in
an Arrow ``large_string`` array (its UTF-8 bytes plus an 8-byte offset) plus a sorted copy, and per shard an
int32/int64 array of each document's *key*: the rank of its id in ascending code-point order, which
:func:`retrec.index.retriever.top_k_rows` uses to break score ties (higher key first, i.e. doc_id descending).

Example::

    table = DocIdTable([["d3", "d1"], ["d2"]])
    table.keys(0)                       # array([2, 0]) — ranks of "d3", "d1" among all ids
    table.lookup(np.array([1, 2]))      # ["d2", "d3"]
    table.shard(1)                      # ["d2"]
    DocIdTable([["a"], ["a"]])          # ValueError: duplicate doc id 'a'
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

IdColumn = Sequence[str] | pa.Array | pa.ChunkedArray


def as_id_array(ids: IdColumn) -> pa.Array:
    """``ids`` as one Arrow ``large_string`` array (nulls refused)."""
    if isinstance(ids, pa.ChunkedArray):
        array = pa.concat_arrays([c.cast(pa.large_string()) for c in ids.chunks]) if ids.num_chunks else \
            pa.array([], pa.large_string())
    elif isinstance(ids, pa.Array):
        array = ids.cast(pa.large_string())
    else:
        array = pa.array(list(ids), pa.large_string())
    if array.null_count:
        raise ValueError(f"{array.null_count} doc ids are null")
    return array


class DocIdTable:
    """Every shard's doc ids (Arrow), their global ranks (the tie-break key) and the ids by rank."""

    def __init__(self, shard_ids: Sequence[IdColumn]) -> None:
        arrays = [as_id_array(ids) for ids in shard_ids]
        all_ids = pa.concat_arrays(arrays) if arrays else pa.array([], pa.large_string())
        n = len(all_ids)
        order = pc.sort_indices(all_ids).to_numpy()
        by_rank = all_ids.take(pa.array(order))
        if n > 1:
            same = pc.equal(by_rank.slice(1), by_rank.slice(0, n - 1)).to_numpy(zero_copy_only=False)
            if same.any():
                raise ValueError(f"duplicate doc id {by_rank[int(np.argmax(same))].as_py()!r}")
        dtype = np.int32 if n < 2**31 else np.int64
        ranks = np.empty(n, dtype=dtype)
        ranks[order] = np.arange(n, dtype=dtype)
        offsets = np.cumsum([0] + [len(a) for a in arrays])
        self._shards = arrays
        self._keys = [ranks[offsets[i]:offsets[i + 1]] for i in range(len(arrays))]
        self._by_rank = by_rank

    def __len__(self) -> int:
        return len(self._by_rank)

    @property
    def shard_count(self) -> int:
        return len(self._shards)

    def shard_size(self, shard: int) -> int:
        return len(self._shards[shard])

    def shard(self, shard: int) -> list[str]:
        """Shard ``shard``'s doc ids in row order (a Python list: for small uses, not per query)."""
        return self._shards[shard].to_pylist()

    def shard_array(self, shard: int) -> pa.Array:
        """Shard ``shard``'s doc ids in row order, as the Arrow array held."""
        return self._shards[shard]

    def keys(self, shard: int) -> np.ndarray:
        """Each row of shard ``shard``: its id's rank among all ids (ascending code-point order)."""
        return self._keys[shard]

    def lookup(self, keys: np.ndarray) -> list[str]:
        """The doc ids of ``keys`` (ranks), in that order."""
        if not len(keys):
            return []
        return self._by_rank.take(pa.array(np.asarray(keys, dtype=np.int64))).to_pylist()

    def nbytes(self) -> int:
        """Bytes held: the id arrays, the sorted copy and the keys."""
        return sum(a.nbytes for a in self._shards) + self._by_rank.nbytes + sum(k.nbytes for k in self._keys)
