"""Freshness under load: events posted at a steady rate while recommendations are served, the online trainer
between them; how long until an event's effect is servable, and what the replay costs the recommendations.

Processes, all real: ``retrec serve`` (one application: a ``sasrec`` recommender following the online folder,
``events.log`` set, on 127.0.0.1), ``retrec train online`` (``--sync-s``) on the same log and folder, and this
script's clients:

- a producer posting ``--rate`` events/s to ``/v1/events`` in batches every 0.1 s (users and items drawn from
  the model's catalogue, one item in 50 new), recording each batch's offsets and post time;
- ``--clients`` threads posting ``/v1/recommend`` one request at a time (histories from the catalogue);
- a monitor reading ``/v1/models`` every 0.25 s: the seq the replica serves, and from the delta folder the
  offset that seq covers up to. An event is servable once a served delta covers its offset: its lag is that
  moment minus its post time (p50 / p95).

First ``--baseline-seconds`` of recommendations alone, then ``--seconds`` with the replay. Reported: non-2xx of
either kind, events/s achieved, lag p50/p95, recommendation p50/p99 with and without the replay (ratio).

Example::

    python benchmarks/online_freshness.py --model artifacts/sasrec-beauty --work /tmp/fresh --seconds 600 \\
        --json benchmarks/results/online_freshness.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

RETREC = str(Path(sys.executable).parent / "retrec")


def percentile(values: list[float], q: float) -> float | None:
    return round(sorted(values)[min(len(values) - 1, int(q * len(values)))], 2) if values else None


def wait_for(check: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(0.5)
    raise SystemExit(f"timed out waiting for {what}")


def serve_config(root: Path, log: str, port: int) -> dict[str, Any]:
    return {"proxy_location": "HeadOnly", "http_options": {"host": "127.0.0.1", "port": port},
            "applications": [{"name": "retrec", "route_prefix": "/", "import_path": "retrec.serving.app:build_app",
                              "args": {"recommenders": {"sasrec": {"bundle": str(root), "online": True,
                                                                   "poll_s": 0.5}},
                                       "events": {"log": log}, "auth": {"mode": "none"}, "use_gpu": False}}]}


class Run:
    def __init__(self, url: str, items: list[str], root: Path) -> None:
        self.url, self.items, self.root = url, items, root
        self.stop = threading.Event()
        self.replaying = threading.Event()
        self.latencies: dict[str, list[float]] = {"baseline": [], "replay": []}
        self.errors: dict[str, int] = {"recommend": 0, "events": 0}
        self.batches: list[tuple[float, int, int]] = []  # (post time, first offset, count)
        self.frontier: list[tuple[float, int]] = []  # (time, offsets below this are servable)

    def recommender(self) -> None:
        rng = random.Random(threading.get_ident())
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self.stop.is_set():
                body = {"history": rng.sample(self.items, 5), "k": 10}
                start = time.perf_counter()
                r = client.post("/v1/recommend", json=body)
                ms = (time.perf_counter() - start) * 1000
                if r.status_code != 200:
                    self.errors["recommend"] += 1
                self.latencies["replay" if self.replaying.is_set() else "baseline"].append(ms)

    def producer(self, rate: int) -> None:
        rng, n = random.Random(0), 0
        per_batch = max(1, rate // 10)
        with httpx.Client(base_url=self.url, timeout=30) as client:
            next_at = time.monotonic()
            while not self.stop.is_set():
                events = []
                for _ in range(per_batch):
                    n += 1
                    item = f"fresh-{n}" if n % 50 == 0 else rng.choice(self.items)
                    events.append({"user": f"u{rng.randrange(5000)}", "item": item, "timestamp": time.time(),
                                   "type": "view"})
                posted = time.monotonic()
                r = client.post("/v1/events", json={"events": events})
                if r.status_code == 200:
                    self.batches.append((posted, r.json()["first_offset"], len(events)))
                else:
                    self.errors["events"] += 1
                next_at += 0.1
                time.sleep(max(0.0, next_at - time.monotonic()))

    def monitor(self) -> None:
        covered: dict[tuple[str, int], int] = {}
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self.stop.is_set():
                online = client.get("/v1/models").json()["recommenders"]["sasrec"].get("online", {})
                snapshot, seq = online.get("snapshot"), int(online.get("seq", 0))
                if snapshot and seq and (snapshot, seq) not in covered:
                    manifest = self.root / "deltas" / snapshot / f"{seq:08d}" / "manifest.json"
                    covered[(snapshot, seq)] = json.loads(manifest.read_text())["config"]["source_offsets"][1]
                if snapshot and seq:
                    self.frontier.append((time.monotonic(), covered[(snapshot, seq)]))
                time.sleep(0.25)

    def lags(self) -> list[float]:
        out, i = [], 0
        for posted, first, count in self.batches:
            last = first + count - 1
            while i < len(self.frontier) and self.frontier[i][1] <= last:
                i += 1
            if i == len(self.frontier):
                break  # not servable before the end of the run
            out.append(self.frontier[i][0] - posted)
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a model/sasrec bundle (with its weights)")
    parser.add_argument("--work", type=Path, required=True, help="work folder (new or empty)")
    parser.add_argument("--events", default=None, help="the event log (default: WORK/events, a folder)")
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--baseline-seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=int, default=200, help="events a second")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--sync-s", type=float, default=10.0)
    parser.add_argument("--port", type=int, default=8011)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if any(args.work.iterdir()):
        raise SystemExit(f"{args.work} is not empty")
    log, root = args.events or str(args.work / "events"), args.work / "online"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    logs = contextlib.ExitStack()
    trainer_log = logs.enter_context(open(args.work / "trainer.log", "w"))  # noqa: SIM115 - open while it runs
    serve_log = logs.enter_context(open(args.work / "serve.log", "w"))  # noqa: SIM115
    trainer = subprocess.Popen([RETREC, "train", "online", "--model", str(args.model), "--events", log, "--out",
                                str(root), "--sync-s", str(args.sync_s)], env=env,
                               stdout=subprocess.PIPE, stderr=trainer_log)
    server = None
    try:
        wait_for(lambda: (root / "current").exists(), 300, "the trainer's first snapshot")
        (args.work / "serve.yaml").write_text(yaml.safe_dump(serve_config(root, log, args.port)))
        server = subprocess.Popen([RETREC, "serve", "--config", str(args.work / "serve.yaml")], env=env,
                                  stdout=serve_log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{args.port}"
        wait_for(lambda: httpx.get(f"{url}/readyz", timeout=5).status_code == 200, 300, "the server")
        from retrec.runtime.sequence_recommender import SequenceRecommender

        items = list(SequenceRecommender.load(root / "current").item_ids)
        run = Run(url, items, root)
        threads = [threading.Thread(target=run.recommender, daemon=True) for _ in range(args.clients)]
        for t in threads:
            t.start()
        time.sleep(args.baseline_seconds)
        run.replaying.set()
        started = time.monotonic()
        side = [threading.Thread(target=run.producer, args=(args.rate,), daemon=True),
                threading.Thread(target=run.monitor, daemon=True)]
        for t in side:
            t.start()
        time.sleep(args.seconds)
        run.stop.set()
        for t in threads + side:
            t.join(timeout=60)
        elapsed = time.monotonic() - started
    finally:
        trainer.send_signal(signal.SIGTERM)
        out, _ = trainer.communicate(timeout=120)
        if server is not None:
            server.send_signal(signal.SIGINT)
            server.wait(timeout=120)
        logs.close()
    lags = run.lags()
    base, replay = run.latencies["baseline"], run.latencies["replay"]
    record = {
        "benchmark": "online_freshness", "date": _dt.date.today().isoformat(), "command": " ".join(sys.argv),
        "machine": f"{platform.node()}, {os.cpu_count()} CPUs", "model": str(args.model), "log": log,
        "events_per_s": round(sum(c for _, _, c in run.batches) / elapsed, 1), "errors": run.errors,
        "lag_s": {"p50": percentile(lags, 0.5), "p95": percentile(lags, 0.95), "batches": len(lags),
                  "of": len(run.batches)},
        "recommend_ms": {"baseline_p50": percentile(base, 0.5), "baseline_p99": percentile(base, 0.99),
                         "replay_p50": percentile(replay, 0.5), "replay_p99": percentile(replay, 0.99),
                         "p99_ratio": round(percentile(replay, 0.99) / percentile(base, 0.99), 3)
                         if base and replay else None, "requests": len(base) + len(replay),
                         "mean_replay_ms": round(statistics.fmean(replay), 2) if replay else None},
        "trainer": json.loads(out.decode().strip().splitlines()[-1]) if out.strip() else None}
    print(json.dumps(record, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
