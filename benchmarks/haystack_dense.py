"""A trained dense (or sparse, ``--kind sparse``) model over SciFact inside a text haystack, through ``retrec
reindex``: the full run, the ``auto`` index's quality against exact search, and an incremental run after editing a
few documents.

Stages (each figure from this one run; results in ``--json``):

1. **full** — ``retrec reindex --kind dense --data HAYSTACK --model MODEL --variant int8 --local --json`` into a
   fresh versions root: read, encode (docs/s), assemble the default ``auto`` index (build seconds), publish, verify.
2. **quality** — the published version against exact search over the very vectors it stores (its float16
   refine store, ``encoded_documents()``, in a Flat index): recall@10 of the test queries, nDCG@10 of both
   inside the haystack (their ratio), in-process search p50/p99 at c=1 (query encoding excluded, measured beside).
   Queries are encoded by the bundle's default (fp32) model, as a server encodes them.
3. **incremental** — ``--edit`` of the documents edited (text + " (revised)") and ``--delete`` deleted, then
   ``retrec reindex`` again on the same root (its base: ``current``): wall time against the full run's, what it
   reused, and the unchanged documents' vectors compared with the base's.

Example::

    python benchmarks/haystack_dense.py --haystack /tmp/haystack-100k --model /tmp/h1/tasb --root /tmp/h1/root \\
        --json benchmarks/results/haystack_dense.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale_text import latency_ms, peak_rss_mb, test_queries

RETREC = [str(Path(sys.executable).parent / "retrec")]


def run_reindex(args: argparse.Namespace, data: Path) -> dict[str, Any]:
    """One ``retrec reindex`` in a subprocess: its JSON report plus the command's wall time and peak RSS."""
    command = [*RETREC, "reindex", "--kind", args.kind, "--data", str(data), "--model", str(args.model),
               "--out", str(args.root), "--local", "--json"]
    if args.variant:
        command += ["--variant", args.variant]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"reindex failed ({done.returncode}):\n{done.stderr[-3000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return {"command": " ".join(command[1:]), "wall_s": round(wall, 1), "report": report}


