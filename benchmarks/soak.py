"""A soak: the serving application for an hour under mixed load, swaps, replica kills and a reindex (issue 44).

    python benchmarks/soak.py --data ../shared/data/scifact --rec-data ../shared/data/ml-100k \\
        --encoder ~/.cache/retrec/minilm-onnx --work /tmp/soak --minutes 60 \\
        --json benchmarks/results/soak.json --plot benchmarks/soak.png

Builds (real commands): two BM25 versions and a dense version (``--encoder``) of ``--data``, a Markov
recommender on ``--rec-data``; serves them on 127.0.0.1 (two ingress replicas, two replicas of each shard, the
encoder in the ingress); ``--concurrency`` closed-loop clients search bm25 / dense / hybrid and recommend (the
load of :mod:`serving_faults`). Meanwhile: an admin swap of bm25 every ``--swap-every`` s (v1 <-> v2; after each,
every ingress replica must report the new version), a shard replica killed every ``--kill-every`` s (Serve
restarts it), and once, halfway, ``retrec reindex --swap`` (a third version built and swapped by the CLI).
Every ``--sample-every`` s: RSS and open file descriptors of every replica process (``/proc``).

Reported: requests and statuses, 5xx outside kill windows (in flight at a kill or started within 15 s after
it), p99 per minute, RSS and fd slope per replica after ``--warmup`` (% per 10 minutes, least squares; a
replica restarted by a kill is a new series), p99 of the last 10 minutes over the first 10 after warm-up, every
swap's visibility. Acceptance (2 cores, 60 min): 0 5xx outside kill windows; RSS slope < 1% / 10 min; last/first
p99 <= 1.2; fds flat; every swap visible to every replica.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import os
import platform
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving_faults import ADMIN_KEY, ADMIN_KEYS_ENV, load, replica_actor, summarize

RETREC = str(Path(sys.executable).with_name("retrec"))


def build(args: argparse.Namespace, models: Path) -> None:
    """The bundles, by the CLI (skipped when already there: a rerun reuses them)."""
    def run(*cmd: str) -> None:
        subprocess.run([RETREC, *cmd], check=True, stdout=subprocess.DEVNULL)

    for name in ("bm25-v1", "bm25-v2"):
        if not (models / name / "manifest.json").is_file():
            run("index", "bm25", "--data", str(args.data), "--out", str(models / name))
    if not (models / "dense" / "manifest.json").is_file():
        run("index", "dense", "--data", str(args.data), "--model", str(args.encoder), "--out", str(models / "dense"),
            "--shards", "2")
    if not (models / "markov" / "manifest.json").is_file():
        run("train", "markov", "--data", str(args.rec_data), "--out", str(models / "markov"))


def app_config(args: argparse.Namespace, models: Path, port: int) -> dict[str, Any]:
    two = {"replicas": 2, "num_cpus": 0, "max_ongoing_requests": 64}
    return {"http_options": {"host": "127.0.0.1", "port": port}, "applications": [{
        "name": "retrec", "route_prefix": "/", "import_path": "retrec.serving.app:build_app",
        "args": {"retrievers": {"bm25": {"index": str(models / "bm25-v1"), "placement": "deployment", "shards": two},
                                "dense": {"index": str(models / "dense"), "encoder": str(args.encoder),
                                          "placement": "deployment", "shards": two}},
                 "recommenders": {"markov": {"bundle": str(models / "markov"), "replicas": two}},
                 "encoder": {"placement": "ingress"}, "ingress": {**two, "max_ongoing_requests": 128},
                 "auth": {"mode": "none"}, "limits": {"request_timeout_s": 10.0, "swap_drain_s": 30.0},
                 "admin": {"enabled": True, "keys_env": ADMIN_KEYS_ENV, "keys_file": None,
                           "models_root": str(models)}}}]}


def our_raylet() -> int:
    """The pid of this run's raylet: replica processes are its children (another Ray on the machine is not ours)."""
    import ray

    return int(ray._private.worker._global_node.all_processes["raylet"][0].process.pid)


