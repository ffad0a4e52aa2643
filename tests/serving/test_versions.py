"""Index versions without Ray: identity by manifest digest, shards that never load lazily, swaps checked
before anything flips (the shard class itself, driven through in-process stand-ins for deployment handles
and for the Serve controller's ``user_config`` broadcast)."""

from __future__ import annotations

import asyncio
import inspect
import shutil
import time
import types
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest

from retrec.bundle import read_manifest
from retrec.data.beir import load_retrieval_data
from retrec.index.bm25_index import BM25Config, BM25Index
from retrec.index.faiss_index import FaissIndex
from retrec.serving.errors import ApiError
from retrec.serving.placement import LocalShard, RemoteShard
from retrec.serving.rollout import merged
from retrec.serving.scatter import RetrieverSpec
from retrec.serving.shards import IndexShard, index_ref
from retrec.serving.versions import IndexVersions
from tests.tiny_models import with_version

pytest.importorskip("ray")
Shard = IndexShard.func_or_class  # the replica class, constructed in-process
ENCODER = {"name": "enc", "version": "e1", "dim": 16, "similarity": "cosine"}


@pytest.fixture(scope="module")
def corpus(tiny_data: Path) -> tuple[list[str], list[str]]:
    ids, texts = load_retrieval_data(tiny_data, split="test").doc_texts()
    return list(ids), list(texts)


@pytest.fixture(scope="module")
def query(corpus: tuple[list[str], list[str]]) -> str:
    return " ".join(corpus[1][0].split()[:3])


