"""The ``retrec`` Typer application and its command groups, shared by the command modules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Retrieval and recommendation stack.")
data_app = typer.Typer(no_args_is_help=True, help="Datasets: the embedded default, format conversion.")
app.add_typer(data_app, name="data")
events_app = typer.Typer(no_args_is_help=True, help="The event log: append user actions, read them, see consumers.")
app.add_typer(events_app, name="events")
compat_app = typer.Typer(no_args_is_help=True, help="Encoder upgrades: how well a new encoder searches an old index.")
app.add_typer(compat_app, name="compat")

EXIT_BAD_INPUT = 2


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg="red")
    return typer.Exit(EXIT_BAD_INPUT)


JSON_HELP = "print one JSON object on stdout (progress and warnings stay on stderr)"


def positional_kind(kind: str | None, kind_option: str | None) -> str:
    """The kind given as the argument (as ``retrec index KIND``), or by the older ``--kind`` with a warning."""
    if kind is not None and kind_option is not None and kind != kind_option:
        raise _fail(f"the kind given twice: {kind!r} and --kind {kind_option!r}")
    if kind is None and kind_option is not None:
        typer.secho("warning: --kind is deprecated; give the kind as the argument: retrec reindex KIND ...",
                    err=True, fg="yellow")
        return kind_option
    if kind is None:
        raise _fail("give the index kind: retrec reindex KIND --data CORPUS --out ROOT (e.g. bm25, dense)")
    return kind


def print_json(obj: Any) -> None:
    """One JSON object on stdout, on one line: what ``--json`` prints on every command that reports."""
    typer.echo(json.dumps(obj, default=str))


PARAM_HELP = ("a parameter of the index kind, NAME=VALUE (repeatable; numbers, true/false/null or text), e.g. "
              "muvera's candidates=100 or repetitions=40; what a kind takes is listed when a name is wrong")


def parse_params(given: list[str] | None) -> dict[str, Any]:
    """``--param NAME=VALUE`` options as a dict; VALUE read as JSON (numbers, true/false/null), else as text."""
    out: dict[str, Any] = {}
    for item in given or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip().isidentifier():
            raise _fail(f"--param {item!r}: expected NAME=VALUE, e.g. candidates=100")
        try:
            out[name.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[name.strip()] = value
    return out


def encoder_bundle(model: Path) -> Path:
    """A ``--model``: a bundle as is; a sentence-transformers / HF folder or a Hub id as its encoder bundle,
    exported once and cached (:mod:`retrec.models.hf_encoders`); exit 2 with the reason when it is neither."""
    from retrec.bundle import BundleError
    from retrec.models.hf_encoders import as_encoder_bundle
    from retrec.runtime.tokenizer import ModelFilesError

    try:
        return as_encoder_bundle(model)
    except (ValueError, BundleError, ModelFilesError) as exc:
        raise _fail(str(exc)) from exc
