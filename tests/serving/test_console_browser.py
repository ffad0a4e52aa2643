"""The console (``/ui``) in a real browser, and filters over HTTP, against one Ray Serve application on 127.0.0.1
(BM25, a tiny dense index in 2 shards, hybrid, a tiny BERT4Rec; documents with metadata). The browser: Debian's
``chromium`` driven by Playwright's sync API (headless, no sandbox, every request outside the served app refused;
started and stopped by this module, see :func:`chromium`).

For 10 fixture queries the ids the console shows equal ``/v1/search``'s JSON for bm25, dense and hybrid; hybrid's
component columns and the latency cell are filled; a recommendation round trip shows ``/v1/recommend``'s items; a
wrong key is refused on the page; the page logs no console error. Screenshots of each tab go to the test's output
folder (and to ``$RETREC_CONSOLE_SHOTS`` when set: how docs/console-search.png was made).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from retrec.index.filters import DocumentMetadata
from tests.index.test_filters import metadata_of, random_filters

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
browser = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it: "
                             "apt-get install chromium)")
ray = pytest.importorskip("ray")
API_KEY = "console-test-key-0123456789"


@pytest.fixture(scope="module")
def english_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny English collection (what a reader of the screenshots understands)."""
    from retrec.data.synthetic import SyntheticConfig, write_default_dataset

    cfg = SyntheticConfig(docs=300, queries_train=40, queries_test=30, users=150, items=400, genres=10)
    return write_default_dataset(tmp_path_factory.mktemp("console-data"), cfg)


