"""Throughput and memory benchmark of the collisionless embedding table (single thread).

Inserts ``--n`` distinct random 64-bit IDs in batches (admit_threshold=1, table grown from the default
initial capacity), then looks up every key and checks that each maps to its own distinct row and
back to its own key (zero collisions). Reports insert, lookup (row index), embed and miss-lookup
throughput, and bytes per entry.

Usage::

    python benchmarks/embedding_table_bench.py                 # 10M IDs, dim 16, 1M per batch
    python benchmarks/embedding_table_bench.py --n 1000000 --dim 64 --cpu 0
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy is imported

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from retrec.tables import EmbeddingTable  # noqa: E402


def distinct_keys(n: int, seed: int) -> np.ndarray:
    """``n`` distinct uniformly random int64 keys (any 64-bit pattern)."""
    rng = np.random.default_rng(seed)
    info = np.iinfo(np.int64)
    keys = rng.integers(info.min, info.max, size=n, dtype=np.int64, endpoint=True)
    while True:
        order = np.sort(keys)
        dup = order[1:][order[1:] == order[:-1]]
        if not dup.size:
            return keys
        redo = np.isin(keys, dup)
        keys[redo] = rng.integers(info.min, info.max, size=int(redo.sum()), dtype=np.int64, endpoint=True)


def batches(n: int, size: int) -> list[slice]:
    return [slice(s, min(s + size, n)) for s in range(0, n, size)]


def main(argv: list[str] | None = None) -> dict[str, object]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000_000, help="distinct IDs to insert")
    ap.add_argument("--batch", type=int, default=1_000_000, help="IDs per insert/lookup batch")
    ap.add_argument("--dim", type=int, default=16, help="embedding width")
    ap.add_argument("--initial-capacity", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cpu", type=int, default=None, help="pin the process to this CPU")
    args = ap.parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})

    keys = distinct_keys(args.n, args.seed)
    misses = distinct_keys(min(args.n, args.batch) + args.n, args.seed + 1)
    misses = misses[~np.isin(misses, keys)][: min(args.n, args.batch)]
    parts = batches(args.n, args.batch)

    table = EmbeddingTable(args.dim, initial_capacity=args.initial_capacity, seed=args.seed)
    cpu0, t0 = time.process_time(), time.perf_counter()
    for sl in parts:
        rows = table.observe(keys[sl], now=0.0)
        if (rows < 0).any():
            raise AssertionError("an admitted key got no row")
    insert_s, insert_cpu = time.perf_counter() - t0, time.process_time() - cpu0

    rows = np.empty(args.n, np.int64)
    t0 = time.perf_counter()
    for sl in parts:
        rows[sl] = table.lookup(keys[sl])
    lookup_s = time.perf_counter() - t0

    # zero collisions: every key found, rows pairwise distinct, each row maps back to its own key
    entry_keys, entry_rows = table.entries()
    back = np.empty(int(entry_rows.max()) + 1, np.int64)
    back[entry_rows] = entry_keys
    found = int(np.count_nonzero(rows >= 0))
    distinct_rows = int(np.count_nonzero(np.bincount(rows[rows >= 0]) > 0))
    round_trip = bool(found == args.n and np.array_equal(back[rows], keys))
    collisions = args.n - distinct_rows
    ok = found == args.n and collisions == 0 and round_trip and len(table) == args.n

    t0 = time.perf_counter()
    checksum = 0.0
    for sl in parts:
        checksum += float(table.embed(keys[sl])[:, 0].sum())
    embed_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    miss_rows = table.lookup(misses)
    miss_s = time.perf_counter() - t0
    ok = ok and bool((miss_rows == -1).all())

    mem = table.memory_bytes()
    n = len(table)
    stats = table.stats
    result: dict[str, object] = {
        "bench": "embedding_table",
        "n": args.n,
        "dim": args.dim,
        "batch": args.batch,
        "insert_ids_per_s": round(args.n / insert_s),
        "insert_cpu_over_wall": round(insert_cpu / insert_s, 3),
        "lookup_ids_per_s": round(args.n / lookup_s),
        "embed_ids_per_s": round(args.n / embed_s),
        "miss_lookup_ids_per_s": round(misses.size / miss_s),
        "keys_found": found,
        "distinct_rows": distinct_rows,
        "collisions": collisions,
        "row_maps_back_to_key": round_trip,
        "ok": ok,
        "index_bytes_per_entry": round(mem["index"] / n, 2),
        "index_and_row_meta_bytes_per_entry": round((mem["index"] + mem["row_meta"]) / n, 2),
        "embedding_bytes_per_entry": round(mem["embeddings"] / n, 2),
        "total_bytes_per_entry": round(sum(mem.values()) / n, 2),
        "index_load": stats.index_load,
        "index_rebuilds": stats.index_rebuilds,
        "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "cpu_affinity": sorted(os.sched_getaffinity(0)),
    }
    width = max(len(k) for k in result)
    print(f"embedding table benchmark: n={args.n:,} dim={args.dim} batch={args.batch:,} (single thread)")
    for key, value in result.items():
        shown = f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else value
        print(f"  {key:<{width}}  {shown}")
    print(
        "  bytes counted: index = cuckoo slots (uint64 key + int32 row, empty slots included)"
        " + 1 B/bucket occupancy + 4 B/bucket insert scratch; row_meta = last_update f64 + used/dirty"
        " flags per row of capacity; embeddings = float32 row capacity; total adds pending counts"
    )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
