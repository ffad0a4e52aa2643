"""retrec — retrieval and recommendation serving stack.

``retrec.load(path)`` opens any bundle by its kind (see :mod:`retrec.api`); importing ``retrec`` stays light
(no torch, FAISS or Ray until a bundle needs them).

Example::

    import retrec
    retrec.load("artifacts/scifact-bm25").search("what causes scurvy", k=10)   # hits with text
    retrec.evaluate(retrec.load("artifacts/scifact-bm25"), "data/scifact")     # {"nDCG@10": ..., ...}
"""

from __future__ import annotations

from typing import Any

from retrec.version import __version__

__all__ = ["__version__", "evaluate", "load"]


def load(path: Any, **options: Any) -> Any:
    """Open a bundle by its kind: an index → retriever, a recommender, a query encoder (:func:`retrec.api.load`)."""
    from retrec.api import load as _load

    return _load(path, **options)


def evaluate(retriever_or_run: Any, data: Any, measures: Any = None, **options: Any) -> dict[str, float]:
    """``retrec eval``'s measures of a retriever or a run on a BEIR-style folder (:func:`retrec.notebook.evaluate`)."""
    from retrec.notebook import evaluate as _evaluate

    return _evaluate(retriever_or_run, data, measures, **options)
