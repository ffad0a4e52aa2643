"""Swaps across the application (issue 44): concurrent swaps from different ingress replicas both take effect; a
swap that outlives its request answers 202 and ends in one state its status endpoint describes; a restart after
the build-time version was deleted comes back on the current one; the previous version is released after the
drain period. In-process (the Serve controller and its replicas stood in for); tests/serving/test_swaps.py runs
the same over HTTP in Ray."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from retrec.bundle import BundleError
from retrec.index.bm25_index import BM25Config, BM25Index
from retrec.serving.errors import ApiError
from retrec.serving.placement import RemoteShard
from retrec.serving.scatter import RetrieverSpec
from retrec.serving.shards import index_ref
from retrec.serving.swaps import LocalLedger, RayLedger
from retrec.serving.versions import IndexVersions
from tests.serving.inproc import _Method
from tests.serving.test_auth import (  # noqa: F401  (fixtures)
    ADMIN_KEY,
    _args,
    guard_state,
    keys_env,
    make_ingress,
    models_root,
)
from tests.serving.test_versions import IngressReplica, LocalController, LocalHandle, Shard
from tests.tiny_models import with_version


@pytest.fixture(scope="module")
def versions_dir(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from retrec.data.beir import load_retrieval_data

    root = tmp_path_factory.mktemp("coordination")
    ids, texts = load_retrieval_data(tiny_data, split="test").doc_texts()
    out = {}
    for key, k1 in (("v1", 0.9), ("v2", 1.6)):
        saved = BM25Index.build(ids, texts, BM25Config(k1=k1, b=0.75)).save(root / key, name="bm25")
        out[key] = with_version(Path(saved.path), f"bm25-{key}")
    return out


def _two_retrievers(v1: Path, drain_s: float = 30.0) -> tuple[list[IndexVersions], LocalController, dict]:
    """Two ingress replicas serving retrievers ``a`` and ``b`` (2 shard replicas each), one controller, one
    application ledger (in Ray: the ledger actor every replica reaches)."""
    ref = index_ref(v1)
    controller, ledger, shards = LocalController(), LocalLedger(), {}
    for name in ("a", "b"):
        shards[name] = [Shard(kind="index/bm25", shard=0, initial=ref, use_gpu=False) for _ in range(2)]
        controller.replicas[f"{name}-shard-0"] = shards[name]
    ingress = []
    for _ in range(2):
        specs = {n: RetrieverSpec(n, "index/bm25", "text", [RemoteShard(LocalHandle(shards[n][-1]))], None,
                                  "deployment") for n in ("a", "b")}
        versions = IndexVersions(specs, {"a": ref, "b": ref}, {}, resolve=str, publish=controller.publish,
                                 ledger=ledger, drain_s=drain_s)
        ingress.append(versions)
    controller.replicas["Ingress"] = [IngressReplica(v) for v in ingress]
    return ingress, controller, shards


def test_concurrent_swaps_of_two_retrievers_on_two_ingress_replicas_both_take_effect(
        versions_dir: dict[str, Path]) -> None:
    (one, two), controller, _ = _two_retrievers(versions_dir["v1"])
    new = index_ref(versions_dir["v2"])["digest"]

    async def both() -> None:
        await asyncio.gather(one.swap("a", str(versions_dir["v2"])), two.swap("b", str(versions_dir["v2"])))

    asyncio.run(both())
    for replica in (one, two):
        assert {n: r["digest"] for n, r in replica.active.items()} == {"a": new, "b": new}
    assert controller.current["Ingress"]["digests"] == {"a": new, "b": new}  # a restarted replica gets both


def test_ingress_publish_changes_only_the_swapped_entry(versions_dir: dict[str, Path]) -> None:
    (one, _), controller, _ = _two_retrievers(versions_dir["v1"])
    controller.current["Ingress"] = {"indexes": {"b": "/elsewhere/b-v9"}, "digests": {"b": "f" * 64}}
    asyncio.run(one.swap("a", str(versions_dir["v2"])))
    assert controller.current["Ingress"]["indexes"]["b"] == "/elsewhere/b-v9"  # not reverted to this one's view


def test_previous_version_is_released_after_the_drain_period(versions_dir: dict[str, Path],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import retrec.serving.shards as shards_module

    trims: list[int] = []  # the freed heap's pages are handed back too, not kept by glibc (the soak's RSS steps)
    monkeypatch.setattr(shards_module, "release_freed_memory", lambda: trims.append(1) or True)
    (one, _), _, shards = _two_retrievers(versions_dir["v1"], drain_s=0.2)
    old, new = index_ref(versions_dir["v1"])["digest"], index_ref(versions_dir["v2"])["digest"]

    async def swap_then_wait() -> tuple[list[list[str]], list[list[str]]]:
        await one.swap("a", str(versions_dir["v2"]))
        during = [s.versions() for s in shards["a"]]
        for _ in range(100):  # the drain (0.2 s), then each shard's release on a worker thread: up to 10 s when busy
            await asyncio.sleep(0.1)
            if all(s.versions() == [new] for s in shards["a"]) and len(trims) == len(shards["a"]):
                break
        return during, [s.versions() for s in shards["a"]]

    during, after = asyncio.run(swap_then_wait())
    assert all(v == [old, new] for v in during)  # requests in flight on the old version still finish
    assert all(v == [new] for v in after)
    assert len(trims) == len(shards["a"])  # once per shard that dropped a version, never on a load
    assert all(s.versions() == [old] for s in shards["b"])


def test_restart_after_the_build_time_version_was_deleted(versions_dir: dict[str, Path],
                                                          tmp_path: Path) -> None:
    """A replica starts with the build's arguments; the build-time version is gone; Serve then applies the
    current user_config: it serves that one, and until then it is up and not ready (no crash loop)."""
    built = tmp_path / "built"
    shutil.copytree(versions_dir["v1"], built)
    (one, _), controller, _ = _two_retrievers(built)
    asyncio.run(one.swap("a", str(versions_dir["v2"])))
    asyncio.run(one.swap("b", str(versions_dir["v2"])))
    build_ref = index_ref(built)
    shutil.rmtree(built)
    fresh_shard = Shard(kind="index/bm25", shard=0, initial=build_ref, use_gpu=False)
    assert not fresh_shard.ready() and "could not be loaded" in (fresh_shard.problem or "")
    asyncio.run(fresh_shard.reconfigure(controller.current["a-shard-0"]))
    assert fresh_shard.ready() and fresh_shard.versions() == [index_ref(versions_dir["v2"])["digest"]]
    fresh = IndexVersions(one.retrievers, {"a": build_ref, "b": build_ref}, {}, resolve=str,
                          publish=controller.publish, ledger=LocalLedger())
    asyncio.run(IngressReplica(fresh).reconfigure(controller.current["Ingress"]))
    assert {r["version"] for r in fresh.active.values()} == {"bm25-v2"}


def test_a_shard_whose_current_version_is_missing_stays_up_not_ready(versions_dir: dict[str, Path],
                                                                    tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    shutil.copytree(versions_dir["v2"], gone)
    ref = index_ref(gone)
    shutil.rmtree(gone)
    shard = Shard(kind="index/bm25", shard=0, initial=ref, use_gpu=False)
    asyncio.run(shard.reconfigure({"versions": [ref]}))  # no exception: Serve would restart it in a loop
    assert not shard.ready() and shard.problem and str(gone) not in shard.problem
    loaded = Shard(kind="index/bm25", shard=0, initial=index_ref(versions_dir["v1"]), use_gpu=False)
    with pytest.raises(BundleError):  # holding a version: a missing new one fails the swap's rollout instead
        asyncio.run(loaded.reconfigure({"versions": [index_ref(versions_dir["v1"]), ref]}))


# ---- the admin endpoint: 202 and the status any replica answers ------------------------------------------

def _slow_load(shard: Any, delay_s: float, fail: bool = False) -> None:
    def load(ref: dict[str, str]) -> asyncio.Future:
        async def later() -> None:
            await asyncio.sleep(delay_s)
            if fail:
                raise BundleError("shards/000.faiss: checksum mismatch")
            shard.loaded.append(ref["version"])
            shard.digests.append(ref["digest"])
        return asyncio.ensure_future(later())
    shard.load = _Method(load)


@pytest.mark.parametrize("fail", [False, True])
def test_a_swap_slower_than_its_timeout_answers_202_and_its_status_tells_how_it_ended(
        models_root: Path, keys_env: None, guard_state: None, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        fail: bool) -> None:
    from retrec.serving.ingress import api

    obj, shards = make_ingress(_args(models_root, limits={"swap_timeout_s": 0.1}), monkeypatch)
    _slow_load(shards["bm25"], 0.5, fail=fail)
    admin = {"X-API-Key": ADMIN_KEY}

    async def go() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://t") as c:
            swap = await c.post("/v1/admin/indexes", json={"retriever": "bm25", "path": "bm25-v2"}, headers=admin)
            status = f"/v1/admin/swaps/{swap.json()['swap_id']}"
            pending = await c.get(status, headers=admin)
            await asyncio.sleep(1.0)
            return [swap, pending, await c.get(status, headers=admin), await c.get("/v1/admin/swaps", headers=admin),
                    await c.get(status.replace("swaps/", "swaps/x"), headers=admin)]

    swap, pending, ended, recent, bad_id = asyncio.run(go())
    assert swap.status_code == 202 and swap.json()["status"] == "pending", swap.text
    assert pending.json()["status"] == "pending"
    version = obj.versions.active["bm25"]["version"]
    if fail:
        assert ended.json()["status"] == "failed" and ended.json()["error"]["code"] == "bad_bundle"
        assert version == "bm25-v1" and str(models_root) not in ended.text
    else:
        assert ended.json()["status"] == "done" and ended.json()["version"] == version == "bm25-v2"
    assert recent.json()["swaps"][0]["swap_id"] == swap.json()["swap_id"]
    assert bad_id.status_code == 404 and bad_id.json()["error"]["code"] == "unknown_swap"


def test_ray_ledger_lease_is_one_at_a_time_and_expires(tmp_path: Path) -> None:
    """The ledger actor's lease: a second holder waits; a holder that stops renewing loses it after ttl."""
    from retrec.serving.swaps import _LedgerActor

    actor = _LedgerActor()
    assert actor.acquire("a", 0.2) and not actor.acquire("b", 0.2) and actor.acquire("a", 0.2)
    actor.release("a")
    assert actor.acquire("b", 0.05)
    import time

    time.sleep(0.1)
    assert actor.acquire("c", 1.0)  # b's lease expired (its replica died)
    assert RayLedger(app_name="x").app_name == "x"


