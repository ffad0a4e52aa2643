"""POST /v1/events in-process (:mod:`tests.serving.inproc`): batches taken whole into the event log or refused whole
with a clear 4xx; its own body limit; a broker that cannot be reached is a 503 that leaks nothing."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx

from retrec.events import open_log
from tests.serving.inproc import ingress_app

BASE = {"retrievers": {"bm25": {"index": "/indexes/bm25-v1"}}, "recommenders": {"bert4rec": {"bundle": "/m"}},
        "auth": {"mode": "none"}}


def _call(config: dict[str, Any], requests: list[tuple[str, dict[str, Any]]]) -> list[httpx.Response]:
    async def run() -> list[httpx.Response]:
        with ingress_app(config) as app:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
                return [await client.request(method, "/v1/events" if method == "POST" else "/v1/models", **kw)
                        for method, kw in requests]
    return asyncio.run(run())


def _events(n: int, **change: Any) -> list[dict[str, Any]]:
    now = time.time()
    return [{"user": f"u{i % 5}", "item": f"i{i}", "timestamp": now - 3600 + i, "type": "view", **change}
            for i in range(n)]


def test_batches_are_appended_whole_or_refused_whole(tmp_path: Path) -> None:
    config = {**BASE, "events": {"log": str(tmp_path / "events"), "max_batch": 500}}
    bad_last = _events(3)
    bad_last[2]["timestamp"] = "yesterday"
    big = _events(450)  # ~40 KB: under the events limit (1 MiB), over nothing
    first, refused, second, too_many, not_json, models = _call(config, [
        ("POST", {"json": {"events": _events(3)}}),
        ("POST", {"json": {"events": bad_last}}),
        ("POST", {"json": {"events": big}}),
        ("POST", {"json": {"events": _events(501)}}),
        ("POST", {"content": b"user=u1", "headers": {"content-type": "text/plain"}}),
        ("GET", {})])
    assert first.status_code == 200 and first.json() == {"accepted": 3, "first_offset": 0, "next_offset": 3}
    assert refused.status_code == 422 and refused.json()["error"] == {
        "code": "invalid_events", "message": "event 2: timestamp must be a number (Unix seconds), got str"}
    assert second.json() == {"accepted": 450, "first_offset": 3, "next_offset": 453}
    assert too_many.status_code == 422 and "at most 500" in too_many.json()["error"]["message"]
    assert not_json.status_code == 415
    assert models.json()["events"] == {"log": "events", "accepted": 453, "max_batch": 500}  # no server path
    stored = open_log(tmp_path / "events").read(0, 1000)
    assert [e.item for _, e in stored] == [e["item"] for e in _events(3) + big]


def test_the_events_body_limit_is_its_own_and_off_means_403(tmp_path: Path) -> None:
    config = {**BASE, "events": {"log": str(tmp_path / "events"), "max_body_bytes": 2048},
              "limits": {"max_body_bytes": 100_000}}
    over, under = _call(config, [("POST", {"json": {"events": _events(40)}}),
                                 ("POST", {"json": {"events": _events(2)}})])
    assert over.status_code == 413 and over.json()["error"]["message"] == "request body over 2048 bytes"
    assert under.status_code == 200
    off, = _call(BASE, [("POST", {"json": {"events": _events(1)}})])
    assert off.status_code == 403 and "events.log" in off.json()["error"]["message"]


def test_an_unreachable_broker_is_a_503_that_names_no_secret() -> None:
    config = {**BASE, "events": {"log": "redis://:s3cret-pass@127.0.0.1:1/0?key=k"}}
    r, models = _call(config, [("POST", {"json": {"events": _events(1)}}), ("GET", {})])
    assert r.status_code == 503 and r.json()["error"]["code"] == "event_log_unavailable"
    assert r.headers["retry-after"] and "s3cret" not in r.text and "127.0.0.1" not in r.text
    assert "s3cret" not in models.text


def test_recommend_takes_a_user_or_a_history_never_both() -> None:
    async def run() -> list[httpx.Response]:
        with ingress_app(BASE) as app:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
                bodies = [{"user": "u-known", "k": 3}, {"user": "someone", "k": 3},
                          {"user": "u-known", "history": ["i1"]}, {"k": 3}, {"user": "", "k": 3}]
                return [await client.post("/v1/recommend", json=b) for b in bodies]
    known, refused, both, neither, empty = asyncio.run(run())
    assert known.status_code == 200 and [i["item_id"] for i in known.json()["items"]] == ["i0", "i3", "i4"]
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "no_user_histories"
    assert [r.status_code for r in (both, neither, empty)] == [422, 422, 422]


def test_a_catalogue_refuses_unknown_items_and_follows_its_file(tmp_path: Path) -> None:
    catalogue = tmp_path / "items.txt"
    catalogue.write_text("i0\ni1\n")
    config = {**BASE, "events": {"log": str(tmp_path / "events"), "catalogue": str(catalogue)}}
    known, unknown = _call(config, [("POST", {"json": {"events": _events(2)}}),
                                    ("POST", {"json": {"events": _events(3)}})])
    assert known.status_code == 200
    assert unknown.status_code == 422 and unknown.json()["error"] == {
        "code": "unknown_item", "message": "event 2: item is not in the catalogue"}
    assert open_log(tmp_path / "events").end() == 2  # nothing of the refused batch
    from retrec.serving.events import Catalogue

    held = Catalogue(catalogue)
    assert held.first_unknown(["i0", "i2"]) == 1
    catalogue.write_text("i0\ni1\ni2\n")
    held._checked = 0.0  # (re-read at most once a second)
    assert held.first_unknown(["i0", "i2"]) is None
