"""Steps per minute of ``retrec train dense`` before and after the step-cost changes, in one run (issue 13).

    python benchmarks/dense_speed.py --data ../shared/data/scifact --out runs/dense-speed --steps 10 \\
        [--rounds 2] [--json runs/dense-speed/results.json]
    python benchmarks/dense_speed.py --mode commands --arms before after --rounds 2 --steps 15   # ABAB, whole commands

Arms, each the real command with ``--max-steps`` and everything else at its default:

- ``before``  ``--precision fp32 --doc-chunk 0 --no-grad-checkpoint --release-freed-memory``: fp32, every
              document of a batch in one padded pass, activations kept, glibc's malloc defaults (the recipe
              before issue 13);
- ``after``   the defaults: bf16 autocast where the CPU runs it natively, documents in length-grouped passes,
              activations recomputed in the backward pass (gradient checkpointing: bounded memory), freed memory
              kept for the next step up to the memory ceiling;
- ``after-no-checkpoint``  the defaults with ``--no-grad-checkpoint`` (what the memory bound costs).
- ``after-release``  the defaults with ``--release-freed-memory`` (glibc's defaults: each step faults its
              activations in again);
- ``after-no-ceiling``  the defaults with ``--memory-ceiling-gb 0`` (freed memory kept, however large the heap).
- ``after-chunk8``  the defaults with ``--doc-chunk 8`` (documents in passes of 8: smaller blocks).

Two measurements. ``--mode interleaved`` (default): one process builds the training set, miners and teacher
once, then runs the arms' real training steps (``DenseAdapter.step``, backward, clipping, AdamW) in turn on the
same batches — ``before, after, after-no-checkpoint, before, …`` — so every arm sees the same host speed (this
host's speed drifts by tens of percent within minutes; arms run minutes apart are not comparable). Steps per
minute are the median step time's. ``--mode commands``: each arm is the whole command with ``--max-steps`` in
turn, each in a fresh process; steps per minute from its training curve (dev evaluation excluded), its first dev
evaluation timed, and the process's peak RSS, minor page faults and kernel CPU seconds. A
step is ``batch_size`` queries and twice as many documents; tokens/s counts the mean truncated token length of
the training queries and of the corpus documents per example (an estimate: the padding a batch adds is not
counted, so it is the useful tokens a second).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ARMS: dict[str, dict[str, Any]] = {"before": {"precision": "fp32", "doc_chunk": 0, "grad_checkpoint": False,
                                              "keep_freed_memory": False},
                                   "after": {}, "after-no-checkpoint": {"grad_checkpoint": False},
                                   "after-release": {"keep_freed_memory": False},
                                   "after-no-ceiling": {"memory_ceiling_gb": 0.0},
                                   "after-chunk8": {"doc_chunk": 8}}
PER_PROCESS = {"after-release", "after-no-ceiling"}  # malloc settings: only whole commands (--mode commands)


def run_arm(data: Path, out: Path, steps: int, overrides: dict[str, Any]) -> dict[str, Any]:
    from retrec.pipelines.train.text.dense import DenseTrainConfig, train_dense

    cfg = DenseTrainConfig(max_steps=steps, max_minutes=None, quantize=False, **overrides)
    started = time.perf_counter()
    train_dense(data, out, cfg, progress=False)
    curve = json.loads((out / "training_curve.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    steps_pts = [c for c in curve if "loss" in c]
    evals = [c for c in curve if c.get("dev_nDCG@10") is not None]
    span = steps_pts[-1]["seconds"] - steps_pts[0]["seconds"]
    per_step = span / max(1, len(steps_pts) - 1)
    return {"steps": len(steps_pts), "steps_per_min": round(60 / per_step, 2),
            "examples_per_s": round(3 * cfg.batch_size / per_step, 2), "seconds_per_step": round(per_step, 2),
            "dev_eval_start_s": evals[0]["seconds"] if evals else None,
            "precision": manifest["config"]["train_precision"], "wall_s": round(time.perf_counter() - started, 1)}


def interleaved(data: Path, steps: int) -> list[dict[str, Any]]:
    """Median seconds of each arm's training step, the arms alternating step by step on the same batches."""
    import torch

    from retrec.data.beir import load_retrieval_data
    from retrec.models.text_encoder import resolve_base_model
    from retrec.pipelines.train.text.contrastive import build_teacher
    from retrec.pipelines.train.text.data import build_miners, prepare
    from retrec.pipelines.train.text.dense import DenseAdapter, DenseTrainConfig
    from retrec.pipelines.train.text.tas_sampling import topic_clusters

    cfg = DenseTrainConfig()
    ts = prepare(load_retrieval_data(data, split="train"), None, cfg)
    miners, qvec, _ = build_miners(ts, cfg, progress=False)
    teacher = build_teacher(cfg, miners, ts)
    labels = topic_clusters(qvec, max(1, round(len(ts.query_ids) / (4 * cfg.batch_size))), cfg.seed)
    base = resolve_base_model(None)
    adapters = {arm: DenseAdapter(ts, DenseTrainConfig(**o), miners, teacher, labels, base, arm)
                for arm, o in ARMS.items() if arm not in PER_PROCESS}
    batches = next(iter(adapters.values())).batches(1)[: steps + 1]
    times: dict[str, list[float]] = {arm: [] for arm in adapters}
    for i, batch in enumerate(batches):
        for arm, adapter in adapters.items():
            started = time.perf_counter()
            adapter.optimizer.zero_grad(set_to_none=True)
            loss, _ = adapter.step(batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(adapter.model.parameters(), 1.0)
            adapter.optimizer.step()
            if i:  # the first step of each arm warms up
                times[arm].append(time.perf_counter() - started)
    out = []
    for arm, adapter in adapters.items():
        per_step = statistics.median(times[arm])
        out.append({"arm": arm, "steps": len(times[arm]), "steps_per_min": round(60 / per_step, 2),
                    "examples_per_s": round(3 * cfg.batch_size / per_step, 2), "seconds_per_step": round(per_step, 2),
                    "precision": adapter.precision})
    return out


def arm_process(args: argparse.Namespace, arm: str, out: Path) -> dict[str, Any]:
    """One arm as the whole command in a fresh process (malloc state does not carry over between arms), with that
    process's peak RSS, page faults and kernel CPU time."""
    child = subprocess.Popen([sys.executable, __file__, "--child", arm, "--data", str(args.data), "--out", str(out),
                              "--steps", str(args.steps)], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    text = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    if status:
        raise SystemExit(f"arm {arm} failed (status {status})")
    return {**json.loads(text.strip().splitlines()[-1]), "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2),
            "minor_faults": usage.ru_minflt, "system_cpu_s": round(usage.ru_stime, 1)}


def mean_tokens(data: Path) -> tuple[float, float]:
    """Mean token count of the training queries and the corpus documents, truncated as training truncates."""
    from retrec.data.beir import load_retrieval_data
    from retrec.pipelines.train.text.dense import DenseTrainConfig
    from retrec.runtime.tokenizer import load_tokenizer

    cfg, train, tok = DenseTrainConfig(), load_retrieval_data(data, split="train"), load_tokenizer()
    _, docs = train.doc_texts(with_title=True)
    queries = list(train.query_texts().values())
    return (sum(map(len, tok.encode(queries, cfg.max_query_length))) / len(queries),
            sum(map(len, tok.encode(docs, cfg.max_doc_length))) / len(docs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/scifact"))
    parser.add_argument("--out", type=Path, default=Path("runs/dense-speed"))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=1, help="--mode commands: passes over the arms")
    parser.add_argument("--mode", choices=["interleaved", "commands"], default="interleaved")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS),
                        help="--mode commands: the arms run in each round, in this order")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", metavar="ARM", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_arm(args.data, args.out, args.steps, ARMS[args.child])))
        return
    from retrec.process_env import configure_process

    threads = configure_process()
    q_tokens, d_tokens = mean_tokens(args.data)
    rows: list[dict[str, Any]] = []
    if args.mode == "interleaved":
        rows = interleaved(args.data, args.steps)
    else:
        for r in range(args.rounds):
            for arm in args.arms:
                rows.append({"arm": arm, "round": r, **arm_process(args, arm, args.out / f"{arm}-{r}")})
                print(json.dumps(rows[-1]), flush=True)
    for row in rows:
        row["tokens_per_s"] = round(row["examples_per_s"] * (q_tokens + 2 * d_tokens) / 3, 1)
    summary = {arm: statistics.mean(x["steps_per_min"] for x in rows if x["arm"] == arm)
               for arm in ARMS if any(x["arm"] == arm for x in rows)}
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.node(),
              "mode": args.mode,
              "cpus": os.cpu_count(), "threads": threads, "mean_tokens": [round(q_tokens, 1), round(d_tokens, 1)],
              "rows": rows, "steps_per_min": summary,
              "speedup": round(summary["after"] / summary["before"], 2) if {"after", "before"} <= set(summary)
              else None}
    print(json.dumps({"steps_per_min": summary, "speedup": result["speedup"]}))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
