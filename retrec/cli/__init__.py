"""The ``retrec`` command: a thin layer over pipelines and serving, one module per command group.

Process defaults (offline hub, thread caps) are applied before any command module is imported.
"""

from __future__ import annotations

import logging
import sys

from retrec.process_env import configure_process

configure_process()

from retrec.cli import data, evaluate, index, serve, train  # noqa: E402, F401  (registers the commands)
from retrec.cli.common import EXIT_BAD_INPUT, _fail, app  # noqa: E402

__all__ = ["EXIT_BAD_INPUT", "_fail", "app", "main"]


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except BrokenPipeError:  # e.g. piped into head
        sys.exit(0)
