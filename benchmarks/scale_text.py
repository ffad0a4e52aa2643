"""BM25 and the learned-sparse index at scale: build time, memory, bytes on disk, latency, QPS, nDCG@10.

A haystack folder (``retrec data haystack``: the base BEIR corpus first, then distractors) serves every size: size
N takes the base documents plus the first N distractors. Each (kind, N) runs in a fresh subprocess, so its peak RSS
is its own. Records (one per kind and N) are written to ``--out`` as they finish.

- ``bm25``: :class:`retrec.index.bm25_index.BM25Index` on the texts (title + text). Latency: one query at a time,
  in-process, k=10, over the base's test queries (repeated to ``--samples``); QPS: ``--threads`` threads searching
  at once; nDCG@10 and R@100 of the test queries inside the haystack (:func:`evaluate_hits`, k=1000).
- ``sparse``: :mod:`retrec.index.sparse_index` on synthetic SPLADE-shaped vectors (no encoder needed): 100-200
  nonzeros a document over a 30,522-term vocabulary with Zipf term frequencies, queries of 5-30 terms. No nDCG
  (the vectors are random); the cost is what is measured.

Example::

    python benchmarks/scale_text.py --haystack /tmp/haystack-1m --sizes 10000,100000,1000000 \\
        --out benchmarks/results/scale_text.json
    python benchmarks/scale_text.py --haystack /tmp/haystack-100k --sizes 100000 --kinds sparse --out /tmp/s.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

log = logging.getLogger("scale_text")
SPLADE_VOCAB = 30_522


def rss_mb() -> float:
    """This process's resident memory now (MiB), from /proc (0 where there is none)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cpu_s() -> float:
    """CPU seconds used by this process so far (user + system): on a shared machine, wall time is not all ours."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def base_docs(haystack: Path, given: int | None) -> int:
    """How many base documents open the haystack's corpus.jsonl (``--base-docs``, else haystack.json)."""
    if given is not None:
        return given
    meta = haystack / "haystack.json"
    if meta.is_file():
        return int(json.loads(meta.read_text())["base_docs"])
    raise SystemExit(f"{meta}: not found; pass --base-docs (the number of base documents that open corpus.jsonl)")


def read_head(corpus: Path, count: int) -> tuple[list[str], list[str]]:
    """The first ``count`` documents of a BEIR corpus.jsonl: ids and texts (title and text joined by a space)."""
    ids: list[str] = []
    texts: list[str] = []
    with corpus.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if len(ids) == count:
                break
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SystemExit(f"{corpus}:{lineno}: malformed JSON ({exc.msg})") from None
            ids.append(str(obj["_id"]))
            title = obj.get("title") or ""
            texts.append(f"{title} {obj['text']}".strip() if title else obj["text"])
    if len(ids) < count:
        raise SystemExit(f"{corpus}: has {len(ids)} documents, fewer than the {count} asked for")
    return ids, texts


def test_queries(haystack: Path, split: str) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    """The judged queries of ``split`` and their judgements."""
    from retrec.data.beir import qrels_to_dict, read_beir_queries, read_qrels_tsv

    qrels = qrels_to_dict(read_qrels_tsv(haystack / "qrels" / f"{split}.tsv")[0])
    queries = read_beir_queries(haystack / "queries.jsonl")
    texts = dict(zip(queries.column("query_id").to_pylist(), queries.column("text").to_pylist()))
    return {q: texts[q] for q in qrels if q in texts}, qrels


def latency_ms(search_one: Callable[[Any], object], queries: Sequence[Any], samples: int) -> dict[str, float]:
    """p50/p99/mean of one query at a time, cycling through ``queries`` for ``samples`` searches (after 20)."""
    for q in queries[:20]:
        search_one(q)
    times = []
    for i in range(samples):
        start = time.perf_counter()
        search_one(queries[i % len(queries)])
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return {"p50_ms": round(statistics.median(times), 3), "p99_ms": round(times[int(0.99 * (len(times) - 1))], 3),
            "mean_ms": round(statistics.fmean(times), 3), "samples": len(times)}


def concurrent_qps(search_one: Callable[[Any], object], queries: Sequence[Any], threads: int, total: int) -> float:
    """Queries per second with ``threads`` threads each searching one query at a time."""
    with ThreadPoolExecutor(threads) as pool:
        start = time.perf_counter()
        list(pool.map(search_one, (queries[i % len(queries)] for i in range(total))))
        return round(total / (time.perf_counter() - start), 1)


