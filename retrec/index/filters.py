"""Filters on document metadata: parsed once, evaluated over an index version's stored metadata, applied exactly.

A filter is a mapping of metadata field → condition, all of which must hold (AND):

- a value (string, number, boolean): equality;
- ``{"in": [v, ...]}``: one of the values;
- ``{"gte": x, "gt": x, "lte": x, "lt": x}`` (any of them): a numeric range.

A document without the field never matches. :class:`DocumentMetadata` holds the ``metadata`` of an index version's
documents (``documents.parquet``, a JSON object per document) and answers which documents a filter allows;
:class:`AllowedDocs` turns that into a boolean row mask for any list of doc ids (an index shard's), cached per
list. Index kinds that take ``allowed=`` in ``search`` rank only the allowed documents — the top ``k`` of the
filtered corpus, the same as searching the matching subset alone.

Example::

    spec = parse_filter({"year": {"gte": 2015}, "lang": {"in": ["en", "de"]}})
    allowed = metadata.allowed(spec)                   # AllowedDocs
    index.search(queries, 10, allowed=allowed)         # rows outside the filter are never ranked
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

RANGE_OPS = ("gte", "gt", "lte", "lt")
MAX_FIELDS = 8
MAX_IN = 256
Scalar = str | int | float | bool


class FilterError(ValueError):
    """A filter that is malformed, or names a field the index version does not store."""


@dataclass(frozen=True)
class Condition:
    field: str
    values: tuple[Scalar, ...] | None = None  # equality / in
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def holds(self, value: Any) -> bool:
        if self.values is not None:
            return any(_same(value, v) for v in self.values)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return not (self.high is not None and (value > self.high or (self.high_open and value == self.high)))


def _same(a: Any, b: Any) -> bool:
    """JSON equality: ``1 == 1.0``, but ``True`` is not ``1`` and ``"1"`` is not ``1``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    return type(a) is type(b) and a == b


def _scalar(value: Any, where: str) -> Scalar:
    if isinstance(value, bool | str) or (isinstance(value, int | float) and math.isfinite(value)):
        return value
    raise FilterError(f"{where}: expected a string, number or boolean, got {json.dumps(value)[:60]}")


@dataclass(frozen=True)
class DocFilter:
    conditions: tuple[Condition, ...]
    key: str  # canonical JSON: equal filters share cached masks

    @property
    def fields(self) -> list[str]:
        return [c.field for c in self.conditions]

    def matches(self, metadata: Mapping[str, Any] | None) -> bool:
        if not metadata:
            return False
        return all(c.field in metadata and c.holds(metadata[c.field]) for c in self.conditions)


def parse_filter(spec: Mapping[str, Any]) -> DocFilter:
    """A :class:`DocFilter` from its JSON form (``FilterError`` naming what is wrong)."""
    if not isinstance(spec, Mapping) or not spec:
        raise FilterError("a filter is a non-empty object of field: condition")
    if len(spec) > MAX_FIELDS:
        raise FilterError(f"a filter names at most {MAX_FIELDS} fields, got {len(spec)}")
    conditions = []
    for field, cond in sorted(spec.items()):
        if not isinstance(field, str) or not field or len(field) > 64:
            raise FilterError("filter field names are 1-64 characters")
        where = f"filter.{field}"
        if not isinstance(cond, Mapping):
            conditions.append(Condition(field, values=(_scalar(cond, where),)))
            continue
        ops = set(cond)
        if ops == {"in"}:
            values = cond["in"]
            if not isinstance(values, list) or not 1 <= len(values) <= MAX_IN:
                raise FilterError(f"{where}.in: a list of 1-{MAX_IN} values")
            conditions.append(Condition(field, values=tuple(_scalar(v, f"{where}.in") for v in values)))
        elif ops and ops <= set(RANGE_OPS) and not {"gte", "gt"} <= ops and not {"lte", "lt"} <= ops:
            bounds = {}
            for op in ops:
                value = cond[op]
                if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                    raise FilterError(f"{where}.{op}: a finite number")
                bounds[op] = float(value)
            low = bounds.get("gte", bounds.get("gt"))
            high = bounds.get("lte", bounds.get("lt"))
            conditions.append(Condition(field, low=low, high=high, low_open="gt" in bounds, high_open="lt" in bounds))
        else:
            raise FilterError(f"{where}: a value, {{\"in\": [...]}} or a range of gte/gt/lte/lt (one lower and one "
                              f"upper bound at most), got keys {sorted(map(str, ops))}")
    return DocFilter(tuple(conditions), json.dumps(spec, sort_keys=True, separators=(",", ":")))