def replicas(raylet: int | None = None) -> dict[int, str]:
    """pid -> deployment of every live replica process of the application (children of ``raylet``)."""
    found = {}
    for proc in Path("/proc").iterdir():
        try:
            title = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if "ServeReplica:retrec:" in title and (raylet is None or parent == raylet):
            # the title names the task running now ("Ingress.handle_request"): the deployment is before the dot
            found[int(proc.name)] = title.split("ServeReplica:retrec:")[1].split()[0].split(".")[0]
    return found


def sample(t: float, raylet: int | None = None) -> list[dict[str, Any]]:
    rows = []
    for pid, deployment in replicas(raylet).items():
        try:
            rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                       if line.startswith("VmRSS:")) / 1024
            fds = len(os.listdir(f"/proc/{pid}/fd"))
        except (OSError, StopIteration):
            continue
        rows.append({"t": round(t, 1), "pid": pid, "deployment": deployment, "rss_mib": round(rss, 1), "fds": fds})
    return rows


async def operations(args: argparse.Namespace, url: str, models: Path, events: list[dict[str, Any]],
                     t0: float, stop: asyncio.Event) -> None:
    """Swaps every --swap-every s, a kill every --kill-every s, one reindex + swap halfway."""
    import ray

    from retrec.bundle import read_manifest

    seconds = args.minutes * 60
    plan = sorted([(s, "swap") for s in np.arange(args.swap_every, seconds - 60, args.swap_every)]
                  + [(s, "kill") for s in np.arange(args.kill_every, seconds - 60, args.kill_every)]
                  + [(seconds / 2 + 30, "reindex")])
    victims, target = ["bm25-shard-0", "dense-shard-1"], "bm25-v2"
    async with httpx.AsyncClient(base_url=url, timeout=180.0) as client:
        for n, (at, action) in enumerate(plan):
            await asyncio.sleep(max(0.0, at - (time.monotonic() - t0)))
            if stop.is_set():
                return
            when = time.monotonic() - t0
            if action == "kill":
                victim = victims[n % len(victims)]
                ray.kill(replica_actor(victim), no_restart=False)
                events.append({"t": when, "action": f"kill {victim}"})
                continue
            if action == "swap":
                r = await client.post("/v1/admin/indexes", json={"retriever": "bm25", "path": target},
                                      headers={"X-API-Key": ADMIN_KEY})
                while r.status_code == 202 or (r.status_code == 200 and r.json().get("status") == "pending"):
                    await asyncio.sleep(2.0)  # slower than limits.swap_timeout_s: follow it to its end
                    r = await client.get(f"/v1/admin/swaps/{r.json()['swap_id']}", headers={"X-API-Key": ADMIN_KEY})
                version = r.json().get("version") if r.status_code == 200 else None
                target = "bm25-v1" if target == "bm25-v2" else "bm25-v2"
            else:
                done = await asyncio.to_thread(subprocess.run, [
                    RETREC, "reindex", "bm25", "--data", str(args.data), "--out", str(models / "bm25-r"),
                    "--swap", url, "--swap-retriever", "bm25", "--swap-root", str(models), "--json"],
                    capture_output=True, text=True, env={**os.environ, "RETREC_ADMIN_KEYS": ADMIN_KEY})
                r = httpx.Response(200 if done.returncode == 0 else 500)
                version = (read_manifest(json.loads(done.stdout)["version"]).version if done.returncode == 0
                           else None)
            seen = [(await client.get("/v1/models")).json()["retrievers"]["bm25"]["index_version"] for _ in range(10)]
            events.append({"t": when, "action": action, "status": r.status_code, "version": version,
                           "visible_everywhere": version is not None and set(seen) == {version},
                           "seconds": round(time.monotonic() - t0 - when, 2)})


