"""Cost curves at scale, one command: PNGs of build time, latency and bytes per document against corpus size,
each with its fitted growth exponent (the slope of log cost on log N: 1 is linear, 0.5 is √N).

Reads what ``benchmarks/scale_text.py`` (BM25, learned sparse) and ``benchmarks/scale_vectors.py`` (the dense
``auto`` index, with exact search beside it) wrote, and writes ``benchmarks/scale_<kind>.png`` plus
``benchmarks/results/scale_exponents.json``.

Example::

    python benchmarks/scale_curves.py        # after the two scale_*.py scripts have run
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def exponent(sizes: list[float], costs: list[float]) -> float | None:
    """Least-squares slope of log(cost) on log(size); None below two points."""
    pairs = [(s, c) for s, c in zip(sizes, costs) if s and c and c > 0]
    if len(pairs) < 2:
        return None
    x, y = np.log([p[0] for p in pairs]), np.log([p[1] for p in pairs])
    return round(float(np.polyfit(x, y, 1)[0]), 3)


def series(results: Path, vectors: Path, target: float) -> dict[str, dict[str, dict[str, list[float]]]]:
    """{kind: {metric: {"N": [...], "value": [...]}}} from both results files."""
    out: dict[str, dict[str, dict[str, list[float]]]] = {}

    def add(kind: str, metric: str, n: float, value: float | None) -> None:
        if value is None:
            return
        entry = out.setdefault(kind, {}).setdefault(metric, {"N": [], "value": []})
        entry["N"].append(n)
        entry["value"].append(value)

    if results.is_file():
        for r in sorted(json.loads(results.read_text())["records"], key=lambda r: r["documents"]):
            add(r["kind"], "build_s", r["documents"], r.get("build_s"))
            add(r["kind"], "p50_ms", r["documents"], r.get("p50_ms"))
            add(r["kind"], "bytes_per_doc", r["documents"], r.get("bytes_per_doc"))
    if vectors.is_file():
        for r in sorted(json.loads(vectors.read_text()), key=lambda r: r["documents"]):
            if r.get("factory_arg") != "auto" or (r.get("auto") or {}).get("target", target) != target:
                continue  # one curve: the default index tuned to one recall target
            add("dense", "build_s", r["documents"], r.get("build_s"))
            add("dense", "p50_ms", r["documents"], r["latency_c1"]["p50_ms"])
            add("dense exact", "p50_ms", r["documents"], (r.get("exact_latency_c1") or {}).get("p50_ms"))
            auto = r.get("auto") or {}
            add("dense", "bytes_per_doc", r["documents"], auto.get("bytes_per_doc", {}).get("index"))
    return out


def plot(data: dict, out_dir: Path) -> dict[str, dict[str, float | None]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    exponents: dict[str, dict[str, float | None]] = {}
    for kind in [k for k in data if k != "dense exact"]:
        metrics = data[kind]
        fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4))
        for ax, (metric, points) in zip(np.atleast_1d(axes), metrics.items()):
            slope = exponent(points["N"], points["value"])
            exponents.setdefault(kind, {})[metric] = slope
            ax.loglog(points["N"], points["value"], "o-", label=f"{kind} (N^{slope})")
            if kind == "dense" and metric == "p50_ms" and "dense exact" in data:
                exact = data["dense exact"]["p50_ms"]
                exact_slope = exponent(exact["N"], exact["value"])
                exponents.setdefault("dense exact", {})[metric] = exact_slope
                ax.loglog(exact["N"], exact["value"], "s--", label=f"exact search (N^{exact_slope})")
            ax.set_xlabel("documents")
            ax.set_ylabel(metric)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
        fig.suptitle(f"{kind}: cost against corpus size (2 CPU cores)")
        fig.tight_layout()
        fig.savefig(out_dir / f"scale_{kind.replace(' ', '_')}.png", dpi=100)
        plt.close(fig)
    return exponents


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--text", type=Path, default=HERE / "results" / "scale_text.json")
    parser.add_argument("--vectors", type=Path, default=HERE / "results" / "scale_vectors.json")
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--target", type=float, default=0.95, help="the dense curve's recall target")
    args = parser.parse_args()
    exponents = plot(series(args.text, args.vectors, args.target), args.out)
    (HERE / "results" / "scale_exponents.json").write_text(json.dumps(exponents, indent=1))
    print(json.dumps(exponents))


if __name__ == "__main__":
    main()