@pytest.fixture(scope="module")
def bm25_same_version(corpus: tuple[list[str], list[str]], tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two different BM25 index versions whose manifests carry the same version string."""
    root = tmp_path_factory.mktemp("same-version")
    ids, texts = corpus
    a = BM25Index.build(ids, texts, BM25Config(k1=0.9, b=0.4)).save(root / "a", name="bm25").path
    b = BM25Index.build(ids, texts, BM25Config(k1=1.8, b=0.9)).save(root / "b", name="bm25").path
    return [with_version(Path(a), "same"), with_version(Path(b), "same")]


@pytest.fixture(scope="module")
def dense(corpus: tuple[list[str], list[str]], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 16-d dense index version, and a tampered one: shard 0 holds 8-d vectors, its manifest says 16."""
    root = tmp_path_factory.mktemp("dense-versions")
    ids, _ = corpus
    rng = np.random.default_rng(0)
    FaissIndex.build(rng.normal(size=(len(ids), 16)), ids, shards=1, encoder=ENCODER).save(root / "v1")
    good = with_version(root / "v1", "dense-v1")
    bad = root / "v2-tampered"
    shutil.copytree(good, bad)
    faiss.write_index(FaissIndex.build(rng.normal(size=(len(ids), 8)), ids, shards=1).cpu_shards[0],
                      str(bad / "shards" / "000.faiss"))
    with_version(bad, "dense-v2")  # checksums rewritten: the manifest is consistent, its dim (16) is a lie
    assert read_manifest(bad).dims["dim"] == 16
    return {"good": good, "bad": bad}


class _Method:
    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def remote(self, *args: Any, **kwargs: Any) -> asyncio.Future:
        async def call() -> Any:
            out = self.fn(*args, **kwargs)
            return await out if inspect.isawaitable(out) else out
        return asyncio.ensure_future(call())


class LocalHandle:
    """A deployment handle stand-in for one in-process replica."""

    def __init__(self, replica: Any) -> None:
        self.replica = replica

    def __getattr__(self, name: str) -> _Method:
        return _Method(getattr(self.replica, name))


class LocalController:
    """Stands in for the Serve controller: a ``user_config`` reaches every replica of its deployment."""

    def __init__(self) -> None:
        self.replicas: dict[str, list[Any]] = {}
        self.published: list[dict[str, Any]] = []
        self.current: dict[str, Any] = {}  # deployment -> its user_config
        self.ingress: list[IndexVersions] = []

    async def publish(self, user_configs: dict[str, Any], merge: bool = False) -> None:
        if merge:
            user_configs = {d: merged(self.current.get(d), update) for d, update in user_configs.items()}
        self.current.update(user_configs)
        self.published.append(user_configs)
        for deployment, user_config in user_configs.items():
            for replica in self.replicas.get(deployment, []):
                await replica.reconfigure(user_config)


class IngressReplica:
    """What ``Ingress.reconfigure`` does with its ``user_config``."""

    def __init__(self, versions: IndexVersions) -> None:
        self.versions = versions

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        await self.versions.apply(user_config.get("indexes") or {}, user_config.get("digests"))


def _versions(name: str, kind: str, payload: str, path: Path, replicas: int = 2,
              encoder: dict[str, Any] | None = None, placement: str = "deployment"
              ) -> tuple[IndexVersions, LocalController, list[Any]]:
    """The ingress replica that takes the admin call (plus a second one), ``replicas`` shard replicas; with
    ``placement="ingress"``, each ingress replica holds its own shard replica (returned in the same order)."""
    ref = index_ref(path)
    controller = LocalController()
    if placement == "deployment":
        shards = [Shard(kind=kind, shard=0, initial=ref, use_gpu=False) for _ in range(replicas)]
        controller.replicas[f"{name}-shard-0"] = shards
    else:
        shards = [Shard(kind=kind, shard=0, initial=ref, use_gpu=False) for _ in range(2)]
    ingress = []
    for i in range(2):
        shard = RemoteShard(LocalHandle(shards[-1])) if placement == "deployment" else LocalShard(shards[i])
        spec = RetrieverSpec(name, kind, payload, [shard], "enc" if encoder else None, placement)
        versions = IndexVersions({name: spec}, {name: ref}, {"enc": encoder} if encoder else {}, resolve=str)
        versions.publish = controller.publish  # in Ray: the Serve controller's user_config update
        ingress.append(versions)
    controller.replicas["Ingress"] = [IngressReplica(v) for v in ingress]
    controller.ingress = ingress
    return ingress[0], controller, shards


# ---- item 5: identity is the manifest digest -------------------------------------------------------------

def test_same_version_string_other_index_is_another_version(bm25_same_version: list[Path], query: str) -> None:
    a, b = bm25_same_version
    ref_a, ref_b = index_ref(a), index_ref(b)
    assert ref_a["version"] == ref_b["version"] == "same"
    shard = Shard(kind="index/bm25", shard=0, initial=ref_a, use_gpu=False)
    asyncio.run(shard.load(ref_b))
    got = asyncio.run(shard.search_many([query], 5, ref_b))[0]
    want = BM25Index.load(b).search([query], 5)[0]
    assert got and got != BM25Index.load(a).search([query], 5)[0]
    assert got == want, "a shard served the cached index of another version that has the same version string"


@pytest.mark.parametrize("placement", ["deployment", "ingress"])
def test_swap_to_same_version_string_at_other_path_serves_it(bm25_same_version: list[Path], query: str,
                                                             placement: str) -> None:
    a, b = bm25_same_version
    versions, _, shards = _versions("bm25", "index/bm25", "text", a, placement=placement)
    out = asyncio.run(versions.swap("bm25", str(b)))
    assert out["version"] == "same"
    ref = versions.active["bm25"]
    assert ref["path"] == str(b.resolve()) and ref["digest"] != index_ref(a)["digest"]
    want = BM25Index.load(b).search([query], 5)[0]
    for shard in shards:  # every replica, not just the one a handle reached
        assert asyncio.run(shard.search_many([query], 5, ref))[0] == want


# ---- item 6: every replica, no lazy loads ----------------------------------------------------------------

def test_swap_reaches_every_shard_replica_before_the_flip(bm25_same_version: list[Path]) -> None:
    a, b = bm25_same_version
    versions, controller, shards = _versions("bm25", "index/bm25", "text", a, replicas=3)
    asyncio.run(versions.swap("bm25", str(b)))
    digest = versions.active["bm25"]["digest"]
    assert all(digest in shard.versions() for shard in shards)
    assert all(v.active["bm25"]["digest"] == digest for v in controller.ingress)  # ingress replicas agree
    shard_phase, ingress_phase = controller.published
    assert set(shard_phase) == {"bm25-shard-0"} and set(ingress_phase) == {"Ingress"}
    assert [r["digest"] for r in shard_phase["bm25-shard-0"]["versions"]] == [index_ref(a)["digest"], digest]


def test_in_ingress_shards_swap_on_every_ingress_replica_before_its_flip(bm25_same_version: list[Path]) -> None:
    """``placement: ingress``: nothing goes to shard deployments; each ingress replica loads its own copy of the
    new version when the ingress user_config reaches it, then flips, and keeps the previous one for requests
    in flight."""
    a, b = bm25_same_version
    versions, controller, shards = _versions("bm25", "index/bm25", "text", a, placement="ingress")
    asyncio.run(versions.swap("bm25", str(b)))
    digest = versions.active["bm25"]["digest"]
    assert [set(p) for p in controller.published] == [{"Ingress"}]
    assert controller.published[0]["Ingress"]["digests"] == {"bm25": digest}
    assert all(v.active["bm25"]["digest"] == digest for v in controller.ingress)
    assert all(shard.versions() == [index_ref(a)["digest"], digest] for shard in shards)
    asyncio.run(versions.swap("bm25", str(a)))  # and back
    assert all(v.active["bm25"]["digest"] == index_ref(a)["digest"] for v in controller.ingress)


def test_ingress_replica_that_cannot_load_the_published_version_fails_its_health_check(
        bm25_same_version: list[Path]) -> None:
    """In-ingress shards: the swapping replica loaded and checked the version; another replica that then fails to
    load it (its own fault: memory, disk) keeps serving its old, whole version, is ``stale`` and fails Serve's
    health check, so Serve replaces it; once it has the version it is healthy again."""
    from retrec.serving.ingress import Ingress

    a, b = bm25_same_version
    versions, controller, shards = _versions("bm25", "index/bm25", "text", a, placement="ingress")
    other, broken = controller.ingress[1], shards[1]
    load = broken._load

    def fails(path: str) -> Any:
        raise MemoryError("no room for another copy")

    broken._load = fails
    asyncio.run(versions.swap("bm25", str(b)))
    assert versions.active["bm25"]["digest"] == index_ref(b)["digest"] and not versions.stale
    assert other.active["bm25"]["digest"] == index_ref(a)["digest"]  # still its whole old version
    assert set(other.stale) == {"bm25"}
    check_health = Ingress.func_or_class.check_health
    check_health(types.SimpleNamespace(versions=versions))
    with pytest.raises(RuntimeError, match="could not load the published index version"):
        check_health(types.SimpleNamespace(versions=other))
    broken._load = load  # e.g. memory freed; the published user_config is applied again
    asyncio.run(IngressReplica(other).reconfigure(controller.published[-1]["Ingress"]))
    assert other.active["bm25"]["digest"] == index_ref(b)["digest"] and not other.stale
    check_health(types.SimpleNamespace(versions=other))


def test_restarted_ingress_replica_loads_its_in_ingress_shards(bm25_same_version: list[Path]) -> None:
    a, b = bm25_same_version
    versions, controller, _ = _versions("bm25", "index/bm25", "text", a, placement="ingress")
    asyncio.run(versions.swap("bm25", str(b)))
    fresh_shard = Shard(kind="index/bm25", shard=0, initial=index_ref(a), use_gpu=False)  # the build's version
    spec = RetrieverSpec("bm25", "index/bm25", "text", [LocalShard(fresh_shard)], None, "ingress")
    fresh = IndexVersions({"bm25": spec}, {"bm25": index_ref(a)}, {}, resolve=str)
    asyncio.run(IngressReplica(fresh).reconfigure(controller.published[-1]["Ingress"]))
    assert fresh.active["bm25"]["digest"] == index_ref(b)["digest"]
    assert index_ref(b)["digest"] in fresh_shard.versions()


def test_shard_never_loads_a_version_on_the_search_path(bm25_same_version: list[Path]) -> None:
    """A search naming a version the replica was not told to hold fails at once; it never loads it inline."""
    a, b = bm25_same_version
    shard = Shard(kind="index/bm25", shard=0, initial=index_ref(a), use_gpu=False)
    started = time.perf_counter()
    with pytest.raises(LookupError):
        asyncio.run(shard.search_many(["vitamin"], 5, index_ref(b)))
    assert time.perf_counter() - started < 0.5
    assert index_ref(b)["digest"] not in shard.versions()


def test_searches_of_the_loaded_version_run_while_another_loads(bm25_same_version: list[Path]) -> None:
    a, b = bm25_same_version
    ref_a = index_ref(a)
    shard = Shard(kind="index/bm25", shard=0, initial=ref_a, use_gpu=False)
    slow_load = shard._load

    def slow(path: str) -> Any:
        time.sleep(1.0)
        return slow_load(path)

    shard._load = slow

    async def scenario() -> float:
        loading = asyncio.ensure_future(shard.reconfigure({"versions": [ref_a, index_ref(b)]}))
        await asyncio.sleep(0.1)
        started = time.perf_counter()
        await shard.search_many(["vitamin"], 5, ref_a)
        took = time.perf_counter() - started
        await loading
        return took

    assert asyncio.run(scenario()) < 0.5


def test_restarted_shard_replica_holds_the_published_versions(bm25_same_version: list[Path]) -> None:
    """Serve re-applies the current ``user_config`` to a new replica before it takes traffic."""
    a, b = bm25_same_version
    versions, controller, _ = _versions("bm25", "index/bm25", "text", a)
    asyncio.run(versions.swap("bm25", str(b)))
    user_config = controller.published[0]["bm25-shard-0"]
    fresh = Shard(kind="index/bm25", shard=0, initial=index_ref(a), use_gpu=False)  # built with the old args
    asyncio.run(fresh.reconfigure(user_config))
    assert fresh.versions()[-1] == versions.active["bm25"]["digest"]


def test_restarted_ingress_replica_takes_the_published_version(bm25_same_version: list[Path]) -> None:
    """A new ingress replica starts from the build's versions; Serve then applies the current user_config."""
    a, b = bm25_same_version
    versions, controller, _ = _versions("bm25", "index/bm25", "text", a)
    asyncio.run(versions.swap("bm25", str(b)))
    published = len(controller.published)
    fresh = IndexVersions({"bm25": versions.retrievers["bm25"]}, {"bm25": index_ref(a)}, {}, resolve=str)
    fresh.publish = controller.publish
    asyncio.run(IngressReplica(fresh).reconfigure(controller.published[1]["Ingress"]))
    assert fresh.active["bm25"]["digest"] == index_ref(b)["digest"]
    assert len(controller.published) == published  # the shards hold it already: nothing republished


# ---- item 7: the loader's checks run before anything flips -----------------------------------------------

@pytest.mark.parametrize("placement", ["deployment", "ingress"])
def test_tampered_dims_version_is_refused_before_the_flip(dense: dict[str, Path], placement: str) -> None:
    versions, controller, shards = _versions("dense", "index/dense", "dense", dense["good"], encoder=ENCODER,
                                             placement=placement)
    before = dict(versions.active["dense"])
    with pytest.raises(ApiError) as err:
        asyncio.run(versions.swap("dense", str(dense["bad"])))
    assert err.value.status == 400 and err.value.code == "bad_bundle", (err.value.status, err.value.message)
    assert "dim 8" in err.value.message and str(dense["bad"].resolve()) not in err.value.message
    assert versions.active["dense"] == before and not controller.published
    query = np.random.default_rng(1).normal(size=(1, 16)).astype(np.float32)
    for shard in shards:  # the old version keeps serving on every replica
        assert asyncio.run(shard.search_many(query, 3, before))[0]


# ---- encoder upgrades: a compatible encoder searches its old space; an incompatible pair is refused -------------

COMPATIBLE = {"name": "new", "version": "n2", "dim": 20, "similarity": "cosine",
              "compat": {"name": "enc", "version": "e1", "old_dim": 16}}


def test_a_compatible_encoder_searches_the_old_version_by_its_old_space_and_others_are_refused(
        dense: dict[str, Path], tmp_path: Path) -> None:
    """Swap: the check records the old-space width (the ingress cuts queries to it); the first query on a version
    this replica never checked is checked then; an encoder with no compatibility record is refused at the swap
    (400) and at query time (503), as is a version whose shard stamps disagree."""
    from retrec.bundle import write_manifest
    from retrec.index.encoder_check import shard_stamp

    versions, _, shards = _versions("dense", "index/dense", "dense", dense["good"], encoder=COMPATIBLE)
    started = versions.active["dense"]
    assert versions.query_width("dense", started) == 16  # checked at the first query
    swapped = asyncio.run(versions.swap("dense", str(dense["good"])))  # the same digest: no swap, still 16
    assert swapped["version"] == "dense-v1" and versions.query_width("dense", started) == 16
    wide = np.random.default_rng(2).normal(size=(1, 20)).astype(np.float32)
    got = asyncio.run(shards[0].search_many(wide[..., :16], 3, started))[0]
    assert got == FaissIndex.load(dense["good"]).search(wide[:, :16], 3)[0]

    plain = {**COMPATIBLE, "name": "plain", "compat": None}
    versions, controller, _ = _versions("dense", "index/dense", "dense", dense["good"], encoder=plain)
    for _ in range(2):  # refused each time, checked once
        with pytest.raises(ApiError) as err:
            versions.query_width("dense", versions.active["dense"])
        assert err.value.status == 503 and err.value.code == "incompatible_index"
    with pytest.raises(ApiError) as err:
        asyncio.run(versions.swap("dense", str(dense["good"])))  # another digest would be checked the same way
    mixed = tmp_path / "mixed"
    shutil.copytree(dense["good"], mixed)
    manifest = read_manifest(mixed)
    write_manifest(mixed, kind=manifest.kind, name=manifest.name, version="mixed", dims=manifest.dims,
                   config={**manifest.config, "shard_encoders": [shard_stamp(plain)]})
    versions, controller, _ = _versions("dense", "index/dense", "dense", dense["good"], encoder=COMPATIBLE)
    with pytest.raises(ApiError) as err:
        asyncio.run(versions.swap("dense", str(mixed)))
    assert err.value.status == 400 and "shard 0 was encoded by 'plain'" in err.value.message
    assert not controller.published
