"""Stored document fields for hits (``"return": ["text", "title", "metadata"]``), read from index versions.

An index version records its documents in ``documents.parquet`` (``doc_id``, the text it indexed and, when the
collection had them, ``title`` and ``metadata`` as JSON), written in row groups of
:data:`~retrec.index.generic.DOCUMENT_ROW_GROUP` rows. :class:`DocumentFields` reads a version's ``doc_id`` column
the first time a request asks for fields from it (on a worker thread) into one ``doc_id → row`` map; the fields
themselves are read a row group at a time, only the groups that hold the hits asked for, and the last
:data:`CACHED_GROUPS` groups read are kept. So a replica serving a million-document version holds its ids, not its
texts (1.5 GB for the 1 M haystack). A version is dropped once no retriever has it active. A field the version does
not store is ``None``; a version without the file gives ``None`` for every field.

Example::

    fields = DocumentFields()
    rows = await fields.fetch([ref], ["d1", "d7"], ["text"])    # [{"text": ...}, {"text": ...}]
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from retrec.bundle import read_manifest
from retrec.index.filters import DocumentMetadata
from retrec.index.generic import DOCUMENTS, read_metadata

log = logging.getLogger("retrec.serving")
IndexRef = dict[str, str]
FIELDS = ("text", "title", "metadata")
CACHED_GROUPS = 8  # row groups of stored fields kept per version (most recently used)


class _Stored:
    """One version's documents: ``doc_id → row``, and its stored field columns read by row group on demand."""

    def __init__(self, path: str | None, version: str = "") -> None:
        self.version = version
        self.rows: dict[str, int] = {}
        self.fields: list[str] = []
        self.starts: list[int] = []  # first row of each row group
        self._cache: OrderedDict[int, dict[str, Any]] = OrderedDict()  # group -> its field columns
        self._lock = threading.Lock()
        manifest = read_manifest(path) if path is not None else None
        if manifest is None or DOCUMENTS not in manifest.files:
            return
        self.file = pq.ParquetFile(Path(path) / DOCUMENTS)
        self.fields = [c for c in FIELDS if c in self.file.schema_arrow.names]
        ids = self.file.read(columns=["doc_id"]).column("doc_id").to_pylist()
        self.rows = {d: i for i, d in enumerate(ids)}
        sizes = [self.file.metadata.row_group(g).num_rows for g in range(self.file.num_row_groups)]
        self.starts = list(np.cumsum([0, *sizes[:-1]]).tolist())

    @property
    def documents(self) -> int:
        return len(self.rows)

    def _group(self, group: int) -> dict[str, Any]:
        """Row group ``group``'s field columns (read, or from the cache; one reader at a time per file)."""
        with self._lock:
            columns = self._cache.get(group)
            if columns is None:
                table = self.file.read_row_group(group, columns=self.fields)
                columns = self._cache[group] = {c: table.column(c).combine_chunks() for c in self.fields}
                while len(self._cache) > CACHED_GROUPS:
                    self._cache.popitem(last=False)
            self._cache.move_to_end(group)
            return columns

    def values(self, rows: Iterable[int], field: str) -> dict[int, Any]:
        """``row → value`` of ``field`` for these rows (each row group read once)."""
        by_group: dict[int, list[int]] = {}
        for r in rows:
            by_group.setdefault(bisect.bisect_right(self.starts, r) - 1, []).append(r)
        out: dict[int, Any] = {}
        for group, members in sorted(by_group.items()):
            column = self._group(group)[field]
            out.update((r, column[r - self.starts[group]].as_py()) for r in members)
        return out

    def read(self, doc_ids: list[str], fields: list[str]) -> list[dict[str, Any] | None]:
        """Per id, ``{field: value}`` (``None`` values for fields not stored), or None when the id is not here."""
        found = {d: self.rows[d] for d in doc_ids if d in self.rows}
        stored = [f for f in fields if f in self.fields]
        try:
            columns = {f: self.values(found.values(), f) for f in stored} if found else {}
        except Exception as exc:  # an unreadable row group: the hits keep their ids, these fields are None
            log.warning("stored fields of index version %s not readable (%s)", self.version, type(exc).__name__)
            columns = {}
        out: list[dict[str, Any] | None] = []
        for d in doc_ids:
            at = found.get(d)
            if at is None:
                out.append(None)
                continue
            row: dict[str, Any] = {}
            for f in fields:
                value = columns[f][at] if f in columns else None
                row[f] = json.loads(value) if f == "metadata" and isinstance(value, str) else value
            out.append(row)
        return out


