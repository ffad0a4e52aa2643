"""Retrievers for ``retrec eval``, read from the registry of kinds (no list of names here).

- ``--retriever NAME [--model BUNDLE]``: an index kind known by eval name NAME (``bm25``, ``dense``, a plugin's
  ``toy``) built in memory over the collection's documents. ``--model`` is always the *query-encoder* bundle
  (encoded kinds; default: the kind's ``default_model``); text kinds such as bm25 take none.
- ``--index DIR [--model BUNDLE]``: a saved index version of any kind (its encoder: ``--model`` or the path the
  index recorded), checked to cover the collection.
- ``hybrid`` (:data:`HYBRID`): the fusion of components (see :mod:`retrec.pipelines.eval.hybrid`).

Example::

    build_retriever("bm25", collection).search(["what causes scurvy"], k=10)
    build_retriever("dense", collection, model="artifacts/tasb-scifact")
    open_retriever("artifacts/scifact-dense", collection)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from retrec import kinds
from retrec.bundle import read_manifest
from retrec.data.beir import RetrievalData
from retrec.index.generic import IndexRetriever, build_index, display_name, index_kind, load_query_encoder, open_index

HYBRID = "hybrid"


def default_components(model: str | Path | None = None) -> list[str]:
    """The product's default retrieval: BM25 fused with the encoded kind ``model`` is a query encoder for (the
    first index kind of the registry whose encoders include its kind; without a model, dense with its default
    zero-shot encoder). Untuned RRF of these beat each alone on every collection measured (RESULTS.md).

    >>> default_components()
    ['bm25', 'dense']
    """
    if model is None:
        return ["bm25", "dense"]
    encoder_kind = read_manifest(model).kind
    for kind in kinds.by_role("index"):
        if encoder_kind in kind.encoder_kinds and kind.eval_names:
            return ["bm25", kind.eval_names[0]]
    raise ValueError(f"{model}: a {encoder_kind} bundle is no index kind's query encoder; give --retriever")


def retriever_names() -> list[str]:
    """What ``--retriever`` accepts: every index kind's eval names, then ``hybrid``."""
    return [*kinds.eval_names("index"), HYBRID]


def resolve_kind(name: str) -> kinds.Kind:
    """The index kind of a retriever name (eval name or kind string); ValueError naming the choices."""
    try:
        return index_kind(name)
    except kinds.UnknownKindError as exc:
        raise ValueError(f"unknown retriever {name!r}; available: {', '.join(retriever_names())}") from exc


def build_from_texts(
    kind: kinds.Kind, doc_ids: list[str], texts: list[str], *, model: str | Path | None = None,
    factory: str | None = None, shards: int = 1, progress: bool = False,
    encoder_options: dict[str, Any] | None = None, **options: Any,
) -> IndexRetriever:
    """Build an index of ``kind`` (encoded kinds: documents encoded by ``model`` or the default encoder, loaded
    with ``encoder_options`` such as ``{"variant": "int8"}``)."""
    encoder = None
    if kind.needs_encoder:
        encoder = load_query_encoder(kind, model, **(encoder_options or {}))
        from retrec.process_env import cache_dir

        options.setdefault("cache", cache_dir() / "embeddings")
    elif model is not None or encoder_options:
        name = display_name(kind)
        raise ValueError(f"{name} takes no model: it searches with the query text (a built {name} index "
                         "goes to --index DIR)")
    index = build_index(kind, doc_ids, texts, encoder=encoder, factory=factory, shards=shards, progress=progress,
                        **options)
    return IndexRetriever(display_name(kind), index, encoder)


BUILD_ARGS = ("encoder", "factory", "shards", "progress", "cache", "use_gpu")  # set by the caller, not --param


def build_retriever(name: str, data: RetrievalData, model: str | Path | None = None, progress: bool = True,
                    params: dict[str, Any] | None = None) -> IndexRetriever:
    """``--retriever NAME``: the kind built in memory over the collection's title + text; ``params``: options of
    the kind's ``build`` hook (``--param``), refused unless its signature names them."""
    kind = resolve_kind(name)
    if params and kind.build:
        kinds.check_params(kind.build, params, f"--retriever {name}", BUILD_ARGS)
    ids, texts = data.doc_texts(with_title=True)
    return build_from_texts(kind, ids, texts, model=model, progress=progress, **(params or {}))


def open_retriever(path: str | Path, data: RetrievalData | None = None, model: str | Path | None = None,
                   params: dict[str, Any] | None = None) -> IndexRetriever:
    """``--index DIR``: a saved index version; refused when it lacks documents of ``data``'s corpus. ``params``:
    options of the kind's ``load`` hook (``--param``), refused unless its signature names them."""
    retriever = open_index(path, model=model, index_options=params)
    indexed = retriever.doc_ids
    if data is not None and indexed is not None:
        missing = set(data.corpus.column("doc_id").to_pylist()) - set(indexed)
        if missing:
            raise ValueError(f"{path}: index lacks {len(missing)} documents of this collection "
                             f"(e.g. {sorted(missing)[:3]}); rebuild it")
    return retriever


def component(spec: str, data: RetrievalData, model: str | Path | None = None) -> tuple[str, IndexRetriever]:
    """A hybrid component and its name: a retriever name (built over the collection; named so) or an index
    folder (opened; named by the folder). A bare registered name wins over a folder of that name (``./bm25``)."""
    if spec == HYBRID:
        raise ValueError("a hybrid component cannot itself be hybrid")
    if "/" in spec or spec not in retriever_names():
        if not Path(spec).is_dir():
            raise ValueError(f"component {spec!r} is neither a retriever ({', '.join(retriever_names()[:-1])}) "
                             "nor an index folder")
        return Path(spec).name, open_retriever(spec, data, model)
    # the model is the encoded components' query encoder: a text kind (BM25) searches without one
    return spec, build_retriever(spec, data, model if resolve_kind(spec).needs_encoder else None)
