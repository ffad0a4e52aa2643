"""`retrec data`: the embedded default dataset, datasets by name, format conversion, haystack distractors."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from retrec.atomic import atomic_parquet
from retrec.cli.common import JSON_HELP, _fail, data_app, print_json
from retrec.data.errors import DataError


@data_app.command("default")
def data_default(
    out: Annotated[Path, typer.Argument(help="output folder")],
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Write the embedded default dataset (corpus, queries, qrels, interactions) as Parquet."""
    from retrec.data.synthetic import write_default_dataset

    write_default_dataset(out)
    _report(as_json, f"wrote {out}", path=str(out))


@data_app.command("fetch")
def data_fetch(
    name: Annotated[str, typer.Argument(help="a known dataset (scifact, nfcorpus, fiqa, trec-covid, nq, hotpotqa, "
                                             "msmarco, ml-100k, ml-1m), or any name with --url")],
    out: Annotated[Path | None, typer.Option(help="folder to write (default: $RETREC_DATA/NAME, else "
                                                  "~/.cache/retrec/data/NAME)")] = None,
    url: Annotated[str | None, typer.Option(help="a zip archive's URL (a mirror, or a dataset not listed)")] = None,
    sha256: Annotated[str | None, typer.Option(help="with --url: the archive's sha256")] = None,
    md5: Annotated[str | None, typer.Option(help="with --url: the archive's MD5 (what BEIR and GroupLens publish)")
                   ] = None,
    inner: Annotated[str | None, typer.Option(help="with --url: the archive's top folder holding the data")] = None,
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Download a public dataset, check its publisher's checksum, unpack it whole into the cache; then `--data
    NAME` works anywhere a folder is taken. A broken download resumes on the next run."""
    from retrec.data.fetch import SOURCES, Source, fetch

    try:
        source = None
        if url is not None:
            if (sha256 is None) == (md5 is None):
                raise DataError(Path(url), "--url needs exactly one of --sha256 and --md5")
            known = SOURCES.get(name)
            source = Source(url, (sha256 or md5 or "").lower(), "sha256" if sha256 else "md5",
                            inner=inner if inner is not None else (known.inner if known else None))
        path = fetch(name, out, source)
        _report(as_json, f"{name}: {path}", name=name, path=str(path))
    except DataError as exc:
        raise _fail(str(exc)) from exc


@data_app.command("convert")
def data_convert(
    source: Annotated[Path, typer.Argument(help="BEIR folder, or an interactions file/folder")],
    out: Annotated[Path, typer.Argument(help="output folder (canonical Parquet)")],
    split: Annotated[list[str] | None, typer.Option(help="qrels splits to convert (repeatable)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Convert BEIR / sequential / MovieLens data into the canonical Parquet tables."""

    from retrec.data.beir import load_retrieval_data, write_retrieval_data
    from retrec.data.interactions import load_interactions

    try:
        if (source / "corpus.jsonl").is_file():
            splits = split or [p.stem for p in sorted((source / "qrels").glob("*.tsv"))]
            written = {}
            for s in splits:
                d = load_retrieval_data(source, split=s)
                write_retrieval_data(d, out)
                written[s] = d.report.summary()
                if not as_json:
                    typer.echo(f"{s}: {written[s]}")
            if as_json:
                print_json({"path": str(out), "splits": written})
        else:
            table = load_interactions(source)
            out.mkdir(parents=True, exist_ok=True)
            atomic_parquet(table, out / "interactions.parquet")
            _report(as_json, f"interactions: {table.num_rows} rows", path=str(out), interactions=table.num_rows)
    except DataError as exc:
        raise _fail(str(exc)) from exc


@data_app.command("haystack")
def data_haystack(
    base: Annotated[Path, typer.Option(help="base BEIR folder (corpus.jsonl, queries.jsonl, qrels/*.tsv)")],
    docs: Annotated[int, typer.Option(help="number of distractor documents to generate")],
    out: Annotated[Path, typer.Option(help="output BEIR folder (new or empty)")],
    seed: Annotated[int, typer.Option(help="random seed; the same base, docs and seed give identical bytes")] = 0,
    chunk_size: Annotated[int, typer.Option(help="distractors per seeded chunk (another size: other text)")] = 10_000,
    id_prefix: Annotated[str, typer.Option(help="distractor ids: PREFIX + 8-digit index")] = "haystack-",
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Write BASE plus DOCS distractors generated from a bigram model of its text (needle-in-a-haystack)."""
    import logging

    from retrec.data.haystack import write_haystack

    logging.getLogger("retrec.data.haystack").setLevel(logging.INFO)  # progress every ~10%
    try:
        write_haystack(base, out, docs, seed, chunk_size=chunk_size, id_prefix=id_prefix)
    except (DataError, ValueError, FileExistsError) as exc:
        raise _fail(str(exc)) from exc
    _report(as_json, f"wrote {out}: the documents of {base} + {docs} distractors (provenance: "
            f"{out / 'haystack.json'})", path=str(out), base=str(base), distractors=docs,
            provenance=str(out / "haystack.json"))


def _report(as_json: bool, line: str, **fields: object) -> None:
    """A data command's report: one line of text, or (``--json``) its fields as one JSON object."""
    if as_json:
        print_json(fields)
    else:
        typer.echo(line)
