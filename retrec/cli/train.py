"""`retrec train MODEL`: train models into bundles.

The options of each command are generated from its config dataclass (retrec/pipelines/train_config.py):
one ``--option`` per field, with the field's default, help text and choices, so a new field is a new
option without an edit here. ``--data``, ``--out`` and ``--resume`` are the run's, not the model's.

Example::

    retrec train dense --data ../shared/data/scifact --out artifacts/scifact-dense --max-minutes 30
    retrec train multivector --data ../shared/data/scifact --out artifacts/scifact-multivector
    retrec train sparse --data ../shared/data/scifact --out artifacts/scifact-sparse
    retrec train reranker --data ../shared/data/scifact --out artifacts/scifact-reranker
    retrec train bert4rec --data ../shared/data/beauty --out artifacts/bert4rec --mask-prob 0.6 --resume
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from retrec.bundle import BundleError
from retrec.cli.common import _fail, train_app
from retrec.data.errors import DataError
from retrec.pipelines.train.options import choices, field_types
from retrec.pipelines.train.seq.config import BERT4RecTrainConfig, OneRecTrainConfig, SASRecTrainConfig
from retrec.pipelines.train.text.config import (
    DenseTrainConfig,
    MultivectorTrainConfig,
    RerankerTrainConfig,
    SparseTrainConfig,
)

OUT_HELP = "bundle folder to write (checkpoints go to OUT.ckpt/)"


def config_parameters(config_type: type) -> list[inspect.Parameter]:
    """One keyword-only Typer option per field of ``config_type`` (default, help, choices, flag)."""
    types = field_types(config_type)
    params = []
    for f in dataclasses.fields(config_type):
        annotation, allowed = types[f.name], choices(types[f.name])
        decls = [f.metadata["flag"]] if "flag" in f.metadata else []
        option: Any = typer.Option(*decls, help=f.metadata.get("help"),
                                   metavar="[" + "|".join(allowed) + "]" if allowed else None)
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default,
                                        annotation=Annotated[str if allowed else annotation, option]))
    return params


def config_command(config_type: type, train: str, data_help: str, doc: str) -> Callable[..., None]:
    """A ``retrec train`` command: ``--data``, ``--out``, the config's options, ``--resume``.

    ``train`` is the training function as ``"module:function"``, imported only when the command runs.
    """

    def command(**options: Any) -> None:
        module, _, function = train.partition(":")
        run = getattr(importlib.import_module(module), function)  # torch first: a missing [train] extra is named
        from retrec.runtime.tokenizer import ModelFilesError

        data, out, resume = options.pop("data"), options.pop("out"), options.pop("resume")
        try:
            cfg = config_type(**options)
            bundle = run(data, out, cfg, resume=resume, command=shlex.join(["retrec", *sys.argv[1:]]))
        except (DataError, BundleError, ValueError, ModelFilesError) as exc:
            raise _fail(str(exc)) from exc
        typer.echo(f"wrote {bundle}")

    keyword = inspect.Parameter.KEYWORD_ONLY
    params = [
        inspect.Parameter("data", keyword, annotation=Annotated[Path, typer.Option(help=data_help)]),
        inspect.Parameter("out", keyword, annotation=Annotated[Path, typer.Option(help=OUT_HELP)]),
        *config_parameters(config_type),
        inspect.Parameter("resume", keyword, default=False,
                          annotation=Annotated[bool, typer.Option(help="continue from OUT.ckpt/last.pt")]),
    ]
    command.__signature__ = inspect.Signature(params, return_annotation=None)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = doc
    return command


train_app.command("bert4rec")(config_command(
    BERT4RecTrainConfig, "retrec.pipelines.train.seq.bert4rec:train_bert4rec",
    "interactions: folder or file (Parquet, sequential, MovieLens)",
    "Train BERT4Rec (Cloze) with early stopping on the validation item; writes an ONNX bundle."))
train_app.command("sasrec")(config_command(
    SASRecTrainConfig, "retrec.pipelines.train.seq.sasrec:train_sasrec",
    "interactions: folder or file (Parquet, sequential, MovieLens)",
    "Train SASRec (causal, next item at every position) with early stopping on the validation item; writes an ONNX "
    "bundle (model/sasrec)."))
train_app.command("onerec")(config_command(
    OneRecTrainConfig, "retrec.pipelines.train.seq.onerec:train_onerec",
    "interactions: folder or file (Parquet, sequential, MovieLens)",
    "Train OneRec (semantic IDs, encoder–decoder with a sparse-MoE decoder) with early stopping on the validation "
    "item; writes an ONNX bundle (model/onerec) served by beam search."))
train_app.command("dense")(config_command(
    DenseTrainConfig, "retrec.pipelines.train.text.dense:train_dense",
    "BEIR folder (train qrels; dev qrels used for evaluation when present)",
    "Train a TAS-Balanced bi-encoder from the packaged MiniLM or --base-model; writes an ONNX bundle (model/dense)."))
train_app.command("multivector")(config_command(
    MultivectorTrainConfig, "retrec.pipelines.train.text.multivector:train_multivector",
    "BEIR folder (train qrels; dev qrels used for evaluation when present)",
    "Train a ColBERT-style token encoder (MaxSim) from the packaged MiniLM or --base-model; writes an ONNX bundle "
    "(model/multivector) for `retrec index muvera|maxsim`."))
train_app.command("sparse")(config_command(
    SparseTrainConfig, "retrec.pipelines.train.text.sparse:train_sparse",
    "BEIR folder (train qrels; dev qrels used for evaluation when present)",
    "Train a SPLADE learned sparse encoder (siamese or inference-free) from the packaged MiniLM or --base-model; "
    "writes an ONNX bundle (model/sparse) for `retrec index sparse`."))
train_app.command("reranker")(config_command(
    RerankerTrainConfig, "retrec.pipelines.train.text.reranker:train_reranker",
    "BEIR folder (train qrels; dev qrels used for evaluation when present)",
    "Train a cross-encoder re-ranker from the packaged MiniLM or --base-model; writes an ONNX bundle "
    "(model/reranker) for `retrec eval --rerank` and `retrec train dense --teacher`."))


def _count_command(model: str, doc: str) -> None:
    def command(
        data: Annotated[Path, typer.Option(help="interactions: folder or file (Parquet, sequential, MovieLens)")],
        out: Annotated[Path, typer.Option(help="bundle folder to write")],
    ) -> None:
        from retrec.pipelines.train.seq.fusion import train_counts

        try:
            bundle = train_counts(model, data, out, command=shlex.join(["retrec", *sys.argv[1:]]))
        except (DataError, BundleError, ValueError, FileExistsError) as exc:
            raise _fail(str(exc)) from exc
        typer.echo(f"wrote {bundle}")

    command.__doc__ = doc
    train_app.command(model)(command)


_count_command("markov", "Fit the first-order Markov baseline on every history but each user's test item; writes "
                         "model/markov.")
_count_command("markov-decay", "Fit the Markov model that also hears the earlier items of the history (weights "
                               "decay^age, the decay chosen on the validation item); writes model/markov-decay.")
_count_command("cooc", "Fit the item co-occurrence baseline (cosine, recency-weighted over the history) on every "
                       "history but each user's test item; writes model/cooc.")


@train_app.command("fusion")
def train_fusion(
    data: Annotated[Path, typer.Option(help="the interactions the components were trained on")],
    out: Annotated[Path, typer.Option(help="bundle folder to write")],
    component: Annotated[list[str], typer.Option(help="a recommender bundle folder, or markov / markov-decay / "
                                                      "cooc (fitted here); two or more")],
    grid_step: Annotated[float, typer.Option(help="step of the weight grid over the simplex")] = 0.05,
) -> None:
    """Combine recommenders (weights chosen on the validation item, full-ranking NDCG@10); writes model/rec-fusion."""
    from retrec.pipelines.train.seq.fusion import train_fusion as run

    try:
        bundle = run(data, out, component, grid_step=grid_step, command=shlex.join(["retrec", *sys.argv[1:]]))
    except (DataError, BundleError, ValueError, FileExistsError) as exc:
        raise _fail(str(exc)) from exc
    typer.echo(f"wrote {bundle}")