class DocumentFields:
    """Document fields of the active index versions, loaded on first use (one load per version at a time)."""

    def __init__(self) -> None:
        self._stored: dict[str, _Stored] = {}  # digest -> its documents
        self._metadata: dict[str, DocumentMetadata | None] = {}  # digest -> its metadata (filters)
        self._lock = threading.Lock()

    def _load(self, ref: IndexRef) -> _Stored:
        with self._lock:  # two requests for a new version: one read
            stored = self._stored.get(ref["digest"])
            if stored is None:
                try:
                    stored = _Stored(ref["path"], ref["version"])
                except Exception as exc:  # e.g. deleted after its shards loaded it: hits keep their ids, fields None
                    log.warning("document fields of index version %s not readable (%s); its hits carry none",
                                ref["version"], type(exc).__name__)
                    stored = _Stored(None)
                self._stored = {**self._stored, ref["digest"]: stored}
                log.info("document ids of index version %s loaded (%d documents)", ref["version"],
                         stored.documents)
            return stored

    async def fetch(self, refs: list[IndexRef], ids: list[str], fields: list[str],
                    active: set[str] | None = None) -> list[dict[str, Any]]:
        """Per id, ``{field: value}`` from the first of ``refs`` (the versions searched) that has the document;
        ``None`` values where none stores it. Versions whose digest is not in ``active`` (default: ``refs``'s) are
        dropped."""
        stored = []
        for ref in refs:
            held = self._stored.get(ref["digest"])
            stored.append(held if held is not None else await asyncio.to_thread(self._load, ref))
        self.retain(active if active is not None else {r["digest"] for r in refs})
        out: list[dict[str, Any] | None] = [None] * len(ids)
        for version in stored:
            missing = [i for i, row in enumerate(out) if row is None]
            if not missing:
                break
            rows = await asyncio.to_thread(version.read, [ids[i] for i in missing], fields)
            for i, row in zip(missing, rows):
                out[i] = row
        return [row or dict.fromkeys(fields) for row in out]

    async def sample_texts(self, ref: IndexRef, n: int, seed: int = 0) -> list[str]:
        """``n`` documents' texts of the version (a deterministic sample; their first 300 characters): queries
        for the quality check. Empty when the version stores no texts."""
        stored = self._stored.get(ref["digest"]) or await asyncio.to_thread(self._load, ref)
        if "text" not in stored.fields or not stored.documents:
            return []
        rows = np.random.default_rng(seed).choice(stored.documents, size=min(n, stored.documents), replace=False)
        texts = await asyncio.to_thread(stored.values, sorted(int(r) for r in rows), "text")
        return [str(texts[r])[:300] for r in sorted(texts)]

    async def metadata(self, ref: IndexRef) -> DocumentMetadata | None:
        """The version's documents' metadata (what filters check their fields against), read once per version."""
        if ref["digest"] not in self._metadata:
            try:
                found = await asyncio.to_thread(read_metadata, ref["path"])
            except Exception as exc:  # deleted after its shards loaded it, or unreadable: no filtering on it
                log.warning("metadata of index version %s not readable (%s)", ref["version"], type(exc).__name__)
                found = None
            self._metadata = {**self._metadata, ref["digest"]: found}
        return self._metadata[ref["digest"]]

    def retain(self, digests: set[str]) -> None:
        """Keep only these versions' documents (others are no longer active for the retrievers that asked)."""
        if not self._stored.keys() <= digests:
            with self._lock:
                self._stored = {d: s for d, s in self._stored.items() if d in digests}
        if not self._metadata.keys() <= digests:
            self._metadata = {d: m for d, m in self._metadata.items() if d in digests}
