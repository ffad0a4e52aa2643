"""TREC run files: ``qid Q0 docid rank score tag``, one line per retrieved document."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from retrec.bundle import atomic_open
from retrec.data.errors import DataError
from retrec.data.lines import iter_lines

Hits = list[tuple[str, float]]


def write_run(path: str | Path, run: Mapping[str, Hits], tag: str = "retrec") -> Path:
    """Write ranked hits (already in rank order) with ranks from 1; queries in sorted order."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if any(c.isspace() for c in tag) or not tag:
        raise ValueError(f"run tag must be one non-empty word, got {tag!r}")
    with atomic_open(path, "w", encoding="utf-8") as fh:  # a killed writer leaves the old run file or none
        for qid in sorted(run):
            for rank, (doc_id, score) in enumerate(run[qid], 1):
                fh.write(f"{qid} Q0 {doc_id} {rank} {float(score)!r} {tag}\n")
    return path


def read_run(path: str | Path) -> dict[str, dict[str, float]]:
    """Read a run into ``{qid: {doc_id: score}}``; malformed lines and duplicates name the line."""
    path = Path(path)
    run: dict[str, dict[str, float]] = {}
    for lineno, text in iter_lines(path):
        fields = text.split()
        if len(fields) != 6:
            raise DataError(path, f"expected 6 fields 'qid Q0 docid rank score tag', got {len(fields)}", lineno)
        qid, _, doc_id, rank, score, _ = fields
        try:
            int(rank)
            value = float(score)
        except ValueError as exc:
            raise DataError(path, f"rank must be an integer and score a number ({exc})", lineno) from exc
        docs = run.setdefault(qid, {})
        if doc_id in docs:
            raise DataError(path, f"document {doc_id!r} listed twice for query {qid!r}", lineno)
        docs[doc_id] = value
    if not run:
        raise DataError(path, "empty run file")
    return run


def rank_scores(docs: Mapping[str, float]) -> Hits:
    """Order ``{doc_id: score}`` as trec_eval does: score descending, then doc_id descending."""
    return sorted(docs.items(), key=lambda item: (item[1], item[0]), reverse=True)
