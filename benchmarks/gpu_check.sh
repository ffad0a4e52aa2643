#!/usr/bin/env bash
# Every GPU path once (each trainer a few steps on cuda, FAISS GPU vs CPU, ONNX Runtime CUDA vs CPU), in under
# 8 minutes on a GPU machine; without a GPU, the same checks on the CPU (the fallback). Figures: runs/gpu_check.json
# (or $1). Run it whenever a GPU machine is lent and record the result in benchmarks/RESULTS.md.
#
#   bash benchmarks/gpu_check.sh                 # from the repository root, after `make install`
#   bash benchmarks/gpu_check.sh runs/gpu-h100.json
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
OUT=${1:-runs/gpu_check.json}
export HF_HUB_OFFLINE=1
exec timeout 480 "$PY" benchmarks/gpu_check.py --out "$OUT"
