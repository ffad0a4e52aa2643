"""retrec.contracts: every kind's hook products satisfy their Protocols, ``save`` gives a Manifest, a loader refuses
an option it does not take (listing those it takes), ``threads`` is the one name of the thread option.

Example::

    PYTHONPATH=$PWD python -m pytest -q tests/test_contracts.py
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import retrec
from retrec import contracts, kinds
from retrec.bundle import Manifest, load_bundle
from retrec.contracts import UnknownOptionError, call_hook, option_names
from retrec.data.beir import load_retrieval_data
from retrec.index.generic import IndexRetriever, build_index, load_query_encoder
from tests import toy_kinds
from tests.tiny_models import (
    HISTORIES,
    tiny_compat_map,
    tiny_count_recommender,
    tiny_dense_encoder,
    tiny_fusion,
    tiny_multivector_encoder,
    tiny_onerec,
    tiny_reranker,
    tiny_sequence_recommender,
    tiny_sparse_encoder,
    tiny_table,
)

MODELS: dict[str, Callable[[Path], Path]] = {  # a tiny bundle of every built-in kind that is not an index
    kinds.DENSE_MODEL: tiny_dense_encoder,
    kinds.COMPAT_MAP: tiny_compat_map,
    kinds.MULTIVECTOR_MODEL: tiny_multivector_encoder,
    kinds.SPARSE_MODEL: tiny_sparse_encoder,
    kinds.RERANKER_MODEL: tiny_reranker,
    kinds.BERT4REC_MODEL: lambda p: tiny_sequence_recommender(p, kinds.BERT4REC_MODEL),
    kinds.SASREC_MODEL: lambda p: tiny_sequence_recommender(p, kinds.SASREC_MODEL),
    kinds.ONEREC_MODEL: tiny_onerec,
    kinds.MARKOV_MODEL: lambda p: tiny_count_recommender(p, "markov"),
    kinds.MARKOV_DECAY_MODEL: lambda p: tiny_count_recommender(p, "markov-decay"),
    kinds.COOC_MODEL: lambda p: tiny_count_recommender(p, "cooc"),
    kinds.FUSION_MODEL: tiny_fusion,
    kinds.EMBEDDING_TABLE: tiny_table,
}
LOADABLE = [k.kind for k in kinds.BUILTIN if k.load is not None]
INDEXES = [k.kind for k in kinds.BUILTIN if k.role == "index"]
QUERY = "what causes scurvy"


@pytest.fixture(scope="module")
def corpus(tiny_data: Path) -> tuple[list[str], list[str]]:
    ids, texts = load_retrieval_data(tiny_data, split="test").doc_texts()
    return list(ids[:60]), list(texts[:60])


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("contract-models")
    return {kind: make(root / kind.replace("/", "-")) for kind, make in MODELS.items()}


@pytest.fixture(scope="module")
def built(corpus: tuple[list[str], list[str]], models: dict[str, Path],
          tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, Manifest]]:
    """Every built-in index kind built through its ``build`` hook, and what its ``save`` returned."""
    root = tmp_path_factory.mktemp("contract-indexes")
    out = {}
    for kind in INDEXES:
        k = kinds.get(kind)
        index = build_index(k, *corpus, encoder=_encoder(k, models))
        out[kind] = (index, index.save(root / kind.replace("/", "-"), name=f"tiny-{kind}"))
    return out


@pytest.fixture(scope="module")
def bundles(models: dict[str, Path], built: dict[str, tuple[Any, Manifest]]) -> dict[str, Path]:
    return {**models, **{kind: Path(saved.path) for kind, (_, saved) in built.items()}}  # type: ignore[arg-type]


def _encoder(kind: kinds.Kind, models: dict[str, Path]) -> Any:
    return load_query_encoder(kind, models[kind.encoder_kinds[0]], threads=1) if kind.needs_encoder else None


def _load(kind: str, bundles: dict[str, Path], **context: Any) -> Any:
    return call_hook(kind, kinds.resolve(kinds.get(kind).load), bundles[kind], context=context)


def test_every_loadable_builtin_kind_has_a_bundle_here(bundles: dict[str, Path]) -> None:
    assert sorted(bundles) == sorted(LOADABLE)  # a new built-in kind needs a tiny bundle in MODELS
    assert set(contracts.PRODUCTS) == set(kinds.ROLES)


@pytest.mark.parametrize("kind", LOADABLE)
def test_what_a_loader_gives_satisfies_its_roles_protocol(kind: str, bundles: dict[str, Path],
                                                          models: dict[str, Path]) -> None:
    k = kinds.get(kind)
    loaded = _load(kind, bundles, shard=None, verify=True, use_gpu=False, threads=1)
    assert isinstance(loaded, contracts.PRODUCTS[k.role]), (kind, type(loaded))
    if k.role == "index":
        encoder = _encoder(k, models)
        hits = loaded.search(encoder.encode_queries([QUERY]) if encoder else [QUERY], 3)
        assert len(hits) == 1 and all(isinstance(d, str) and isinstance(s, float) for d, s in hits[0])
        assert len(loaded) == len(loaded.doc_ids) == 60
        assert isinstance(loaded, contracts.StoredEncodings) == (k.payload != "text")
    elif k.role == "query_encoder":
        assert isinstance(loaded, contracts.DocumentEncoder) and len(loaded.encode_queries([QUERY])) == 1
        assert loaded.threads == 1
    elif k.role == "recommender":
        (top,) = loaded.recommend([HISTORIES[0]], k=2)
        assert len(top) == 2 and all(isinstance(i, str) and isinstance(s, float) for i, s in top)
        assert loaded.score([HISTORIES[0]]).shape == (1, len(loaded.item_ids))
    elif k.role == "reranker":
        ids, scores = loaded.rerank(QUERY, ["a", "b"], {"a": "scurvy", "b": "vitamin"}.__getitem__)
        assert sorted(ids) == ["a", "b"] and scores.shape == (2,)
    else:
        assert loaded.embed(["i1", "never-seen"]).shape == (2, loaded.dim) and len(loaded) == 6


@pytest.mark.parametrize("kind", INDEXES)
def test_a_built_index_is_an_index_and_save_gives_its_verified_manifest(
        kind: str, built: dict[str, tuple[Any, Manifest]], models: dict[str, Path]) -> None:
    index, saved = built[kind]
    assert isinstance(index, contracts.Index)
    assert isinstance(saved, Manifest) and saved.kind == kind and saved.name == f"tiny-{kind}"
    assert saved.path is not None and load_bundle(saved.path, kind=kind).files == saved.files
    k = kinds.get(kind)
    encoder = _encoder(k, models)
    payloads = encoder.encode_queries([QUERY, "vitamin c"]) if encoder else [QUERY, "vitamin c"]
    loaded = call_hook(kind, kinds.resolve(k.load), saved.path,
                       context={"encoder": encoder.manifest if encoder else None})
    assert loaded.search(payloads, 5) == index.search(payloads, 5)
    again = IndexRetriever(kind, loaded, encoder).save(saved.path.parent / f"again-{kind.replace('/', '-')}")
    assert isinstance(again, Manifest) and again.kind == kind


@pytest.mark.parametrize("kind", LOADABLE)
def test_a_loader_refuses_an_option_it_does_not_take_listing_those_it_takes(kind: str,
                                                                           bundles: dict[str, Path]) -> None:
    loader = kinds.resolve(kinds.get(kind).load)
    taken = option_names(loader, bundles[kind])
    assert taken is not None, f"{kind}: a loader names its options (no **kwargs catch-all)"
    listed = re.escape(f"takes no option 'bogus'; it takes: {', '.join(taken) or 'none'}")
    with pytest.raises(UnknownOptionError, match=listed) as direct:
        loader(bundles[kind], bogus=1)
    assert kind in str(direct.value) and isinstance(direct.value, TypeError | ValueError)
    with pytest.raises(UnknownOptionError, match=f"^{re.escape(kind)} {listed}$"):
        call_hook(kind, loader, bundles[kind], options={"bogus": 1}, context={"shard": None, "use_gpu": False})


def test_user_options_are_refused_never_dropped_and_general_ones_reach_the_hooks_that_take_them(
        bundles: dict[str, Path]) -> None:
    with pytest.raises(UnknownOptionError, match="model/markov takes no option 'threads'; it takes: none"):
        retrec.load(bundles[kinds.MARKOV_MODEL], threads=1)
    with pytest.raises(UnknownOptionError, match=r"index/bm25 \(no query encoder\) takes no option 'threads'; it"):
        retrec.load(bundles[kinds.BM25_INDEX], threads=1)  # a text kind has no query encoder to take it
    with pytest.raises(UnknownOptionError, match=r"model/dense takes no option 'bogus'; it takes: variant, threads"):
        retrec.load(bundles[kinds.DENSE_INDEX], bogus=1)  # the rest goes to the query encoder, which refuses it
    with pytest.raises(UnknownOptionError, match="takes no options 'bogus', 'other'"):
        retrec.load(bundles[kinds.DENSE_MODEL], bogus=1, other=2)
    assert retrec.load(bundles[kinds.BERT4REC_MODEL], threads=1).recommend([HISTORIES[0]], k=1)
    assert retrec.load(bundles[kinds.DENSE_INDEX], threads=1).encoder.threads == 1
    general = {"shard": 0, "use_gpu": False, "verify": True, "threads": 2, "encoder": None}
    for load in (lambda: _load(kinds.BM25_INDEX, bundles, **general),
                 lambda: kinds.call(kinds.get(kinds.BM25_INDEX).load, bundles[kinds.BM25_INDEX], **general)):
        assert len(load()) == 60  # use_gpu, threads and encoder are not bm25's: not passed, not refused


def test_the_old_num_threads_name_is_still_read(bundles: dict[str, Path]) -> None:
    from retrec.runtime.onnx_encoder import OnnxEncoder

    with pytest.warns(DeprecationWarning, match="'num_threads' is now 'threads'"):
        assert OnnxEncoder(bundles[kinds.DENSE_MODEL], num_threads=1).threads == 1
    with pytest.warns(DeprecationWarning, match="model/sparse: option 'num_threads' is now 'threads'"):
        assert retrec.load(bundles[kinds.SPARSE_MODEL], num_threads=1).threads == 1
    with pytest.warns(DeprecationWarning, match="'num_threads' is now 'threads'"):
        assert retrec.load(bundles[kinds.DENSE_INDEX], num_threads=1).encoder.threads == 1
    with pytest.raises(UnknownOptionError, match="give 'threads' alone"):
        OnnxEncoder(bundles[kinds.DENSE_MODEL], num_threads=1, threads=1)
    with pytest.raises(UnknownOptionError, match="takes no option 'num_threads'; it takes: none"):
        retrec.load(bundles[kinds.COOC_MODEL], num_threads=1)  # renamed only where the new name is taken


def test_no_loader_or_encoder_names_the_old_option() -> None:
    old = set(contracts.RENAMED_OPTIONS)
    for k in kinds.BUILTIN:
        if k.load is not None:
            assert not old & set(inspect.signature(kinds.resolve(k.load)).parameters), k.kind


def test_option_helpers() -> None:
    def hook(path: str, *, shard: int | None = None, verify: bool = True) -> tuple[Any, ...]:
        return path, shard, verify

    assert option_names(hook, "p") == ("shard", "verify") and option_names(hook) == ("path", "shard", "verify")
    assert option_names(lambda path, **kw: None, "p") is None
    contracts.check_options("x", ["shard"], ("shard",))
    contracts.check_options("x", ["anything"], None)
    with pytest.raises(UnknownOptionError, match=r"^x takes no option 'a'; it takes: none$"):
        contracts.check_options("x", ["a"], ())
    strict = contracts.strict_options("index/x")(hook)
    assert inspect.signature(strict) == inspect.signature(hook) and strict("p", shard=1) == ("p", 1, True)
    assert kinds.call_supported(strict, "p", shard=2, use_gpu=True) == ("p", 2, True)  # the registry filter sees it
    with pytest.raises(UnknownOptionError, match=r"^index/x takes no option 'use_gpu'; it takes: shard, verify$"):
        strict("p", use_gpu=True)
    assert call_hook("x", hook, "p", options={"shard": 3}, context={"shard": 9, "verify": False}) == ("p", 3, False)
    assert contracts.renamed_options("x", {"num_threads": 2}, ["threads"]) == {"threads": 2}
    assert contracts.renamed_options("x", {"num_threads": 2}, ["num_threads"]) == {"num_threads": 2}


def test_the_toy_plugin_kinds_follow_the_contracts(corpus: tuple[list[str], list[str]], tmp_path: Path) -> None:
    index = kinds.call(kinds.get(toy_kinds.TOY_INDEX).build, *corpus, shards=1, progress=False)
    saved = index.save(tmp_path / "toy", name="toy")
    assert isinstance(index, contracts.Index) and isinstance(saved, Manifest) and saved.kind == toy_kinds.TOY_INDEX
    loaded = call_hook(toy_kinds.TOY_INDEX, kinds.resolve(kinds.get(toy_kinds.TOY_INDEX).load), saved.path,
                       context={"verify": True, "use_gpu": False})
    assert isinstance(loaded, contracts.Index) and not isinstance(loaded, contracts.StoredEncodings)
    with pytest.raises(UnknownOptionError, match="index/toy-overlap takes no option 'bogus'; it takes: shard"):
        call_hook(toy_kinds.TOY_INDEX, kinds.resolve(kinds.get(toy_kinds.TOY_INDEX).load), saved.path,
                  options={"bogus": 1})
    assert isinstance(retrec.load(saved.path), contracts.Retriever)
    rec = retrec.load(toy_kinds.write_toy_recommender(tmp_path / "pop", HISTORIES))
    assert isinstance(rec, contracts.Recommender) and rec.recommend([["i1"]], k=1)[0][0][0] == "i2"


def test_one_place_for_each_concept() -> None:
    from retrec.index import retriever
    from retrec.runtime import recommender

    assert retriever.Retriever is contracts.Retriever and retriever.Hits is contracts.Hits
    assert recommender.Recommender is contracts.Recommender and recommender.SkipReport is contracts.SkipReport
    assert recommender.ItemList is contracts.ItemList
