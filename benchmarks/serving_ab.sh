#!/usr/bin/env bash
# A/B of the serving benchmark between a base revision and the working tree, in one run on one machine.
#
# Runs benchmarks/serving_load.py (dense, batching on, c=1 and c=32) from a worktree of BASE and from this
# checkout, alternating A B A B ... for ROUNDS rounds, so both see the same machine state; prints each cell
# and the ratio of the mean c=32 QPS (this tree / BASE). Bundles are built once per tree (cached in OUT).
#
#   benchmarks/serving_ab.sh BASE [ROUNDS] [OUT]
#   benchmarks/serving_ab.sh cb6145d 3 runs/serving-ab
set -euo pipefail
base=${1:?usage: serving_ab.sh BASE [ROUNDS] [OUT]}
rounds=${2:-3}
out=${3:-runs/serving-ab}
here=$(git rev-parse --show-toplevel)
py=${PYTHON:-$here/.venv/bin/python}
data=${DATA:-$here/../shared/data/scifact}
tree=$(mktemp -d /tmp/retrec-ab-XXXX)
trap 'git -C "$here" worktree remove --force "$tree" >/dev/null 2>&1 || true' EXIT
git -C "$here" worktree add --detach "$tree" "$base" >/dev/null
mkdir -p "$out"
for round in $(seq 1 "$rounds"); do
  for side in base head; do
    src=$here; [ "$side" = base ] && src=$tree
    echo "== round $round: $side ($(git -C "$src" rev-parse --short HEAD))" >&2
    (cd "$src" && PYTHONPATH="$src" "$py" benchmarks/serving_load.py --data "$data" --out "$here/$out/bundles-$side" \
        --retrievers dense --batching on --concurrency 1 32 --requests 400 --seconds 20 \
        --json "$here/$out/$side-$round.json" >/dev/null)
  done
done
"$py" - "$out" "$rounds" <<'EOF'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
rows = {}
for side in ("base", "head"):
    for r in range(1, rounds + 1):
        cells = json.load(open(f"{out}/{side}-{r}.json"))["cells"]
        for c in cells:
            rows.setdefault((side, c["concurrency"]), []).append(c)
summary = {}
for (side, conc), cells in sorted(rows.items()):
    qps = [c["qps"] for c in cells]
    p50 = [c["p50_ms"] for c in cells]
    summary[f"{side}_c{conc}"] = {"qps": qps, "qps_mean": round(statistics.mean(qps), 1),
                                  "p50_ms": p50, "p50_ms_mean": round(statistics.mean(p50), 2)}
    print(f"{side:4s} c={conc:<3d} QPS {qps} mean {statistics.mean(qps):.1f}  p50 ms {p50}")
ratio = summary["head_c32"]["qps_mean"] / summary["base_c32"]["qps_mean"]
summary["ratio_c32_qps"] = round(ratio, 3)
print(f"dense c=32 QPS head/base = {ratio:.3f}")
json.dump(summary, open(f"{out}/summary.json", "w"), indent=1)
EOF