def disk_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def bm25_record(args: argparse.Namespace, size: int) -> dict[str, Any]:
    from retrec.index.bm25_index import BM25Index
    from retrec.pipelines.eval.retrieval import evaluate_hits

    count = base_docs(args.haystack, args.base_docs) + size
    start = time.perf_counter()
    ids, texts = read_head(args.haystack / "corpus.jsonl", count)
    read_s = time.perf_counter() - start
    before = rss_mb()
    start, cpu = time.perf_counter(), cpu_s()
    index = BM25Index.build(ids, texts)
    build_s, build_cpu = time.perf_counter() - start, cpu_s() - cpu
    peak = peak_rss_mb()
    del texts
    work = Path(tempfile.mkdtemp(prefix="scale-text-", dir=args.work))
    try:
        start = time.perf_counter()
        index.save(work / "bm25")
        save_s = time.perf_counter() - start
        on_disk = disk_bytes(work / "bm25")
        start = time.perf_counter()
        index = BM25Index.load(work / "bm25")
        load_s = time.perf_counter() - start
    finally:
        shutil.rmtree(work, ignore_errors=True)
    queries, qrels = test_queries(args.haystack, args.split)
    texts_q = list(queries.values())
    start = time.perf_counter()
    run = dict(zip(queries, index.search(texts_q, 1000)))
    metrics = evaluate_hits("bm25", run, qrels, measures=("nDCG@10", "R@100"), seconds=time.perf_counter() - start)
    m = index.matrix
    return {"kind": "bm25", "distractors": size, "documents": count, "vocabulary": len(m.vocabulary),
            "postings": len(m.data), "read_s": round(read_s, 2), "build_s": round(build_s, 2),
            "build_cpu_s": round(build_cpu, 2), "docs_per_s": round(count / build_s, 1),
            "rss_before_build_mb": round(before, 1),
            "peak_rss_mb": round(peak, 1), "rss_growth_mb": round(peak - before, 1),
            "disk_bytes": on_disk, "bytes_per_doc": round(on_disk / count, 1), "save_s": round(save_s, 2),
            "load_s": round(load_s, 2), **latency_ms(lambda q: index.search([q], 10), texts_q, args.samples),
            "stages_p50_ms": bm25_stages(index, texts_q),
            "qps_threads": args.threads,
            "qps": concurrent_qps(lambda q: index.search([q], 10), texts_q, args.threads, max(300, args.samples)),
            "nDCG@10": round(metrics.metrics["nDCG@10"], 6), "R@100": round(metrics.metrics["R@100"], 6),
            "queries": len(texts_q)}


def bm25_stages(index: Any, queries: Sequence[str]) -> dict[str, float]:
    """Median ms of a search's stages: analysing the query, accumulating the postings, selecting the top 10."""
    from retrec.index.bm25_index import top_rows

    times: dict[str, list[float]] = {"tokenize": [], "accumulate": [], "top_k": []}
    for q in queries:
        t0 = time.perf_counter()
        ids = index.term_ids(q)
        t1 = time.perf_counter()
        s = index._accumulate(ids)
        t2 = time.perf_counter()
        top_rows(s, 10, index._order_key, index._shortest_list(ids, 10))
        t3 = time.perf_counter()
        for name, value in zip(times, (t1 - t0, t2 - t1, t3 - t2)):
            times[name].append(value * 1000)
    return {name: round(statistics.median(v), 3) for name, v in times.items()}


