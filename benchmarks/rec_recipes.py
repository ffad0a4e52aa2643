"""Sequential-recommender recipes side by side: each arm trained in its own process, all at once, then tested.

    python benchmarks/rec_recipes.py --data ../shared/data/beauty --out runs/recipes \
        --arm sas-ce-e45=sasrec:loss=ce,epochs=45 --arm b4r-e86=bert4rec:epochs=86

An arm is ``NAME=TRAINER:field=value,...`` over the trainer's config fields (``retrec train sasrec|bert4rec|onerec``'s
options, underscores); ``max_minutes`` and ``max_steps`` are unset unless given, so an arm with ``epochs=N`` runs
up to N epochs (early stopping may end it sooner) with the learning rate decaying over them: on a GPU machine
this replays a CPU run of the same epochs in minutes (the trainers pick a CUDA GPU by themselves), to compare
recipes before paying for them on 2 cores. Each bundle is then evaluated like ``retrec eval-rec`` (full ranking,
test item, seen items excluded). Prints one JSON line per arm (an ``error`` for an arm that failed) and appends
them to ``OUT/results.jsonl``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import multiprocessing as mp
import os
import re
import time
from pathlib import Path
from typing import Any

SHARED = Path(__file__).resolve().parents[2] / "shared/data"


def parse_arm(text: str) -> tuple[str, str, dict[str, Any]]:
    name, _, spec = text.partition("=")
    trainer, _, options = spec.partition(":")
    if trainer not in TRAINERS or not re.fullmatch(r"[A-Za-z0-9][\w.-]*", name):
        raise SystemExit(f"arm {text!r}: NAME={'|'.join(TRAINERS)}:field=value,... (NAME: letters, digits, . _ -)")
    values: dict[str, Any] = {}
    for pair in filter(None, options.split(",")):
        key, _, raw = pair.partition("=")
        values[key] = json.loads(raw) if raw[:1].isdigit() or raw[:1] in "-[{" or raw in ("true", "false",
                                                                                          "null") else raw
    try:  # unknown fields and bad values are refused before anything runs
        config_type(trainer)(**{"max_minutes": None, "max_steps": None, **values})
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"arm {name}: {exc}") from None
    return name, trainer, values


TRAINERS = {  # trainer → (config class, training function), imported in the worker
    "sasrec": ("SASRecTrainConfig", "retrec.pipelines.train.seq.sasrec:train_sasrec"),
    "bert4rec": ("BERT4RecTrainConfig", "retrec.pipelines.train.seq.bert4rec:train_bert4rec"),
    "onerec": ("OneRecTrainConfig", "retrec.pipelines.train.seq.onerec:train_onerec"),
}


def config_type(trainer: str) -> type:
    from retrec.pipelines.train.seq import config

    return getattr(config, TRAINERS[trainer][0])


def train_function(trainer: str) -> Any:
    module, _, function = TRAINERS[trainer][1].partition(":")
    return getattr(importlib.import_module(module), function)


def run_arm(args: tuple[str, str, dict[str, Any], str, str, int]) -> dict[str, Any]:
    """Train one arm, then test its bundle (in the worker: arms finish and report one by one); a failing arm
    reports its error and leaves the others running."""
    try:
        return train_and_test(*args)
    except Exception as exc:  # one arm's failure is its row
        return {"arm": args[0], "error": f"{type(exc).__name__}: {exc}"}


def train_and_test(name: str, trainer: str, values: dict[str, Any], data: str, out: str, threads: int
                   ) -> dict[str, Any]:
    os.environ["RETREC_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)
    cfg = config_type(trainer)(**{"max_minutes": None, "max_steps": None, **values})
    start = time.perf_counter()
    bundle = train_function(trainer)(data, Path(out) / name, cfg, progress=False)
    return test_bundle({"arm": name, "bundle": str(bundle), "wall_s": round(time.perf_counter() - start, 1)}, data)


def test_bundle(row: dict[str, Any], data: str) -> dict[str, Any]:
    from retrec.bundle import load_bundle
    from retrec.data.interactions import leave_one_out, load_interactions, user_sequences
    from retrec.pipelines.eval.rec import evaluate_recommender
    from retrec.pipelines.eval.recommenders import build_recommender, vocabulary_of

    loo = leave_one_out(user_sequences(load_interactions(data)))
    vocab = vocabulary_of(loo)
    res = evaluate_recommender(build_recommender(row["bundle"], loo, vocab), loo, vocab, progress=False)
    m = load_bundle(row["bundle"])
    return {**row, "test_NDCG@10": round(res.metrics["NDCG@10"], 4), "test_HR@10": round(res.metrics["HR@10"], 4),
            "valid_NDCG@10": round(m.metrics["valid_NDCG@10"], 4), "best_epoch": m.metrics["best_epoch"],
            "epochs_run": m.metrics["epochs_run"], "train_min": round(m.metrics["train_seconds"] / 60, 2),
            "config": m.config["train"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED / "beauty")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--arm", action="append", required=True, help="NAME=TRAINER:field=value,...")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per arm")
    parser.add_argument("--results", type=Path, help="JSON lines, appended as arms finish (default OUT/results.jsonl)")
    args = parser.parse_args()
    arms = [parse_arm(a) for a in args.arm]
    if len({name for name, _, _ in arms}) < len(arms):
        raise SystemExit("arm names must be unique (each writes OUT/NAME)")
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.results or args.out / "results.jsonl"
    ctx = mp.get_context("spawn")  # CUDA in the workers
    jobs = [(n, t, v, str(args.data), str(args.out), args.threads) for n, t, v in arms]
    with ctx.Pool(len(arms), maxtasksperchild=1) as pool:
        for row in pool.imap_unordered(run_arm, jobs):
            print(json.dumps(row), flush=True)
            with results.open("a") as fh:
                fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
