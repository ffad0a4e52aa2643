#!/usr/bin/env bash
# Platform checks on BEIR SciFact with a trained dense bundle (issue 11, acceptance 2-4), in one run:
#   1. BM25 and zero-shot dense through `retrec eval` (figures that must not move: 0.6762 / 0.6451);
#   2. `retrec index dense --model BUNDLE`, then `retrec eval --index` == `retrec eval --retriever dense --model`
#      (ids identical, scores within 1e-6);
#   3. offline hybrid BM25 + trained dense (RRF and min-max, weights tuned on train: SciFact has no dev qrels),
#      beside the single retrievers with --compare;
#   4. the served hybrid (Ray Serve, 127.0.0.1) returns the same ranking for every test query.
#
#   benchmarks/platform_scifact.sh BUNDLE [OUT]      e.g. benchmarks/platform_scifact.sh runs/dense-25 runs/platform
set -euo pipefail
bundle=${1:?usage: platform_scifact.sh BUNDLE [OUT]}
out=${2:-runs/platform}
here=$(git rev-parse --show-toplevel)
data=${DATA:-$here/../shared/data/scifact}
retrec=${RETREC:-$here/.venv/bin/retrec}
py=${PYTHON:-$here/.venv/bin/python}
mkdir -p "$out"
"$retrec" eval --data "$data" --retriever bm25 --json > "$out/bm25.json"
"$retrec" eval --data "$data" --retriever dense --json > "$out/dense-zero-shot.json"
[ -d "$out/idx-bm25" ] || "$retrec" index bm25 --data "$data" --out "$out/idx-bm25"
[ -d "$out/idx-dense" ] || "$retrec" index dense --data "$data" --model "$bundle" --out "$out/idx-dense"
"$retrec" eval --data "$data" --index "$out/idx-dense" --json --run-out "$out/index.run" > "$out/dense-index.json"
"$retrec" eval --data "$data" --retriever dense --model "$bundle" --json --run-out "$out/memory.run" \
  > "$out/dense-memory.json"
"$py" - "$out/index.run" "$out/memory.run" > "$out/index-vs-memory.json" <<'EOF'
import json, sys
from retrec.data.trec import read_run
a, b = read_run(sys.argv[1]), read_run(sys.argv[2])
ids_equal = all(list(a[q]) == list(b[q]) for q in a) and set(a) == set(b)
diff = max(abs(a[q][d] - b[q][d]) for q in a for d in a[q])
print(json.dumps({"queries": len(a), "ids_identical": ids_equal, "max_score_diff": diff}))
assert ids_equal and diff <= 1e-6, (ids_equal, diff)
EOF
for fusion in rrf minmax; do
  "$retrec" eval --data "$data" --retriever hybrid --component "$out/idx-bm25" --component "$out/idx-dense" \
    --fusion "$fusion" --tune-weights --compare --json > "$out/hybrid-$fusion.json"
  weights=$("$py" -c "import json,sys; w=json.load(open(sys.argv[1]))['systems']['hybrid']['tuned']['weights']; \
print(' '.join(f'--weight {k}={v}' for k, v in w.items()))" "$out/hybrid-$fusion.json")
  # served components are named as the offline ones: by their index folders
  # shellcheck disable=SC2086
  "$py" "$here/benchmarks/hybrid_served.py" --data "$data" --index "idx-bm25=$out/idx-bm25" \
    --index "idx-dense=$out/idx-dense" --fusion "$fusion" $weights --k 10 --json "$out/served-$fusion.json"
done
cat "$out"/bm25.json "$out"/dense-zero-shot.json "$out"/index-vs-memory.json
