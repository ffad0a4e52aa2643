"""`retrec train NAME`: train models into bundles, one command per trainable kind of the registry.

The commands come from the registry of kinds (:mod:`retrec.kinds`), read when ``retrec train`` lists or runs its
commands (:class:`RegistryGroup`): each kind that names a ``train`` function and its
``train_config`` dataclass gets ``retrec train NAME`` (``Kind.command_name``), its options generated from the
config's fields (retrec/pipelines/train/options.py): one ``--option`` per field, with the field's default, help
text and choices, so a new field is a new option and a new kind (built in or a plugin's, ``$RETREC_PLUGINS``) a
new command without an edit here. ``--data``, ``--out`` and ``--resume`` are the run's, not the model's. Every
trainer takes ``--device`` and ``--precision`` and records them in its bundle.

Example::

    retrec train dense --data ../shared/data/scifact --out artifacts/scifact-dense --max-minutes 30
    retrec train sparse --data ../shared/data/scifact --out artifacts/scifact-sparse --device cuda
    retrec train bert4rec --data ../shared/data/beauty --out artifacts/bert4rec --mask-prob 0.6 --resume
    retrec train fusion --data ../shared/data/beauty --out artifacts/fusion --component artifacts/sasrec \
        --component markov-decay
    RETREC_PLUGINS=tests.toy_kinds retrec train toy --data DATA --out artifacts/toy   # a plugin's kind
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from retrec import kinds
from retrec.bundle import BundleError
from retrec.cli.bundles import wrote
from retrec.cli.common import JSON_HELP, _fail, app
from retrec.data.errors import DataError
from retrec.pipelines.train.options import choices, field_types
from retrec.pipelines.train.tracking import observe_curve, open_tracker


class RegistryGroup(TyperGroup):
    """``retrec train``: a command per trainable kind, read from the registry whenever the group lists or finds its
    commands, so that a kind registered after this module was imported (a plugin imported by a notebook or a test)
    still gets its command."""

    def _sync(self) -> None:
        for command in missing_commands(set(self.commands)):
            self.add_command(command)

    def list_commands(self, ctx: typer.Context) -> list[str]:
        self._sync()
        return super().list_commands(ctx)

    def get_command(self, ctx: typer.Context, cmd_name: str) -> Any:
        self._sync()
        return super().get_command(ctx, cmd_name)


train_app = typer.Typer(cls=RegistryGroup, no_args_is_help=True, help="Train models into bundles.")
app.add_typer(train_app, name="train")
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
        default = None if f.default is dataclasses.MISSING else f.default  # a list field: its factory's, below
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                        annotation=Annotated[str if allowed else annotation, option]))
    return params


def _config(config_type: type, options: dict[str, Any]) -> Any:
    """The config from the command's options (a list field left out gets its default factory's value)."""
    for f in dataclasses.fields(config_type):
        if options.get(f.name) is None and f.default is dataclasses.MISSING and f.default_factory is not None:
            options[f.name] = f.default_factory()  # type: ignore[misc]
    return config_type(**options)


def _help(config_type: type, kind: kinds.Kind) -> str:
    """The first paragraph of the config's docstring, ``{kind}`` and ``{description}`` filled in."""
    doc = (inspect.getdoc(config_type) or "").split("\n\n")[0].replace("\n", " ")
    return doc.replace("{kind}", kind.kind).replace("{description}", kind.description)


def kind_command(kind: kinds.Kind) -> Callable[..., None]:
    """The ``retrec train`` command of a trainable kind: ``--data``, ``--out``, the config's options, ``--resume``.

    The trainer is imported only when the command runs (torch first: a missing [train] extra is named); the config
    class now, for the options (config modules import no torch).
    """
    assert kind.train is not None and kind.train_config is not None
    config_type = kinds.resolve(kind.train_config)

    def command(**options: Any) -> None:
        run = kinds.resolve(kind.train)  # type: ignore[arg-type]
        from retrec.runtime.tokenizer import ModelFilesError

        # its stages (mining negatives, teacher scores, epochs, dev evaluations) on stderr, so a non-interactive
        # log shows progress from the first minute (a terminal also gets the bars)
        logging.getLogger("retrec.train").setLevel(logging.INFO)
        data, out, resume = options.pop("data"), options.pop("out"), options.pop("resume")
        as_json, track, experiment = options.pop("as_json"), options.pop("track"), options.pop("experiment")
        command_line = shlex.join(["retrec", *sys.argv[1:]])
        try:
            cfg = _config(config_type, options)
            with open_tracker(track, experiment) as tracker, \
                    observe_curve(tracker.point if tracker else lambda point: None):
                if tracker is not None:
                    tracker.start(kind.kind, cfg, command_line)
                bundle = kinds.call_supported(run, data, out, cfg, resume=resume, kind=kind.kind,
                                              command=command_line)
                if tracker is not None:
                    tracker.finish(bundle)
        except (DataError, BundleError, ValueError, ModelFilesError, FileExistsError) as exc:
            raise _fail(str(exc)) from exc
        wrote(Path(bundle), as_json)

    keyword = inspect.Parameter.KEYWORD_ONLY
    data_help = getattr(config_type, "data_help", "training data: a folder or file")
    params = [
        inspect.Parameter("data", keyword, annotation=Annotated[Path, typer.Option(help=data_help)]),
        inspect.Parameter("out", keyword, annotation=Annotated[Path, typer.Option(help=OUT_HELP)]),
        *config_parameters(config_type),
        inspect.Parameter("resume", keyword, default=False,
                          annotation=Annotated[bool, typer.Option(help="continue from OUT.ckpt/last.pt")]),
        inspect.Parameter("track", keyword, default=None, annotation=Annotated[str | None, typer.Option(
            help="log the run (config, curve, final metrics, bundle) to an experiment tracker: mlflow "
                 "($MLFLOW_TRACKING_URI, else ./mlruns; the `track` extra)", metavar="[mlflow]")]),
        inspect.Parameter("experiment", keyword, default="retrec", annotation=Annotated[str, typer.Option(
            help="with --track: the experiment's name")]),
        inspect.Parameter("as_json", keyword, default=False,
                          annotation=Annotated[bool, typer.Option("--json", help=JSON_HELP)]),
    ]
    command.__signature__ = inspect.Signature(params, return_annotation=None)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = _help(config_type, kind)
    return command


