"""BERT4Rec bundles vs baselines on a leave-one-out dataset, side by side in one run.

    python benchmarks/bert4rec_beauty.py --bundle runs/bert4rec-ce --bundle runs/bert4rec-sampled \
        [--data ../shared/data/beauty]

For every model (popularity, markov, each bundle): full ranking over all items and the
popularity-sampled-100 protocol, test item, seen items excluded. For each bundle with its
``<bundle>.ckpt/best.safetensors`` beside it: ONNX-vs-torch parity (identical top-10 on 1,000 users).
Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from retrec.process_env import configure_process


def parity(bundle: Path, data: Path, users: int = 1000) -> float | None:
    import torch
    from safetensors.torch import load_file

    from retrec.bundle import load_bundle
    from retrec.data.interactions import load_interactions, user_sequences
    from retrec.models.bert4rec import BERT4Rec, BERT4RecConfig
    from retrec.pipelines.train_bert4rec import onnx_parity, prepare
    from retrec.tables import EmbeddingTable

    weights = bundle.with_name(bundle.name + ".ckpt") / "best.safetensors"
    if not weights.is_file():
        return None
    manifest = load_bundle(bundle)
    model = BERT4Rec(BERT4RecConfig(**manifest.config["model"]))
    model.load_state_dict(load_file(str(weights)))
    model.eval()
    train_cfg = manifest.config["train"]
    seqs = user_sequences(load_interactions(data))
    prep = prepare(seqs, EmbeddingTable(model.cfg.hidden + 1, admit_threshold=train_cfg["admit_threshold"],
                                        seed=train_cfg["seed"], initial_capacity=2 * model.cfg.num_items))
    # test-time histories: everything before the test item
    histories = [np.append(h, t) for h, t in zip(prep.valid_history[:users], prep.valid_target[:users])]
    with torch.no_grad():
        return onnx_parity(model, bundle, prep.item_keys, histories)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/beauty")
    parser.add_argument("--bundle", type=Path, action="append", default=[])
    args = parser.parse_args()
    configure_process()
    from retrec.bundle import load_bundle
    from retrec.console import console, metrics_table
    from retrec.data.interactions import leave_one_out, load_interactions, user_sequences
    from retrec.pipelines.evaluate_rec import evaluate_recommender
    from retrec.pipelines.recommenders import build_recommender, vocabulary_of

    loo = leave_one_out(user_sequences(load_interactions(args.data)))
    vocab = vocabulary_of(loo)
    rows: dict[str, dict[str, float]] = {}
    for name in ["popularity", "markov", *map(str, args.bundle)]:
        score = build_recommender(name, loo, vocab)
        for protocol in ("full", "pop100"):
            res = evaluate_recommender(score, loo, vocab, protocol=protocol, progress=False)
            rows.setdefault(Path(name).name, {}).update(
                {f"{protocol} {m}": res.metrics[m] for m in ("HR@10", "NDCG@10")} | {"users": res.metrics["users"]})
    for bundle in args.bundle:
        m = load_bundle(bundle).metrics
        rows[bundle.name].update({"train min": m.get("train_seconds", 0) / 60, "epochs": m.get("epochs_run", 0),
                                  "onnx top10 parity": parity(bundle, args.data) or float("nan")})
    cols = ["full HR@10", "full NDCG@10", "pop100 HR@10", "pop100 NDCG@10", "users", "train min", "epochs",
            "onnx top10 parity"]
    console.print(metrics_table(f"{args.data} — leave-one-out test, {len(vocab)} items", rows, cols))
    print(json.dumps({"data": str(args.data), "items": len(vocab), "results": rows}))


if __name__ == "__main__":
    main()
