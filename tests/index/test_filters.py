"""Filters on document metadata (retrec/index/filters.py): parsing, evaluation, and exact filtered search in every
index kind — for 50 random filters the filtered top-k equals the unfiltered full ranking restricted to the matching
documents (brute force on the matching subset), k hits whenever k matching documents score."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from retrec.data.beir import corpus_texts, load_retrieval_data
from retrec.data.corpus import read_corpus
from retrec.index.filters import DocumentMetadata, FilterError, parse_filter
from retrec.index.generic import index_kind
from retrec.pipelines.eval.retrievers import build_from_texts
from tests.tiny_models import tiny_dense_encoder, tiny_multivector_encoder, tiny_sparse_encoder

LANGS = ["en", "de", "fr"]


def metadata_of(doc_ids: list[str], seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for _ in doc_ids:
        row: dict[str, Any] = {"year": rng.randint(2000, 2020), "lang": rng.choice(LANGS),
                               "open": rng.random() < 0.5}
        if rng.random() < 0.8:
            row["score"] = round(rng.uniform(0, 10), 2)
        out.append(row)
    return out


def random_filters(n: int, seed: int = 1) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    found: list[dict[str, Any]] = []
    while len(found) < n:
        spec: dict[str, Any] = {}
        if rng.random() < 0.6:
            lo = rng.randint(1998, 2021)
            spec["year"] = {"gte": lo, "lt": lo + rng.randint(1, 12)} if rng.random() < 0.7 else {"lte": lo}
        if rng.random() < 0.5:
            spec["lang"] = rng.choice(LANGS) if rng.random() < 0.5 else {"in": rng.sample(LANGS, 2)}
        if rng.random() < 0.3:
            spec["open"] = rng.random() < 0.5
        if rng.random() < 0.3:
            spec["score"] = {"gt": rng.uniform(0, 10)}
        if spec:
            found.append(spec)
    return found


def test_parse_and_match() -> None:
    f = parse_filter({"year": {"gte": 2015, "lt": 2020}, "lang": {"in": ["en", "de"]}, "open": True})
    rows = [{"year": 2016, "lang": "en", "open": True}, {"year": 2020, "lang": "en", "open": True},
            {"year": 2017, "lang": "de", "open": 1}, {"year": "2017", "lang": "de", "open": True}, None, {}]
    assert [f.matches(r) for r in rows] == [True, False, False, False, False, False]  # 1 is not true, "2017" no number
    assert parse_filter({"b": 1, "a": 2}).key == parse_filter({"a": 2, "b": 1}).key
    assert parse_filter({"n": 3}).matches({"n": 3.0})
    for bad in ({}, {"x": {"gte": 1, "gt": 2}}, {"x": {"in": []}}, {"x": {"lt": "a"}}, {"x": [1]},
                {"x": {"eq": 1}}, {"x": float("nan")}, {f"f{i}": 1 for i in range(9)}):
        with pytest.raises(FilterError):
            parse_filter(bad)


def test_unknown_fields_are_named() -> None:
    meta = DocumentMetadata(["a", "b"], [json.dumps({"year": 2001}), None])
    with pytest.raises(FilterError, match=r"unknown filter field.*'lang'.*fields: year"):
        meta.allowed(parse_filter({"lang": "en"}))
    assert meta.allowed(parse_filter({"year": 2001})).ids == frozenset({"a"})
    assert meta.allowed(parse_filter({"year": 1999})).ids == frozenset()


@pytest.fixture(scope="module")
def collection(tiny_data: Path) -> tuple[list[str], list[str], DocumentMetadata, list[str]]:
    ids, texts = corpus_texts(read_corpus(tiny_data))
    queries = load_retrieval_data(tiny_data, split="test").queries.column("text").to_pylist()[:6]
    return ids, texts, DocumentMetadata(ids, [json.dumps(m) for m in metadata_of(ids)]), queries


def _kinds(root: Path) -> dict[str, dict[str, Any]]:
    return {"bm25": {}, "dense": {"model": tiny_dense_encoder(root / "dense"), "shards": 2},
            "dense-ivf": {"kind": "dense", "model": root / "dense", "factory": "IVF4,Flat", "shards": 2},
            "sparse": {"model": tiny_sparse_encoder(root / "sparse"), "shards": 2},
            "maxsim": {"model": tiny_multivector_encoder(root / "mv"), "shards": 2},
            "muvera": {"model": root / "mv", "shards": 2}}


@pytest.mark.parametrize("name", ["bm25", "dense", "dense-ivf", "sparse", "maxsim", "muvera"])
def test_filtered_search_is_the_top_k_of_the_matching_documents(
        name: str, collection: tuple[Any, ...], tmp_path_factory: pytest.TempPathFactory) -> None:
    ids, texts, meta, queries = collection
    options = dict(_kinds(tmp_path_factory.mktemp("kinds"))[name])
    kind = index_kind(options.pop("kind", name))
    built = build_from_texts(kind, ids, texts, cache=None, **options) if kind.needs_encoder else \
        build_from_texts(kind, ids, texts)
    payloads = queries if built.encoder is None else built.encoder.encode_queries(queries)
    # the brute-force reference: the exact kind over every document (MUVERA -> MaxSim, IVF -> Flat)
    if name in ("muvera", "dense-ivf"):
        exact = build_from_texts(index_kind("maxsim" if name == "muvera" else "dense"), ids, texts,
                                 model=options["model"], factory=None if name == "muvera" else "Flat", cache=None)
    else:
        exact = built
    full = exact.index.search(payloads, len(ids))  # the whole ranking: brute force over every document
    k, empty, filled = 5, 0, 0
    for spec in random_filters(50):
        allowed = meta.allowed(parse_filter(spec))
        got = built.index.search(payloads, k, allowed=allowed)
        for q, (hits, ranking) in enumerate(zip(got, full)):
            want = [(d, s) for d, s in ranking if d in allowed.ids][:k]
            assert [d for d, _ in hits] == [d for d, _ in want], (name, spec, q)
            np.testing.assert_allclose([s for _, s in hits], [s for _, s in want], rtol=1e-5, atol=1e-5)
            empty += not hits
            filled += len(hits) == k
    assert filled > 100  # most filters match plenty: k hits
    nothing = meta.allowed(parse_filter({"year": {"gt": 2100}}))
    assert built.index.search(payloads, k, allowed=nothing) == [[] for _ in payloads]


def test_every_doc_is_the_exact_search_an_ann_index_is_checked_against(
        collection: tuple[Any, ...], tmp_path: Path) -> None:
    """The quality check's reference (``EveryDoc``: the filtered path over all rows) equals exact search, and an
    IVF index probing one list of 16 misses some of it."""
    from retrec.index.filters import EveryDoc

    ids, texts, _, queries = collection
    model = tiny_dense_encoder(tmp_path / "dense")
    ivf = build_from_texts(index_kind("dense"), ids, texts, model=model, factory="IVF16,Flat", cache=None)
    flat = build_from_texts(index_kind("dense"), ids, texts, model=model, factory="Flat", cache=None)
    payloads = ivf.encoder.encode_queries(queries)
    exact = ivf.index.search(payloads, 10, allowed=EveryDoc())
    assert [[d for d, _ in h] for h in exact] == [[d for d, _ in h] for h in flat.index.search(payloads, 10)]
    approximate = ivf.index.search(payloads, 10)
    recall = np.mean([len({d for d, _ in a} & {d for d, _ in e}) / 10 for a, e in zip(approximate, exact)])
    assert recall < 1.0
