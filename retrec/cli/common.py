"""The ``retrec`` Typer application and its command groups, shared by the command modules."""

from __future__ import annotations

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Retrieval and recommendation stack.")
data_app = typer.Typer(no_args_is_help=True, help="Datasets: the embedded default, format conversion.")
train_app = typer.Typer(no_args_is_help=True, help="Train models into bundles.")
app.add_typer(data_app, name="data")
app.add_typer(train_app, name="train")

EXIT_BAD_INPUT = 2


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg="red")
    return typer.Exit(EXIT_BAD_INPUT)
