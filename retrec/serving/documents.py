"""Stored document fields for hits (``"return": ["text", "title", "metadata"]``), read from index versions.

An index version records its documents in ``documents.parquet`` (``doc_id``, the text it indexed and, when the
collection had them, ``title`` and ``metadata`` as JSON). :class:`DocumentFields` reads a version's file the first
time a request asks for fields from it (on a worker thread), keeps the columns as Arrow arrays with one
``doc_id → row`` map, and drops a version once no retriever has it active. A field the version does not store is
``None``; a version without the file gives ``None`` for every field.

Example::

    fields = DocumentFields()
    rows = await fields.fetch([ref], ["d1", "d7"], ["text"])    # [{"text": ...}, {"text": ...}]
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
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


class _Stored:
    """One version's documents: ``doc_id → row`` and the stored field columns."""

    def __init__(self, path: str | None) -> None:
        self.rows: dict[str, int] = {}
        self.columns: dict[str, Any] = {}
        manifest = read_manifest(path) if path is not None else None
        if manifest is None or DOCUMENTS not in manifest.files:
            return
        file = Path(path) / DOCUMENTS
        names = set(pq.read_schema(file).names)
        wanted = [c for c in FIELDS if c in names]
        table = pq.read_table(file, columns=["doc_id", *wanted])
        self.rows = {d: i for i, d in enumerate(table.column("doc_id").to_pylist())}
        self.columns = {c: table.column(c).combine_chunks() for c in wanted}

    def row(self, doc_id: str, fields: list[str]) -> dict[str, Any] | None:
        at = self.rows.get(doc_id)
        if at is None:
            return None
        out: dict[str, Any] = {}
        for f in fields:
            column = self.columns.get(f)
            value = None if column is None else column[at].as_py()
            out[f] = json.loads(value) if f == "metadata" and isinstance(value, str) else value
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
                    stored = _Stored(ref["path"])
                except Exception as exc:  # e.g. deleted after its shards loaded it: hits keep their ids, fields None
                    log.warning("document fields of index version %s not readable (%s); its hits carry none",
                                ref["version"], type(exc).__name__)
                    stored = _Stored(None)
                self._stored = {**self._stored, ref["digest"]: stored}
                log.info("document fields of index version %s loaded (%d documents)", ref["version"],
                         len(stored.rows))
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
        out = []
        for d in ids:
            row = next((r for r in (s.row(d, fields) for s in stored) if r is not None), None)
            out.append(row or dict.fromkeys(fields))
        return out

    async def sample_texts(self, ref: IndexRef, n: int, seed: int = 0) -> list[str]:
        """``n`` documents' texts of the version (a deterministic sample; their first 300 characters): queries
        for the quality check. Empty when the version stores no texts."""
        stored = self._stored.get(ref["digest"]) or await asyncio.to_thread(self._load, ref)
        column = stored.columns.get("text")
        if column is None or not len(column):
            return []
        rows = np.random.default_rng(seed).choice(len(column), size=min(n, len(column)), replace=False)
        return [str(column[int(r)].as_py())[:300] for r in sorted(rows)]

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
