"""The embedded dataset is deterministic and has structure that learned models can exploit."""

from __future__ import annotations

from pathlib import Path

from retrec.bundle import sha256_file
from retrec.data.beir import load_retrieval_data
from retrec.data.interactions import leave_one_out, load_interactions, user_sequences
from retrec.data.synthetic import write_default_dataset
from retrec.pipelines.eval.rec import evaluate_recommender
from retrec.pipelines.eval.recommenders import build_recommender, vocabulary_of


def test_generation_is_deterministic(tmp_path: Path, default_data: Path) -> None:
    from tests.conftest import PSEUDO

    again = write_default_dataset(tmp_path / "again", PSEUDO)
    for rel in ("corpus.parquet", "queries.parquet", "qrels/test.parquet", "interactions.parquet"):
        assert sha256_file(again / rel) == sha256_file(default_data / rel)


def test_collection_is_valid(default_data: Path) -> None:
    for split in ("train", "test"):
        data = load_retrieval_data(default_data, split=split, strict=True)
        assert data.report.skipped == {} and data.queries.num_rows > 100


def test_sequence_model_beats_popularity_by_a_wide_margin(default_data: Path) -> None:
    loo = leave_one_out(user_sequences(load_interactions(default_data)))
    vocab = vocabulary_of(loo)
    ndcg = {}
    for name in ("popularity", "markov"):
        res = evaluate_recommender(build_recommender(name, loo, vocab), loo, vocab, progress=False)
        ndcg[name] = res.metrics["NDCG@10"]
    assert ndcg["markov"] > 5 * ndcg["popularity"]
    assert ndcg["markov"] > 0.3


def test_english_text_is_real_words_with_synonyms_only_in_queries(tmp_path: Path) -> None:
    """language='english': every word comes from the committed word pools (the MiniLM vocabulary's), the same
    bytes twice, and a query's synonym of a key term never occurs in any document (only a model that knows or
    learns the relation finds the document through it)."""
    import json

    from retrec.data.synthetic import ENGLISH_WORDS, SyntheticConfig, generate_retrieval

    cfg = SyntheticConfig(language="english")
    first, again = write_default_dataset(tmp_path / "a", cfg), write_default_dataset(tmp_path / "b", cfg)
    assert sha256_file(first / "corpus.parquet") == sha256_file(again / "corpus.parquet")
    import retrec.data.synthetic as synthetic

    pools = json.loads(Path(synthetic.__file__).with_name(ENGLISH_WORDS).read_text())
    known = {*pools["general"], *(w for t in pools["topics"] for w in t), *pools["synonyms"].values()}
    corpus, queries, _ = generate_retrieval(cfg)
    doc_words = {w for text in corpus["text"].to_pylist() + corpus["title"].to_pylist() for w in text.split()}
    query_words = {w for text in queries["text"].to_pylist() for w in text.split()}
    assert doc_words <= known and query_words <= known
    synonyms_asked = query_words & set(pools["synonyms"].values())
    assert len(synonyms_asked) > 100 and not synonyms_asked & doc_words
