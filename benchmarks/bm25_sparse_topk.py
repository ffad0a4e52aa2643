"""BM25 top-k when few documents match: rank the matching documents only (issue 12, item 14).

A query whose terms occur in fewer than ``k`` documents used to sort the whole corpus (the k-th score is 0, so
every document tied at the boundary). This times the ranking step on a 1,000,000-document score vector with
``MATCHES`` nonzero scores (ties included): the whole-corpus top-k then dropping zeros, as before, against the
top-k of the matching rows (:func:`retrec.index.retriever.top_k_rows` with ``rows``), as ``BM25Index.search``
does now, and checks both give the same hits (ids, scores, tie order).

Example::

    .venv/bin/python benchmarks/bm25_sparse_topk.py            # prints ms per query, median of 7
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from retrec.index.retriever import top_k, top_k_rows

DOCS = 1_000_000
MATCHES = (100, 900, 5_000)
K = 1000


def _median_ms(fn: object, repeat: int = 7) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    rng = np.random.default_rng(0)
    ids = [f"doc{i:07d}" for i in rng.permutation(DOCS)]
    order_key = np.argsort(np.argsort(np.asarray(ids, dtype=object))).astype(np.int64)
    print(f"{DOCS:,} documents, k={K}")
    for matches in MATCHES:
        scores = np.zeros(DOCS, dtype=np.float32)
        scores[rng.choice(DOCS, matches, replace=False)] = rng.integers(1, 20, matches).astype(np.float32)

        def whole(scores: np.ndarray = scores) -> list:
            return [h for h in top_k(scores, ids, K, order_key) if h[1] > 0.0]

        def matching(scores: np.ndarray = scores) -> list:
            rows = top_k_rows(scores, K, order_key, rows=np.flatnonzero(scores > 0.0))
            return [(ids[i], float(scores[i])) for i in rows]

        assert whole() == matching()
        print(f"  {matches:>6,} matching: whole corpus {_median_ms(whole):7.1f} ms   matching only "
              f"{_median_ms(matching):6.1f} ms")


if __name__ == "__main__":
    main()
