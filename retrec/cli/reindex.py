"""`retrec reindex`: a new index version, encoded in parallel on Ray, resumable, incremental, verified, published
atomically and made current; optionally swapped into a running server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from retrec.bundle import BundleError
from retrec.cli.choices import index_kind_choice
from retrec.cli.common import JSON_HELP, PARAM_HELP, _fail, app, parse_params, positional_kind
from retrec.data.errors import DataError


@app.command("reindex")
def reindex_cmd(
    kind: Annotated[index_kind_choice() | None, typer.Argument(
        help="index kind: eval name or kind string (as `retrec index KIND`)", show_default=False)] = None,
    data: Annotated[Path | None, typer.Option(
        help="corpus: a BEIR/canonical folder, corpus.jsonl or corpus.parquet", show_default=False)] = None,
    out: Annotated[Path | None, typer.Option(
        help="versions root: writes OUT/VERSION and moves the OUT/current symlink", show_default=False)] = None,
    model: Annotated[Path | None, typer.Option(
        help="query-encoder bundle for encoded kinds (default: the kind's, e.g. zero-shot MiniLM)")] = None,
    shards: Annotated[int, typer.Option(min=1, help="shards (documents by a stable hash of doc_id)")] = 1,
    factory: Annotated[str | None, typer.Option(help="index structure (dense: a FAISS index_factory string)")] = None,
    base: Annotated[str | None, typer.Option(
        help="version to reuse unchanged documents' encodings from (default: OUT/current)")] = None,
    full: Annotated[bool, typer.Option("--full", help="encode every document (ignore the base version)")] = False,
    actors: Annotated[int | None, typer.Option(
        min=1, help="Ray actors: encoders (encoded kinds; default: CPUs // threads) or, for text kinds such as bm25, "
                    "the workers preparing the documents (given: on Ray; default: the cluster's CPUs)")] = None,
    threads: Annotated[int | None, typer.Option(
        min=1, help="ONNX threads per actor (default 1; with --local: every CPU)")] = None,
    variant: Annotated[str | None, typer.Option(
        help="encoded kinds: the encoder bundle's model variant, e.g. int8 (about 2x faster on CPU; default fp32)",
    )] = None,
    gpus_per_actor: Annotated[float, typer.Option(
        min=0.0, help="GPUs per Ray actor (0.25: four actors share a GPU; ONNX Runtime's CUDA provider)")] = 0.0,
    part_size: Annotated[int, typer.Option(min=1, help="documents per resumable part")] = 256,
    ray_address: Annotated[str | None, typer.Option(
        help="Ray cluster to join (default: $RAY_ADDRESS or the job's cluster, else a local Ray on 127.0.0.1)")] = None,
    local: Annotated[bool, typer.Option("--local", help="encode in this process (no Ray)")] = False,
    eval_data: Annotated[Path | None, typer.Option(
        help="BEIR-style folder with queries + judgements: score the new version before current moves")] = None,
    max_drop: Annotated[float, typer.Option(
        min=0.0, help="with --eval-data: refuse to move current when nDCG@10 falls more than this")] = 0.01,
    swap: Annotated[str | None, typer.Option(
        help="server URL: ask it to load the new version (admin key from $RETREC_ADMIN_KEYS, as the server)")] = None,
    swap_retriever: Annotated[str | None, typer.Option(help="retriever to swap (default: the kind's name)")] = None,
    swap_root: Annotated[Path | None, typer.Option(
        help="the server's admin.models_root as seen from here (default: OUT's parent)")] = None,
    param: Annotated[list[str] | None, typer.Option(help=PARAM_HELP)] = None,
    name: Annotated[str | None, typer.Option(help="bundle name (default: CORPUS-KIND)")] = None,
    rolling: Annotated[bool, typer.Option("--rolling", help=(
        "dense: move the current version to --model, an encoder compatible with its encoder (trained "
        "--compatible-with it, or a `retrec compat fit` map), one shard at a time: each step is published, made "
        "current and (--swap) swapped in while the other shards still hold the old vectors; resumable"))] = False,
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
    kind_option: Annotated[index_kind_choice() | None, typer.Option(
        "--kind", hidden=True, help="the kind, as before it became the argument")] = None,
) -> None:
    """Build a new version of an index under OUT from a corpus: only changed documents are encoded (their
    content hashes against OUT/current), in parts that a re-run after a crash skips; published whole, verified
    (checksums, counts, sample queries; --eval-data: no nDCG@10 drop), then OUT/current moves to it.
    """
    import logging

    from retrec.console import console
    from retrec.index.generic import display_name, index_kind
    from retrec.pipelines.reindex.checks import swap_server
    from retrec.pipelines.reindex.job import GateError, ReindexConfig, reindex

    kind = positional_kind(kind, kind_option)
    if data is None or out is None:
        raise _fail("give the corpus and the versions root: retrec reindex KIND --data CORPUS --out ROOT")
    for logger in ("retrec.pipelines.reindex.job", "retrec.pipelines.reindex.parts",
                   "retrec.pipelines.reindex.rolling"):
        logging.getLogger(logger).setLevel(logging.INFO)  # what was reused, resumed and where the work ran
    cfg = ReindexConfig(kind=kind, data=data, out=out.absolute(), model=model, shards=shards, factory=factory,
                        base=base, full=full, actors=actors, threads=threads, variant=variant,
                        gpus_per_actor=gpus_per_actor,
                        part_size=part_size,
                        ray_address=ray_address, local=local, eval_data=eval_data, max_drop=max_drop, name=name,
                        params=parse_params(param), rolling=rolling,
                        progress=True)
    retriever = swap_retriever or display_name(index_kind(kind))
    swaps: list[dict] = []

    def swap_each(version: Path) -> None:  # --rolling --swap: every step goes live before the next one
        swaps.append(swap_server(swap, retriever, version, swap_root or cfg.out.parent))  # type: ignore[arg-type]
        typer.echo(f"swapped {retriever} to {version.name}", err=as_json)

    try:
        result = reindex(cfg, on_version=swap_each if rolling and swap is not None else None)
    except (GateError, DataError, BundleError, ValueError, FileExistsError, FileNotFoundError, RuntimeError) as exc:
        raise _fail(str(exc)) from exc
    if not as_json:
        for step in result.report.get("rolling", {}).get("steps", []):
            console.print(f"  {step['step']:<12} {step['version']} ({step['space']} space) "
                          + (f"nDCG@10 {step['nDCG@10']:.4f} " if "nDCG@10" in step else "")
                          + f"{step['seconds']:.1f} s", markup=False, highlight=False)
        for stage, row in result.report.items():
            if isinstance(row, dict) and stage != "rolling":
                console.print(f"  {stage:<9} " + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                                                              for k, v in row.items()), markup=False, highlight=False)
        typer.echo(f"wrote {result.version}; {cfg.out.name}/current -> {result.version.name}")
    if swaps:
        result.report["swaps"] = swaps
    elif swap is not None:
        try:
            result.report["swap"] = swap_server(swap, retriever, result.version, swap_root or cfg.out.parent)
        except (ValueError, RuntimeError) as exc:
            raise _fail(f"{exc} (the version is published and current; the server still serves the previous "
                        "one)") from exc
        if not as_json:
            typer.echo(f"swapped {retriever} to {result.version.name}")
    if as_json:
        typer.echo(json.dumps({"version": str(result.version), **result.report}))
