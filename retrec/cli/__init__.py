"""The ``retrec`` command: a thin layer over pipelines and serving, one module per command group.

Process defaults (offline hub, thread caps) are applied before any command module is imported. Command
modules import heavy libraries (FAISS, ONNX Runtime, torch, Ray) inside the commands, so ``retrec --help``
works with the base install; a command whose extra is missing exits 2 with the extra to install
(retrec/extras.py), never a traceback.
"""

from __future__ import annotations

import logging
import sys
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as dist_version
from typing import Annotated

import typer

from retrec.process_env import configure_process

configure_process()

from retrec.cli import (  # noqa: E402, F401  (registers)
    bundles,
    compat,
    data,
    evaluate,
    events,
    index,
    reindex,
    serve,
    train,
)
from retrec.cli.common import EXIT_BAD_INPUT, _fail, app  # noqa: E402
from retrec.extras import missing_extra_message  # noqa: E402

__all__ = ["EXIT_BAD_INPUT", "_fail", "app", "main", "package_version"]


def package_version() -> str:
    """The installed distribution's version, else ``retrec.__version__`` (a source tree on PYTHONPATH)."""
    try:
        return dist_version("retrec")
    except PackageNotFoundError:
        from retrec.version import __version__

        return __version__


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"retrec {package_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="print the version and exit")] = False,
) -> None:
    """Retrieval and recommendation stack."""


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except BrokenPipeError:  # e.g. piped into head
        sys.exit(0)
    except ModuleNotFoundError as exc:  # an optional extra that is not installed: say which one
        message = missing_extra_message(exc)
        if message is None:
            raise
        typer.secho(f"error: {message}", err=True, fg="red")
        sys.exit(EXIT_BAD_INPUT)
