"""`retrec index KIND`: build index versions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from retrec.cli.common import _fail, index_app
from retrec.data.errors import DataError


@index_app.command("bm25")
def index_bm25(
    data: Annotated[Path, typer.Option(help="BEIR folder or canonical Parquet folder")],
    out: Annotated[Path, typer.Option(help="bundle folder to write")],
    k1: float = 0.9,
    b: float = 0.4,
) -> None:
    """Build a BM25 index bundle over the collection's title + text."""
    from retrec.data.beir import load_retrieval_data
    from retrec.index.bm25_index import BM25Config, BM25Index

    try:
        collection = load_retrieval_data(data)
    except DataError as exc:
        raise _fail(str(exc)) from exc
    ids, texts = collection.doc_texts()
    BM25Index.build(ids, texts, BM25Config(k1=k1, b=b)).save(out, name=f"{data.name}-bm25")
    typer.echo(f"wrote {out}")
