"""A haystack of document vectors at any size: real embeddings, plus vectors drawn from a model fitted to them.

Encoding a million documents is out of reach of 2 CPU cores (~30 documents/s), so the dense index's cost at
1 M – 5 M documents is measured on imported vectors: the real embeddings we have (SciFact's documents and the
text haystack's first distractors, encoded by the same encoder) come first, then synthetic vectors from a
**Gaussian mixture fitted to the real ones**: k-means (K clusters, FAISS) on the unit vectors; per cluster its
weight, mean and the covariance of its members, shrunk toward a scaled identity (weight d / (d + n_c), so a small
cluster borrows more); a draw picks a cluster by weight, adds correlated noise (Cholesky factor) to its mean,
and is renormalised to unit length. The noise is scaled by one factor, calibrated (bisection) so that synthetic
vectors lie as close to their nearest real vector as held-out real vectors do (mean cosine): without it, draws
in 384-d land farther from every real document than real documents are from each other — easier distractors
than real ones. Deterministic by seed (chunk i from ``SeedSequence([seed, i])``).

Output: ``OUT.npy`` (float16 [N, dim], written chunk by chunk; rows 0..R-1 are the real vectors) and
``OUT.ids.txt``; a JSON report of the fit, and a realism check: the mean cosine of each vector to its nearest
real neighbour, for held-out real vectors vs synthetic ones.

Example::

    python benchmarks/vector_haystack.py --real /tmp/vec/scifact_docs.npy:/tmp/vec/scifact_ids.json \\
        --real /tmp/vec/hay_docs.npy:/tmp/vec/hay_ids.json --docs 1000000 --out /tmp/vec/haystack-1m
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import faiss
import numpy as np

log = logging.getLogger("vector_haystack")
CHUNK = 100_000


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class GaussianMixture:
    """K clusters: weights, means and shrunk covariance factors fitted on unit vectors."""

    def __init__(self, weights: np.ndarray, means: np.ndarray, factors: np.ndarray, scale: float = 1.0) -> None:
        self.weights, self.means, self.factors, self.scale = weights, means, factors, scale

    @classmethod
    def fit(cls, x: np.ndarray, k: int = 64, seed: int = 0) -> GaussianMixture:
        x = unit(x)
        d = x.shape[1]
        km = faiss.Kmeans(d, k, niter=25, seed=seed, spherical=False, verbose=False)
        km.train(x)
        _, assign = km.index.search(x, 1)
        assign = assign.ravel()
        weights, means, factors = [], [], []
        for c in range(k):
            members = x[assign == c]
            if len(members) < 2:
                continue
            mu = members.mean(axis=0)
            cov = np.cov(members - mu, rowvar=False)
            alpha = d / (d + len(members))
            cov = (1 - alpha) * cov + alpha * (np.trace(cov) / d) * np.eye(d)
            weights.append(len(members))
            means.append(mu)
            factors.append(np.linalg.cholesky(cov + 1e-8 * np.eye(d)).astype(np.float32))
        w = np.asarray(weights, np.float64)
        return cls(w / w.sum(), np.asarray(means, np.float32), np.asarray(factors, np.float32))

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        clusters = rng.choice(len(self.weights), size=n, p=self.weights)
        out = np.empty((n, self.means.shape[1]), np.float32)
        for c in np.unique(clusters):
            rows = np.flatnonzero(clusters == c)
            z = rng.standard_normal((len(rows), self.means.shape[1])).astype(np.float32)
            out[rows] = self.means[c] + self.scale * (z @ self.factors[c].T)
        return unit(out)


def calibrate(model: GaussianMixture, real: np.ndarray, target: float, steps: int = 10) -> float:
    """The noise scale at which synthetic vectors are as close to their nearest real vector (mean cosine) as
    held-out real vectors are (``target``): bisection over [0.05, 1.5]."""
    lo, hi = 0.05, 1.5
    for _ in range(steps):
        model.scale = (lo + hi) / 2
        got = nearest_real_cosine(model.sample(500, np.random.default_rng(7)), real)
        lo, hi = (lo, model.scale) if got < target else (model.scale, hi)
    model.scale = (lo + hi) / 2
    return model.scale


def load_real(specs: list[str]) -> tuple[np.ndarray, list[str]]:
    vectors, ids = [], []
    for spec in specs:
        array, id_file = spec.split(":")
        v = np.load(array)
        i = json.loads(Path(id_file).read_text())
        i = i["doc_ids"] if isinstance(i, dict) else i
        vectors.append(unit(v[:len(i)]))
        ids += i[:len(v)]
    return np.concatenate(vectors), ids


def nearest_real_cosine(probe: np.ndarray, real: np.ndarray) -> float:
    index = faiss.IndexFlatIP(real.shape[1])
    index.add(real)
    return float(index.search(unit(probe), 1)[0].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--real", action="append", required=True, help="VECTORS.npy:IDS.json (repeatable)")
    parser.add_argument("--docs", type=int, required=True, help="total documents (real + synthetic)")
    parser.add_argument("--out", type=Path, required=True, help="output prefix: OUT.npy, OUT.ids.txt, OUT.json")
    parser.add_argument("--clusters", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    real, ids = load_real(args.real)
    if len(set(ids)) != len(ids):
        raise SystemExit("duplicate ids among the real vectors")
    started = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    held = rng.permutation(len(real))
    probe, fit_on = held[:500], held[500:]
    model = GaussianMixture.fit(real[fit_on], k=args.clusters, seed=args.seed)
    target = nearest_real_cosine(real[probe], real[fit_on])
    realism = {"held_out_real": target,
               "synthetic_uncalibrated": nearest_real_cosine(model.sample(500, np.random.default_rng(10**6)),
                                                             real[fit_on])}
    scale = calibrate(model, real[fit_on], target)
    realism["synthetic"] = nearest_real_cosine(model.sample(500, np.random.default_rng(10**6)), real[fit_on])
    model = GaussianMixture.fit(real, k=args.clusters, seed=args.seed)  # the generator: fitted on all of them
    model.scale = scale
    n, d = max(args.docs, len(real)), real.shape[1]
    out = np.lib.format.open_memmap(str(args.out) + ".npy", mode="w+", dtype=np.float16, shape=(n, d))
    out[:len(real)] = real
    with open(str(args.out) + ".ids.txt", "w") as f:
        f.write("\n".join(ids) + "\n")
        for i, start in enumerate(range(len(real), n, CHUNK)):
            size = min(CHUNK, n - start)
            out[start:start + size] = model.sample(size, np.random.default_rng(np.random.SeedSequence([args.seed, i])))
            f.write("\n".join(f"synthetic-{j:08d}" for j in range(start, start + size)) + "\n")
            log.info("%d / %d vectors", start + size, n)
    out.flush()
    del out
    report = {"documents": n, "real": len(real), "dim": d, "clusters": len(model.weights), "seed": args.seed,
              "noise_scale": round(scale, 4),
              "seconds": round(time.perf_counter() - started, 1),
              "nearest_real_cosine": {k: round(v, 4) for k, v in realism.items()}}
    Path(str(args.out) + ".json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
