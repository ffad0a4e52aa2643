"""`retrec index KIND`: build an index version of any registered index kind from a corpus."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from retrec.bundle import BundleError
from retrec.cli.bundles import wrote
from retrec.cli.choices import index_kind_choice
from retrec.cli.common import JSON_HELP, PARAM_HELP, _fail, app, encoder_bundle, parse_params
from retrec.data.errors import DataError


@app.command("index")
def index_cmd(
    kind: Annotated[index_kind_choice(), typer.Argument(help="index kind: eval name or kind string")],
    out: Annotated[Path, typer.Option(help="index version folder to write (new or empty)")],
    data: Annotated[Path | None, typer.Option(
        help="corpus: a BEIR/canonical folder, corpus.jsonl or corpus.parquet (or --vectors)")] = None,
    vectors: Annotated[Path | None, typer.Option(
        help="dense only: precomputed document vectors instead of --data — Parquet (doc_id + a list-of-float "
             "column 'vector'/'embedding') or .npy with --ids; streamed; --model names the query encoder they "
             "came from (dimension and similarity checked)")] = None,
    ids: Annotated[Path | None, typer.Option(help="doc ids of a .npy --vectors file: .txt (one a line), "
                                                  ".json (a list) or .parquet (doc_id)")] = None,
    model: Annotated[Path | None, typer.Option(
        help="query-encoder bundle for encoded kinds (default: the kind's, e.g. zero-shot MiniLM); "
             "bm25 has none")] = None,
    factory: Annotated[str | None, typer.Option(
        help="index structure (dense: a FAISS index_factory string, or auto — exact search up to 50k documents, "
             "else IVF + fast-scan PQ with an exact refine stage, its search parameters tuned at build time to "
             "recall@10 >= 0.97 against exact search and recorded in the manifest; default: the kind's, auto)")
    ] = None,
    shards: Annotated[int, typer.Option(min=1, help="shards (documents by a stable hash of doc_id)")] = 1,
    variant: Annotated[str | None, typer.Option(
        help="encoded kinds: the model variant that encodes the documents, e.g. int8 (about 2x faster on CPU; "
             "default fp32); recorded with the version")] = None,
    k1: Annotated[float | None, typer.Option(help="bm25: term saturation (default 0.9)")] = None,
    b: Annotated[float | None, typer.Option(help="bm25: length normalisation (default 0.4)")] = None,
    param: Annotated[list[str] | None, typer.Option(help=PARAM_HELP)] = None,
    name: Annotated[str | None, typer.Option(help="bundle name (default: CORPUS-KIND)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Build an index version (bundle) over a corpus's title + text; no queries or judgements needed.

    An encoded kind's version records its query encoder (name, version, absolute path), so `retrec eval --index`
    and `retrec.load` open it alone.
    """
    from retrec import kinds
    from retrec.data.corpus import corpus_fields, corpus_texts, read_corpus
    from retrec.index.generic import display_name, publish_index
    from retrec.pipelines.eval.retrievers import BUILD_ARGS, build_from_texts, resolve_kind

    options = {key: value for key, value in (("k1", k1), ("b", b)) if value is not None}
    if model is not None:  # a sentence-transformers/HF folder or a Hub id: its exported encoder bundle
        model = encoder_bundle(model)
    params = parse_params(param)
    if (data is None) == (vectors is None):
        raise _fail("give one of --data (a corpus) or --vectors (precomputed dense vectors)")
    if vectors is not None:
        if variant is not None:
            raise _fail("--variant names how documents are encoded: --vectors are encoded already")
        from retrec.cli.index_vectors import index_vectors

        wrote(index_vectors(kind, vectors, ids=ids, out=out, model=model, factory=factory, shards=shards,
                            params=params, name=name), as_json)
        return
    assert data is not None
    try:
        resolved = resolve_kind(kind)
        if params and resolved.build:
            kinds.check_params(resolved.build, params, f"retrec index {kind}", BUILD_ARGS)
            options.update(params)
        doc_ids, texts = corpus_texts(read_corpus(data))
        built = build_from_texts(resolved, doc_ids, texts, model=model, factory=factory, shards=shards,
                                 progress=True, encoder_options={"variant": variant} if variant else None,
                                 **options)
        label = (data if data.is_dir() else data.absolute().parent).name
        path = publish_index(built.index, out, name or f"{label}-{display_name(resolved)}",
                             texts=(doc_ids, texts), encoder=built.encoder, fields=corpus_fields(data))
    except (DataError, BundleError, ValueError, FileExistsError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from exc
    wrote(path, as_json)
