"""`retrec data`: the embedded default dataset, datasets by name, format conversion, haystack distractors."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from retrec.atomic import atomic_parquet
from retrec.cli.common import _fail, data_app
from retrec.data.errors import DataError


@data_app.command("default")
def data_default(out: Annotated[Path, typer.Argument(help="output folder")]) -> None:
    """Write the embedded default dataset (corpus, queries, qrels, interactions) as Parquet."""
    from retrec.data.synthetic import write_default_dataset

    write_default_dataset(out)
    typer.echo(f"wrote {out}")


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
        typer.echo(f"{name}: {fetch(name, out, source)}")
    except DataError as exc:
        raise _fail(str(exc)) from exc


@data_app.command("convert")
def data_convert(
    source: Annotated[Path, typer.Argument(help="BEIR folder, or an interactions file/folder")],
    out: Annotated[Path, typer.Argument(help="output folder (canonical Parquet)")],
    split: Annotated[list[str] | None, typer.Option(help="qrels splits to convert (repeatable)")] = None,
) -> None:
    """Convert BEIR / sequential / MovieLens data into the canonical Parquet tables."""

    from retrec.data.beir import load_retrieval_data, write_retrieval_data
    from retrec.data.interactions import load_interactions

    try:
        if (source / "corpus.jsonl").is_file():
            splits = split or [p.stem for p in sorted((source / "qrels").glob("*.tsv"))]
            for s in splits:
                d = load_retrieval_data(source, split=s)
                write_retrieval_data(d, out)
                typer.echo(f"{s}: {d.report.summary()}")
        else:
            table = load_interactions(source)
            out.mkdir(parents=True, exist_ok=True)
            atomic_parquet(table, out / "interactions.parquet")
            typer.echo(f"interactions: {table.num_rows} rows")
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
) -> None:
    """Write BASE plus DOCS distractors generated from a bigram model of its text (needle-in-a-haystack)."""
    import logging

    from retrec.data.haystack import write_haystack

    logging.getLogger("retrec.data.haystack").setLevel(logging.INFO)  # progress every ~10%
    try:
        write_haystack(base, out, docs, seed, chunk_size=chunk_size, id_prefix=id_prefix)
    except (DataError, ValueError, FileExistsError) as exc:
        raise _fail(str(exc)) from exc
    typer.echo(f"wrote {out}: the documents of {base} + {docs} distractors (provenance: {out / 'haystack.json'})")
