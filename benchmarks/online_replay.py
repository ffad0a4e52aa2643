"""Online learning evaluated the Monolith way: quality of the served model against how often it syncs.

1. **Split.** The interactions in time order: with real timestamps (MovieLens) the first 80% by time train the
   batch model and the last 20% are replayed; without them (Beauty in BERT4Rec's form: per-user order only) each
   user's last 20% of items (at least one) are replayed, interleaved across users by their relative position.
2. **Batch model.** SASRec trained on the 80% (``--train-minutes``).
3. **Replay** in ``--shards`` shards through one online trainer (``retrec train online``'s
   :class:`OnlineTrainer`, its users' histories seeded with the 80%); a delta after every shard. Before a shard
   trains, every arm's served model scores it (prequential): next-item NDCG@10 / HR@10 by full ranking over the
   catalogue, for each event whose user has a history. Arms: a follower that applies the deltas after every shard,
   every 5, every 20 (``--syncs``), and never (the batch model frozen) — the trainer is the same, only the
   staleness of what serves differs, as in Monolith's sync-interval experiment.
4. **References**: SASRec retrained on everything (the 80% and the replay; by default for the same epochs as the
   batch model, ``--reference-minutes``), scored on the same shards — an upper reference that has seen the answers;
   and, with ``--reference-at 5,10,15,20``, the fair one: SASRec retrained from scratch on everything *before*
   shard s (the batch model's recipe and epochs), scored on shard s only — what a nightly full retrain would serve
   at that moment. The summary compares it with each arm on the same shards (``... @ reference shards``).

Example::

    python benchmarks/online_replay.py --data ../shared/data/ml-100k --out /tmp/replay-ml --train-minutes 5 \\
        --json benchmarks/results/online_replay_ml100k.json --plot benchmarks/online_replay_ml100k.png
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import math
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger("online_replay")


def split(table: pa.Table, replay: float) -> tuple[pa.Table, list[tuple[str, str, float]]]:
    """``(batch interactions, replayed (user, item, timestamp) in order)``."""
    users = table.column("user_id").to_pylist()
    items = table.column("item_id").to_pylist()
    stamps = np.asarray(table.column("timestamp").to_numpy(), np.float64)
    real_time = stamps.max() > 1e8  # Unix seconds, not positions
    if real_time:
        order = np.argsort(stamps, kind="stable")
        cut = int(len(order) * (1 - replay))
        batch_rows, replay_rows = order[:cut], order[cut:]
        events = [(str(users[r]), str(items[r]), float(stamps[r])) for r in replay_rows]
    else:
        by_user: dict[str, list[int]] = {}
        for r, u in enumerate(users):
            by_user.setdefault(str(u), []).append(r)
        batch_list, tail = [], []
        for rows in by_user.values():
            keep = len(rows) - max(1, math.floor(len(rows) * replay))
            batch_list += rows[:keep]
            tail += [((j + 1) / (len(rows) - keep), r) for j, r in enumerate(rows[keep:])]
        tail.sort()
        batch_rows = np.array(sorted(batch_list))
        events = [(str(users[r]), str(items[r]), float(i)) for i, (_, r) in enumerate(tail)]
    return table.take(pa.array(batch_rows)), events


def score_shard(model: Any, histories: dict[str, list[str]], shard: list[tuple[str, str, float]],
                chunk: int = 256) -> dict[str, float]:
    """NDCG@10 / HR@10 of each event's item ranked by ``model`` over its catalogue given its user's history."""
    cases = [(histories[u][-50:], i) for u, i, _ in shard if histories.get(u)]
    ndcg, hits = [], []
    for start in range(0, len(cases), chunk):
        part = cases[start:start + chunk]
        scores = model.score([h for h, _ in part])
        positions = model.positions([i for _, i in part])
        for row, pos in zip(scores, positions):
            if pos < 0:  # an item the model does not have yet: a miss
                ndcg.append(0.0)
                hits.append(0.0)
                continue
            rank = int((row > row[pos]).sum())
            hits.append(float(rank < 10))
            ndcg.append(1.0 / math.log2(rank + 2) if rank < 10 else 0.0)
    return {"NDCG@10": float(np.mean(ndcg)) if ndcg else 0.0, "HR@10": float(np.mean(hits)) if hits else 0.0,
            "events": len(cases)}


def as_table(events: list[tuple[str, str, float]], schema: pa.Schema) -> pa.Table:
    """Replayed events as interactions after the batch ones (their timestamps keep the replay's order)."""
    return pa.table({"user_id": pa.array([u for u, _, _ in events], pa.string()),
                     "item_id": pa.array([i for _, i, _ in events], pa.string()),
                     "timestamp": pa.array([int(1e12 + t) for _, _, t in events], pa.int64())}).cast(schema)


def weighted(rows: list[dict[str, float]]) -> dict[str, float]:
    """Event-weighted means of a list of per-shard scores."""
    weights = [r["events"] for r in rows]
    return {m: float(np.average([r[m] for r in rows], weights=weights)) for m in ("NDCG@10", "HR@10")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="interactions (Beauty's beauty.txt, ML-100k's u.data)")
    parser.add_argument("--out", type=Path, required=True, help="work folder (new or empty)")
    parser.add_argument("--shards", type=int, default=20)
    parser.add_argument("--syncs", default="1,5,20", help="sync every N shards, comma-separated (never: always)")
    parser.add_argument("--replay", type=float, default=0.2, help="fraction replayed")
    parser.add_argument("--train-minutes", type=float, default=10.0, help="batch SASRec budget (each model)")
    parser.add_argument("--reference-minutes", type=float, default=None,
                        help="the reference's budget (default: the batch budget scaled by its share of the "
                        "interactions: the same epochs)")
    parser.add_argument("--max-events", type=int, default=None, help="replay at most this many events (quick runs)")
    parser.add_argument("--no-reference", action="store_true", help="skip the retrained-on-everything reference")
    parser.add_argument("--reference-at", default="", help="shards (1-based, comma-separated) before which a "
                        "reference is retrained on everything seen so far (the fair reference; see above)")
    parser.add_argument("--reference-epochs", type=int, default=None, help="epochs of each retrained-before-shard "
                        "reference (default: the batch model's epochs_run)")
    parser.add_argument("--batch-bundle", type=Path, default=None, help="reuse a batch model (from an earlier run's "
                        "OUT/sasrec with the same split) instead of training one")
    parser.add_argument("--reference-bundle", type=Path, default=None, help="reuse the reference (OUT/sasrec-all)")
    parser.add_argument("--reuse-retrained", type=Path, default=None, help="with --reference-at: an earlier run's "
                        "OUT whose sasrec-before-N bundles stand in for retraining (same data, split and shards)")
    parser.add_argument("--row-lr", type=float, default=None, help="online: Adagrad rate of the rows")
    parser.add_argument("--dense-lr", type=float, default=None, help="online: Adam rate of the encoder")
    parser.add_argument("--negatives", type=int, default=None, help="online: negatives a step")
    parser.add_argument("--passes", type=int, default=None, help="online: steps on each batch of events")
    parser.add_argument("--adagrad-init", type=float, default=None, help="online: Adagrad accumulators' start")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    from retrec.bundle import read_manifest
    from retrec.data.interactions import load_interactions, user_sequences
    from retrec.events import Event, open_log
    from retrec.pipelines.train.seq.config import SASRecTrainConfig
    from retrec.pipelines.train.seq.online import OnlineConfig, OnlineTrainer
    from retrec.pipelines.train.seq.sasrec import train_sasrec
    from retrec.runtime.online_model import DeltaFollower
    from retrec.runtime.sequence_recommender import SequenceRecommender

    args.out.mkdir(parents=True, exist_ok=True)
    if any(args.out.iterdir()):
        raise SystemExit(f"{args.out} is not empty")
    started = time.perf_counter()
    table = load_interactions(args.data)
    batch, events = split(table, args.replay)
    events = events[: args.max_events] if args.max_events else events
    (args.out / "batch").mkdir()
    pq.write_table(batch, args.out / "batch" / "interactions.parquet")
    cfg = SASRecTrainConfig(max_minutes=args.train_minutes)
    log.info("batch: %d interactions; replay: %d events in %d shards", batch.num_rows, len(events), args.shards)
    bundle = args.batch_bundle or train_sasrec(args.out / "batch", args.out / "sasrec", cfg, progress=False)
    reference = SequenceRecommender.load(args.reference_bundle) if args.reference_bundle else None
    minutes = None
    if not args.no_reference and reference is None:
        everything = pa.concat_tables([batch, as_table(events, batch.schema)])
        (args.out / "all").mkdir()
        pq.write_table(everything, args.out / "all" / "interactions.parquet")
        minutes = args.reference_minutes or args.train_minutes * everything.num_rows / batch.num_rows
        reference = SequenceRecommender.load(train_sasrec(args.out / "all", args.out / "sasrec-all",
                                                          SASRecTrainConfig(max_minutes=minutes), progress=False))
    retrain_at = {int(x) for x in args.reference_at.split(",") if x.strip()}
    ref_epochs = args.reference_epochs or int(read_manifest(bundle).metrics["epochs_run"])
    seqs = user_sequences(batch)
    histories = {u: list(items) for u, items in zip(seqs.users, seqs.items)}
    event_log = open_log(args.out / "events", fsync=False)
    event_log.append([Event(u, i, 1_000_000.0 + n, "view") for n, (u, i, _) in enumerate(events)])
    knobs = {k: v for k, v in (("row_lr", args.row_lr), ("dense_lr", args.dense_lr), ("negatives", args.negatives),
                               ("passes", args.passes), ("adagrad_init", args.adagrad_init)) if v is not None}
    trainer = OnlineTrainer(bundle, event_log, args.out / "online", OnlineConfig(sync_s=1e9, snapshot_s=1e9, **knobs),
                            histories=histories)
    syncs = [int(s) for s in args.syncs.split(",")]
    arms: dict[str, Any] = {f"every {k}": DeltaFollower(args.out / "online", SequenceRecommender.load) for k in syncs}
    frozen = SequenceRecommender.load(bundle)
    size = math.ceil(len(events) / args.shards)
    per_shard: dict[str, list[dict[str, float]]] = {name: [] for name in [*arms, "never", "reference"]}
    fair: dict[str, list[dict[str, float]]] = {name: [] for name in [*arms, "never", "retrained before shard"]}
    exact = {"checked": 0, "identical": 0}  # rows of a follower at the trainer's seq against the trainer's
    for s in range(args.shards):
        shard = events[s * size:(s + 1) * size]
        if not shard:
            break
        for name, follower in arms.items():
            per_shard[name].append(score_shard(follower.model, histories, shard))
        per_shard["never"].append(score_shard(frozen, histories, shard))
        if reference is not None:
            per_shard["reference"].append(score_shard(reference, histories, shard))
        if s + 1 in retrain_at:
            seen = as_table(events[: s * size], batch.schema)
            folder = args.out / f"before-{s + 1}"
            folder.mkdir()
            pq.write_table(pa.concat_tables([batch, seen]), folder / "interactions.parquet")
            earlier = args.reuse_retrained / f"sasrec-before-{s + 1}" if args.reuse_retrained else None
            if earlier is not None and earlier.is_dir():
                log.info("reference before shard %d: reusing %s", s + 1, earlier)
                retrained = SequenceRecommender.load(earlier)
            else:
                log.info("reference before shard %d: %d interactions, %d epochs", s + 1,
                         batch.num_rows + seen.num_rows, ref_epochs)
                retrained = SequenceRecommender.load(train_sasrec(
                    folder, args.out / f"sasrec-before-{s + 1}",
                    SASRecTrainConfig(max_minutes=None, epochs=ref_epochs), progress=False))
            fair["retrained before shard"].append({**score_shard(retrained, histories, shard), "shard": s + 1})
            for name in [*arms, "never"]:
                fair[name].append({**per_shard[name][-1], "shard": s + 1})
        trainer.run(max_events=trainer.events_read + len(shard))  # trains on the shard; a delta at its end
        for k, follower in zip(syncs, arms.values()):
            if (s + 1) % k == 0:
                follower.poll()
                if follower.seq == trainer.seq:  # acceptance 1: the served rows are the trainer's, bit for bit
                    keys, _ = trainer.table.entries()
                    same = (follower.model.table.embed(keys) == trainer.table.embed(keys)).all(axis=1)
                    exact["checked"] += int(same.size)
                    exact["identical"] += int(same.sum())
        for u, i, _ in shard:
            histories.setdefault(u, []).append(i)
        log.info("shard %d/%d: %s", s + 1, args.shards, {n: round(v[-1]["NDCG@10"], 4) for n, v in per_shard.items()
                                                         if v})
    summary = {name: weighted(rows) for name, rows in per_shard.items() if rows}
    summary.update({f"{name} @ reference shards": weighted(rows) for name, rows in fair.items() if rows})
    record = {"benchmark": "online_replay", "date": _dt.date.today().isoformat(), "command": " ".join(sys.argv),
              "machine": f"{platform.node()}, {os.cpu_count()} CPUs", "data": str(args.data),
              "batch_interactions": batch.num_rows, "replayed_events": len(events), "shards": args.shards,
              "train_minutes": args.train_minutes, "reference_minutes": minutes,
              "online": asdict(trainer.cfg), "trainer": trainer.report(),
              "summary": summary, "rows_bit_identical": exact,
              "per_shard": per_shard, "reference_shards": fair, "reference_epochs": ref_epochs,
              "seconds": round(time.perf_counter() - started, 1)}
    print(json.dumps({"summary": summary, "rows_bit_identical": exact, "trainer": trainer.report()}, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=1) + "\n")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        xs = [*syncs, args.shards * 2]
        ys = [summary[f"every {k}"]["NDCG@10"] for k in syncs] + [summary["never"]["NDCG@10"]]
        ax.plot(xs, ys, "o-", label="served model, sync every N shards (last: never)")
        if "reference" in summary:
            ax.axhline(summary["reference"]["NDCG@10"], ls="--", c="gray", label="retrained on everything")
        ax.set_xscale("log")
        ax.set_xlabel("sync interval (shards; rightmost: never)")
        ax.set_ylabel("next-shard NDCG@10")
        ax.set_title(f"online replay: {args.data.name}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)


if __name__ == "__main__":
    main()