def edit_corpus(haystack: Path, out: Path, edit: float, delete: float, seed: int) -> tuple[dict[str, int], set[str]]:
    """``out``: the haystack with a seeded ``edit`` fraction of documents revised and ``delete`` removed (the
    judged base documents are left alone, so the test queries keep their answers)."""
    base = json.loads((haystack / "haystack.json").read_text())["base_docs"]
    lines = (haystack / "corpus.jsonl").read_text().splitlines()
    rng = np.random.default_rng(seed)
    distractors = np.arange(base, len(lines))
    picked = rng.permutation(distractors)
    edited = set(picked[: int(edit * len(lines))].tolist())
    deleted = set(picked[int(edit * len(lines)): int(edit * len(lines)) + int(delete * len(lines))].tolist())
    out.mkdir(parents=True, exist_ok=True)
    edited_ids: set[str] = set()
    with open(out / "corpus.jsonl", "w") as f:
        for i, line in enumerate(lines):
            if i in deleted:
                continue
            if i in edited:
                row = json.loads(line)
                row["text"] += " (revised)"
                edited_ids.add(row["_id"])
                line = json.dumps(row)
            f.write(line + "\n")
    for name in ("queries.jsonl", "qrels", "haystack.json"):
        src, dst = haystack / name, out / name
        if not dst.exists():
            (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
    return {"documents": len(lines) - len(deleted), "edited": len(edited), "deleted": len(deleted)}, edited_ids


def quality(args: argparse.Namespace, version: Path) -> dict[str, Any]:
    """The version's own (``auto``) search against exact search over its stored vectors, on the test queries
    (a sparse index is exact already: its nDCG@10 and latency only)."""
    import faiss

    from retrec.index.generic import open_index
    from retrec.pipelines.eval.retrieval import evaluate_hits

    retriever = open_index(version)
    index = retriever.index
    queries, qrels = test_queries(args.haystack, "test")
    qids = list(queries)
    start = time.perf_counter()
    qvec = retriever.encoder.encode_queries([queries[q] for q in qids])
    encode_ms = (time.perf_counter() - start) * 1000 / len(qids)
    if args.kind != "dense":
        found = index.search(qvec, 100)
        ndcg = evaluate_hits(args.kind, dict(zip(qids, found)), qrels, measures=("nDCG@10",)).metrics["nDCG@10"]
        one = [qvec[i: i + 1] for i in range(len(qids))]
        return {"queries": len(qids), "ndcg_at_10": round(ndcg, 4), "query_encoding_ms": round(encode_ms, 2),
                "search": latency_ms(lambda q: index.search(q, 10), one, args.samples),
                "bytes_on_disk": sum(p.stat().st_size for p in version.rglob("*") if p.is_file())}
    ids, stored = index.encoded_documents()
    flat = faiss.IndexFlatIP(stored.shape[1])
    flat.add(np.asarray(stored, np.float32))
    k = 100
    exact_scores, exact_rows = flat.search(qvec, k)
    approx = index.search(qvec, k)
    exact = [[(ids[r], float(s)) for r, s in zip(rows, scores)] for rows, scores in zip(exact_rows, exact_scores)]
    recall = np.mean([len({d for d, _ in a[:10]} & {d for d, _ in e[:10]}) / 10 for a, e in zip(approx, exact)])
    ndcg_auto = evaluate_hits("auto", dict(zip(qids, approx)), qrels, measures=("nDCG@10",)).metrics["nDCG@10"]
    ndcg_exact = evaluate_hits("exact", dict(zip(qids, exact)), qrels, measures=("nDCG@10",)).metrics["nDCG@10"]
    one = [qvec[i: i + 1] for i in range(len(qids))]
    manifest = json.loads((version / "manifest.json").read_text())
    flat_latency = latency_ms(lambda q: flat.search(q, 10), one, 100)
    return {"queries": len(qids), "recall_at_10_vs_exact": round(float(recall), 4),
            "ndcg_at_10": round(ndcg_auto, 4), "ndcg_at_10_exact": round(ndcg_exact, 4),
            "ndcg_ratio": round(ndcg_auto / ndcg_exact, 4), "search": latency_ms(lambda q: index.search(q, 10), one,
                                                                                 args.samples),
            "exact_search": flat_latency, "query_encoding_ms": round(encode_ms, 2),
            "auto": manifest["config"].get("auto"), "factory": manifest["config"].get("factory"),
            "search_params": manifest["config"].get("search_params")}


def unchanged_vectors(before: Path, after: Path, edited_ids: set[str]) -> dict[str, Any]:
    """The base's and the incremental version's vectors of the documents neither edited nor deleted."""
    from retrec.index.faiss_index import FaissIndex

    a_ids, a = FaissIndex.load(before, use_gpu=False).encoded_documents()  # type: ignore[misc]
    b_ids, b = FaissIndex.load(after, use_gpu=False).encoded_documents()  # type: ignore[misc]
    rows = {d: i for i, d in enumerate(a_ids)}
    same = [(rows[d], j) for j, d in enumerate(b_ids) if d in rows and d not in edited_ids]
    left, right = zip(*same)
    diff = np.abs(a[list(left)].astype(np.float32) - b[list(right)].astype(np.float32)).max()
    return {"compared": len(same), "max_abs_diff": float(diff)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--haystack", type=Path, required=True, help="retrec data haystack folder")
    parser.add_argument("--model", type=Path, required=True, help="the dense bundle (retrec train dense)")
    parser.add_argument("--root", type=Path, required=True, help="versions root (a fresh one for the full run)")
    parser.add_argument("--kind", default="dense", choices=("dense", "sparse"), help="the index kind")
    parser.add_argument("--no-incremental", action="store_true", help="stop after the quality stage")
    parser.add_argument("--variant", default="int8", help="model variant that encodes the documents ('' = fp32)")
    parser.add_argument("--edit", type=float, default=0.01, help="fraction of documents edited")
    parser.add_argument("--delete", type=float, default=0.001, help="fraction of documents deleted")
    parser.add_argument("--samples", type=int, default=300, help="single-query latency samples")
    parser.add_argument("--skip-full", action="store_true", help="use the root's current version as the full run")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    record: dict[str, Any] = {
        "benchmark": "haystack_dense", "date": _dt.date.today().isoformat(), "command": " ".join(sys.argv),
        "machine": f"{platform.node()}, {os.cpu_count()} CPUs", "haystack": str(args.haystack),
        "model": str(args.model), "variant": args.variant or "fp32"}

    def save() -> None:
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(record, indent=1) + "\n")
        print(json.dumps(record)[:4000], flush=True)

    if not args.skip_full:
        if args.root.exists() and any(args.root.iterdir()):
            raise SystemExit(f"{args.root} is not empty: the full run needs a fresh versions root")
        record["full"] = run_reindex(args, args.haystack)
        save()
    full_version = (args.root / "current").resolve()
    record["quality"] = quality(args, full_version)
    save()
    if args.no_incremental:
        return
    edited_dir = args.root.parent / f"{args.root.name}-edited"
    shutil.rmtree(edited_dir, ignore_errors=True)
    record["edit"], edited_ids = edit_corpus(args.haystack, edited_dir, args.edit, args.delete, seed=0)
    record["incremental"] = run_reindex(args, edited_dir)
    new_version = (args.root / "current").resolve()
    record["incremental"]["unchanged_vectors"] = unchanged_vectors(full_version, new_version, edited_ids)
    if "full" in record:
        record["incremental"]["ratio_to_full"] = round(record["incremental"]["wall_s"] / record["full"]["wall_s"], 4)
    record["peak_rss_mb_this_process"] = round(peak_rss_mb(), 1)
    save()


if __name__ == "__main__":
    main()