def test_admin_swap_to_a_forged_faiss_file_is_a_400(tmp_path: Path) -> None:
    """Issue 44, acceptance 4: a shard file whose header claims 2^34 elements (manifest checksums rewritten to
    match) is refused by the shard's loader before it allocates — a 400, the old version keeps serving."""
    import struct

    import numpy as np

    from retrec.index.faiss_index import FaissIndex
    from tests.serving.test_versions import ENCODER, _versions

    ids = [f"d{i}" for i in range(30)]
    rng = np.random.default_rng(0)
    good = with_version(FaissIndex.build(rng.normal(size=(30, 16)), ids, encoder=ENCODER).save(tmp_path / "v1").path,
                        "dense-v1")
    forged = tmp_path / "v2"
    shutil.copytree(good, forged)
    shard = forged / "shards" / "000.faiss"
    raw = bytearray(shard.read_bytes())
    struct.pack_into("<q", raw, 8, 2**34 // 16)
    struct.pack_into("<Q", raw, 37, 2**34)
    shard.write_bytes(bytes(raw[:77]))
    with_version(forged, "dense-v2")
    versions, controller, _ = _versions("dense", "index/dense", "dense", Path(good), encoder=ENCODER)
    with pytest.raises(ApiError) as err:
        asyncio.run(versions.swap("dense", str(forged)))
    assert err.value.status == 400 and "refused before loading" in err.value.message
    assert versions.active["dense"]["version"] == "dense-v1" and not controller.published


def test_trusted_manifest_list_admits_only_listed_versions(models_root: Path, keys_env: None,  # noqa: F811
                                                          guard_state: None, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
                                                          tmp_path: Path) -> None:
    """``admin.trusted_manifests``: a version whose manifest digest is not listed is a 403 (read at each swap)."""
    from retrec.serving.ingress import api
    from retrec.serving.shards import manifest_digest

    trusted = tmp_path / "trusted.txt"
    trusted.write_text("# digests the release pipeline signed off\n")
    args = _args(models_root)
    args["admin"] = {**args["admin"], "trusted_manifests": str(trusted)}
    obj, _ = make_ingress(args, monkeypatch)
    admin = {"X-API-Key": ADMIN_KEY}

    async def swap() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://t") as c:
            return await c.post("/v1/admin/indexes", json={"retriever": "bm25", "path": "bm25-v2"}, headers=admin)

    refused = asyncio.run(swap())
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "untrusted_bundle", refused.text
    assert str(models_root) not in refused.text and obj.versions.active["bm25"]["version"] == "bm25-v1"
    trusted.write_text(f"{manifest_digest(models_root / 'bm25-v2')}  # bm25-v2\n")
    assert asyncio.run(swap()).status_code == 200
    assert obj.versions.active["bm25"]["version"] == "bm25-v2"


# ---- issue 44's smaller items ---------------------------------------------------------------------------------

def test_unknown_retriever_in_user_config_is_ignored_and_the_rest_applied(versions_dir: dict[str, Path]) -> None:
    (one, _), _, _ = _two_retrievers(versions_dir["v1"])
    v2 = index_ref(versions_dir["v2"])
    asyncio.run(IngressReplica(one).reconfigure({"indexes": {"typo": v2["path"], "a": v2["path"]},
                                                 "digests": {"typo": v2["digest"]}}))
    assert one.active["a"]["version"] == "bm25-v2" and "typo" not in one.active


def test_a_published_path_is_not_expanded_again_on_other_replicas(versions_dir: dict[str, Path], tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A swap publishes the real path it checked; another replica takes it literally — a folder named with ``$``
    is not re-expanded into another path (the operator's own config paths still resolve ``$VAR``)."""
    from retrec.serving.config import ServingConfig

    odd = tmp_path / "models$HOME"
    shutil.copytree(versions_dir["v2"], odd)
    monkeypatch.setenv("HOME", "/nonexistent-home")
    resolve = ServingConfig.model_validate({"auth": {"mode": "none"},
                                            "retrievers": {"a": {"index": str(versions_dir["v1"])}}}).resolve
    assert resolve(str(odd)) != str(odd)  # what re-expanding would load
    (one, two), _, _ = _two_retrievers(versions_dir["v1"])
    one.resolve = two.resolve = resolve
    asyncio.run(one.swap("a", str(odd)))
    assert two.active["a"]["path"] == str(odd.resolve()) and two.active["a"]["version"] == "bm25-v2"


def test_an_oversized_manifest_is_refused_unread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import retrec.bundle as bundle

    monkeypatch.setattr(bundle, "MAX_MANIFEST_BYTES", 4096)
    (tmp_path / "manifest.json").write_text('{"schema_version": 1, "pad": "' + "x" * 8192 + '"}')
    with pytest.raises(BundleError, match="refused unread"):
        bundle.read_manifest(tmp_path)


def test_readiness_names_encoders_by_bundle_name_not_path() -> None:
    """``/readyz`` answers without a key: its checks name each encoder by its manifest's name, never its path."""
    from types import SimpleNamespace

    from retrec.serving.readiness import encoders_answer

    class Encoder:
        def __init__(self, ok: bool) -> None:
            self.ok = ok

        async def info(self) -> dict[str, Any]:
            if not self.ok:
                raise RuntimeError("down")
            return {}

    encoders = {"/srv/models/minilm": Encoder(True), "/srv/other/minilm": Encoder(False)}
    manifests = {key: SimpleNamespace(name="minilm") for key in encoders}
    checks = asyncio.run(encoders_answer(encoders, manifests))
    assert checks == {"encoder:minilm": True, "encoder:minilm-1": False}
    assert not any("/srv" in k for k in checks)


def test_a_swap_whose_probe_search_fails_moves_nothing(versions_dir: dict[str, Path]) -> None:
    """Issue 44: after every shard replica holds the new version, one search of it through every shard (the
    ingress sets ``versions.probe``: scatter.probe_search) must answer before traffic moves; if it fails the
    shards go back to the previous version and the swap is a 503."""
    (one, two), controller, _ = _two_retrievers(versions_dir["v1"])
    old = index_ref(versions_dir["v1"])

    async def broken(name: str, ref: dict[str, str]) -> None:
        raise ApiError(503, "unavailable", "every a shard failed or timed out (IndexError)")

    one.probe = broken
    with pytest.raises(ApiError) as err:
        asyncio.run(one.swap("a", str(versions_dir["v2"])))
    assert err.value.status == 503 and "probe search" in err.value.message
    assert one.active["a"]["digest"] == two.active["a"]["digest"] == old["digest"]
    assert controller.current["a-shard-0"] == {"versions": [old]}
    assert "Ingress" not in controller.current


def test_probe_search_runs_the_request_path(versions_dir: dict[str, Path]) -> None:
    from retrec.serving.scatter import Scatter, probe_search

    (one, _), _, _ = _two_retrievers(versions_dir["v1"])
    scatter = Scatter(one.retrievers, shard_timeout_s=5.0, retry_after_s=1, max_batch_size=8)
    one.probe = lambda name, ref: probe_search(scatter, {}, one.query_width, name, ref)
    asyncio.run(one.swap("a", str(versions_dir["v2"])))  # a real search of v2 on its shard
    assert one.active["a"]["version"] == "bm25-v2"