class AllowedDocs:
    """The doc ids a filter allows, as a boolean row mask over any id list or Arrow array (cached per object: an
    index shard's id table is the same object for every query)."""

    def __init__(self, ids: frozenset[str]) -> None:
        self.ids = ids
        self._value_set = pa.array(sorted(ids), pa.string())
        self._masks: dict[int, tuple[Any, np.ndarray]] = {}

    def rows(self, doc_ids: Sequence[str] | pa.Array) -> np.ndarray:
        """``mask[i]``: is ``doc_ids[i]`` allowed."""
        held = self._masks.get(id(doc_ids))
        if held is not None and held[0] is doc_ids:
            return held[1]
        array = doc_ids if isinstance(doc_ids, pa.Array) else pa.array(list(doc_ids), pa.string())
        mask = pc.is_in(array.cast(pa.string()), value_set=self._value_set).to_numpy(zero_copy_only=False)
        self._masks[id(doc_ids)] = (doc_ids, np.asarray(mask, dtype=bool))
        return self._masks[id(doc_ids)][1]

    def __len__(self) -> int:
        return len(self.ids)


class EveryDoc(AllowedDocs):
    """Every document allowed: an index kind's filtered path over all rows is its exact search (the quality
    check's reference: what an approximate index is measured against)."""

    def __init__(self) -> None:
        super().__init__(frozenset())

    def rows(self, doc_ids: Sequence[str] | pa.Array) -> np.ndarray:
        return np.ones(len(doc_ids), dtype=bool)


EXACT = "*"  # the shard calls' filter that means EveryDoc (retrec.serving.shards)


class DocumentMetadata:
    """The metadata of an index version's documents (doc id → JSON object), with the filters' answers cached."""

    def __init__(self, doc_ids: Sequence[str], metadata: Sequence[str | Mapping[str, Any] | None],
                 cache_size: int = 64) -> None:
        if len(doc_ids) != len(metadata):
            raise ValueError(f"{len(doc_ids)} doc ids for {len(metadata)} metadata rows")
        self.doc_ids = list(doc_ids)
        self.rows = [json.loads(m) if isinstance(m, str) else (dict(m) if m else None) for m in metadata]
        self.fields = frozenset(k for row in self.rows if row for k in row)
        self._cache: OrderedDict[str, AllowedDocs] = OrderedDict()
        self._cache_size = cache_size

    def check(self, spec: DocFilter) -> None:
        """``FilterError`` for a field no document of this version has."""
        unknown = [f for f in spec.fields if f not in self.fields]
        if unknown:
            known = ", ".join(sorted(self.fields)[:20]) or "none: this index version stores no metadata"
            raise FilterError(f"unknown filter field(s) {', '.join(map(repr, unknown))}; fields: {known}")

    def allowed(self, spec: DocFilter) -> AllowedDocs:
        """The documents ``spec`` allows (after :meth:`check`), cached by the filter's canonical form."""
        found = self._cache.get(spec.key)
        if found is not None:
            self._cache.move_to_end(spec.key)
            return found
        self.check(spec)
        found = AllowedDocs(frozenset(d for d, row in zip(self.doc_ids, self.rows) if spec.matches(row)))
        self._cache[spec.key] = found
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return found
