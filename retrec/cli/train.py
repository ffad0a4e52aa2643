"""`retrec train MODEL`: train models into bundles."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from retrec.bundle import BundleError
from retrec.cli.common import _fail, train_app
from retrec.data.errors import DataError


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
