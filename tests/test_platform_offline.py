"""The offline half of the platform contract: kinds defined only under tests/ run through `retrec index`,
`retrec eval` / `eval-rec`, hybrid fusion and `retrec.load` with no edit under retrec/; a dense index
version evaluates exactly as the in-memory build; run files, qrels files, measures and fusion of runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import retrec
import tests.toy_kinds as toy
from retrec.bundle import BundleError, read_manifest
from retrec.cli import app
from retrec.data.beir import load_retrieval_data
from retrec.data.interactions import leave_one_out, load_interactions, user_sequences
from retrec.data.trec import rank_scores, read_run
from retrec.index.bm25_index import BM25Index
from retrec.index.fusion import minmax, rrf
from tests.tiny_models import tiny_dense_encoder

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


def _invoke(args: list[str]) -> tuple[dict, str]:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


def _json(args: list[str]) -> dict:
    return _invoke(args)[0]


def _one(args: list[str], err: bool = False) -> Any:
    """The one system of a ``--json`` report (one shape for one system or several), with stderr if ``err``."""
    out, stderr = _invoke(args)
    (system,) = out["systems"]
    return (system, stderr) if err else system


def _named(out: dict, name: str) -> dict:
    (system,) = [s for s in out["systems"] if s.get("retriever", s.get("model")) == name]
    return system


def _fails(args: list[str], message: str) -> None:
    result = runner.invoke(app, [str(a) for a in args])
    flat = " ".join(result.output.replace("│", " ").split())  # no error-box borders or line wraps
    assert result.exit_code == 2 and message in flat, result.output


def _plugin_cli(args: list) -> subprocess.CompletedProcess:
    """``retrec ARGS`` in a fresh process that loads the toy kinds as a plugin (from the repository root)."""
    env = {**os.environ, "RETREC_PLUGINS": "tests.toy_kinds", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", "from retrec.cli import main; main()", *map(str, args)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)


def _ranked(path: Path) -> dict[str, list[tuple[str, float]]]:
    return {q: rank_scores(docs) for q, docs in read_run(path).items()}


def test_toy_retriever_kind_through_index_eval_hybrid_and_load(default_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "toy-index"
    result = runner.invoke(app, ["index", "toy", "--data", str(default_data), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert read_manifest(out).kind == toy.TOY_INDEX and not list(tmp_path.glob(".toy-index.*"))

    built = _one(["eval", "--data", default_data, "--retriever", "toy", "--json", "--run-out", tmp_path / "a.run"])
    opened = _one(["eval", "--data", default_data, "--index", out, "--json", "--run-out", tmp_path / "b.run"])
    assert built["retriever"] == opened["retriever"] == "toy" and 0.0 < built["nDCG@10"] < 1.0
    assert {m: built[m] for m in ("nDCG@10", "AP", "R@1000")} == {m: opened[m] for m in ("nDCG@10", "AP", "R@1000")}
    assert _ranked(tmp_path / "a.run") == _ranked(tmp_path / "b.run")

    # the hybrid is RRF (rrf_k 60, weights 1) of each component's top max(k, depth) offline
    _json(["eval", "--data", default_data, "--retriever", "hybrid", "--component", "toy", "--component", "bm25",
           "--k", 50, "--json", "--run-out", tmp_path / "h.run"])
    collection = load_retrieval_data(default_data)
    ids, texts = collection.doc_texts()
    queries = collection.query_texts()
    qids = list(queries)
    toy_hits = toy.build_toy_index(ids, texts).search([queries[q] for q in qids], 100)
    bm25_hits = BM25Index.build(ids, texts).search([queries[q] for q in qids], 100)
    want = {q: rrf({"toy": t, "bm25": b}, k=50, rrf_k=60.0) for q, t, b in zip(qids, toy_hits, bm25_hits)}
    got = _ranked(tmp_path / "h.run")
    assert [[d for d, _ in got[q]] for q in qids] == [[d for d, _ in want[q]] for q in qids]
    assert all(np.allclose([s for _, s in got[q]], [s for _, s in want[q]], atol=1e-9) for q in qids)

    folder = _one(["eval", "--data", default_data, "--retriever", "hybrid", "--component", out, "--component",
                    "bm25", "--k", 50, "--json", "--run-out", tmp_path / "h2.run"])
    assert folder["components"] == ["toy-index", "bm25"] and _ranked(tmp_path / "h2.run") == got
    _fails(["eval", "--data", default_data, "--retriever", "hybrid", "--component", "bm25", "--component",
            tmp_path / "nope"], "is neither a retriever")

    loaded = retrec.load(out)
    assert loaded.search([queries[qids[0]]], 10)[0] == toy_hits[0][:10]


def test_toy_recommender_kind_through_train_eval_rec_and_load(default_data: Path, tmp_path: Path) -> None:
    """A kind defined only in tests/ is trained by ``retrec train toy`` (the plugin named in $RETREC_PLUGINS),
    evaluated by ``retrec eval-rec`` and loaded by ``retrec.load``; serving it: tests/serving/test_plugin_kinds.py."""
    sequences = user_sequences(load_interactions(default_data))
    bundle = tmp_path / "toypop"
    trained = _plugin_cli(["train", "toy", "--data", default_data, "--out", bundle, "--min-count", "1"])
    assert trained.returncode == 0, trained.stderr
    assert read_manifest(bundle).config["train"] == {"min_count": 1, "device": "cpu", "precision": "fp32"}
    out = _one(["eval-rec", "--data", default_data, "--model", bundle, "--json"])
    # independent check of HR@10: the toy generates its 100 most popular items; seen ones are excluded
    rec = retrec.load(bundle)
    loo = leave_one_out(sequences)
    hits = []
    for train, valid, test in zip(loo.train, loo.valid, loo.test):
        seen = {*train, valid}
        listed = [i for i in rec.ranked[:rec.generate_k] if i not in seen]
        hits.append(test in listed[:10])
    assert out["users"] == len(loo.users) and out["HR@10"] == pytest.approx(np.mean(hits), abs=1e-12)
    from retrec.pipelines.eval.recommenders import catalogue_scorer, vocabulary_of

    vocab = vocabulary_of(loo)
    seen = vocab.encode([rec.ranked[0], rec.ranked[2]])
    masked, kept = (catalogue_scorer(rec, vocab, exclude_seen=e)([seen])[0] for e in (True, False))
    assert np.isneginf(masked[seen]).all() and np.isfinite(kept[seen]).all()  # exclude_seen reaches the model
    history = [rec.ranked[0], rec.ranked[2]]
    top = rec.recommend([history], k=3)[0]
    assert [i for i, _ in top] == [rec.ranked[1], *rec.ranked[3:5]]
    _fails(["eval-rec", "--data", default_data, "--model", "toypop"], "give the bundle's folder")
    _fails(["eval-rec", "--data", default_data, "--model", "markov", "--protocol", "x"], "is not one of")


def test_dense_index_version_equals_in_memory_build(default_data: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETREC_CACHE", str(tmp_path / "cache"))
    encoder = tiny_dense_encoder(tmp_path / "encoder")
    index = tmp_path / "dense"
    result = runner.invoke(app, ["index", "dense", "--data", str(default_data / "corpus.parquet"), "--model",
                                 str(encoder), "--out", str(index), "--shards", "2"])
    assert result.exit_code == 0, result.output
    manifest = read_manifest(index)
    assert manifest.config["encoder"]["path"] == str(encoder.resolve()) and manifest.config["shards"] == 2

    opened = _one(["eval", "--data", default_data, "--index", index, "--json", "--run-out", tmp_path / "a.run"])
    built = _one(["eval", "--data", default_data, "--retriever", "dense", "--model", encoder, "--json",
                   "--run-out", tmp_path / "b.run"])
    assert opened["retriever"] == built["retriever"] == "dense"
    a, b = _ranked(tmp_path / "a.run"), _ranked(tmp_path / "b.run")
    assert a.keys() == b.keys()
    for q in a:
        assert [d for d, _ in a[q]] == [d for d, _ in b[q]]
        np.testing.assert_allclose([s for _, s in a[q]], [s for _, s in b[q]], rtol=0, atol=1e-6)

    other = tiny_dense_encoder(tmp_path / "other", dim=8)
    _fails(["eval", "--data", default_data, "--index", index, "--model", other], "does not fit index")
    with pytest.raises(BundleError, match="does not fit index"):
        retrec.load(index, model=other)
    _fails(["eval", "--data", default_data, "--retriever", "bm25", "--model", encoder], "bm25 takes no model")
    _fails(["index", "dense", "--data", default_data, "--model", encoder, "--out", index], "written once")
    query = next(iter(load_retrieval_data(default_data).query_texts().items()))
    assert retrec.load(encoder, threads=1).encode_queries(["scurvy"]).shape == (1, 16)
    loaded = retrec.load(index, threads=1).search([query[1]], 5)[0]
    assert [d for d, _ in loaded] == [d for d, _ in a[query[0]][:5]]
    np.testing.assert_allclose([s for _, s in loaded], [s for _, s in a[query[0]][:5]], rtol=0, atol=1e-6)


def test_run_files_missing_queries_qrels_file_measures_and_fuse(default_data: Path, tmp_path: Path) -> None:
    full = tmp_path / "bm25.run"
    base = _one(["eval", "--data", default_data, "--retriever", "bm25", "--json", "--run-out", full,
                  "--per-query", tmp_path / "pq.json"])
    per_query = json.loads((tmp_path / "pq.json").read_text())["bm25"]
    lines = full.read_text().splitlines()
    dropped = lines[0].split()[0]
    cut = tmp_path / "cut.run"
    cut.write_text("\n".join([ln for ln in lines if ln.split()[0] != dropped] + ["unjudged Q0 D1 1 1.0 x"]) + "\n")
    out, err = _one(["eval", "--data", default_data, "--run", cut, "--json"], err=True)
    n = base["queries"]
    assert out["queries"] == n
    assert out["nDCG@10"] == pytest.approx((base["nDCG@10"] * n - per_query[dropped]["nDCG@10"]) / n, abs=1e-12)
    assert "1 judged queries have no hits in the run and score 0" in err and "are ignored" in err
    assert len(out["warnings"]) == 2
    only_unjudged = tmp_path / "bad.run"
    only_unjudged.write_text("nosuchquery Q0 D1 1 1.0 x\n")
    _fails(["eval", "--data", default_data, "--run", only_unjudged], "none of the run's 1 queries is judged")

    qrels = default_data / "qrels" / "test.parquet"
    alone = _json(["eval", "--qrels", qrels, "--run", full, "--run", cut, "--measure", "P@5", "--measure",
                   "nDCG@20", "--compare", "--json"])
    system = _named(alone, "bm25.run")
    assert system["nDCG@10"] == base["nDCG@10"] and 0.0 < system["P@5"] <= 1.0 and "nDCG@20" in system
    assert alone["comparisons"][0]["measure"] == "P@5"
    _fails(["eval", "--run", full], "--qrels FILE")
    train = _one(["eval", "--data", default_data, "--qrels", default_data / "qrels" / "train.parquet",
                   "--retriever", "bm25", "--json"])
    assert train["queries"] == 300 and train["nDCG@10"] != base["nDCG@10"]  # the file's queries, not the split's
    _fails(["eval", "--qrels", qrels, "--run", full, "--measure", "nosuch@3"], "unknown measure 'nosuch@3'")

    runs = {p.name: _ranked(p) for p in (full, cut)}
    for method, fn, extra in (("rrf", rrf, {"rrf_k": 60.0}), ("minmax", minmax, {})):
        fused = _one(["eval", "--qrels", qrels, "--run", full, "--run", cut, "--fuse", method, "--weight",
                       "cut.run=0.5", "--k", 100, "--json", "--run-out", tmp_path / "f.run"])
        weights = {"cut.run": 0.5}
        want = {q: fn({n: r.get(q, []) for n, r in runs.items()}, 100, weights=weights, **extra)
                for q in sorted({q for r in runs.values() for q in r})}
        from retrec.pipelines.eval.ir_metrics import evaluate_run

        judged = load_retrieval_data(default_data).qrels_dict()
        mean, _ = evaluate_run(judged, {q: dict(h) for q, h in want.items()})
        assert fused["nDCG@10"] == pytest.approx(mean["nDCG@10"], abs=1e-12)
        assert fused["fusion"]["method"] == method and fused["fusion"]["weights"] == weights
        written = _ranked(tmp_path / "f.run")
        assert all([d for d, _ in written[q]] == [d for d, _ in want[q]] for q in want)


def test_hybrid_weights_tuned_on_train_when_there_is_no_dev(default_data: Path) -> None:
    out = _json(["eval", "--data", default_data, "--retriever", "hybrid", "--component", "bm25", "--component",
                 "toy", "--fusion", "minmax", "--tune-weights", "--k", 100, "--compare", "--json"])
    hybrid = _named(out, "hybrid")
    tuned = hybrid["tuned"]
    assert tuned["split"] == "train" and tuned["grid"] == 11
    assert sum(tuned["weights"].values()) == pytest.approx(1.0) and hybrid["fusion"]["weights"] == tuned["weights"]
    assert [s["retriever"] for s in out["systems"]] == ["bm25", "toy", "hybrid"]
    _fails(["eval", "--data", default_data, "--retriever", "hybrid", "--component", "bm25"], "at least two")
    _fails(["eval", "--data", default_data, "--retriever", "nosuch"], "is not one of")


def test_load_refuses_tables_and_unknown_kinds_and_import_stays_light(tmp_path: Path) -> None:
    from retrec.bundle import write_manifest

    for kind, message in (("table/embedding", "nothing to load"), ("model/nosuch", "unknown bundle kind")):
        root = tmp_path / kind.replace("/", "-")
        root.mkdir()
        write_manifest(root, kind=kind, name="x")
        with pytest.raises(BundleError, match=message):
            retrec.load(root)
    code = "import sys, retrec; print(sorted({'torch', 'faiss', 'ray', 'onnxruntime'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
