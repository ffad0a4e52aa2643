"""The notebook API (issue 45, acceptance 1): one query or many, hits with text, a clear TypeError, and
``retrec.evaluate`` equal to ``retrec eval --json``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import retrec
from retrec.data.beir import load_retrieval_data

RETREC = str(Path(sys.executable).with_name("retrec"))


@pytest.fixture(scope="module")
def bm25_version(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("notebook") / "bm25"
    subprocess.run([RETREC, "index", "bm25", "--data", str(tiny_data), "--out", str(out)], check=True,
                   capture_output=True)
    return out


def test_one_query_gives_hits_with_text_and_a_list_gives_lists(bm25_version: Path, tiny_data: Path) -> None:
    index = retrec.load(bm25_version)
    query = next(iter(load_retrieval_data(tiny_data, split="test").query_texts().values()))
    hits = index.search(query, k=3)
    assert len(hits) == 3 and [h.rank for h in hits] == [1, 2, 3]
    assert all(isinstance(h.text, str) and h.text for h in hits)  # the version stores what it indexed
    doc_id, score = hits[0]  # still the (doc_id, score) pair the rest of retrec uses
    assert (doc_id, score) == (hits[0].doc_id, hits[0].score) and hits[0] == (doc_id, score)
    many = index.search([query, query], k=3)
    assert len(many) == 2 and many[0] == hits and many[1] == hits
    for bad in (b"bytes", 42, [query, 7], None):
        with pytest.raises(TypeError, match="a query string or a list of query strings"):
            index.search(bad, k=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="k must be a positive int"):
        index.search(query, k=0)


def test_texts_from_a_corpus_for_versions_that_store_none(bm25_version: Path, tiny_data: Path,
                                                          tmp_path: Path) -> None:
    from retrec.index.bm25_index import BM25Index
    from retrec.index.generic import publish_index

    ids, texts = load_retrieval_data(tiny_data, split="test").doc_texts()
    bare = publish_index(BM25Index.build(ids, texts), tmp_path / "bare", "bare")  # no documents.parquet
    query = texts[0][:40]
    assert retrec.load(bare).search(query, k=2)[0].text is None
    assert retrec.load(bare, corpus=tiny_data).search(query, k=2)[0].text == dict(zip(ids, texts))[
        retrec.load(bare).search(query, k=2)[0].doc_id]


def test_evaluate_equals_retrec_eval_json(bm25_version: Path, tiny_data: Path) -> None:
    cli = json.loads(subprocess.run([RETREC, "eval", "--data", str(tiny_data), "--index", str(bm25_version),
                                     "--json"], check=True, capture_output=True, text=True).stdout)["systems"][0]
    ours = retrec.evaluate(retrec.load(bm25_version), tiny_data)
    assert set(ours) == {"nDCG@10", "RR@10", "R@100", "R@1000", "AP"}
    assert all(ours[m] == pytest.approx(cli[m], abs=1e-12) for m in ours)
    queries = load_retrieval_data(tiny_data, split="test").query_texts()
    run = dict(zip(queries, retrec.load(bm25_version).search(list(queries.values()), k=1000)))
    assert retrec.evaluate(run, tiny_data)["nDCG@10"] == pytest.approx(cli["nDCG@10"], abs=1e-12)
    with pytest.raises(TypeError, match="a retriever"):
        retrec.evaluate(42, tiny_data)


def test_eval_shows_progress_lines_when_not_a_terminal(bm25_version: Path, tiny_data: Path) -> None:
    """Issue 45: piped or logged, ``retrec eval`` still says what it is doing (stderr; the table on stdout)."""
    done = subprocess.run([RETREC, "eval", "--data", str(tiny_data), "--index", str(bm25_version)],
                          check=True, capture_output=True, text=True)
    assert "queries" in done.stderr and "search " in done.stderr
    assert "nDCG@10" in done.stdout and "search " not in done.stdout


def test_the_notebook_example_runs(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[1] / "examples" / "search_in_python.py"
    done = subprocess.run([sys.executable, str(example), str(tmp_path)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("1 ") and lines[3] == "[5, 5]" and "'nDCG@10'" in lines[4]
