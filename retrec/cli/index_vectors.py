"""`retrec index dense --vectors FILE`: an index version from precomputed document vectors.

The route to corpora whose encoding would take hours on the machine at hand: vectors computed elsewhere
(Parquet ``doc_id`` + vector column, or ``.npy`` + an ids file) are streamed into the index in batches; the
query encoder (``--model``) is named in the version, and its dimension and similarity are checked against the
vectors. Options of ``auto`` go in ``--param``: ``target_recall`` (0.97), ``pseudo_queries`` (256), ``seed``,
``exact_max`` (50000), ``tune_queries`` (a ``.npy`` of query vectors from the same encoder to check recall on —
better than the default document pseudo-queries; keep test queries out of it); ``column`` names the Parquet
vector column.

Example::

    retrec index dense --vectors emb.parquet --model artifacts/scifact-dense --out artifacts/index-1m
    retrec index dense --vectors emb.npy --ids emb.ids.txt --model ... --out ... --param target_recall=0.97
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from retrec.bundle import BundleError, load_bundle
from retrec.cli.common import _fail
from retrec.data.errors import DataError
from retrec.kinds import DENSE_INDEX, DENSE_MODEL

VECTOR_PARAMS = ("target_recall", "pseudo_queries", "seed", "exact_max", "column", "tune_queries")


def index_vectors(kind: str, vectors: Path, *, ids: Path | None, out: Path, model: Path | None, factory: str | None,
                  shards: int, params: dict[str, Any], name: str | None) -> Path:
    """Build and publish an ``index/dense`` version from the vectors file (returns its folder); exit 2 with the
    reason on bad input."""
    from retrec.data.vectors import open_vectors
    from retrec.index.faiss_index import FaissIndex
    from retrec.index.generic import publish_index
    from retrec.pipelines.eval.retrievers import resolve_kind

    unknown = sorted(set(params) - set(VECTOR_PARAMS))
    if unknown:
        raise _fail(f"--param {', '.join(unknown)}: --vectors takes {', '.join(VECTOR_PARAMS)}")
    if model is None:
        raise _fail("--vectors needs --model: the dense encoder bundle the vectors came from (it encodes the "
                    "queries; its dimension and similarity are checked against the vectors)")
    logging.getLogger("retrec.index").setLevel(logging.INFO)  # progress of a long build, on stderr
    try:
        if resolve_kind(kind).kind != DENSE_INDEX:
            raise ValueError(f"--vectors builds {DENSE_INDEX} indexes, not {kind!r}")
        encoder = load_bundle(model, kind=DENSE_MODEL)
        column = params.pop("column", None)
        if "tune_queries" in params:
            params["tune_queries"] = load_query_vectors(Path(str(params["tune_queries"])))
        source = open_vectors(vectors, ids, column=column)
        index = FaissIndex.from_source(source, factory=factory or "auto", shards=shards, encoder=encoder, **params)
        path = publish_index(index, out, name or f"{vectors.stem}-dense")
    except (DataError, BundleError, ValueError, FileExistsError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from exc
    return path


def load_query_vectors(path: Path) -> Any:
    """A ``.npy`` array of query vectors ([queries, dim], floats), for ``auto``'s recall check."""
    import numpy as np

    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(path, f"tune_queries: not a readable .npy array ({exc})") from None
    if array.ndim != 2 or array.dtype.kind != "f":
        raise DataError(path, f"tune_queries: must be a 2-d float array, got {array.dtype} {array.shape}")
    return array
