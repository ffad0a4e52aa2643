"""The ``retrec`` command: a thin layer over pipelines (and, later, serving)."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from retrec.process_env import configure_process

configure_process()

from retrec.bundle import BundleError  # noqa: E402  (after process defaults are in place)
from retrec.data.errors import DataError  # noqa: E402

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Retrieval and recommendation stack.")
data_app = typer.Typer(no_args_is_help=True, help="Datasets: the embedded default, format conversion.")
index_app = typer.Typer(no_args_is_help=True, help="Build index bundles.")
app.add_typer(data_app, name="data")
train_app = typer.Typer(no_args_is_help=True, help="Train models into bundles.")
app.add_typer(index_app, name="index")
app.add_typer(train_app, name="train")

EXIT_BAD_INPUT = 2


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg="red")
    return typer.Exit(EXIT_BAD_INPUT)


@app.command("eval")
def eval_cmd(
    data: Annotated[Path, typer.Option(help="BEIR folder or canonical Parquet folder")],
    retriever: Annotated[str | None, typer.Option(help="retriever name, e.g. bm25")] = None,
    model: Annotated[Path | None, typer.Option(help="model or index bundle for the retriever")] = None,
    split: Annotated[str, typer.Option(help="qrels split")] = "test",
    k: Annotated[int, typer.Option(min=1, help="documents retrieved per query")] = 1000,
    run: Annotated[list[Path] | None, typer.Option(help="evaluate TREC run file(s) (repeatable)")] = None,
    compare: Annotated[bool, typer.Option(help="paired test of every system against the first")] = False,
    measure: Annotated[str, typer.Option(help="measure used by --compare")] = "nDCG@10",
    run_out: Annotated[Path | None, typer.Option(help="write the retriever's TREC run here")] = None,
    per_query: Annotated[Path | None, typer.Option(help="write per-query values (JSON) here")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    strict: Annotated[bool, typer.Option(help="unknown ids in qrels are errors, not skips")] = False,
) -> None:
    """Evaluate a retriever and/or TREC run files: nDCG@10, RR@10, R@100, R@1000, AP (ir-measures)."""
    from retrec.console import comparison_table, console, metrics_table
    from retrec.data.beir import load_retrieval_data
    from retrec.data.trec import read_run, write_run
    from retrec.pipelines.compare import compare as paired
    from retrec.pipelines.evaluate import QueryMismatchError, evaluate_hits, evaluate_retriever
    from retrec.pipelines.metrics import RETRIEVAL_MEASURES
    from retrec.pipelines.retrievers import build_retriever

    if retriever is None and not run:
        raise _fail("give --retriever NAME and/or --run FILE")
    measures = RETRIEVAL_MEASURES if measure in RETRIEVAL_MEASURES else (*RETRIEVAL_MEASURES, measure)
    try:
        collection = load_retrieval_data(data, split=split, strict=strict)
        results = []
        if retriever is not None:
            started = time.perf_counter()
            r = build_retriever(retriever, collection, model)
            index_seconds = time.perf_counter() - started
            result = evaluate_retriever(r, collection, k=k, progress=not as_json, measures=measures)
            result.index_seconds = index_seconds
            results.append(result)
            if run_out:
                write_run(run_out, result.run, tag=retriever)
        qrels = collection.qrels_dict()
        for path in run or []:
            results.append(evaluate_hits(path.name, read_run(path), qrels, measures))
    except QueryMismatchError as exc:
        raise _fail(f"query ids do not match the qrels of split {split!r}: {exc}") from exc
    except (DataError, BundleError, ValueError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from exc
    names = [res.name for res in results]
    if len(set(names)) != len(names):
        raise _fail(f"systems need distinct names, got {names}")
    comparisons = []
    if compare:
        if len(results) < 2:
            raise _fail("--compare needs at least two systems (a retriever and/or --run files)")
        comparisons = paired({res.name: res.per_query for res in results}, measure)
    if per_query:
        per_query.write_text(json.dumps({res.name: res.per_query for res in results}, indent=1))
    if as_json:
        if len(results) == 1 and not compare:
            out: dict = results[0].to_json()
        else:
            out = {"systems": {res.name: res.to_json() for res in results},
                   "comparisons": [{**c.__dict__, "delta": c.delta} for c in comparisons]}
        print(json.dumps(out))
        return
    skipped = collection.report.skipped
    title = f"{data} [{split}] — {collection.report.summary()}" + (f" (skips: {skipped})" if skipped else "")
    rows = {res.name: {**res.metrics, "queries": len(res.per_query)} for res in results}
    console.print(metrics_table(title, rows, [*measures, "queries"]))
    if comparisons:
        console.print(comparison_table(comparisons))


@app.command("eval-rec")
def eval_rec_cmd(
    data: Annotated[Path, typer.Option(help="interactions: folder or file (Parquet, sequential, MovieLens)")],
    model: Annotated[list[str], typer.Option(help="recommender name or bundle (repeatable)")],
    protocol: Annotated[str, typer.Option(help="full | pop100 | uni100")] = "full",
    split: Annotated[str, typer.Option(help="held-out item: test or valid")] = "test",
    seed: Annotated[int, typer.Option(help="seed for sampled negatives")] = 0,
    include_seen: Annotated[bool, typer.Option(help="rank already-seen items too")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Leave-one-out evaluation of recommenders: HR@k, NDCG@k, MRR."""
    from retrec.console import console, metrics_table
    from retrec.data.interactions import leave_one_out, load_interactions, user_sequences
    from retrec.pipelines.evaluate_rec import PROTOCOLS, evaluate_recommender
    from retrec.pipelines.recommenders import build_recommender, vocabulary_of

    if protocol not in PROTOCOLS:
        raise _fail(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    if split not in ("test", "valid"):
        raise _fail(f"split must be 'test' or 'valid', got {split!r}")
    try:
        loo = leave_one_out(user_sequences(load_interactions(data)))
        vocab = vocabulary_of(loo)
        results = {}
        for name in model:
            score = build_recommender(name, loo, vocab, target=split)
            res = evaluate_recommender(score, loo, vocab, protocol=protocol, target=split, seed=seed,
                                       exclude_seen=not include_seen, progress=not as_json)
            results[name] = {**res.metrics, "users": int(res.metrics["users"])}
    except (DataError, BundleError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    if as_json:
        out = {"protocol": protocol, "items": len(vocab), **next(iter(results.values()))} if len(results) == 1 \
            else {"protocol": protocol, "items": len(vocab), "models": results}
        print(json.dumps(out))
        return
    cols = ["HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10", "NDCG@20", "MRR", "users"]
    console.print(metrics_table(f"{data} [{split}, protocol {protocol}, {len(vocab)} items]", results, cols))


@data_app.command("default")
def data_default(out: Annotated[Path, typer.Argument(help="output folder")]) -> None:
    """Write the embedded default dataset (corpus, queries, qrels, interactions) as Parquet."""
    from retrec.data.synthetic import write_default_dataset

    write_default_dataset(out)
    typer.echo(f"wrote {out}")


@data_app.command("convert")
def data_convert(
    source: Annotated[Path, typer.Argument(help="BEIR folder, or an interactions file/folder")],
    out: Annotated[Path, typer.Argument(help="output folder (canonical Parquet)")],
    split: Annotated[list[str] | None, typer.Option(help="qrels splits to convert (repeatable)")] = None,
) -> None:
    """Convert BEIR / sequential / MovieLens data into the canonical Parquet tables."""
    import pyarrow.parquet as pq

    from retrec.data.beir import load_retrieval_data, write_retrieval_data
    from retrec.data.interactions import load_interactions

    try:
        if (source / "corpus.jsonl").is_file():
            splits = split or [p.stem for p in sorted((source / "qrels").glob("*.tsv"))]
            for s in splits:
                d = load_retrieval_data(source, split=s)
                write_retrieval_data(d, out)
                typer.echo(f"{s}: {d.report.summary()}")
        else:
            table = load_interactions(source)
            out.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, out / "interactions.parquet")
            typer.echo(f"interactions: {table.num_rows} rows")
    except DataError as exc:
        raise _fail(str(exc)) from exc


@index_app.command("bm25")
def index_bm25(
    data: Annotated[Path, typer.Option(help="BEIR folder or canonical Parquet folder")],
    out: Annotated[Path, typer.Option(help="bundle folder to write")],
    k1: float = 0.9,
    b: float = 0.4,
) -> None:
    """Build a BM25 index bundle over the collection's title + text."""
    from retrec.data.beir import load_retrieval_data
    from retrec.index.bm25_index import BM25Config, BM25Index

    try:
        collection = load_retrieval_data(data)
    except DataError as exc:
        raise _fail(str(exc)) from exc
    ids, texts = collection.doc_texts()
    BM25Index.build(ids, texts, BM25Config(k1=k1, b=b)).save(out, name=f"{data.name}-bm25")
    typer.echo(f"wrote {out}")


@train_app.command("bert4rec")
def train_bert4rec_cmd(
    data: Annotated[Path, typer.Option(help="interactions: folder or file (Parquet, sequential, MovieLens)")],
    out: Annotated[Path, typer.Option(help="bundle folder to write (checkpoints go to OUT.ckpt/)")],
    max_len: Annotated[int, typer.Option(help="sequence length (paper: Beauty 50, ML-1m 200)")] = 50,
    mask_prob: Annotated[float, typer.Option(help="Cloze mask probability (paper: Beauty 0.6, ML-1m 0.2)")] = 0.2,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 2,
    dropout: float = 0.1,
    loss: Annotated[str, typer.Option(help="ce (Cloze cross-entropy over all items) | sampled")] = "ce",
    negatives: Annotated[int, typer.Option(help="negatives per batch for --loss sampled")] = 256,
    batch_size: int = 128,
    lr: float = 1e-3,
    lr_schedule: Annotated[str, typer.Option(help="constant | cosine | linear (decays over the budget)")] = "constant",
    warmup_steps: Annotated[int, typer.Option(help="linear learning-rate warm-up steps")] = 0,
    epochs: int = 200,
    patience: Annotated[int, typer.Option(help="epochs without validation gain before stopping")] = 8,
    eval_users: Annotated[int, typer.Option(help="at most this many users held out for early stopping")] = 10_000,
    max_minutes: Annotated[float | None, typer.Option(help="training time budget")] = None,
    admit_threshold: Annotated[int, typer.Option(help="occurrences before an item gets a table row")] = 1,
    seed: int = 0,
    resume: Annotated[bool, typer.Option(help="continue from OUT.ckpt/last.pt")] = False,
) -> None:
    """Train BERT4Rec (Cloze) with early stopping on the validation item; writes an ONNX bundle."""
    import shlex

    from retrec.pipelines.train_bert4rec import TrainConfig, train_bert4rec

    if loss not in ("ce", "sampled"):
        raise _fail(f"unknown loss {loss!r}; choose ce or sampled")
    cfg = TrainConfig(max_len=max_len, mask_prob=mask_prob, hidden=hidden, layers=layers, heads=heads,
                      dropout=dropout, loss=loss, negatives=negatives, batch_size=batch_size, lr=lr,
                      lr_schedule=lr_schedule, warmup_steps=warmup_steps, epochs=epochs,
                      patience=patience, eval_users=eval_users, max_minutes=max_minutes,
                      admit_threshold=admit_threshold, seed=seed)
    try:
        bundle = train_bert4rec(data, out, cfg, resume=resume, command=shlex.join(["retrec", *sys.argv[1:]]))
    except (DataError, BundleError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    typer.echo(f"wrote {bundle}")


@train_app.command("dense")
def train_dense_cmd(
    data: Annotated[Path, typer.Option(help="BEIR folder (train qrels; dev qrels used for evaluation when present)")],
    out: Annotated[Path, typer.Option(help="bundle folder to write (checkpoints go to OUT.ckpt/)")],
    max_minutes: Annotated[float | None, typer.Option(help="training time budget (the schedule decays over it)")]
    = 30.0,
    epochs: int = 6,
    batch_size: int = 32,
    lr: float = 3e-5,
    max_query_length: int = 64,
    max_doc_length: int = 256,
    similarity: Annotated[str, typer.Option(help="cosine | dot")] = "cosine",
    sampling: Annotated[str, typer.Option(help="topic (TAS query clusters) | random")] = "topic",
    negatives: Annotated[str, typer.Option(help="balanced (margin bins over BM25+dense) | bm25 (uniform)")]
    = "balanced",
    teacher: Annotated[str, typer.Option(help="ensemble (BM25 + zero-shot dense + labels) | PATH.parquet")]
    = "ensemble",
    distill_weight: Annotated[float, typer.Option(help="weight of the Margin-MSE terms (0: labels only)")] = 0.0,
    seed: int = 0,
    resume: Annotated[bool, typer.Option(help="continue from OUT.ckpt/last.pt")] = False,
    no_quantize: Annotated[bool, typer.Option("--no-int8", help="skip the int8 model")] = False,
) -> None:
    """Train a TAS-Balanced bi-encoder from the packaged MiniLM; writes an ONNX bundle (model/dense)."""
    import shlex

    from retrec.pipelines.train_dense import DenseTrainConfig, train_dense

    try:
        cfg = DenseTrainConfig(max_minutes=max_minutes, epochs=epochs, batch_size=batch_size, lr=lr,
                               max_query_length=max_query_length, max_doc_length=max_doc_length,
                               similarity=similarity, sampling=sampling, negatives=negatives, teacher=teacher,
                               distill_weight=distill_weight, seed=seed, quantize=not no_quantize)
        bundle = train_dense(data, out, cfg, resume=resume, command=shlex.join(["retrec", *sys.argv[1:]]))
    except (DataError, BundleError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    typer.echo(f"wrote {bundle}")


@app.command("serve")
def serve_cmd(
    config: Annotated[Path, typer.Option(help="Ray Serve config YAML (e.g. configs/serve.yaml)")],
    host: Annotated[str | None, typer.Option(help="bind address (default: the file's, else 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port (default: the file's, else 8000)")] = None,
) -> None:
    """Serve search and recommendation over HTTP (Ray Serve) until interrupted."""
    from retrec.serving.launch import load_serve_config, start, stop

    try:
        url = start(load_serve_config(config), host=host, port=port)
    except (BundleError, ValueError, OSError) as exc:
        raise _fail(str(exc)) from exc
    typer.echo(f"serving at {url}  (OpenAPI: {url}/docs; Ctrl-C stops)")
    import signal

    def _interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _interrupt)  # `kill` / k8s stop: shut Serve and Ray down cleanly too
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        stop()


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option(help="where data, bundles and runs are written")] = Path("runs/demo"),
) -> None:
    """Run the whole product end to end on the embedded default dataset (no download)."""
    from retrec.pipelines.demo import run_demo

    run_demo(workdir)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except BrokenPipeError:  # e.g. piped into head
        sys.exit(0)


if __name__ == "__main__":
    main()
