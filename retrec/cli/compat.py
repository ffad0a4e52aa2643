"""`retrec compat`: encoder upgrades — how well a new encoder's queries search an old encoder's index.

Example::

    retrec compat report --old artifacts/minilm --new artifacts/tasb-compatible --data ../shared/data/scifact
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from retrec.cli.common import _fail, compat_app


@compat_app.command("report")
def compat_report_command(
    old: Annotated[Path, typer.Option(help="the old model/dense bundle (its vectors are in the index)")],
    new: Annotated[Path, typer.Option(help="the new model/dense bundle (trained --compatible-with OLD, or as wide)")],
    data: Annotated[Path, typer.Option(help="a BEIR folder with judgements")],
    split: Annotated[str, typer.Option(help="the judged split")] = "test",
    json_out: Annotated[Path | None, typer.Option("--json", help="also write the cells here")] = None,
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
    typer.echo(f"{'cell':<16}{'nDCG@10':>9}{'R@100':>9}")
    for name, values in cells.items():
        typer.echo(f"{name:<16}{values['nDCG@10']:>9.4f}{values['R@100']:>9.4f}")
    gain = cells["new/old"]["nDCG@10"] - cells["old/old"]["nDCG@10"]
    typer.echo(f"new/old - old/old: {gain:+.4f} nDCG@10 ({'compatible' if gain > 0 else 'not compatible'})")
    if json_out is not None:
        json_out.write_text(json.dumps({"old": str(old), "new": str(new), "data": str(data), "split": split,
                                        "cells": cells}, indent=1) + "\n")
