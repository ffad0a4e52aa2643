"""Encoder upgrades on SciFact (issue 42, acceptance 1): the old encoder is zero-shot MiniLM; the new ones are the
default `retrec train dense` recipe trained independently, with `--compatible-with OLD` in BT² mode (the default),
and in BCT mode, and the independent model through a query-side map (``map``: `retrec compat fit`, Procrustes, on
the corpus's documents; ``map-affine``: the least-squares affine map). For each, `retrec compat report`'s cells:
old/old, new/old, new/new and rolling re-encodes at 0 / 50 / 100% (compared in the old space).

A model folder that exists is reused; a missing one is trained with the default command (about 30 minutes each
on 2 cores), so a first run takes about an hour and a half.

Example::

    python benchmarks/compat_scifact.py --data ../shared/data/scifact --work runs/compat \\
        --json benchmarks/results/compat_scifact.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

RETREC = str(Path(sys.executable).parent / "retrec")
ARMS = {"independent": [], "bt2": ["--compat-mode", "bt2"], "bct": ["--compat-mode", "bct"]}
MAPS = {"map": "procrustes", "map-affine": "affine"}  # fitted on the independent model's vectors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True, help="where the models are (or are trained)")
    parser.add_argument("--arms", default=",".join([*ARMS, *MAPS]),
                        help="comma-separated: independent, bt2, bct, map, map-affine")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from retrec.models.text_encoder import zero_shot_bundle
    from retrec.pipelines.eval.compat import compat_report

    old = zero_shot_bundle()
    args.work.mkdir(parents=True, exist_ok=True)
    record: dict = {"benchmark": "compat_scifact", "date": _dt.date.today().isoformat(), "command": " ".join(sys.argv),
                    "machine": f"{platform.node()}, {os.cpu_count()} CPUs", "old": str(old), "arms": {}}
    for arm in args.arms.split(","):
        model = args.work / arm
        train_s = None
        if arm in MAPS and not (model / "manifest.json").is_file():
            command = [RETREC, "compat", "fit", "--old", str(old), "--new", str(args.work / "independent"),
                       "--data", str(args.data), "--out", str(model), "--method", MAPS[arm]]
            print("fitting:", " ".join(command), flush=True)
            subprocess.run(command, check=True)
        elif not (model / "manifest.json").is_file():
            compat = ["--compatible-with", str(old), *ARMS[arm]] if arm != "independent" else []
            command = [RETREC, "train", "dense", "--data", str(args.data), "--out", str(model), *compat]
            print("training:", " ".join(command), flush=True)
            started = time.perf_counter()
            subprocess.run(command, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            train_s = round(time.perf_counter() - started, 1)
        cells = compat_report(old, model, args.data, progress=True)
        record["arms"][arm] = {"model": str(model), "train_s": train_s, "cells": cells}
        print(arm, json.dumps(cells), flush=True)
    rows = [f"| {arm} | " + " | ".join(f"{a['cells'][c]['nDCG@10']:.4f}" for c in
                                      ("old/old", "new/old", "new/new", "backfill 50%")) + " |"
            for arm, a in record["arms"].items()]
    print("| new model | old/old | new/old | new/new | backfill 50% |\n|---|---|---|---|---|\n" + "\n".join(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
