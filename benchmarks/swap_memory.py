"""A shard replica's memory across an index swap and its drain period (issue 44, acceptance 3).

    python benchmarks/swap_memory.py --encoder ~/.cache/retrec/minilm-onnx --work /tmp/swap-memory \\
        [--docs 200000] [--drain 10] [--json benchmarks/results/swap_memory.json]

Two exact (``Flat``) dense index versions of ``--docs`` random unit vectors of the encoder's width are served by
one shard replica of its own deployment (one ingress replica, the encoder in it). The replica's RSS
(``/proc/PID/status``) is sampled every 0.1 s: at rest on v1 (after searches touched every vector), through the
admin swap to v2 (both versions held while requests in flight finish), and after ``limits.swap_drain_s`` (the
previous version released; searches again touch every vector of v2). Acceptance: RSS after the drain within 10%
of the pre-swap RSS; the peak during the swap is reported too (what a replica must be sized for).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

API_KEY, ADMIN_KEY = "swap-memory-api-key-0123", "swap-memory-admin-key-0123"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def shard_pid(deployment: str) -> int:
    """The pid of the replica of ``deployment`` (Ray titles replica processes ``ray::ServeReplica:APP:NAME``)."""
    for proc in Path("/proc").iterdir():
        try:
            title = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if f"ServeReplica:retrec:{deployment}" in title:
            return int(proc.name)
    raise RuntimeError(f"no replica process of {deployment}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoder", type=Path, required=True, help="a model/dense bundle (the query encoder)")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--docs", type=int, default=200_000)
    parser.add_argument("--drain", type=float, default=10.0, help="limits.swap_drain_s")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import httpx
    import ray

    from retrec.bundle import read_manifest
    from retrec.index.faiss_index import FaissIndex
    from retrec.serving.launch import free_port, start, stop

    encoder = read_manifest(args.encoder)
    dim = int(encoder.dims["dim"])
    root = args.work / "models"
    ids = [f"d{i}" for i in range(args.docs)]
    for n, seed in (("v1", 1), ("v2", 2)):
        if not (root / n / "manifest.json").is_file():
            vectors = np.random.default_rng(seed).normal(size=(args.docs, dim)).astype(np.float32)
            FaissIndex.build(vectors, ids, encoder=encoder).save(root / n)
            del vectors
    (args.work / "keys").write_text(API_KEY + "\n")
    (args.work / "admin-keys").write_text(ADMIN_KEY + "\n")
    one = {"replicas": 1, "num_cpus": 0}
    config = {"applications": [{
        "name": "retrec", "route_prefix": "/", "import_path": "retrec.serving.app:build_app",
        "args": {"retrievers": {"dense": {"index": str(root / "v1"), "encoder": str(args.encoder),
                                          "placement": "deployment", "shards": one}},
                 "ingress": one, "limits": {"swap_drain_s": args.drain, "swap_timeout_s": 120},
                 "auth": {"api_keys_env": None, "api_keys_file": str(args.work / "keys")}, "use_gpu": False,
                 "admin": {"enabled": True, "keys_env": None, "keys_file": str(args.work / "admin-keys"),
                           "models_root": str(root)}}}]}
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    url = start(config, port=free_port())
    try:
        pid = shard_pid("dense-shard-0")
        samples: list[tuple[float, float]] = []
        stop_sampling = threading.Event()
        t0 = time.monotonic()

        def sample() -> None:
            while not stop_sampling.is_set():
                samples.append((time.monotonic() - t0, rss_mib(pid)))
                time.sleep(0.1)

        client = httpx.Client(base_url=url, headers={"X-API-Key": API_KEY}, timeout=60)

        def searches(n: int = 10) -> set[str]:
            out = [client.post("/v1/search", json={"query": f"query {i}", "k": 5}) for i in range(n)]
            assert all(r.status_code == 200 for r in out), out[-1].text
            return {r.json()["index_versions"]["dense"] for r in out}

        searches()
        time.sleep(1.0)
        pre = rss_mib(pid)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        swap_at = time.monotonic() - t0
        r = client.post("/v1/admin/indexes", json={"retriever": "dense", "path": "v2"},
                        headers={"X-API-Key": ADMIN_KEY}, timeout=180)
        assert r.status_code == 200, r.text
        swapped_at = time.monotonic() - t0
        assert searches() == {r.json()["version"]}
        held = rss_mib(pid)
        time.sleep(args.drain + 5.0)
        searches()
        time.sleep(1.0)
        after = rss_mib(pid)
        stop_sampling.set()
        sampler.join()
    finally:
        stop()
        ray.shutdown()
    peak = max(m for _, m in samples)
    record: dict[str, Any] = {
        "benchmark": "swap_memory", "date": _dt.date.today().isoformat(), "command": " ".join(sys.argv),
        "machine": f"{platform.node()}, {os.cpu_count()} CPUs", "docs": args.docs, "dim": dim,
        "index_mib": round(args.docs * dim * 4 / 2**20, 1), "drain_s": args.drain,
        "rss_mib": {"pre_swap": round(pre, 1), "both_held": round(held, 1), "peak": round(peak, 1),
                    "after_drain": round(after, 1)},
        "after_over_pre": round(after / pre, 3), "holds": after <= 1.10 * pre,
        "swap_s": round(swapped_at - swap_at, 2),
        "samples": [(round(t, 2), round(m, 1)) for t, m in samples[::5]]}
    print(json.dumps({k: v for k, v in record.items() if k != "samples"}, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
