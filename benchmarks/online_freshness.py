"""Freshness under load: events posted at a steady rate while recommendations are served, the online trainer
between them; how long until an event's effect is servable, and what the replay costs the recommendations.

Processes, all real: ``retrec serve`` (one application: a ``sasrec`` recommender following the online folder,
``events.log`` set, on 127.0.0.1), ``retrec train online`` (``--sync-s``) on the same log and folder, and this
script's clients:

- a producer posting ``--rate`` events/s to ``/v1/events``: every 0.1 s (or as soon as the last post returns) a
  batch of all the events due by then (users and items drawn from the model's catalogue, one item in 50 new),
  recording each batch's offsets and post time;
- ``--clients`` threads posting ``/v1/recommend`` one request at a time (histories from the catalogue);
- a monitor reading ``/v1/models`` every 0.25 s (from the baseline on): the seq the replica serves, and from the
  delta folder the offset that seq covers up to. An event is servable once a served delta covers its offset: its
  lag is that moment minus its post time (p50 / p95).

The trainer stands for a separate node: with ``--trainer-cpus`` (default: the last CPU when there are two or
more) it runs pinned to those CPUs with one thread, and the server and this script's clients to the others, so
the recommendation latencies measure what the replay costs serving (event intake, delta application), not a
trainer sharing its cores (``--trainer-cpus all`` shares them).

First ``--baseline-seconds`` of recommendations alone, then ``--seconds`` with the replay. Reported: non-2xx of
either kind, events/s achieved, lag p50/p95, recommendation p50/p99 with and without the replay (ratio).

With ``--broker redis`` the log is a ``redis-server`` this script starts (``appendfsync always``), and
``--restart-broker-at S`` SIGKILLs it S seconds into the replay and starts it again ``--broker-down-s`` later: events
refused meanwhile (503) are re-sent, and at the end every acknowledged event is looked up at its offset
(``acknowledged_lost`` counts those missing or changed — with either broker). ``--kill-replica-at S`` SIGKILLs the
recommender replica's process: Serve starts another, which loads the snapshot and every delta since; reported:
when it served again, when it held what was published at the kill, the failed recommendations and their window.

Example::

    python benchmarks/online_freshness.py --model artifacts/sasrec-beauty --work /tmp/fresh --seconds 600 \\
        --json benchmarks/results/online_freshness.json
"""

from __future__ import annotations

import argparse
import atexit
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


def split_cpus(spec: str | None) -> tuple[set[int], set[int]]:
    """(trainer's CPUs, everything else's) from ``--trainer-cpus``."""
    cpus = sorted(os.sched_getaffinity(0))
    if spec == "all" or (spec is None and len(cpus) < 2):
        return set(cpus), set(cpus)
    if spec is None:
        return {cpus[-1]}, set(cpus[:-1])
    low, _, high = spec.partition("-")
    trainer = set(range(int(low), int(high or low) + 1)) & set(cpus)
    if not trainer or trainer == set(cpus):
        raise SystemExit(f"--trainer-cpus {spec}: must name some but not all of CPUs {cpus} (or: all)")
    return trainer, set(cpus) - trainer


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
        self.acknowledged: list[tuple[int, list[tuple[str, str]]]] = []  # (first offset, [(user, item)])
        self.error_times: list[float] = []  # of failed recommendations
        self.refused: dict[str, int] = {}  # non-2xx answers to /v1/events by status (their events are re-sent)
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
                    self.error_times.append(time.monotonic())
                self.latencies["replay" if self.replaying.is_set() else "baseline"].append(ms)

    def producer(self, rate: int) -> None:
        rng, n, events = random.Random(0), 0, []
        with httpx.Client(base_url=self.url, timeout=30) as client:
            started = next_at = time.monotonic()
            while not self.stop.is_set():
                for _ in range(max(0 if events else 1, int(rate * (time.monotonic() - started)) - n)):  # all due
                    n += 1
                    item = f"fresh-{n}" if n % 50 == 0 else rng.choice(self.items)
                    events.append({"user": f"u{rng.randrange(5000)}", "item": item, "timestamp": time.time(),
                                   "type": "view"})
                posted, batch = time.monotonic(), events[:500]  # a backlog (the broker away) goes in parts
                try:
                    r = client.post("/v1/events", json={"events": batch})
                    status = r.status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                if status == 200:
                    first = r.json()["first_offset"]
                    self.batches.append((posted, first, len(batch)))
                    self.acknowledged.append((first, [(e["user"], e["item"]) for e in batch]))
                    events = events[len(batch):]
                else:  # not acknowledged: the same events again with the next batch
                    self.refused[str(status)] = self.refused.get(str(status), 0) + 1
                    self.errors["events"] += 1
                next_at += 0.1
                time.sleep(max(0.0, next_at - time.monotonic()))

    def monitor(self) -> None:
        covered: dict[tuple[str, int], int] = {}
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self.stop.is_set():
                try:
                    online = client.get("/v1/models").json()["recommenders"]["sasrec"].get("online", {})
                except (httpx.HTTPError, KeyError, ValueError):  # the replica restarting
                    time.sleep(0.25)
                    continue
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


