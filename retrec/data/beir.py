"""Retrieval collections: BEIR folders and canonical Parquet folders, validated the same way.

BEIR layout: ``corpus.jsonl`` ({"_id", "title", "text"}), ``queries.jsonl`` ({"_id", "text"}),
``qrels/{split}.tsv`` (``query-id  corpus-id  score`` with an optional header).
Canonical layout: ``corpus.parquet``, ``queries.parquet``, ``qrels/{split}.parquet`` (see schemas).

Duplicate ids, malformed lines, bad encodings and an empty corpus are errors naming file and line.
Qrels that point at unknown documents or queries are skipped, counted in the :class:`LoadReport` and
logged (``strict=True`` turns them into errors).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from retrec.atomic import atomic_parquet
from retrec.data.errors import DataError, LoadReport
from retrec.data.fetch import resolve_dataset
from retrec.data.lines import iter_lines
from retrec.data.schemas import CORPUS, QRELS, QUERIES


@dataclass
class RetrievalData:
    """A test collection: documents, the queries of one split, and their judgements."""

    corpus: pa.Table
    queries: pa.Table
    qrels: pa.Table
    split: str = "test"
    report: LoadReport = field(default_factory=LoadReport)

    def qrels_dict(self) -> dict[str, dict[str, int]]:
        return qrels_to_dict(self.qrels)

    def query_texts(self) -> dict[str, str]:
        return dict(zip(self.queries.column("query_id").to_pylist(), self.queries.column("text").to_pylist()))

    def doc_texts(self, with_title: bool = True) -> tuple[list[str], list[str]]:
        """``(doc_ids, texts)`` with title and text joined by a space when ``with_title``."""
        return corpus_texts(self.corpus, with_title)


def corpus_texts(corpus: pa.Table, with_title: bool = True) -> tuple[list[str], list[str]]:
    """``(doc_ids, texts)`` of a corpus table, title and text joined by a space when ``with_title``."""
    ids = corpus.column("doc_id").to_pylist()
    texts = corpus.column("text").to_pylist()
    if with_title:
        titles = corpus.column("title").to_pylist()
        texts = [f"{t} {x}".strip() if t else x for t, x in zip(titles, texts)]
    return ids, texts


def _jsonl_records(path: Path, required: tuple[str, ...]) -> list[tuple[int, dict]]:
    records = []
    for lineno, text in iter_lines(path):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(path, f"malformed JSON ({exc.msg} at column {exc.colno})", lineno) from exc
        if not isinstance(obj, dict):
            raise DataError(path, f"expected a JSON object, got {type(obj).__name__}", lineno)
        for key in required:
            if key not in obj or obj[key] is None:
                raise DataError(path, f"missing field {key!r}", lineno)
        if not isinstance(obj["_id"], (str, int)) or str(obj["_id"]) == "":
            raise DataError(path, f"field '_id' must be a non-empty string, got {obj['_id']!r}", lineno)
        records.append((lineno, obj))
    return records


def _check_unique(path: Path, ids: list[str], lines: list[int], what: str) -> None:
    seen: dict[str, int] = {}
    for id_, lineno in zip(ids, lines):
        if id_ in seen:
            raise DataError(path, f"duplicate {what} {id_!r} (first seen at line {seen[id_]})", lineno)
        seen[id_] = lineno


def read_beir_corpus(path: str | Path) -> pa.Table:
    path = Path(path)
    records = _jsonl_records(path, ("_id", "text"))
    if not records:
        raise DataError(path, "empty corpus: no documents")
    ids = [str(o["_id"]) for _, o in records]
    _check_unique(path, ids, [n for n, _ in records], "document id")
    titles = [str(o.get("title") or "") for _, o in records]
    texts = [str(o["text"]) for _, o in records]
    return pa.table([ids, titles, texts], schema=CORPUS)


def read_beir_queries(path: str | Path) -> pa.Table:
    path = Path(path)
    records = _jsonl_records(path, ("_id", "text"))
    ids = [str(o["_id"]) for _, o in records]
    _check_unique(path, ids, [n for n, _ in records], "query id")
    return pa.table([ids, [str(o["text"]) for _, o in records]], schema=QUERIES)


def read_parquet_corpus(path: str | Path) -> pa.Table:
    """A canonical ``corpus.parquet``: schema checked, non-empty, unique doc ids (errors name the row)."""
    path = Path(path)
    corpus = _read_parquet(path, CORPUS)
    if corpus.num_rows == 0:
        raise DataError(path, "empty corpus: no documents")
    ids = corpus.column("doc_id").to_pylist()
    _check_unique(path, ids, list(range(1, len(ids) + 1)), "document id")
    return corpus


def read_qrels_tsv(path: str | Path) -> tuple[pa.Table, list[int]]:
    """BEIR qrels TSV (header optional) → table and the line number of each row."""
    path = Path(path)
    qids: list[str] = []
    dids: list[str] = []
    rels: list[int] = []
    lines: list[int] = []
    seen: dict[tuple[str, str], int] = {}
    for lineno, text in iter_lines(path):
        fields = text.split("\t") if "\t" in text else text.split()
        if len(fields) == 4:  # TREC qrels: qid iter docid rel
            fields = [fields[0], fields[2], fields[3]]
        if len(fields) != 3:
            raise DataError(path, f"expected 3 tab-separated fields (query-id, corpus-id, score), got {len(fields)}",
                            lineno)
        if lineno == 1 and fields[2].strip().lower() in {"score", "relevance", "rel"}:
            continue  # header
        try:
            rel = int(fields[2])
        except ValueError as exc:
            raise DataError(path, f"relevance {fields[2]!r} is not an integer", lineno) from exc
        key = (fields[0].strip(), fields[1].strip())
        if key in seen:
            raise DataError(path, f"duplicate judgement for query {key[0]!r}, document {key[1]!r} "
                                  f"(first at line {seen[key]})", lineno)
        seen[key] = lineno
        qids.append(key[0])
        dids.append(key[1])
        rels.append(rel)
        lines.append(lineno)
    return pa.table([qids, dids, pa.array(rels, pa.int32())], schema=QRELS), lines


def _read_parquet(path: Path, schema: pa.Schema) -> pa.Table:
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(path, f"unreadable Parquet ({exc})") from exc
    missing = [n for n in schema.names if n not in table.column_names]
    if missing:
        raise DataError(path, f"missing columns {missing}; expected {schema.names}")
    try:
        return table.select(schema.names).cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise DataError(path, f"columns do not match the schema {schema} ({exc})") from exc


def read_qrels(path: str | Path) -> tuple[pa.Table, list[int] | None]:
    """A qrels file: ``.parquet`` (canonical schema) or text (BEIR TSV or TREC ``qid iter docid rel``)."""
    path = Path(path)
    if path.suffix == ".parquet":
        return _read_parquet(path, QRELS), None
    if not path.is_file():
        raise DataError(path, "qrels file not found")
    return read_qrels_tsv(path)


def qrels_to_dict(qrels: pa.Table) -> dict[str, dict[str, int]]:
    """``{query_id: {doc_id: relevance}}`` of a qrels table."""
    out: dict[str, dict[str, int]] = {}
    for q, d, r in zip(*(qrels.column(c).to_pylist() for c in ("query_id", "doc_id", "relevance"))):
        out.setdefault(q, {})[d] = int(r)
    return out


def validate_qrels(
    qrels: pa.Table, corpus: pa.Table, queries: pa.Table, source: Path, lines: list[int] | None,
    report: LoadReport, strict: bool,
) -> pa.Table:
    """Drop (counted, reported) or refuse (strict) judgements that point at unknown ids."""
    doc_ids = set(corpus.column("doc_id").to_pylist())
    query_ids = set(queries.column("query_id").to_pylist())
    keep = []
    for i, (q, d) in enumerate(zip(qrels.column("query_id").to_pylist(), qrels.column("doc_id").to_pylist())):
        where = f"line {lines[i]}" if lines else f"row {i + 1}"
        problem = None
        if q not in query_ids:
            problem, reason = f"query {q!r} is not in the queries file", "qrels: unknown query"
        elif d not in doc_ids:
            problem, reason = f"document {d!r} is not in the corpus", "qrels: unknown document"
        if problem is None:
            keep.append(i)
        elif strict:
            raise DataError(source, problem, lines[i] if lines else None)
        else:
            report.skip(reason, f"{source.name} {where}: {problem}")
    if len(keep) < qrels.num_rows:
        report.log()
    if not keep:
        raise DataError(source, "no usable judgements (all point at unknown queries or documents)")
    return qrels.take(pa.array(keep, pa.int64()))


def _root(directory: str | Path) -> Path:
    root = resolve_dataset(directory)
    if not root.is_dir():
        raise DataError(root, "dataset folder not found")
    return root


def load_corpus(directory: str | Path) -> pa.Table:
    """Only the documents of a BEIR or canonical Parquet folder (no queries or judgements are read)."""
    root = _root(directory)
    if (root / "corpus.jsonl").is_file():
        return read_beir_corpus(root / "corpus.jsonl")
    if (root / "corpus.parquet").is_file():
        return read_parquet_corpus(root / "corpus.parquet")
    raise DataError(root, "neither a BEIR folder (corpus.jsonl) nor a canonical one (corpus.parquet)")


def load_retrieval_data(
    directory: str | Path, split: str = "test", strict: bool = False, qrels_file: str | Path | None = None,
) -> RetrievalData:
    """Load a BEIR or canonical Parquet folder; queries are those judged in ``split``.

    ``qrels_file`` (a BEIR/TREC TSV or a Parquet file) replaces the folder's ``qrels/{split}``.
    """
    root = _root(directory)
    report = LoadReport()
    if (root / "corpus.jsonl").is_file():
        corpus = read_beir_corpus(root / "corpus.jsonl")
        queries = read_beir_queries(root / "queries.jsonl")
        qrels_path = root / "qrels" / f"{split}.tsv"
    elif (root / "corpus.parquet").is_file():
        corpus = read_parquet_corpus(root / "corpus.parquet")
        queries = _read_parquet(root / "queries.parquet", QUERIES)
        ids = queries.column("query_id").to_pylist()
        _check_unique(root / "queries.parquet", ids, list(range(1, len(ids) + 1)), "query id")
        qrels_path = root / "qrels" / f"{split}.parquet"
    else:
        raise DataError(root, "neither a BEIR folder (corpus.jsonl) nor a canonical one (corpus.parquet)")
    if qrels_file is not None:
        qrels_path = Path(qrels_file)
    elif not qrels_path.is_file():
        raise DataError(qrels_path, f"no qrels for split {split!r}")
    qrels, lines = read_qrels(qrels_path)
    qrels = validate_qrels(qrels, corpus, queries, qrels_path, lines, report, strict)
    judged = set(qrels.column("query_id").to_pylist())
    mask = pa.array([q in judged for q in queries.column("query_id").to_pylist()])
    queries = queries.filter(mask)
    report.rows = {"documents": corpus.num_rows, "queries": queries.num_rows, "qrels": qrels.num_rows}
    return RetrievalData(corpus=corpus, queries=queries, qrels=qrels, split=split, report=report)


def write_retrieval_data(data: RetrievalData, directory: str | Path) -> Path:
    """Write the canonical Parquet layout (qrels under ``qrels/{split}.parquet``)."""
    root = Path(directory)
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    atomic_parquet(data.corpus, root / "corpus.parquet")
    atomic_parquet(data.queries, root / "queries.parquet")
    atomic_parquet(data.qrels, root / "qrels" / f"{data.split}.parquet")
    return root
