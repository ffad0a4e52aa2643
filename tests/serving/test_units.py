"""Serving pieces without Ray: shard merging, fusion, the ASGI guard (backpressure, limits, keys), config."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from retrec.index.fusion import merge_hits, minmax, rrf, zscore
from retrec.index.retriever import top_k
from retrec.serving.config import AuthConfig, ServingConfig
from retrec.serving.errors import install_error_handlers
from retrec.serving.middleware import GUARD, GuardMiddleware, load_api_keys


def test_merging_shard_top_k_equals_global_top_k() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 200).astype(np.float32)  # many ties
    ids = [f"d{i:03d}" for i in range(200)]
    shards = [[i for i in range(200) if i % 3 == s] for s in range(3)]
    for k in (1, 7, 50, 200):
        parts = [top_k(scores[rows], [ids[i] for i in rows], k) for rows in shards]
        assert merge_hits(parts, k) == top_k(scores, ids, k)


def test_rrf_and_minmax() -> None:
    a = [("x", 3.0), ("y", 2.0), ("z", 1.0)]
    b = [("y", 0.9), ("w", 0.5)]
    fused = rrf({"a": a, "b": b}, 10, rrf_k=60)
    assert fused[0] == ("y", 1 / 62 + 1 / 61)
    assert [d for d, _ in fused] == ["y", "x", "w", "z"]
    mm = minmax({"a": a, "b": b}, 10, weights={"a": 1.0, "b": 2.0})
    assert dict(mm) == {"x": 1.0, "y": 0.5 + 2.0, "z": 0.0, "w": 0.0}
    assert [d for d, _ in mm] == ["y", "x", "z", "w"]  # ties: doc_id descending
    assert minmax({"a": [("p", 1.0), ("q", 1.0)]}, 5) == [("q", 1.0), ("p", 1.0)]


def test_zscore_measures_from_the_lowest_in_standard_deviations() -> None:
    a = [("x", 10.0), ("y", 2.0), ("z", 1.0), ("v", 1.0)]  # one outlying top score
    b = [("y", 0.9), ("z", 0.8), ("w", 0.1)]
    std_a = float(np.std([10.0, 2.0, 1.0, 1.0]))
    std_b = float(np.std([0.9, 0.8, 0.1]))
    fused = dict(zscore({"a": a, "b": b}, 10))
    assert fused == pytest.approx({"x": 9 / std_a, "y": 1 / std_a + 0.8 / std_b, "z": 0.7 / std_b,
                                   "v": 0.0, "w": 0.0})
    assert [d for d, _ in zscore({"a": a, "b": b}, 2)] == ["y", "x"]
    assert zscore({"a": a}, 10, weights={"a": 2.0})[0] == ("x", pytest.approx(18 / std_a))
    assert zscore({"a": [("p", 1.0), ("q", 1.0)], "b": []}, 5) == [("q", 1.0), ("p", 1.0)]


@pytest.fixture
def guarded() -> Iterator[FastAPI]:
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(GuardMiddleware)
    gate, entered = asyncio.Event(), asyncio.Event()

    @app.post("/v1/slow")
    async def slow(body: dict) -> dict:
        entered.set()
        await asyncio.wait_for(gate.wait(), 5)
        return body

    @app.post("/v1/echo")
    async def echo(body: dict) -> dict:
        return body

    app.state.gate, app.state.entered = gate, entered
    saved = dict(vars(GUARD))
    yield app
    vars(GUARD).update(saved)


def test_backpressure_is_503_with_retry_after(guarded: FastAPI) -> None:
    GUARD.configure(max_inflight=1, retry_after_s=2, require_keys=False)

    async def scenario() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=guarded), base_url="http://t") as c:
            first = asyncio.create_task(c.post("/v1/slow", json={"a": 1}))
            await asyncio.wait_for(guarded.state.entered.wait(), 5)  # the first is in flight
            second = await c.post("/v1/echo", json={"b": 2})
            guarded.state.gate.set()
            return await first, second

    first, second = asyncio.run(scenario())
    assert first.status_code == 200
    assert second.status_code == 503 and second.headers["retry-after"] == "2"
    assert second.json()["error"]["code"] == "overloaded"


def test_streamed_body_limit_and_keys(guarded: FastAPI, tmp_path: object) -> None:
    GUARD.configure(max_inflight=8, max_body_bytes=1024, api_keys=(b"k1", b"k2"))

    async def chunks() -> object:
        for _ in range(10):
            yield b" " * 200

    async def scenario() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=guarded), base_url="http://t") as c:
            h = {"content-type": "application/json", "x-api-key": "k2"}
            return [await c.post("/v1/echo", content=chunks(), headers=h),  # no Content-Length: streamed
                    await c.post("/v1/echo", json={"a": 1}, headers={"authorization": "Bearer k1"}),
                    await c.post("/v1/echo", json={"a": 1}, headers={"authorization": "Bearer k3"})]

    streamed, ok, bad_key = asyncio.run(scenario())
    assert streamed.status_code == 413
    assert ok.status_code == 200 and ok.json() == {"a": 1}
    assert bad_key.status_code == 401


def test_api_keys_from_env_and_file(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "keys"
    path.write_text("# comment\nfile-key\n\n")
    monkeypatch.setenv("MY_KEYS", "a, b")
    assert load_api_keys(AuthConfig(api_keys_env="MY_KEYS", api_keys_file=str(path))) == (b"a", b"b", b"file-key")
    assert load_api_keys(AuthConfig(api_keys_env="UNSET_VAR_XYZ")) == ()


class _FakeShard:
    """A shard handle whose ``search_many.remote`` answers ``[(f"{shard}:{query}", k)]`` per query, or fails."""

    def __init__(self, shard: int, fail: bool = False) -> None:
        self.shard, self.fail, self.calls = shard, fail, []
        self.search_many = self

    def remote(self, payloads: object, k: int, ref: dict[str, str], doc_filter: str | None = None) -> asyncio.Future:
        self.calls.append((list(payloads), k, ref["version"], *([doc_filter] if doc_filter else [])))
        future = asyncio.get_running_loop().create_future()
        if self.fail:
            future.set_exception(RuntimeError("shard down"))
        else:
            future.set_result([[(f"{self.shard}:{q}", float(k))] for q in payloads])
        return future


def test_batched_scatter_groups_by_retriever_version_k_and_filter() -> None:
    from retrec.serving.placement import RemoteShard
    from retrec.serving.scatter import RetrieverSpec, Scatter

    shards = [_FakeShard(0), _FakeShard(1, fail=True)]
    scatter = Scatter({"bm25": RetrieverSpec("bm25", "index/bm25", "text", [RemoteShard(s) for s in shards])},
                      shard_timeout_s=1.0,
                      retry_after_s=1, max_batch_size=8)
    v1, v2 = {"version": "v1", "digest": "d1", "path": "/a"}, {"version": "v2", "digest": "d2", "path": "/b"}
    items = [("bm25", "q0", 5, v1, None), ("bm25", "q1", 5, v1, None), ("bm25", "q2", 9, v1, None),
             ("bm25", "q3", 5, v2, None), ("bm25", "q4", 5, v1, '{"y":1}')]
    out = asyncio.run(scatter.scatter(items))  # the undecorated batch function
    assert shards[0].calls == [(["q0", "q1"], 5, "v1"), (["q2"], 9, "v1"), (["q3"], 5, "v2"),
                               (["q4"], 5, "v1", '{"y":1}')]  # a filter is its own group, sent to the shard
    assert [row[0] for row in out] == [[("0:q0", 5.0)], [("0:q1", 5.0)], [("0:q2", 9.0)], [("0:q3", 5.0)],
                                       [("0:q4", 5.0)]]
    assert all(isinstance(row[1], RuntimeError) for row in out)  # the failed shard, for every item


def test_scatter_alone_skips_the_batch_queue_and_concurrent_requests_use_it() -> None:
    """The only request in flight goes straight to the shards (the batch queue's cost, nothing to batch with);
    requests in flight together go through the batch queue, the first of them included."""
    from retrec.serving.placement import RemoteShard
    from retrec.serving.scatter import RetrieverSpec, Scatter

    scatter = Scatter({"bm25": RetrieverSpec("bm25", "index/bm25", "text", [RemoteShard(_FakeShard(0))])},
                      shard_timeout_s=1.0, retry_after_s=1, max_batch_size=8)
    queued: list[str] = []

    async def batch(item: tuple) -> list:
        queued.append(item[1])
        await asyncio.sleep(0.01)
        return (await scatter.scatter([item]))[0]

    scatter.batch = batch
    ref = {"version": "v1", "digest": "d1", "path": "/a"}

    async def request(query: str) -> tuple:
        with scatter.request():
            await asyncio.sleep(0)  # e.g. encoding: every request of the burst is in flight
            return await scatter.retrieve("bm25", query, 5, ref)

    async def run() -> list:
        alone = await request("q0")
        return [alone, *await asyncio.gather(*(request(f"q{i}") for i in (1, 2, 3)))]

    out = asyncio.run(run())
    assert queued == ["q1", "q2", "q3"]
    assert [hits for hits, _ in out] == [[(f"0:q{i}", 5.0)] for i in range(4)]
    assert scatter._requests == 0


class _PayloadShard:
    """A shard handle recording the packed payload of each ``search_many`` call."""

    def __init__(self) -> None:
        self.payloads: list[object] = []
        self.search_many = self

    def remote(self, payloads: object, k: int, ref: dict[str, str]) -> asyncio.Future:
        self.payloads.append(payloads)
        future = asyncio.get_running_loop().create_future()
        future.set_result([[("d", 1.0)] for _ in range(len(payloads))])  # type: ignore[arg-type]
        return future


def test_scatter_packs_each_payload_type() -> None:
    """One batched call per retriever packs its own payload: dense rows stacked, token matrices of different
    lengths kept apart, sparse (ids, weights) pairs typed."""
    from retrec.serving.placement import RemoteShard
    from retrec.serving.scatter import RetrieverSpec, Scatter

    shards = {p: _PayloadShard() for p in ("dense", "tokens", "sparse", "text")}
    scatter = Scatter({p: RetrieverSpec(p, f"index/{p}", p, [RemoteShard(shards[p])], None if p == "text" else "enc")
                       for p in shards}, shard_timeout_s=1.0, retry_after_s=1, max_batch_size=8)
    ref = {"version": "v1", "digest": "d1", "path": "/a"}
    rng = np.random.default_rng(0)
    items = [("dense", rng.standard_normal(4), 3, ref, None), ("dense", rng.standard_normal(4), 3, ref, None),
             ("tokens", rng.standard_normal((2, 8)), 3, ref, None),
             ("tokens", rng.standard_normal((5, 8)), 3, ref, None),
             ("sparse", ([3, 9], [0.5, 1.5]), 3, ref, None), ("text", "q", 3, ref, None)]
    out = asyncio.run(scatter.scatter(items))
    assert [row[0] for row in out] == [[("d", 1.0)]] * 6
    dense = shards["dense"].payloads[0]
    assert isinstance(dense, np.ndarray) and dense.dtype == np.float32 and dense.shape == (2, 4)
    np.testing.assert_allclose(dense[1], items[1][1].astype(np.float32))
    tokens = shards["tokens"].payloads[0]
    assert [m.shape for m in tokens] == [(2, 8), (5, 8)] and all(m.dtype == np.float32 for m in tokens)
    (ids, weights), = shards["sparse"].payloads[0]
    assert ids.dtype == np.int64 and weights.dtype == np.float32 and ids.tolist() == [3, 9]
    assert shards["text"].payloads[0] == ["q"]


def test_payload_packers_refuse_bad_shapes() -> None:
    from retrec.serving.payloads import PACKERS, pack, packer

    assert set(PACKERS) == {"text", "dense", "sparse", "tokens"}
    with pytest.raises(ValueError, match="tokens payload"):
        pack("tokens", [np.ones((2, 8)), np.ones((2, 4))])
    with pytest.raises(ValueError, match="sparse payload"):
        pack("sparse", [([1, 2], [0.5])])
    with pytest.raises(ValueError, match="no pack function"):
        packer("audio")


def test_call_supported_passes_only_accepted_options() -> None:
    from retrec.kinds import call_supported

    def explicit(path: str, *, shard: int | None = None) -> tuple:
        return path, shard

    def catch_all(path: str, **options: object) -> tuple:
        return path, options

    assert call_supported(explicit, "p", shard=2, use_gpu=False, threads=3) == ("p", 2)
    assert call_supported(catch_all, "p", shard=2, use_gpu=False) == ("p", {"shard": 2, "use_gpu": False})


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="at least one"):
        ServingConfig.model_validate({})
    with pytest.raises(ValueError):
        ServingConfig.model_validate({"retrievers": {"bm25": {"index": "x", "typo": 1}}})
    cfg = ServingConfig.model_validate({"retrievers": {"bm25": {"index": "x"}}, "base_dir": "/srv"})
    assert cfg.resolve("x") == "/srv/x"
    assert cfg.encoder.placement == "ingress"
    with pytest.raises(ValueError):
        ServingConfig.model_validate({"retrievers": {"bm25": {"index": "x"}}, "encoder": {"placement": "gpu"}})


def test_serve_config_file_is_valid() -> None:
    from retrec.serving.launch import DEFAULT_CONFIG, load_serve_config

    data = load_serve_config(DEFAULT_CONFIG)
    app = data["applications"][0]
    assert app["import_path"] == "retrec.serving.app:build_app"
    assert data["http_options"]["host"] == "127.0.0.1"
    ServingConfig.model_validate(app["args"])


def test_k8s_manifests_embed_a_valid_config() -> None:
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[2] / "k8s"
    service = next(d for d in yaml.safe_load_all((root / "base" / "rayservice.yaml").read_text())
                   if d["kind"] == "RayService")
    serve_config = yaml.safe_load(service["spec"]["serveConfigV2"])
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(serve_config)
    ServingConfig.model_validate(serve_config["applications"][0]["args"])
    for kind in ("bm25", "dense"):  # evaluated before `current` moves (tests/k8s checks the commands parse)
        job = yaml.safe_load((root / "jobs" / f"rayjob-reindex-{kind}.yaml").read_text())
        assert job["kind"] == "RayJob" and "--eval-data" in job["spec"]["entrypoint"]


def test_serving_imports_no_torch() -> None:
    import subprocess
    import sys

    code = "import sys, retrec.serving.app, retrec.serving.launch; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() \
        == "False"


def test_short_keys_are_refused_under_min_key_length_and_keys_files_reload(
        tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 44: ``auth.min_key_length`` refuses short keys (never echoing them); a keys file is read again while
    serving, so a revoked key stops working without a restart (and a broken file keeps the previous keys)."""
    from pathlib import Path

    from retrec.serving.config import ServingConfig
    from retrec.serving.middleware import GuardSettings, guard_settings, reloaded_keys

    keys = Path(str(tmp_path)) / "keys"
    keys.write_text("short-key\n")
    cfg = ServingConfig.model_validate({"retrievers": {"bm25": {"index": "x"}},
                                        "auth": {"api_keys_env": None, "api_keys_file": str(keys),
                                                 "min_key_length": 16}})
    with pytest.raises(ValueError, match=r"shorter than auth\.min_key_length") as err:
        guard_settings(cfg)
    assert "short-key" not in str(err.value)
    keys.write_text("first-key-0123456789\n")
    guard = GuardSettings(**guard_settings(cfg), reload=lambda: reloaded_keys(cfg), reload_every_s=0.0)
    assert guard.allowed("/v1/search", b"first-key-0123456789")
    keys.write_text("second-key-0123456789\n")  # the first one revoked
    assert not guard.allowed("/v1/search", b"first-key-0123456789")
    assert guard.allowed("/v1/search", b"second-key-0123456789")
    keys.write_text("")  # emptied by mistake: the server keeps the keys it had
    assert guard.allowed("/v1/search", b"second-key-0123456789")


def test_one_key_cannot_take_every_slot_under_max_inflight_per_key() -> None:
    """Issue 44: ``limits.max_inflight_per_key`` answers 429 to a key over its share; other keys still get in."""
    import httpx

    from retrec.serving import middleware

    release = asyncio.Event()

    async def app(scope: dict, receive: object, send: object) -> None:
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b"ok"})  # type: ignore[operator]

    saved = dict(vars(middleware.GUARD))
    middleware.GUARD.configure(api_keys=(b"key-a-0123456789abc", b"key-b-0123456789abc"), require_keys=True,
                               max_inflight=64, max_inflight_per_key=1, per_key={})
    guarded = middleware.GuardMiddleware(app)

    async def scenario() -> list[int]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=guarded), base_url="http://t") as c:
            first = asyncio.ensure_future(c.get("/v1/models", headers={"X-API-Key": "key-a-0123456789abc"}))
            await asyncio.sleep(0.05)
            second = await c.get("/v1/models", headers={"X-API-Key": "key-a-0123456789abc"})
            other = asyncio.ensure_future(c.get("/v1/models", headers={"X-API-Key": "key-b-0123456789abc"}))
            await asyncio.sleep(0.05)
            release.set()
            return [(await first).status_code, second.status_code, (await other).status_code]

    try:
        assert asyncio.run(scenario()) == [200, 429, 200]
        assert middleware.GUARD.per_key == {}  # nothing left counted
    finally:
        vars(middleware.GUARD).clear()
        vars(middleware.GUARD).update(saved)