def lost_acknowledged(log: str, acknowledged: list[tuple[int, list[tuple[str, str]]]]) -> int:
    """Acknowledged events the log does not hold at their offsets, as sent."""
    from retrec.events import open_log

    events, lost = open_log(log), 0
    for first, sent in acknowledged:
        held = [(e.user, e.item) for _, e in events.read(first, len(sent))]
        lost += sum(a != b for a, b in zip(sent, held, strict=False)) + max(0, len(sent) - len(held))
    return lost


def broker_restarts(server: Any, at_s: float, down_s: float, stop: threading.Event, record: list[float]) -> None:
    """SIGKILL the broker ``at_s`` seconds into the replay; start it again ``down_s`` later."""
    if stop.wait(at_s):
        return
    record.append(time.monotonic())
    server.kill()
    time.sleep(down_s)
    server.start()
    record.append(time.monotonic())


def newest_delta_end(root: Path) -> int:
    """The offset the newest published delta covers up to (0 before the first)."""
    manifests = sorted(root.glob("deltas/*/*/manifest.json"), key=lambda p: (p.parent.parent.name, p.parent.name))
    return json.loads(manifests[-1].read_text())["config"]["source_offsets"][1] if manifests else 0


def replica_kill(root: Path, at_s: float, stop: threading.Event, record: list[tuple[float, int]]) -> None:
    """SIGKILL the recommender replica's process ``at_s`` seconds into the replay (Serve starts another); record
    when, and what the newest delta covered then."""
    if stop.wait(at_s):
        return
    found = subprocess.run(["pgrep", "-f", "ServeReplica:retrec:recommender-sasrec"], capture_output=True, text=True)
    record.append((time.monotonic(), newest_delta_end(root)))
    for pid in found.stdout.split():
        os.kill(int(pid), signal.SIGKILL)