def splade_like(count: int, seed: int, terms: tuple[int, int], vocab: int = SPLADE_VOCAB,
                zipf: float = 1.1) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` sparse vectors of ``terms`` (low, high) distinct term ids each, drawn with Zipf frequencies (the
    same term ranking for every seed: documents and queries share their frequent terms), log-normal weights
    (SPLADE-like magnitudes, mostly 0.1-3)."""
    p = 1.0 / np.arange(1, vocab + 1) ** zipf
    cdf = np.cumsum(p / p.sum())
    term_of_rank = np.random.default_rng(12345).permutation(vocab)
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, count, 10_000):
        n = min(10_000, count - start)
        want = rng.integers(terms[0], terms[1] + 1, n)
        draws = np.sort(term_of_rank[np.minimum(np.searchsorted(cdf, rng.random((n, 2 * terms[1]))), vocab - 1)],
                        axis=1)
        priority = rng.random(draws.shape)
        priority[:, 1:][draws[:, 1:] == draws[:, :-1]] = 2.0  # a repeat: never picked
        order = np.argsort(priority, axis=1)[:, :terms[1]]
        picked, fresh = np.take_along_axis(draws, order, 1), np.take_along_axis(priority, order, 1) < 2.0
        for row, k, ok in zip(picked, want, fresh):
            ids = np.sort(row[ok][:k]).astype(np.int64)
            out.append((ids, rng.lognormal(-0.5, 0.7, len(ids)).astype(np.float32)))
    return out


def sparse_record(args: argparse.Namespace, size: int) -> dict[str, Any]:
    from retrec.index.sparse_index import assemble_index, load_index

    count = base_docs(args.haystack, args.base_docs) + size
    start = time.perf_counter()
    docs = splade_like(count, 0, (100, 200))
    queries = splade_like(300, 1, (5, 30))
    gen_s = time.perf_counter() - start
    ids = [f"doc-{i:08d}" for i in range(count)]
    encoder = SimpleNamespace(manifest={"name": "synthetic", "version": "v1", "dim": SPLADE_VOCAB,
                                        "similarity": "dot", "path": None})
    before = rss_mb()
    start, cpu = time.perf_counter(), cpu_s()
    index = assemble_index(ids, docs, encoder=encoder)
    build_s, build_cpu = time.perf_counter() - start, cpu_s() - cpu
    peak = peak_rss_mb()
    del docs
    work = Path(tempfile.mkdtemp(prefix="scale-text-", dir=args.work))
    try:
        start = time.perf_counter()
        index.save(work / "sparse")
        save_s = time.perf_counter() - start
        on_disk = disk_bytes(work / "sparse")
        start = time.perf_counter()
        index = load_index(work / "sparse")
        load_s = time.perf_counter() - start
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"kind": "sparse", "distractors": size, "documents": count, "synthetic": True,
            "postings": index.postings(), "generate_s": round(gen_s, 2), "build_s": round(build_s, 2),
            "build_cpu_s": round(build_cpu, 2), "docs_per_s": round(count / build_s, 1),
            "rss_before_build_mb": round(before, 1),
            "peak_rss_mb": round(peak, 1), "rss_growth_mb": round(peak - before, 1), "disk_bytes": on_disk,
            "bytes_per_doc": round(on_disk / count, 1), "save_s": round(save_s, 2), "load_s": round(load_s, 2),
            **latency_ms(lambda q: index.search([q], 10), queries, args.samples), "qps_threads": args.threads,
            "qps": concurrent_qps(lambda q: index.search([q], 10), queries, args.threads, max(300, args.samples))}


def run_worker(args: argparse.Namespace) -> None:
    record = (bm25_record if args.kind == "bm25" else sparse_record)(args, args.size)
    record.update(python=sys.version.split()[0], cpus=os.cpu_count())
    Path(args.record).write_text(json.dumps(record))


def run_all(args: argparse.Namespace) -> None:
    records: list[dict[str, Any]] = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for kind in args.kinds.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
                record_path = Path(f.name)
            cmd = [sys.executable, __file__, "--worker", "--kind", kind, "--size", str(size), "--record",
                   str(record_path), "--haystack", str(args.haystack), "--samples", str(args.samples),
                   "--threads", str(args.threads), "--split", args.split, "--work", str(args.work)]
            if args.base_docs is not None:
                cmd += ["--base-docs", str(args.base_docs)]
            log.info("%s at %d distractors ...", kind, size)
            done = subprocess.run(cmd, check=False)
            if done.returncode != 0:
                records.append({"kind": kind, "distractors": size, "error": f"exit code {done.returncode}"})
            else:
                records.append(json.loads(record_path.read_text()))
            record_path.unlink(missing_ok=True)
            log.info("%s", json.dumps(records[-1]))
            args.out.write_text(json.dumps({"haystack": str(args.haystack), "records": records}, indent=1) + "\n")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--haystack", type=Path, required=True, help="a BEIR folder: base documents first")
    parser.add_argument("--sizes", default="10000,30000,100000,1000000", help="distractor counts, comma-separated")
    parser.add_argument("--kinds", default="bm25,sparse", help="bm25 and/or sparse, comma-separated")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/scale_text.json"))
    parser.add_argument("--base-docs", type=int, default=None, help="default: haystack.json's base_docs")
    parser.add_argument("--samples", type=int, default=300, help="single-query latency samples")
    parser.add_argument("--threads", type=int, default=32, help="concurrent searching threads for QPS")
    parser.add_argument("--split", default="test")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()), help="where indexes are saved")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--kind", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--record", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.worker:
        run_worker(args)
    else:
        run_all(args)


if __name__ == "__main__":
    main()
