"""The haystack generator: determinism by seed and chunk, the base kept unchanged, domain-like statistics, errors."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from retrec.cli import app
from retrec.data.beir import load_retrieval_data
from retrec.data.errors import DataError
from retrec.data.haystack import HaystackGenerator, write_haystack
from tests.conftest import shared_dataset

SENTENCES = [
    "The protein binds the receptor in human cells.", "Mutations in the gene increase the risk of cancer.",
    "We measured expression of the receptor in mice.", "Treatment with the drug reduced tumour growth (p < 0.05).",
    "These results suggest a role for inflammation in disease.", "The cohort included 1,204 patients over ten years.",
    "Loss of the kinase impairs DNA repair.", "Expression was higher in tumour cells than in normal tissue.",
    "Vitamin D levels were associated with lower mortality.", "The mechanism remains unclear.",
    "In vitro, the antibody blocked viral entry into cells.", "Patients receiving the drug had fewer infections.",
]


def _tiny_base(root: Path, docs: int = 60, final_newline: bool = True) -> Path:
    rng = np.random.default_rng(7)
    lines = []
    for i in range(docs):
        text = " ".join(SENTENCES[k] for k in rng.integers(0, len(SENTENCES), size=int(rng.integers(1, 9))))
        title = SENTENCES[int(rng.integers(0, len(SENTENCES)))].rstrip(".")
        lines.append(json.dumps({"_id": f"d{i}", "title": title, "text": text}, ensure_ascii=False))
    root.mkdir(parents=True)
    (root / "corpus.jsonl").write_text("\n".join(lines) + ("\n" if final_newline else ""), encoding="utf-8")
    (root / "queries.jsonl").write_text('{"_id": "q1", "text": "receptor binding"}\n'
                                        '{"_id": "q2", "text": "vitamin D mortality"}\n', encoding="utf-8")
    (root / "qrels").mkdir()
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td0\t1\nq2\td3\t1\n", encoding="utf-8")
    return root


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture()
def base(tmp_path: Path) -> Path:
    return _tiny_base(tmp_path / "base")


def test_same_seed_same_bytes_other_seed_other_text(base: Path, tmp_path: Path) -> None:
    a = write_haystack(base, tmp_path / "a", docs=50, seed=3)
    b = write_haystack(base, tmp_path / "b", docs=50, seed=3)
    c = write_haystack(base, tmp_path / "c", docs=50, seed=4)
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv", "haystack.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    texts_a = [r["text"] for r in _records(a / "corpus.jsonl")[60:]]
    texts_c = [r["text"] for r in _records(c / "corpus.jsonl")[60:]]
    assert len(texts_a) == len(texts_c) == 50
    assert sum(x != y for x, y in zip(texts_a, texts_c)) > 40


def test_first_k_of_2k_equal_k_by_chunk(base: Path, tmp_path: Path) -> None:
    small = _records(write_haystack(base, tmp_path / "k", docs=10, seed=1, chunk_size=7) / "corpus.jsonl")
    large = _records(write_haystack(base, tmp_path / "2k", docs=20, seed=1, chunk_size=7) / "corpus.jsonl")
    assert large[:70] == small and large[70:] != large[60:70]
    gen = HaystackGenerator.from_beir(base, seed=1, chunk_size=7)
    assert list(gen.documents(6, start=8)) == large[68:74]  # any window, chunks generated on demand
    other = HaystackGenerator.from_beir(base, seed=1, chunk_size=5)
    assert list(other.documents(10)) != small[60:]  # the chunk size is part of the recipe


def test_base_unchanged_ids_unique_and_loadable(tmp_path: Path) -> None:
    base = _tiny_base(tmp_path / "base", final_newline=False)
    out = write_haystack(base, tmp_path / "out", docs=25)
    corpus = (out / "corpus.jsonl").read_bytes()
    assert corpus.startswith((base / "corpus.jsonl").read_bytes() + b"\n")
    assert (out / "queries.jsonl").read_bytes() == (base / "queries.jsonl").read_bytes()
    assert (out / "qrels" / "test.tsv").read_bytes() == (base / "qrels" / "test.tsv").read_bytes()
    records = _records(out / "corpus.jsonl")
    ids = [r["_id"] for r in records]
    assert len(ids) == len(set(ids)) == 85
    assert all(i.startswith("haystack-") for i in ids[60:]) and not any(i.startswith("haystack-") for i in ids[:60])
    assert all(r["text"] and set(r) == {"_id", "title", "text"} for r in records[60:])
    data = load_retrieval_data(out, split="test")  # the readers' checks: JSON, unique ids, qrels resolve
    assert data.corpus.num_rows == 85 and data.qrels.num_rows == 2
    prov = json.loads((out / "haystack.json").read_text())
    assert (prov["base_docs"], prov["distractors"], prov["seed"], prov["chunk_size"]) == (60, 25, 0, 10_000)
    assert prov["model"]["text_model"]["vocabulary"] > 20 and prov["model"]["text_model"]["bigrams"] > 20


def _stats(texts: list[str]) -> tuple[np.ndarray, Counter, set]:
    words = [t.split() for t in texts]
    unigrams = Counter(w for ws in words for w in ws)
    bigrams = {p for ws in words for p in itertools.pairwise(ws)}
    return np.array([len(ws) for ws in words]), unigrams, bigrams


def _assert_domain_like(base_texts: list[str], gen_texts: list[str], top: int, max_copied: float) -> None:
    base_len, base_uni, base_bi = _stats(base_texts)
    gen_len, gen_uni, _ = _stats(gen_texts)
    assert abs(gen_len.mean() - base_len.mean()) < 0.15 * base_len.mean()
    for q in (25, 50, 90):
        assert abs(np.percentile(gen_len, q) - np.percentile(base_len, q)) <= 0.2 * np.percentile(base_len, q) + 1
    top_base = {w for w, _ in base_uni.most_common(top)}
    top_gen = {w for w, _ in gen_uni.most_common(top)}
    assert len(top_base & top_gen) >= 0.7 * top
    nb, ng = sum(base_uni.values()), sum(gen_uni.values())
    tv = 0.5 * sum(abs(base_uni[w] / nb - gen_uni[w] / ng) for w in set(base_uni) | set(gen_uni))
    assert tv < 0.2, f"unigram distributions differ (total variation {tv:.3f})"
    pairs = [p for t in gen_texts for p in itertools.pairwise(t.split())]
    seen = sum(p in base_bi for p in pairs) / len(pairs)
    assert seen > 0.85, f"only {seen:.2f} of generated bigrams occur in the base"
    copied = np.mean([t in set(base_texts) for t in gen_texts])
    assert copied <= max_copied, f"{copied:.1%} of generated texts are copies of base texts"


def test_statistics_close_to_tiny_base(base: Path) -> None:
    base_texts = [r["text"] for r in _records(base / "corpus.jsonl")]
    gen = HaystackGenerator.from_beir(base, seed=0, chunk_size=1000)
    docs = list(gen.documents(1000))
    _assert_domain_like(base_texts, [d["text"] for d in docs], top=10, max_copied=0.1)
    assert {w for d in docs for w in d["title"].split()} <= {w for s in SENTENCES for w in s.rstrip(".").split()}


def test_statistics_close_to_scifact() -> None:
    scifact = shared_dataset("scifact")
    base = _records(scifact / "corpus.jsonl")
    gen = HaystackGenerator.from_beir(scifact, seed=0, chunk_size=1000)
    docs = list(gen.documents(2000))
    _assert_domain_like([r["text"] for r in base], [d["text"] for d in docs], top=50, max_copied=0.0)
    title_len = np.mean([len(d["title"].split()) for d in docs])
    assert abs(title_len - np.mean([len(r["title"].split()) for r in base])) < 2


def test_bad_input_is_a_clear_error(base: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nowhere: base BEIR folder not found"):
        write_haystack(tmp_path / "nowhere", tmp_path / "o1", docs=5)
    (tmp_path / "no-corpus").mkdir()
    with pytest.raises(DataError, match=r"no-corpus/corpus\.jsonl: file not found"):
        write_haystack(tmp_path / "no-corpus", tmp_path / "o1", docs=5)
    empty = _tiny_base(tmp_path / "empty", docs=3)
    (empty / "corpus.jsonl").write_text('{"_id": "a", "text": ""}\n{"_id": "b", "title": "x", "text": " "}\n')
    with pytest.raises(DataError, match=r"corpus\.jsonl: no text to fit"):
        write_haystack(empty, tmp_path / "o2", docs=5)
    with pytest.raises(ValueError, match="non-negative"):
        write_haystack(base, tmp_path / "o3", docs=-1)
    clash = _tiny_base(tmp_path / "clash", docs=3)
    (clash / "corpus.jsonl").write_text('{"_id": "haystack-00000000", "text": "a b c"}\n')
    with pytest.raises(DataError, match="distractor prefix"):
        write_haystack(clash, tmp_path / "o4", docs=1)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not an empty directory"):
        write_haystack(base, taken, docs=1)
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]
    assert not any(tmp_path.glob("o[1-4]")) and not any(tmp_path.glob(".*haystack-*"))


def test_failure_mid_write_publishes_nothing(base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: HaystackGenerator, n: int):
        yield b'{"_id": "haystack-00000000"}\n'
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(HaystackGenerator, "jsonl_chunks", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_haystack(base, tmp_path / "out", docs=20_000)
    assert not (tmp_path / "out").exists() and not any(tmp_path.glob(".out.haystack-*"))


def test_cli_haystack_and_bad_input_exit_2(base: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "out"
    result = runner.invoke(app, ["data", "haystack", "--base", str(base), "--docs", "30", "--out", str(out),
                                 "--seed", "2"])
    assert result.exit_code == 0, result.output
    assert str(out) in result.stdout and len(_records(out / "corpus.jsonl")) == 90
    assert (out / "corpus.jsonl").read_bytes() == (write_haystack(base, tmp_path / "api", 30, 2) / "corpus.jsonl") \
        .read_bytes()
    for args, message in [
        (["--base", str(tmp_path / "missing"), "--docs", "3", "--out", str(tmp_path / "x")], "folder not found"),
        (["--base", str(base), "--docs", "-3", "--out", str(tmp_path / "y")], "non-negative"),
        (["--base", str(base), "--docs", "3", "--out", str(out)], "not an empty directory"),
    ]:
        bad = runner.invoke(app, ["data", "haystack", *args])
        assert bad.exit_code == 2, bad.output
        assert message in bad.output and "Traceback" not in bad.output
