"""Every GPU path once, in minutes: each trainer a few steps on the GPU, FAISS on the GPU against the CPU, ONNX
Runtime's CUDA provider against the CPU. Without a GPU it runs the same checks on the CPU (the fallback) and says so.

What it writes (``--out``, JSON): the machine (torch, CUDA, GPU name, FAISS GPUs, ONNX Runtime providers), then one
record per check: ``name``, ``device`` asked and recorded, ``seconds``, ``ok`` and what was compared. A trainer's
check trains the tiny configuration of ``benchmarks/train_fingerprint.py`` through ``retrec train NAME --device
DEV`` and reads back the device and precision its bundle records. The FAISS check builds a Flat and an IVF index of
random vectors on the GPU and compares their top-10 with the CPU's; the ONNX check encodes texts with the
zero-shot MiniLM bundle through the CUDA provider and compares with the CPU provider (max abs difference).

Example::

    bash benchmarks/gpu_check.sh                     # writes runs/gpu_check.json and prints a summary
    python benchmarks/gpu_check.py --out runs/gpu.json --only dense sasrec faiss onnx
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_fingerprint import RUNS

CPU_ONLY = {"markov", "cooc", "fusion"}  # counting: numpy on the CPU whatever the machine


def machine() -> dict[str, Any]:
    import faiss
    import onnxruntime as ort
    import torch

    cuda = torch.cuda.is_available()
    return {"host": platform.node(), "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name(0) if cuda else None,
            "faiss_gpus": faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0,
            "onnxruntime_providers": ort.get_available_providers(), "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                                          time.gmtime())}


def check_trainers(work: Path, device: str, only: list[str]) -> list[dict[str, Any]]:
    from retrec.data.synthetic import SyntheticConfig, write_default_dataset

    data = write_default_dataset(work / "data", SyntheticConfig(docs=300, queries_train=40, queries_test=30,
                                                                users=150, items=400, genres=10))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = []
    for name, args in RUNS.items():
        if only and name not in only:
            continue
        asked = "cpu" if name in CPU_ONLY else device
        args = [a.format(work=work) for a in args if a not in ("--device", "cpu")]
        bundle = work / f"{name}-bundle"
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-c", "from retrec.cli import main; main()", "train", *args,
                               "--device", asked, "--data", str(data), "--out", str(bundle)],
                              env=env, capture_output=True, text=True)
        record: dict[str, Any] = {"name": f"train {name}", "device": asked,
                                  "seconds": round(time.monotonic() - started, 1), "ok": proc.returncode == 0}
        if proc.returncode == 0:
            ran = json.loads((bundle / "manifest.json").read_text()).get("metrics", {})
            record.update(recorded_device=ran.get("device"), recorded_precision=ran.get("precision"))
            record["ok"] = str(ran.get("device")).partition(":")[0] == asked  # cuda:0 for cuda
        else:
            record["error"] = (proc.stderr or proc.stdout)[-2000:]
        out.append(record)
        print(json.dumps(record), flush=True)
        if name == "sasrec":  # fusion's component: keep its bundle under the name the fusion run refers to
            (work / "sasrec").symlink_to(bundle)
    return out


def check_faiss(use_gpu: bool) -> dict[str, Any]:
    import faiss
    import numpy as np

    rng = np.random.default_rng(0)
    docs = rng.standard_normal((20_000, 64)).astype(np.float32)
    queries = rng.standard_normal((200, 64)).astype(np.float32)
    record: dict[str, Any] = {"name": "faiss", "device": "cuda" if use_gpu else "cpu", "ok": True}
    for factory in ("Flat", "IVF64,Flat"):
        cpu = faiss.index_factory(64, factory, faiss.METRIC_INNER_PRODUCT)
        cpu.train(docs)
        cpu.add(docs)
        if hasattr(cpu, "nprobe"):
            cpu.nprobe = 8
        started = time.monotonic()
        if use_gpu:
            other = faiss.index_cpu_to_all_gpus(cpu)
            if hasattr(cpu, "nprobe"):
                faiss.GpuParameterSpace().set_index_parameter(other, "nprobe", 8)
        else:
            other = faiss.deserialize_index(faiss.serialize_index(cpu))  # the fallback: a second CPU copy
        _, gi = other.search(queries, 10)
        seconds = time.monotonic() - started
        _, ci = cpu.search(queries, 10)
        overlap = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ci, gi)]))
        record[factory] = {"top10_overlap": round(overlap, 4), "seconds": round(seconds, 3)}
        record["ok"] = record["ok"] and overlap >= 0.99
    return record


def check_onnx(use_gpu: bool) -> dict[str, Any]:
    import numpy as np

    from retrec import kinds
    from retrec.models.text_encoder import zero_shot_bundle
    from retrec.runtime.onnx_session import CPU, CUDA

    bundle = zero_shot_bundle()
    texts = [f"document {i} about protein folding and cell biology, variant {i % 7}" for i in range(64)]
    load = kinds.get(kinds.DENSE_MODEL).load
    assert load is not None
    cpu = kinds.call(load, bundle, threads=2, providers=[CPU]).encode(texts, max_length=64)
    started = time.monotonic()
    other = kinds.call(load, bundle, threads=2, providers=[CUDA, CPU] if use_gpu else [CPU]).encode(texts,
                                                                                                  max_length=64)
    diff = float(np.abs(cpu - other).max())
    return {"name": "onnxruntime encoder", "device": "cuda" if use_gpu else "cpu", "max_abs_diff": diff,
            "seconds": round(time.monotonic() - started, 3), "ok": diff < 1e-3}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/gpu_check.json"), help="JSON file of the figures")
    ap.add_argument("--only", nargs="*", default=[], help="checks to run: trainer names, faiss, onnx (default all)")
    args = ap.parse_args()
    import faiss
    import onnxruntime as ort
    import torch

    gpu = torch.cuda.is_available()
    facts = machine()
    print(("GPU: " + str(facts["gpu"])) if gpu else "no CUDA GPU: the CPU fallback runs every check on the CPU",
          flush=True)
    records: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        trainers = [n for n in args.only if n in RUNS] if args.only else []
        if not args.only or trainers:
            records += check_trainers(Path(tmp), "cuda" if gpu else "cpu", trainers)
    if not args.only or "faiss" in args.only:
        records.append(check_faiss(gpu and getattr(faiss, "get_num_gpus", lambda: 0)() > 0))
        print(json.dumps(records[-1]), flush=True)
    if not args.only or "onnx" in args.only:
        records.append(check_onnx(gpu and "CUDAExecutionProvider" in ort.get_available_providers()))
        print(json.dumps(records[-1]), flush=True)
    result = {"machine": facts, "fallback": not gpu, "checks": records, "ok": all(r["ok"] for r in records)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{'all ok' if result['ok'] else 'FAILED'}: {sum(r['ok'] for r in records)}/{len(records)} checks "
          f"({'CPU fallback' if not gpu else facts['gpu']}); figures in {args.out}")
    raise SystemExit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