def slope_per_10min(series: list[tuple[float, float]]) -> float | None:
    """Least-squares slope as % of the series' mean per 10 minutes (None under 3 points)."""
    if len(series) < 3:
        return None
    t, y = np.array([s[0] for s in series]), np.array([s[1] for s in series])
    if np.ptp(t) == 0 or y.mean() == 0:
        return None
    return round(float(np.polyfit(t, y, 1)[0]) * 600 / float(y.mean()) * 100, 3)


def report(log: list[dict[str, Any]], events: list[dict[str, Any]], samples: list[dict[str, Any]],
           args: argparse.Namespace) -> dict[str, Any]:
    seconds, warm = args.minutes * 60, args.warmup * 60
    minutes = int(seconds // 60)
    per_minute = []
    for m in range(minutes):
        ok = sorted(x["ms"] for x in log if m * 60 <= x["t"] < (m + 1) * 60 and x["status"] == 200)
        per_minute.append(round(ok[int(0.99 * (len(ok) - 1))], 1) if ok else None)

    def p99(a: float, b: float) -> float | None:
        ok = sorted(x["ms"] for x in log if a <= x["t"] < b and x["status"] == 200)
        return round(ok[int(0.99 * (len(ok) - 1))], 1) if ok else None

    window = min(600.0, (seconds - warm) / 2)
    first, last = p99(warm, warm + window), p99(seconds - window, seconds)
    series: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for s in samples:
        if s["t"] >= warm:
            key = f"{s['deployment']}:{s['pid']}"
            series.setdefault(key, {"rss": [], "fds": []})
            series[key]["rss"].append((s["t"], s["rss_mib"]))
            series[key]["fds"].append((s["t"], s["fds"]))
    # a trend needs a series that lived 15 minutes after the warm-up (a replica started by a kill has its own
    # start-up growth); its file descriptors are judged after its own first two minutes
    long_lived = {k: v for k, v in series.items() if v["rss"][-1][0] - v["rss"][0][0] >= 900}
    rss_slopes = {k: slope_per_10min(v["rss"]) for k, v in long_lived.items()}
    fd_ranges = {k: [min(f for t, f in v["fds"] if t >= v["fds"][0][0] + 120),
                     max(f for t, f in v["fds"] if t >= v["fds"][0][0] + 120)] for k, v in long_lived.items()}
    base = summarize(log, events, seconds)
    swaps = [e for e in events if e["action"] in ("swap", "reindex")]
    out = {"requests": base["requests"], "statuses": _statuses(log), "5xx_outside_kill_windows":
           base["5xx_outside_kill_windows"], "first_errors": base["first_errors"], "recovery_s": base["recovery_s"],
           "p99_ms_per_minute": per_minute, "p99_first_window_ms": first, "p99_last_window_ms": last,
           "p99_last_over_first": round(last / first, 3) if first and last else None,
           "rss_slope_pct_per_10min": rss_slopes, "max_rss_slope": max((abs(v) for v in rss_slopes.values()
                                                                       if v is not None), default=None),
           "fds_min_max": fd_ranges, "swaps": swaps,
           "every_swap_visible": bool(swaps) and all(e.get("visible_everywhere") for e in swaps), "events": events}
    out["holds"] = {"no_5xx_outside_kills": out["5xx_outside_kill_windows"] == 0,
                    "rss_slope_under_1pct": out["max_rss_slope"] is not None and out["max_rss_slope"] < 1.0,
                    "p99_stable": out["p99_last_over_first"] is not None and out["p99_last_over_first"] <= 1.2,
                    "fds_flat": all(hi - lo <= 8 for lo, hi in fd_ranges.values()),
                    "swaps_visible": out["every_swap_visible"]}
    return out


def _statuses(log: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for x in log:
        counts[str(x["status"])] = counts.get(str(x["status"]), 0) + 1
    return counts


def plot(out: dict[str, Any], samples: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    keys = sorted({f"{s['deployment']}:{s['pid']}" for s in samples})
    for key in keys:
        pts = [(s["t"] / 60, s["rss_mib"]) for s in samples if f"{s['deployment']}:{s['pid']}" == key]
        a.plot([p[0] for p in pts], [p[1] for p in pts], lw=1, label=key.split(":")[0])
    a.set_ylabel("replica RSS (MiB)")
    handles, labels = a.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    a.legend(unique.values(), unique.keys(), fontsize=6, ncol=3)
    b.plot(range(len(out["p99_ms_per_minute"])), [v or 0 for v in out["p99_ms_per_minute"]], "k.-", lw=1)
    for e in out["events"]:
        b.axvline(e["t"] / 60, color="red" if e["action"].startswith("kill") else "blue", lw=0.5, alpha=0.5)
    b.set_ylabel("p99 latency per minute (ms)")
    b.set_xlabel("minutes (red: replica kills, blue: swaps / reindex)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a BEIR folder (corpus, test queries)")
    parser.add_argument("--rec-data", type=Path, required=True, help="interactions for the recommender")
    parser.add_argument("--encoder", type=Path, required=True, help="a model/dense bundle")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=5.0, help="minutes left out of the trends")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--swap-every", type=float, default=240.0)
    parser.add_argument("--kill-every", type=float, default=600.0)
    parser.add_argument("--sample-every", type=float, default=30.0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args()

    import ray

    from retrec.data.beir import load_retrieval_data
    from retrec.data.interactions import load_interactions, user_sequences
    from retrec.serving.launch import free_port, start, stop

    models = args.work.resolve() / "models"
    models.mkdir(parents=True, exist_ok=True)
    build(args, models)
    os.environ[ADMIN_KEYS_ENV] = ADMIN_KEY
    queries = load_retrieval_data(args.data, split="test").queries.column("text").to_pylist()
    histories = [[str(i) for i in seq][-10:] for seq in user_sequences(load_interactions(args.rec_data)).items[:500]]
    random.seed(0)
    url = start(app_config(args, models, free_port()), num_cpus=2)
    log: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    samples: list[dict[str, Any]] = []
    started = time.perf_counter()
    try:
        async def run() -> None:
            stop_event = asyncio.Event()
            t0 = time.monotonic()

            raylet = our_raylet()

            def sampler() -> None:
                said = 0.0
                while not stop_event.is_set():
                    now = time.monotonic() - t0
                    samples.extend(sample(now, raylet))
                    if now - said >= 60:  # a line a minute for a log: requests, errors, the last operation
                        said = now
                        bad = sum(1 for x in log if x["status"] >= 500)
                        print(f"soak {now / 60:.0f}/{args.minutes:.0f} min: {len(log)} requests, {bad} 5xx, "
                              f"last event {events[-1]['action'] if events else '-'}", file=sys.stderr, flush=True)
                    time.sleep(args.sample_every)

            threading.Thread(target=sampler, daemon=True).start()
            await asyncio.gather(load(url, queries, histories, args.concurrency, args.minutes * 60, log, stop_event,
                                      model="markov"),
                                 operations(args, url, models, events, t0, stop_event))
            stop_event.set()

        asyncio.run(run())
    finally:
        stop()
        ray.shutdown()
    out = {"benchmark": "soak", "date": _dt.date.today().isoformat(), "command": " ".join(sys.argv),
           "machine": f"{platform.node()}, {os.cpu_count()} CPUs", "minutes": args.minutes,
           "concurrency": args.concurrency, **report(log, events, samples, args),
           "seconds": round(time.perf_counter() - started, 1), "samples": samples}
    print(json.dumps({k: v for k, v in out.items() if k not in ("samples", "events", "p99_ms_per_minute")},
                     indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    if args.plot:
        plot(out, samples, args.plot)
    sys.exit(0 if all(out["holds"].values()) else 1)


if __name__ == "__main__":
    main()
