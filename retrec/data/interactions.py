"""User–item interactions: the sequential format, MovieLens ratings, canonical Parquet.

- Sequential (BERT4Rec / SASRec papers): ``user item`` per line, in time order within a user;
  the line number becomes the timestamp, so the order is kept exactly.
- MovieLens: ``u.data`` (``user\\titem\\trating\\ttimestamp``) and ``ratings.dat`` (``user::item::rating::ts``).
- Canonical: ``interactions.parquet`` with the INTERACTIONS schema.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from retrec.data.errors import DataError
from retrec.data.fetch import resolve_dataset
from retrec.data.lines import iter_lines
from retrec.data.schemas import INTERACTIONS


def _table(users: list[str], items: list[str], stamps: list[int], path: Path) -> pa.Table:
    if not users:
        raise DataError(path, "no interactions")
    return pa.table([users, items, pa.array(stamps, pa.int64())], schema=INTERACTIONS)


def read_sequential(path: str | Path) -> pa.Table:
    """``user item`` lines in time order (whitespace separated)."""
    path = Path(path)
    users: list[str] = []
    items: list[str] = []
    stamps: list[int] = []
    for lineno, text in iter_lines(path):
        fields = text.split()
        if len(fields) != 2:
            raise DataError(path, f"expected 2 fields 'user item', got {len(fields)}", lineno)
        users.append(fields[0])
        items.append(fields[1])
        stamps.append(lineno)
    return _table(users, items, stamps, path)


def read_movielens(path: str | Path, min_rating: float | None = None) -> pa.Table:
    """MovieLens ``u.data`` (tab) or ``ratings.dat`` (``::``); optionally keep ratings ≥ ``min_rating``."""
    path = Path(path)
    users: list[str] = []
    items: list[str] = []
    stamps: list[int] = []
    sep = "::" if path.suffix == ".dat" else "\t"
    # ml-1m/10m ship as latin-1 elsewhere; ratings contain ASCII digits only, so latin-1 is safe here.
    for lineno, text in iter_lines(path, encoding="latin-1"):
        fields = text.split(sep)
        if len(fields) != 4:
            raise DataError(path, f"expected 4 fields 'user{sep}item{sep}rating{sep}timestamp', "
                                  f"got {len(fields)}", lineno)
        try:
            rating = float(fields[2])
            stamp = int(fields[3])
        except ValueError as exc:
            raise DataError(path, f"rating/timestamp not numeric ({exc})", lineno) from exc
        if min_rating is not None and rating < min_rating:
            continue
        users.append(fields[0].strip())
        items.append(fields[1].strip())
        stamps.append(stamp)
    return _table(users, items, stamps, path)


def load_interactions(source: str | Path) -> pa.Table:
    """Load interactions from a file or a folder holding one of the known formats (or a fetched dataset's name)."""
    path = resolve_dataset(source)
    if path.is_dir():
        for name in ("interactions.parquet", "u.data", "ratings.dat"):
            if (path / name).is_file():
                return load_interactions(path / name)
        txt = sorted(path.glob("*.txt"))
        if len(txt) == 1:
            return read_sequential(txt[0])
        raise DataError(path, "no interactions.parquet, u.data, ratings.dat or single *.txt sequence file")
    if path.suffix == ".parquet":
        if not path.is_file():
            raise DataError(path, "file not found")
        table = pq.read_table(path)
        missing = [n for n in INTERACTIONS.names if n not in table.column_names]
        if missing:
            raise DataError(path, f"missing columns {missing}; expected {INTERACTIONS.names}")
        table = table.select(INTERACTIONS.names).cast(INTERACTIONS)
        if table.num_rows == 0:
            raise DataError(path, "no interactions")
        return table
    if path.name == "u.data" or path.suffix == ".dat":
        return read_movielens(path)
    return read_sequential(path)


@dataclass
class Sequences:
    """Per-user item sequences in time order (ties kept in file order)."""

    users: list[str]
    items: list[list[str]]

    def __len__(self) -> int:
        return len(self.users)


def user_sequences(table: pa.Table) -> Sequences:
    """Group interactions by user, sorted by timestamp with a stable tie-break on input order."""
    order = pc.sort_indices(
        pa.table({"u": table.column("user_id"), "t": table.column("timestamp"),
                  "i": pa.array(np.arange(table.num_rows))}),
        sort_keys=[("u", "ascending"), ("t", "ascending"), ("i", "ascending")],
    )
    users = table.column("user_id").take(order).to_pylist()
    items = table.column("item_id").take(order).to_pylist()
    out_users: list[str] = []
    out_items: list[list[str]] = []
    for u, i in zip(users, items):
        if not out_users or out_users[-1] != u:
            out_users.append(u)
            out_items.append([])
        out_items[-1].append(i)
    return Sequences(out_users, out_items)


@dataclass
class LeaveOneOut:
    """Leave-one-out split by time: last item test, second-to-last validation, the rest train."""

    users: list[str]
    train: list[list[str]]
    valid: list[str]
    test: list[str]


def leave_one_out(seqs: Sequences, min_length: int = 3) -> LeaveOneOut:
    """Split each sequence of at least ``min_length`` items; shorter users are train-only (not evaluated)."""
    users, train, valid, test = [], [], [], []
    for u, items in zip(seqs.users, seqs.items):
        if len(items) < min_length:
            continue
        users.append(u)
        train.append(items[:-2])
        valid.append(items[-2])
        test.append(items[-1])
    return LeaveOneOut(users, train, valid, test)