@pytest.fixture(scope="module")
def served(english_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tiny_data = english_data
    from retrec.data.beir import load_retrieval_data
    from retrec.index.bm25_index import BM25Index
    from retrec.index.dense_retriever import DenseRetriever
    from retrec.index.generic import publish_index
    from retrec.pipelines.train.seq.bert4rec import BERT4RecTrainConfig, train_bert4rec
    from retrec.runtime.onnx_encoder import OnnxEncoder
    from retrec.serving.launch import free_port, start, stop
    from tests.tiny_models import tiny_dense_encoder

    root = tmp_path_factory.mktemp("console")
    collection = load_retrieval_data(tiny_data, split="test")
    ids, texts = collection.doc_texts()
    fields = {"metadata": {d: json.dumps(m) for d, m in zip(ids, metadata_of(ids))}}  # what filters read
    bm25 = publish_index(BM25Index.build(ids, texts), root / "bm25", name="bm25", texts=(ids, texts), fields=fields)
    encoder = tiny_dense_encoder(root / "encoder")
    enc = OnnxEncoder(encoder, threads=1)
    dense = publish_index(DenseRetriever.build(enc, ids, texts, shards=2).index, root / "dense", name="dense",
                          texts=(ids, texts), encoder=enc, fields=fields)
    bert4rec = train_bert4rec(tiny_data, root / "bert4rec", BERT4RecTrainConfig(
        max_len=12, hidden=16, layers=1, heads=2, epochs=1, eval_users=50), progress=False)
    (root / "keys.txt").write_text(f"{API_KEY}\n")
    zero = {"replicas": 1, "num_cpus": 0}
    config = {"http_options": {"host": "127.0.0.1", "port": free_port()},
              "applications": [{"name": "retrec", "route_prefix": "/", "import_path": "retrec.serving.app:build_app",
                                "args": {"retrievers": {"bm25": {"index": str(bm25), "shards": zero},
                                                       "dense": {"index": str(dense), "encoder": str(encoder),
                                                                 "shards": zero}},
                                         "recommenders": {"bert4rec": {"bundle": str(bert4rec), "replicas": zero}},
                                         "encoder": {"threads": 1}, "ingress": zero, "use_gpu": False,
                                         "auth": {"api_keys_env": None, "api_keys_file": str(root / "keys.txt")}}}]}
    if ray.is_initialized():
        ray.shutdown()
    try:
        url = start(config, num_cpus=2)
        queries = collection.queries.column("text").to_pylist()[:10]
        yield {"url": url, "queries": queries, "data": tiny_data, "bm25": bm25, "dense": dense, "encoder": encoder,
               "metadata": DocumentMetadata(ids, [json.dumps(m) for m in metadata_of(ids)])}
    finally:
        stop()


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """The system browser through Playwright's sync API, headless, no sandbox (containers), for this module only:
    Playwright's sync API runs an event loop on this thread while it is started, so it is stopped when the module
    ends (a session-wide one, as pytest-playwright's fixtures keep, breaks every later test's ``asyncio.run``)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--no-sandbox", "--disable-gpu"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(chromium: Any) -> Iterator[Any]:
    context = chromium.new_context(viewport={"width": 1280, "height": 720})
    try:
        yield context.new_page()
    finally:
        context.close()


def _only_the_app(page: Any, url: str) -> None:
    """No network but the served app: anything else is aborted (and would show as a console error)."""
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(url) else route.abort())


def _watch(page: Any) -> list[str]:
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return errors


def _shots(tmp_path: Path) -> list[Path]:
    extra = os.environ.get("RETREC_CONSOLE_SHOTS")
    return [tmp_path, *([Path(extra)] if extra else [])]


def _submit_and_wait(page: Any, button: str, cell: str) -> None:
    """Click, then wait until ``cell`` is filled again (locator waits: the page's CSP forbids evaluated strings)."""
    from playwright.sync_api import expect

    page.evaluate(f"document.getElementById('{cell}').textContent = ''")
    page.click(button)
    expect(page.locator(f"#{cell}")).not_to_have_text("", timeout=15_000)


@browser
def test_the_console_shows_what_the_api_answers(served: dict[str, Any], page: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    started = time.monotonic()
    url = served["url"]
    _only_the_app(page, url)
    errors = _watch(page)
    page.goto(f"{url}/ui")  # redirected to /ui/
    page.fill("#key", API_KEY)
    page.click("#key-save")
    expect(page.locator("#key-status")).to_have_text("key accepted")
    options = page.eval_on_selector_all("#retriever option", "os => os.map(o => o.value)")
    assert options == ["bm25", "dense", "hybrid"]

    api = httpx.Client(base_url=url, headers={"X-API-Key": API_KEY}, timeout=30.0)
    for retriever in ("bm25", "dense", "hybrid"):
        page.select_option("#retriever", retriever)
        for query in served["queries"]:
            page.fill("#q", query)
            _submit_and_wait(page, "#go", "latency")
            shown = page.eval_on_selector_all("#results tbody tr", "rows => rows.map(r => r.dataset.docId)")
            want = api.post("/v1/search", json={"query": query, "k": 10, "retriever": retriever}).json()
            assert shown == [h["doc_id"] for h in want["hits"]], (retriever, query)
            latency = page.text_content("#latency")
            searched = "dense" if retriever == "dense" else "bm25"
            assert "server" in latency and "round trip" in latency and f"search.{searched}" in latency
            assert page.text_content("#answered").startswith(retriever if retriever != "hybrid" else "bm25")
        if retriever == "hybrid":
            cells = page.eval_on_selector_all("#results tbody tr:first-child td.component",
                                              "cs => cs.map(c => c.textContent)")
            assert len(cells) == 2 and all(c != "—" for c in cells), cells  # the top hit: both retrievers' score (rank)
            assert page.eval_on_selector_all("#results thead th", "hs => hs.map(h => h.textContent)")[-2:] == [
                "bm25 score (rank)", "dense score (rank)"]
    for target in _shots(tmp_path):
        page.screenshot(path=str(target / "console-search.png"), full_page=True)

    page.click("button[data-tab=compare]")
    page.fill("#cq", served["queries"][0])
    page.select_option("#a-retriever", "bm25")
    page.select_option("#b-retriever", "dense")
    _submit_and_wait(page, "#cgo", "overlap")
    a = page.eval_on_selector_all("#a-results tbody tr", "rows => rows.map(r => r.dataset.docId)")
    b = page.eval_on_selector_all("#b-results tbody tr", "rows => rows.map(r => r.dataset.docId)")
    assert a and b and page.text_content("#overlap").startswith(f"{len(set(a) & set(b))} of 10")
    for target in _shots(tmp_path):
        page.screenshot(path=str(target / "console-compare.png"), full_page=True)

    from retrec.data.interactions import load_interactions, user_sequences

    history = list(map(str, user_sequences(load_interactions(served["data"])).items[0]))[-5:]
    page.click("button[data-tab=recommend]")
    page.fill("#history", ", ".join(history))
    _submit_and_wait(page, "#rgo", "rec-latency")
    shown = page.eval_on_selector_all("#rec-results tbody tr", "rows => rows.map(r => r.dataset.itemId)")
    want = api.post("/v1/recommend", json={"history": history, "k": 10, "model": "bert4rec"}).json()
    assert shown == [i["item_id"] for i in want["items"]] and len(shown) == 10
    for target in _shots(tmp_path):
        page.screenshot(path=str(target / "console-recommend.png"), full_page=True)

    page.click("button[data-tab=quality]")
    page.select_option("#quality-retriever", "dense")
    page.click("#qgo")
    recall = page.locator("#quality-result tr[data-name='recall@10 against exact search'] td")
    expect(recall).to_have_text("1.0000", timeout=30_000)  # a Flat index: its search is exact
    assert page.locator("#quality-result tr").count() == 5
    for target in _shots(tmp_path):
        page.screenshot(path=str(target / "console-quality.png"), full_page=True)
    assert errors == [], errors
    assert time.monotonic() - started < 60


@browser
def test_a_wrong_key_is_refused_on_the_page(served: dict[str, Any], page: Any) -> None:
    from playwright.sync_api import expect

    _only_the_app(page, served["url"])
    page.goto(f"{served['url']}/ui/")
    page.fill("#key", "not-the-key-0000000000")
    page.click("#key-save")
    expect(page.locator("#key-status")).to_have_text("key refused")
    assert "401" in page.text_content("#error")
    assert page.eval_on_selector_all("#retriever option", "os => os.length") == 0


def test_filters_over_http_give_the_top_k_of_the_matching_documents(served: dict[str, Any]) -> None:
    """50 random filters: bm25 and dense answer exactly the offline full ranking restricted to the matching
    documents (hybrid: the fusion of those); nothing matching is no hits; an unknown field is a 400."""
    from retrec.index.bm25_index import BM25Index
    from retrec.index.dense_retriever import DenseRetriever
    from retrec.index.faiss_index import FaissIndex
    from retrec.index.filters import parse_filter
    from retrec.index.fusion import FUSIONS
    from retrec.runtime.onnx_encoder import OnnxEncoder

    offline = {"bm25": BM25Index.load(served["bm25"]),
               "dense": DenseRetriever(OnnxEncoder(served["encoder"], threads=1), FaissIndex.load(served["dense"]))}
    queries, meta, k = served["queries"][:3], served["metadata"], 5
    full = {name: index.search(queries, 10_000) for name, index in offline.items()}
    with httpx.Client(base_url=served["url"], headers={"X-API-Key": API_KEY}, timeout=30.0) as api:
        for spec in random_filters(50):
            allowed = meta.allowed(parse_filter(spec)).ids
            for name in ("bm25", "dense", "hybrid"):
                got = api.post("/v1/search/batch", json={"queries": queries, "k": k, "retriever": name,
                                                          "filter": spec, "fusion": {"depth": 100}})
                assert got.status_code == 200, got.text
                for q, result in enumerate(got.json()["results"]):
                    parts = {n: [(d, s) for d, s in full[n][q] if d in allowed][:100] for n in offline}
                    want = FUSIONS["rrf"](parts, k) if name == "hybrid" else parts[name][:k]
                    assert [h["doc_id"] for h in result["hits"]] == [d for d, _ in want], (name, spec, q)
        nothing = api.post("/v1/search", json={"query": queries[0], "filter": {"year": {"gt": 2100}}})
        assert nothing.status_code == 200 and nothing.json()["hits"] == []
        unknown = api.post("/v1/search", json={"query": queries[0], "retriever": "bm25", "filter": {"colour": "red"}})
        assert unknown.status_code == 400 and unknown.json()["error"]["code"] == "invalid_filter"
        assert "'colour'" in unknown.json()["error"]["message"] and "year" in unknown.json()["error"]["message"]
        bad = api.post("/v1/search", json={"query": queries[0], "filter": {"year": {"gte": 1, "gt": 2}}})
        assert bad.status_code == 422


@browser
def test_docs_authorizes_with_the_key(served: dict[str, Any], page: Any) -> None:
    """``/docs`` (Swagger UI from packaged files: nothing from a CDN) sends the key its Authorize button took:
    GET /v1/models answers 200 from the page, and 401 without it."""
    from playwright.sync_api import expect

    _only_the_app(page, served["url"])
    errors = _watch(page)
    page.goto(f"{served['url']}/docs")
    models = page.locator("#operations-default-models_v1_models_get")
    models.locator(".opblock-summary").click()
    models.locator("button.try-out__btn").click()
    models.locator("button.execute").click()
    status = models.locator(".live-responses-table td.response-col_status:not(.col_header)").first
    expect(status).to_have_text(re.compile(r"^\s*401"), timeout=15_000)  # no key yet
    page.click("button.authorize")
    page.locator(".auth-container input").first.fill(API_KEY)
    page.locator(".auth-container button.authorize").first.click()
    page.locator("button.btn-done").first.click()
    models.locator("button.execute").click()
    expect(status).to_have_text(re.compile(r"^\s*200"), timeout=15_000)
    assert [e for e in errors if "401" not in e] == [], errors  # the deliberate 401 above is the only one
