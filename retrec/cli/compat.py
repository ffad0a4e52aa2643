"""`retrec compat`: encoder upgrades — how well a new encoder's queries search an old encoder's index.

Example::

    retrec compat report --old artifacts/minilm --new artifacts/tasb-compatible --data ../shared/data/scifact
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from retrec.atomic import atomic_write_text
from retrec.cli.bundles import summary
from retrec.cli.common import JSON_HELP, _fail, compat_app, print_json


@compat_app.command("report")
def compat_report_command(
    old: Annotated[Path, typer.Option(help="the old model/dense bundle (its vectors are in the index)")],
    new: Annotated[Path, typer.Option(help="the new model/dense bundle (trained --compatible-with OLD, or as wide)")],
    data: Annotated[Path, typer.Option(help="a BEIR folder with judgements")],
    split: Annotated[str, typer.Option(help="the judged split")] = "test",
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
    write: Annotated[Path | None, typer.Option(help="also write the report (the --json object) to this file")
                     ] = None,
) -> None:
    """The old/old, new/old and new/new cells (nDCG@10, R@100, exact search) and rolling re-encodes at 0%, 50%
    and 100%, compared in the old space (retrec/pipelines/eval/compat.py)."""
    from retrec.bundle import BundleError
    from retrec.data.errors import DataError
    from retrec.pipelines.eval.compat import compat_report

    try:
        cells = compat_report(old, new, data, split, progress=True)
    except (BundleError, DataError, ValueError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from exc
    report = {"old": str(old), "new": str(new), "data": str(data), "split": split, "cells": cells}
    if write is not None:
        atomic_write_text(write, json.dumps(report, indent=1) + "\n")
    if as_json:
        print_json(report)
        return
    typer.echo(f"{'cell':<16}{'nDCG@10':>9}{'R@100':>9}")
    for name, values in cells.items():
        typer.echo(f"{name:<16}{values['nDCG@10']:>9.4f}{values['R@100']:>9.4f}")
    gain = cells["new/old"]["nDCG@10"] - cells["old/old"]["nDCG@10"]
    typer.echo(f"new/old - old/old: {gain:+.4f} nDCG@10 ({'compatible' if gain > 0 else 'not compatible'})")


@compat_app.command("fit")
def compat_fit_command(
    old: Annotated[Path, typer.Option(help="the old model/dense bundle (its vectors are in the index)")],
    new: Annotated[Path, typer.Option(help="the new model/dense bundle (trained without compatibility)")],
    data: Annotated[Path, typer.Option(help="a corpus (BEIR folder, corpus.jsonl or .parquet): the documents "
                                       "both encoders encode for the fit")],
    out: Annotated[Path, typer.Option(help="where to write the model/compat-map bundle (new or empty)")],
    method: Annotated[str, typer.Option(help="procrustes (orthogonal) | affine (least squares, optional rank)")
                      ] = "procrustes",
    rank: Annotated[int | None, typer.Option(min=1, help="affine: keep this many directions (low-rank)")] = None,
    name: Annotated[str | None, typer.Option(help="bundle name (default: NEW-to-OLD)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Fit a map from NEW's vectors into OLD's space on a corpus's documents: a small bundle that serves as a
    query encoder for OLD's indexes (NEW's queries, mapped) — the query-side adapter (retrec/runtime/compat_map.py).
    """
    from retrec.bundle import BundleError, read_manifest
    from retrec.data.errors import DataError
    from retrec.pipelines.train.text.compat_map import METHODS, fit_compat_map

    if method not in METHODS:
        raise _fail(f"--method {method!r}: one of {', '.join(METHODS)}")
    try:
        path = fit_compat_map(old, new, data, out, method=method, rank=rank, name=name,  # type: ignore[arg-type]
                              progress=True)
    except (BundleError, DataError, ValueError, FileNotFoundError, FileExistsError) as exc:
        raise _fail(str(exc)) from exc
    if as_json:
        print_json(summary(path))
    else:
        typer.echo(f"wrote {path}: {read_manifest(path).metrics}")
