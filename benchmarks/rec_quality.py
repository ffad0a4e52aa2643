"""Recommenders side by side on a leave-one-out dataset, in one run: popularity, markov and any bundles.

    python benchmarks/rec_quality.py --data ../shared/data/beauty --bundle runs/b4r --bundle runs/sas \
        --bundle runs/sas+markov-decay
    python benchmarks/rec_quality.py --data ../shared/data/ml-100k --train runs/rq-ml100k

``--train DIR`` first runs the default commands, each alone, timed, into DIR: ``retrec train bert4rec``,
``retrec train sasrec`` and ``retrec train fusion --component DIR/sasrec --component markov-decay`` (no other option:
what a user gets by default), then evaluates them. For every model: full ranking over all items and the
popularity-sampled-100 protocol, test item, seen items excluded. For each sequence bundle with its
``<bundle>.ckpt/best.safetensors`` beside it: ONNX-vs-torch parity (identical top-10 on 1,000 users); a OneRec
bundle's is the one its trainer measured (the same top-10 list, beam search through ONNX Runtime and torch).
``full eval s``: the wall time of the full-ranking evaluation over every test user. ``--protocol full`` skips
pop100 (a generative model's list is generated again for it).
Prints a table and one JSON line. (Before issue 18 this script was benchmarks/bert4rec_beauty.py.)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from retrec.process_env import configure_process

SHARED = Path(__file__).resolve().parents[2] / "shared/data"


def parity(bundle: Path, data: Path, users: int = 1000) -> float | None:
    import torch
    from safetensors.torch import load_file

    from retrec.bundle import load_bundle
    from retrec.data.interactions import load_interactions, user_sequences
    from retrec.models.bert4rec import BERT4Rec, BERT4RecConfig
    from retrec.models.sasrec import SASRec
    from retrec.pipelines.train.seq.data import prepare
    from retrec.pipelines.train.seq.item_softmax import onnx_parity
    from retrec.tables import EmbeddingTable

    weights = bundle.with_name(bundle.name + ".ckpt") / "best.safetensors"
    manifest = load_bundle(bundle)
    if not weights.is_file() or manifest.kind not in ("model/bert4rec", "model/sasrec"):
        return None
    model = (SASRec if manifest.kind == "model/sasrec" else BERT4Rec)(BERT4RecConfig(**manifest.config["model"]))
    model.load_state_dict(load_file(str(weights)))
    model.eval()
    train_cfg = manifest.config["train"]
    seqs = user_sequences(load_interactions(data))
    prep = prepare(seqs, EmbeddingTable(model.cfg.hidden + 1, admit_threshold=train_cfg["admit_threshold"],
                                        seed=train_cfg["seed"], initial_capacity=2 * model.cfg.num_items),
                   train_cfg["eval_users"], train_cfg["valid_fraction"], train_cfg["seed"])
    # test-time histories: everything before the test item
    histories = [np.append(h, t) for h, t in zip(prep.valid_history[:users], prep.valid_target[:users])]
    with torch.no_grad():
        return onnx_parity(model, bundle, prep.item_keys, histories)


def train_defaults(data: Path, out: Path) -> tuple[list[Path], dict[str, float]]:
    """The default training commands, one after another (each alone on the machine); wall minutes of each."""
    retrec = [sys.executable, "-c", "from retrec.cli import app; app()"]
    commands = {
        "bert4rec": ["train", "bert4rec", "--data", str(data), "--out", str(out / "bert4rec")],
        "sasrec": ["train", "sasrec", "--data", str(data), "--out", str(out / "sasrec")],
        "sasrec+markov-decay": ["train", "fusion", "--data", str(data), "--component", str(out / "sasrec"),
                                "--component", "markov-decay", "--out", str(out / "sasrec+markov-decay")],
    }
    minutes = {}
    for name, args in commands.items():
        start = time.perf_counter()
        print("$ retrec " + " ".join(args), flush=True)
        subprocess.run([*retrec, *args], check=True)
        minutes[name] = (time.perf_counter() - start) / 60
    return [out / name for name in commands], minutes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED / "beauty")
    parser.add_argument("--bundle", type=Path, action="append", default=[])
    parser.add_argument("--train", type=Path, help="train the default models into this folder first")
    parser.add_argument("--protocol", choices=("full", "pop100"), action="append",
                        help="evaluation protocols (default: both)")
    args = parser.parse_args()
    configure_process()
    from retrec.bundle import load_bundle
    from retrec.console import console, metrics_table
    from retrec.data.interactions import leave_one_out, load_interactions, user_sequences
    from retrec.pipelines.eval.rec import evaluate_recommender
    from retrec.pipelines.eval.recommenders import build_recommender, vocabulary_of

    bundles, wall = list(args.bundle), {}
    if args.train:
        trained, wall = train_defaults(args.data, args.train)
        bundles += trained
    loo = leave_one_out(user_sequences(load_interactions(args.data)))
    vocab = vocabulary_of(loo)
    rows: dict[str, dict[str, float]] = {}
    for name in ["popularity", "markov", "markov-decay", "cooc", *map(str, bundles)]:
        score = build_recommender(name, loo, vocab)
        start = time.perf_counter()
        for protocol in args.protocol or ("full", "pop100"):
            res = evaluate_recommender(score, loo, vocab, protocol=protocol, progress=False)
            rows.setdefault(Path(name).name, {}).update(
                {f"{protocol} {m}": res.metrics[m] for m in ("HR@10", "NDCG@10")} | {"users": res.metrics["users"]})
            if protocol == "full":
                rows[Path(name).name]["full eval s"] = time.perf_counter() - start
        rows[Path(name).name]["eval s"] = time.perf_counter() - start
    for bundle in bundles:
        m = load_bundle(bundle)
        row = rows[bundle.name]
        same = m.metrics.get("onnx_top10_identical") if m.kind == "model/onerec" else parity(bundle, args.data)
        row.update({"train min": m.metrics.get("train_seconds", float("nan")) / 60,
                    "epochs": m.metrics.get("epochs_run", float("nan")),
                    "onnx top10 parity": float("nan") if same is None else same})
        if bundle.name in wall:
            row["wall min"] = wall[bundle.name]
        if m.kind == "model/rec-fusion":
            row.update({f"w {c['name']}": c["weight"] for c in m.config["components"]})
    cols = ["full HR@10", "full NDCG@10", "pop100 HR@10", "pop100 NDCG@10", "users", "train min", "wall min",
            "epochs", "onnx top10 parity", "full eval s", "eval s"]
    console.print(metrics_table(f"{args.data} — leave-one-out test, {len(vocab)} items", rows, cols))
    print(json.dumps({"data": str(args.data), "items": len(vocab), "results": rows}))


if __name__ == "__main__":
    main()
