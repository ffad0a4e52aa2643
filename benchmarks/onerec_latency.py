"""OneRec generation latency per user through ONNX Runtime on one core: beam search over the semantic-ID trie.

    python benchmarks/onerec_latency.py --bundle runs/onerec-beauty --data ../shared/data/beauty --users 300

One user at a time (batch 1), test-time histories (every item before the test item), seen items excluded: the
best session of ``--items`` items (default the bundle's session length) with ``--beam`` beams (default the
bundle's), and the top-10 list (``--list-beam``, default the bundle's). Prints a table and one JSON line with
p50 / p99 milliseconds.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from retrec.process_env import configure_process

SHARED = Path(__file__).resolve().parents[2] / "shared/data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=SHARED / "beauty")
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--items", type=int, help="session length (default: the bundle's)")
    parser.add_argument("--beam", type=int, help="beam width of the session (default: the bundle's)")
    parser.add_argument("--list-beam", type=int, help="beam width of the top-10 list (default: the bundle's)")
    args = parser.parse_args()
    configure_process(1)
    from retrec.console import console, metrics_table
    from retrec.data.interactions import leave_one_out, load_interactions, user_sequences
    from retrec.runtime.onerec import OneRecRecommender

    rec = OneRecRecommender.load(args.bundle, threads=1)
    if args.beam:
        rec.beam = args.beam
    if args.list_beam:
        rec.list_beam = args.list_beam
    loo = leave_one_out(user_sequences(load_interactions(args.data)))
    histories = [[*train, valid] for train, valid in zip(loo.train, loo.valid)][: args.users]  # before the test item
    rows, out = {}, {}
    for name, run in (("session", lambda h: rec.generate_sessions([h], args.items)),
                      ("top-10 list", lambda h: rec.recommend([h], k=10))):
        run(histories[0])  # warm-up
        ms = []
        for h in histories:
            start = time.perf_counter()
            run(h)
            ms.append((time.perf_counter() - start) * 1000)
        rows[name] = {"p50 ms": float(np.percentile(ms, 50)), "p99 ms": float(np.percentile(ms, 99)),
                      "users": len(ms)}
        out[name] = rows[name]
    console.print(metrics_table(f"OneRec generation, one core, beam {rec.beam} (lists {rec.list_beam}), session "
                                f"{args.items or rec.session}",
                                rows, ["p50 ms", "p99 ms", "users"]))
    print(json.dumps({"bundle": str(args.bundle), "beam": rec.beam, "list_beam": rec.list_beam,
                      "items": args.items or rec.session, **out}))


if __name__ == "__main__":
    main()