def missing_commands(known: set[str]) -> list[Any]:
    """The ``retrec train`` commands of the trainable kinds in the registry whose names are not in ``known`` (in
    registration order): what :class:`RegistryGroup` adds when it lists or finds a command."""
    out = []
    for kind in kinds.registry().values():
        name = kind.command_name
        if name is not None and name not in known:
            single = typer.Typer()
            single.command(name)(kind_command(kind))
            out.append(typer.main.get_command(single))
            known.add(name)
    return out


@train_app.command("online")
def train_online(
    model: Annotated[Path, typer.Option(help="a trained model/sasrec or model/bert4rec bundle to continue")],
    events: Annotated[str, typer.Option(help="the event log: a folder, or redis://HOST:PORT/DB?key=NAME")],
    out: Annotated[Path, typer.Option(help="the online model folder (current, snapshots/, deltas/); an existing "
                                           "one is continued from its committed offset")],
    sync_s: Annotated[float, typer.Option(min=0.001, help="seconds between deltas")] = 10.0,
    snapshot_s: Annotated[float, typer.Option(min=0.001, help="seconds between full versions")] = 3600.0,
    batch_events: Annotated[int, typer.Option(min=1, help="events a training step reads")] = 256,
    negatives: Annotated[int, typer.Option(min=1, help="uniform negatives a step shares")] = 256,
    passes: Annotated[int, typer.Option(min=1, help="training steps on each batch of events")] = 1,
    row_lr: Annotated[float, typer.Option(min=0.0, help="Adagrad rate of the item rows")] = 0.0025,
    adagrad_init: Annotated[float, typer.Option(min=0.0, help="Adagrad accumulators' start (Beauty's best: 0.1 "
                                                              "with --row-lr 0.1; RESULTS)")] = 0.0,
    dense_lr: Annotated[float, typer.Option(min=0.0, help="Adam rate of the user encoder")] = 1e-4,
    admit_threshold: Annotated[int, typer.Option(min=1, help="sightings before a new item gets a row")] = 1,
    max_touched: Annotated[int, typer.Option(min=1, help="keys a delta may carry (the rest dropped, counted)")
                           ] = 1_000_000,
    keep_snapshots: Annotated[int, typer.Option(min=1, help="snapshots kept with their deltas (older ones go)")
                              ] = 2,
    consumer: Annotated[str, typer.Option(help="the consumer name its offsets are committed under")] =
    "online-trainer",
    histories: Annotated[Path | None, typer.Option(help="interactions whose per-user sequences seed the users' "
                                                        "histories on a first start (e.g. the training data)")] = None,
    max_events: Annotated[int | None, typer.Option(min=1, help="stop after this many events")] = None,
    until_idle: Annotated[bool, typer.Option("--until-idle", help="stop at the end of the log")] = False,
) -> None:
    """Train a sequence recommender on the event log as events arrive, publishing row deltas every --sync-s seconds
    and full versions every --snapshot-s into OUT, which `retrec serve` follows (recommenders: {X: {bundle: OUT,
    online: true}}). SIGTERM or Ctrl-C: a last delta, then exit."""
    import json
    import signal
    import threading

    from retrec.events import open_log
    from retrec.pipelines.train.seq.online import OnlineConfig, OnlineTrainer

    logging.getLogger("retrec.train").setLevel(logging.INFO)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        cfg = OnlineConfig(sync_s=sync_s, snapshot_s=snapshot_s, batch_events=batch_events, negatives=negatives,
                           passes=passes, row_lr=row_lr, adagrad_init=adagrad_init, dense_lr=dense_lr,
                           admit_threshold=admit_threshold, max_touched=max_touched, keep_snapshots=keep_snapshots,
                           consumer=consumer)
        seeds = None
        if histories is not None:
            from retrec.data.interactions import load_interactions, user_sequences

            seqs = user_sequences(load_interactions(histories))
            seeds = dict(zip(seqs.users, seqs.items))
        trainer = OnlineTrainer(model, open_log(events), out, cfg, histories=seeds)
        trainer.run(max_events=max_events, stop_when_idle=until_idle, should_stop=stop.is_set)
    except (BundleError, DataError, ValueError, OSError, ConnectionError) as exc:
        raise _fail(str(exc)) from exc
    typer.echo(json.dumps(trainer.report()))
