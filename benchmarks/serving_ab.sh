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
case $out in /*) ;; *) out=$here/$out ;; esac  # absolute from here on
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
    (cd "$src" && PYTHONPATH="$src" "$py" benchmarks/serving_load.py --data "$data" --out "$out/bundles-$side" \
        --retrievers dense --batching on --concurrency 1 32 --requests 400 --seconds 20 \
        --json "$out/$side-$round.json" >/dev/null)
  done
done
"$py" - "$out" "$rounds" <<'EOF'
import json, math, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
cells = {}
for side in ("base", "head"):
    for r in range(1, rounds + 1):
        for c in json.load(open(f"{out}/{side}-{r}.json"))["cells"]:
            key = f"{c['http']}/{c['shard_placement']}/{c['retriever']}/c{c['concurrency']}"
            cells.setdefault(key, {}).setdefault(side, []).append(c["qps"])
summary, ratios = {}, []
for key, sides in sorted(cells.items()):
    base, head = statistics.mean(sides["base"]), statistics.mean(sides["head"])
    summary[key] = {"base_qps": sides["base"], "head_qps": sides["head"], "ratio": round(head / base, 3)}
    if "/floor/" not in key:  # the floor cells run no retrec code: the machine's noise
        ratios.append(head / base)
    print(f"{key:34s} base {base:8.1f}  head {head:8.1f}  head/base {head / base:.3f}")
summary["geomean_ratio_retrec_cells"] = round(math.exp(statistics.mean(map(math.log, ratios))), 3)
print(f"geometric mean head/base over the retrec cells: {summary['geomean_ratio_retrec_cells']}")
json.dump(summary, open(f"{out}/summary.json", "w"), indent=1)
EOF
