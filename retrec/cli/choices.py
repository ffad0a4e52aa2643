"""Option choices listed in ``--help`` and checked by the parser, read when the command line is parsed.

A plugin module (``$RETREC_PLUGINS``, an entry point, or a test importing one) may register kinds after the CLI
modules are imported, so the choices that come from the registry cannot be frozen at import. Typer evaluates a
command's annotations each time it builds the command line (every ``retrec`` invocation), so an annotation
that *calls* one of these functions gets a ``Literal`` of the choices known at that moment.

Example::

    retriever: Annotated[retriever_choice() | None, typer.Option(help="...")] = None   # <bm25|dense|hybrid>
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal


def _literal(values: Iterable[str]) -> Any:
    return Literal[tuple(dict.fromkeys(values))]  # type: ignore[valid-type]


def retriever_choice() -> Any:
    """``--retriever``: every index kind's eval names, then ``hybrid``."""
    from retrec.pipelines.eval.retrievers import retriever_names

    return _literal(retriever_names())


def index_kind_choice() -> Any:
    """``retrec index KIND``: index kinds by eval name, then by kind string."""
    from retrec import kinds

    found = kinds.by_role("index")
    return _literal([*(n for k in found for n in k.eval_names), *(k.kind for k in found)])


def fusion_choice() -> Any:
    """``--fusion`` / ``--fuse``: the methods of :data:`retrec.index.fusion.FUSIONS`."""
    from retrec.index.fusion import FUSIONS

    return _literal(FUSIONS)


def protocol_choice() -> Any:
    """``retrec eval-rec --protocol``: full ranking or 100 sampled negatives."""
    from retrec.pipelines.eval.rec import PROTOCOLS

    return _literal(PROTOCOLS)