def catch_up(run: Run, killed_at: float, covered: int) -> dict[str, Any]:
    """After the kill: when a replica served again, and when it held what was published at the kill (rebuilt
    from the snapshot and every delta since); failed recommendations after the kill and their window."""
    after = [(t, offset) for t, offset in run.frontier if t > killed_at]
    served = next((t for t, _ in after), None)
    held = next((t for t, offset in after if offset >= covered), None)
    errors = [t for t in run.error_times if t > killed_at]
    return {"first_served_after_s": None if served is None else round(served - killed_at, 1),
            "caught_up_after_s": None if held is None else round(held - killed_at, 1),
            "failed_recommendations": len(errors),
            "error_window_s": round(errors[-1] - killed_at, 1) if errors else 0.0}


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
    parser.add_argument("--broker", choices=["segments", "redis"], default="segments",
                        help="the event log: segment files in WORK (default), or a redis-server this script starts "
                        "(appendfsync always)")
    parser.add_argument("--restart-broker-at", type=float, default=None,
                        help="redis: SIGKILL the broker this many seconds into the replay, then start it again")
    parser.add_argument("--broker-down-s", type=float, default=3.0)
    parser.add_argument("--kill-replica-at", type=float, default=None,
                        help="SIGKILL the recommender replica this many seconds into the replay (Serve restarts it)")
    parser.add_argument("--trainer-cpus", default=None,
                        help="CPUs of the trainer, e.g. 1 or 2-3, or all (default: the last CPU of 2 or more)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    trainer_cpus, serving_cpus = split_cpus(args.trainer_cpus)
    args.work.mkdir(parents=True, exist_ok=True)
    if any(args.work.iterdir()):
        raise SystemExit(f"{args.work} is not empty")
    if args.restart_broker_at is not None and args.broker != "redis":
        raise SystemExit("--restart-broker-at needs --broker redis")
    broker = None
    if args.broker == "redis":
        from retrec.events.local_redis import LocalRedis, free_port

        broker = LocalRedis(args.work / "redis", free_port())
        broker.start()
        atexit.register(broker.kill)  # also when this script fails
        args.events = f"{broker.url}?key=retrec:events"
    log, root = args.events or str(args.work / "events"), args.work / "online"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    logs = contextlib.ExitStack()
    trainer_log = logs.enter_context(open(args.work / "trainer.log", "w"))  # noqa: SIM115 - open while it runs
    serve_log = logs.enter_context(open(args.work / "serve.log", "w"))  # noqa: SIM115
    trainer_env = {**env, "OMP_NUM_THREADS": str(len(trainer_cpus)), "MKL_NUM_THREADS": str(len(trainer_cpus))}
    trainer = subprocess.Popen([RETREC, "train", "online", "--model", str(args.model), "--events", log, "--out",
                                str(root), "--sync-s", str(args.sync_s)], env=trainer_env,
                               stdout=subprocess.PIPE, stderr=trainer_log,
                               preexec_fn=lambda: os.sched_setaffinity(0, trainer_cpus))
    os.sched_setaffinity(0, serving_cpus)  # this script's clients and the server it starts
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
        threads.append(threading.Thread(target=run.monitor, daemon=True))  # in both phases: the same probes
        for t in threads:
            t.start()
        time.sleep(args.baseline_seconds)
        run.replaying.set()
        started = time.monotonic()
        side = [threading.Thread(target=run.producer, args=(args.rate,), daemon=True)]
        restarts: list[float] = []
        if args.restart_broker_at is not None:
            side.append(threading.Thread(target=broker_restarts, daemon=True, args=(
                broker, args.restart_broker_at, args.broker_down_s, run.stop, restarts)))
        kills: list[tuple[float, int]] = []
        if args.kill_replica_at is not None:
            side.append(threading.Thread(target=replica_kill, args=(root, args.kill_replica_at, run.stop, kills),
                                         daemon=True))
        for t in side:
            t.start()
        while time.monotonic() - started < args.seconds and trainer.poll() is None:
            time.sleep(0.5)
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
    if trainer.returncode not in (0, -signal.SIGTERM):
        raise SystemExit(f"the trainer exited with {trainer.returncode} during the run: {args.work}/trainer.log")
    lost = lost_acknowledged(log, run.acknowledged)
    lags = run.lags()
    base, replay = run.latencies["baseline"], run.latencies["replay"]
    record = {
        "benchmark": "online_freshness", "date": _dt.date.today().isoformat(), "command": " ".join(sys.argv),
        "machine": f"{platform.node()}, {os.cpu_count()} CPUs", "model": str(args.model), "log": log,
        "cpus": {"trainer": sorted(trainer_cpus), "serving_and_clients": sorted(serving_cpus)},
        "events_per_s": round(sum(c for _, _, c in run.batches) / elapsed, 1), "errors": run.errors,
        "events_refused": run.refused, "acknowledged": sum(c for _, _, c in run.batches),
        "acknowledged_lost": lost,
        "broker_restart": {"down_s": round(restarts[1] - restarts[0], 2), "at_s": args.restart_broker_at}
        if len(restarts) == 2 else None,
        "replica_kill": catch_up(run, *kills[0]) if kills else None,
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
