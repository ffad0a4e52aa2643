"""retrec.pipelines.reindex.job: equal to `retrec index`, incremental (only changed documents encoded, equal to a full
rebuild), resumable after SIGKILL with no partial version ever loadable, verified before `current` moves, the
evaluation gate, parallel encoding on a real local Ray."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from retrec.bundle import BundleError, load_bundle, read_manifest, write_manifest
from retrec.data.beir import corpus_texts
from retrec.data.corpus import corpus_fields, read_corpus
from retrec.index.faiss_index import FaissIndex
from retrec.index.generic import index_kind, publish_index, read_documents
from retrec.pipelines.eval.retrievers import build_from_texts
from retrec.pipelines.reindex.checks import CURRENT
from retrec.pipelines.reindex.job import GateError, ReindexConfig, reindex
from retrec.runtime.onnx_encoder import OnnxEncoder
from tests.tiny_models import tiny_dense_encoder


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_dense_encoder(tmp_path_factory.mktemp("reindex-encoder") / "enc")


def _vectors(version: Path) -> dict[str, np.ndarray]:
    ids, vectors = FaissIndex.load(version, use_gpu=False).encoded_documents()  # type: ignore[misc]
    return dict(zip(ids, vectors))


def _assert_same_vectors(a: Path, b: Path, tolerance: float = 1e-5) -> None:
    va, vb = _vectors(a), _vectors(b)
    assert sorted(va) == sorted(vb)
    assert max(float(np.abs(va[d].astype(np.float32) - vb[d]).max()) for d in va) <= tolerance


def _files(version: Path) -> dict[str, str]:
    return {k: v.sha256 for k, v in read_manifest(version).files.items()}


def _edit(src: Path, dst: Path, edited: list[int], deleted: list[int]) -> Path:
    table = read_corpus(src)
    rows = table.to_pylist()
    for i in edited:
        rows[i]["text"] += " revised"
    rows = [r for i, r in enumerate(rows) if i not in set(deleted)]
    dst.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), dst / "corpus.parquet")
    return dst


def test_reindex_equals_retrec_index_for_dense_and_bm25(tiny_data: Path, encoder: Path, tmp_path: Path) -> None:
    ids, texts = corpus_texts(read_corpus(tiny_data))
    built = build_from_texts(index_kind("dense"), ids, texts, model=encoder, shards=2, cache=None)
    indexed = publish_index(built.index, tmp_path / "index-dense", "x", texts=(ids, texts), encoder=built.encoder)
    result = reindex(ReindexConfig(kind="dense", data=tiny_data, out=tmp_path / "dense", model=encoder, shards=2,
                                   local=True, part_size=64, progress=False))
    _assert_same_vectors(indexed, result.version)
    assert read_manifest(result.version).dims["shard_documents"] == read_manifest(indexed).dims["shard_documents"]
    assert (tmp_path / "dense" / CURRENT).resolve() == result.version
    assert not (tmp_path / "dense" / ".reindex").exists()  # work folder gone once published
    assert read_documents(read_manifest(result.version)) == read_documents(read_manifest(indexed))

    bm25 = publish_index(build_from_texts(index_kind("bm25"), ids, texts).index, tmp_path / "index-bm25", "x",
                         texts=(ids, texts), fields=corpus_fields(tiny_data))  # what `retrec index` stores
    again = reindex(ReindexConfig(kind="bm25", data=tiny_data, out=tmp_path / "bm25", local=True, progress=False))
    assert _files(again.version) == _files(bm25)
    assert again.report["build"]["full_rebuild"] is True and again.report["prepare"]["documents"] == 300


def test_incremental_reindex_encodes_only_changed_documents_and_equals_a_full_rebuild(
        tiny_data: Path, encoder: Path, tmp_path: Path) -> None:
    root = tmp_path / "dense"
    first = reindex(ReindexConfig(kind="dense", data=tiny_data, out=root, model=encoder, local=True,
                                  progress=False))
    edited = _edit(tiny_data, tmp_path / "edited", edited=[3, 50, 120], deleted=[7, 200, 201])
    inc = reindex(ReindexConfig(kind="dense", data=edited, out=root, model=encoder, local=True, progress=False))
    plan = inc.report["plan"]
    assert plan["base"] == first.version.name
    assert (plan["encode"], plan["deleted"], plan["reused"]) == (3, 3, 300 - 3 - 3)
    assert inc.report["encode"]["documents"] == 3
    full = reindex(ReindexConfig(kind="dense", data=edited, out=tmp_path / "full", model=encoder, local=True,
                                 progress=False))
    assert full.report["plan"]["encode"] == 297
    _assert_same_vectors(inc.version, full.version)
    assert (root / CURRENT).resolve() == inc.version
    assert len(_vectors(first.version)) == 300  # the previous version is untouched


def test_an_approximate_index_gives_its_refine_store_back_to_an_incremental_reindex(
        tiny_data: Path, encoder: Path, tmp_path: Path) -> None:
    """``auto`` above its exact size (IVF-PQ + float16 refine store): the unchanged documents' vectors come back
    from the store, as rounded as the index holds them, and the version equals a full rebuild's."""
    params = {"exact_max": 100, "pseudo_queries": 32}  # 300 documents: IVF-PQ, not exact search
    root = tmp_path / "dense"
    first = reindex(ReindexConfig(kind="dense", data=tiny_data, out=root, model=encoder, local=True, progress=False,
                                  params=params))
    config = read_manifest(first.version).config
    assert "PQ" in config["factory"] and config["refine_store"] == "float16"
    ids, stored = FaissIndex.load(first.version, use_gpu=False).encoded_documents()  # type: ignore[misc]
    assert stored.dtype == np.float16 and len(ids) == 300

    edited = _edit(tiny_data, tmp_path / "edited", edited=[3, 50, 120], deleted=[7, 200, 201])
    inc = reindex(ReindexConfig(kind="dense", data=edited, out=root, model=encoder, local=True, progress=False,
                                params=params))
    assert (inc.report["plan"]["reused"], inc.report["encode"]["documents"]) == (294, 3)
    full = reindex(ReindexConfig(kind="dense", data=edited, out=tmp_path / "full", model=encoder, local=True,
                                 progress=False, params=params))
    _assert_same_vectors(inc.version, full.version, tolerance=float(np.finfo(np.float16).eps))
    assert read_manifest(inc.version).config["factory"] == read_manifest(full.version).config["factory"]

    with pytest.raises(ValueError, match="takes no parameter nprobe"):
        reindex(ReindexConfig(kind="dense", data=edited, out=root, model=encoder, local=True, progress=False,
                              params={"nprobe": 4}))


def test_the_encoder_variant_reaches_every_encoder_and_is_recorded(
        tiny_data: Path, encoder: Path, tmp_path: Path) -> None:
    """``variant`` (``--variant int8``) encodes the documents with that model of the bundle, in every encoder, and
    is part of the encodings' identity; a text kind refuses it."""
    bundle = tmp_path / "two-variants"
    shutil.copytree(encoder, bundle)
    other = tiny_dense_encoder(tmp_path / "other", seed=1)  # stands in for the int8 model: other outputs
    shutil.copy(other / "model.onnx", bundle / "model.int8.onnx")
    m = read_manifest(bundle)
    write_manifest(bundle, kind=m.kind, name=m.name, version=m.version, dims=m.dims,
                   config={**m.config, "variants": {"fp32": "model.onnx", "int8": "model.int8.onnx"}})
    result = reindex(ReindexConfig(kind="dense", data=tiny_data, out=tmp_path / "dense", model=bundle,
                                   variant="int8", local=True, progress=False, part_size=64))
    assert read_documents(read_manifest(result.version))[1]["variant"] == "int8"  # type: ignore[index]
    ids, texts = corpus_texts(read_corpus(tiny_data))
    expected = OnnxEncoder(bundle, variant="int8").encode_documents(texts[:5])
    got = _vectors(result.version)
    assert max(float(np.abs(got[d] - v).max()) for d, v in zip(ids, expected)) <= 1e-5
    with pytest.raises(BundleError, match="no 'int4' model"):
        reindex(ReindexConfig(kind="dense", data=tiny_data, out=tmp_path / "x", model=bundle, variant="int4",
                              local=True, progress=False))
    with pytest.raises(ValueError, match="takes no model"):
        reindex(ReindexConfig(kind="bm25", data=tiny_data, out=tmp_path / "y", variant="int8", local=True,
                              progress=False))


def test_a_quantized_encoders_batch_noise_does_not_block_reuse(tiny_data: Path, encoder: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """An int8 model's output depends on the batch (activations quantised per batch): reuse accepts differences of
    that size for a quantized variant, never for fp32."""
    bundle = tmp_path / "two-variants"
    shutil.copytree(encoder, bundle)
    shutil.copy(bundle / "model.onnx", bundle / "model.int8.onnx")
    m = read_manifest(bundle)
    write_manifest(bundle, kind=m.kind, name=m.name, version=m.version, dims=m.dims,
                   config={**m.config, "variants": {"fp32": "model.onnx", "int8": "model.int8.onnx"}})
    plain = OnnxEncoder.encode_documents

    def noisy(self: OnnxEncoder, texts: list[str], *args: object, **kwargs: object) -> np.ndarray:
        return plain(self, texts, *args, **kwargs) + 0.01  # what another batch does to an int8 model's output

    for variant, reused in (("fp32", 0), ("int8", 300)):
        root = tmp_path / variant
        reindex(ReindexConfig(kind="dense", data=tiny_data, out=root, model=bundle, variant=variant, local=True,
                              progress=False))
        monkeypatch.setattr(OnnxEncoder, "encode_documents", noisy)
        again = reindex(ReindexConfig(kind="dense", data=tiny_data, out=root, model=bundle, variant=variant,
                                      local=True, progress=False))
        monkeypatch.setattr(OnnxEncoder, "encode_documents", plain)
        assert again.report["plan"]["reused"] == reused


def test_a_base_that_cannot_be_trusted_is_not_reused(tiny_data: Path, encoder: Path, tmp_path: Path) -> None:
    """Retrained weights under the same name and version, a lossy factory, a damaged base: encode everything."""
    retrained = tiny_dense_encoder(tmp_path / "retrained", seed=1)  # same name "tiny-dense", version "enc-v1"
    root = tmp_path / "dense"
    reindex(ReindexConfig(kind="dense", data=tiny_data, out=root, model=encoder, local=True, progress=False))
    second = reindex(ReindexConfig(kind="dense", data=tiny_data, out=root, model=retrained, local=True,
                                   progress=False))
    assert second.report["plan"]["reused"] == 0 and second.report["plan"]["encode"] == 300

    lossy = tmp_path / "lossy"
    reindex(ReindexConfig(kind="dense", data=tiny_data, out=lossy, model=encoder, factory="PCA8,Flat", local=True,
                          progress=False))
    again = reindex(ReindexConfig(kind="dense", data=tiny_data, out=lossy, model=encoder, local=True, progress=False))
    assert again.report["plan"]["reused"] == 0

    damaged = (root / CURRENT).resolve() / "documents.parquet"
    damaged.write_bytes(damaged.read_bytes()[:40])
    third = reindex(ReindexConfig(kind="dense", data=tiny_data, out=root, model=retrained, local=True,
                                  progress=False))
    assert third.report["plan"]["reused"] == 0 and (root / CURRENT).resolve() == third.version


def test_a_run_that_dies_after_publishing_resumes_without_encoding_again(
        tiny_data: Path, encoder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from retrec.pipelines.reindex import job as module

    def died(*_: object, **__: object) -> None:
        raise KeyboardInterrupt  # killed between publishing and moving current

    monkeypatch.setattr(module, "verify_version", died)
    cfg = ReindexConfig(kind="dense", data=tiny_data, out=tmp_path / "dense", model=encoder, local=True,
                        part_size=50, progress=False)
    with pytest.raises(KeyboardInterrupt):
        reindex(cfg)
    assert not (tmp_path / "dense" / CURRENT).exists()
    monkeypatch.undo()
    again = reindex(cfg)
    assert again.report["encode"]["parts_skipped"] == 6 and again.report["encode"]["parts_encoded"] == 0
    assert (tmp_path / "dense" / CURRENT).resolve() == again.version
    assert not (tmp_path / "dense" / ".reindex").exists()


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from retrec.cli import main; main()", *args]


def test_killed_reindex_resumes_to_the_same_index_and_never_exposes_a_partial_version(
        default_data: Path, encoder: Path, tmp_path: Path) -> None:
    args = ["reindex", "dense", "--data", str(default_data), "--model", str(encoder), "--local",
            "--part-size", "8", "--threads", "1", "--json"]
    reference = subprocess.run(_cli(*args, "--out", str(tmp_path / "reference")), capture_output=True, text=True)
    assert reference.returncode == 0, reference.stderr[-2000:]
    root = tmp_path / "killed"
    seen_bad: list[str] = []
    stop = threading.Event()

    def watch() -> None:  # every visible version, whenever seen, must load whole
        while not stop.is_set():
            for entry in root.glob("[!.]*") if root.is_dir() else []:
                try:
                    load_bundle(entry)
                except (BundleError, FileNotFoundError, OSError) as exc:
                    if entry.exists():
                        seen_bad.append(f"{entry.name}: {exc}")
            time.sleep(0.002)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    proc = subprocess.Popen(_cli(*args, "--out", str(root)), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    parts = 250  # 2,000 documents in parts of 8
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        done = len(list((root / ".reindex").glob("*/parts/*.json"))) if (root / ".reindex").is_dir() else 0
        if done >= parts // 2:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.002)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the reindex finished before it could be killed half-way"
    assert not [p for p in root.glob("[!.]*")], "a version (or current) appeared before the job finished"
    finished = len(list(root.glob(".reindex/*/parts/*.json")))
    assert parts // 2 <= finished < parts
    rerun = subprocess.run(_cli(*args, "--out", str(root)), capture_output=True, text=True)
    stop.set()
    watcher.join()
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    report = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert report["encode"]["parts_skipped"] >= finished - 1  # the part being written at the kill may be torn
    assert report["encode"]["parts_skipped"] + report["encode"]["parts_encoded"] == parts
    assert not seen_bad, seen_bad[:3]
    ref_version = json.loads(reference.stdout.strip().splitlines()[-1])["version"]
    assert {k: v for k, v in _files(Path(report["version"])).items()} == _files(Path(ref_version))


def test_gate_keeps_current_when_the_new_version_scores_lower(tiny_data: Path, encoder: Path, tmp_path: Path) -> None:
    root = tmp_path / "bm25"
    good = reindex(ReindexConfig(kind="bm25", data=tiny_data, out=root, eval_data=tiny_data, local=True,
                                 progress=False))
    assert good.report["eval"]["nDCG@10"] > 0.1
    table = read_corpus(tiny_data).to_pylist()
    for row in table:  # every text replaced by noise: the judged documents no longer match their queries
        row["title"], row["text"] = "", f"lorem {row['doc_id']}"
    broken = tmp_path / "broken"
    broken.mkdir()
    pq.write_table(pa.Table.from_pylist(table), broken / "corpus.parquet")
    for name in ("queries.parquet", "qrels"):
        os.symlink(tiny_data / name, broken / name)
    with pytest.raises(GateError, match="stays on"):
        reindex(ReindexConfig(kind="bm25", data=broken, out=root, eval_data=broken, local=True, progress=False))
    assert (root / CURRENT).resolve() == good.version


def test_reindex_on_a_local_ray_cluster_equals_the_local_run(tiny_data: Path, encoder: Path, tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    from retrec.process_env import start_local_ray

    # One ONNX thread on both sides: the same parts then encode to the same bytes on any machine (a local run's
    # default is one thread per CPU, and ONNX Runtime's sums over more threads differ in the last bits).
    local = reindex(ReindexConfig(kind="dense", data=tiny_data, out=tmp_path / "local", model=encoder, local=True,
                                  threads=1, part_size=32, progress=False))
    bm25_local = reindex(ReindexConfig(kind="bm25", data=tiny_data, out=tmp_path / "bm25-local", local=True,
                                       progress=False))
    start_local_ray(num_cpus=2)  # one Ray for both runs (a reindex starts and stops its own otherwise)
    try:
        on_ray = reindex(ReindexConfig(kind="dense", data=tiny_data, out=tmp_path / "ray", model=encoder, actors=2,
                                       threads=1, part_size=32, progress=False))
        bm25_ray = reindex(ReindexConfig(kind="bm25", data=tiny_data, out=tmp_path / "bm25-ray", progress=False))
    finally:
        ray.shutdown()
    assert on_ray.report["encode"]["mode"] == "ray" and on_ray.report["encode"]["actors"] == 2
    assert _files(on_ray.version) == _files(local.version)  # the same parts encode to the same bytes
    assert bm25_ray.report["prepare"]["mode"] == "ray"
    assert _files(bm25_ray.version) == _files(bm25_local.version)


def test_swap_sends_the_version_relative_to_the_models_root_and_never_echoes_the_key(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import httpx

    from retrec.pipelines.reindex.checks import swap_server

    version = tmp_path / "models" / "scifact-dense" / "20260101T000000Z"
    version.mkdir(parents=True)
    sent: list[dict] = []

    def post(url: str, json: dict, headers: dict, timeout: float, trust_env: bool) -> httpx.Response:
        assert trust_env is False  # no proxy from the environment sees the key
        sent.append({"url": url, "json": json, "headers": headers})
        status = 200 if json["retriever"] == "dense" else 404
        return httpx.Response(status, json={"code": "ok" if status == 200 else "unknown_retriever",
                                            "message": "moved" if status == 200 else "no such retriever"})

    monkeypatch.setattr(httpx, "post", post)
    with pytest.raises(RuntimeError, match=r"\$RETREC_ADMIN_KEY"):
        swap_server("http://127.0.0.1:8000", "dense", version, tmp_path / "models")
    monkeypatch.setenv("RETREC_ADMIN_KEY", "s3cret-admin-key")
    swap_server("http://127.0.0.1:8000/", "dense", version, tmp_path / "models")
    assert sent[-1]["url"] == "http://127.0.0.1:8000/v1/admin/indexes"
    assert sent[-1]["json"] == {"retriever": "dense", "path": "scifact-dense/20260101T000000Z"}
    assert sent[-1]["headers"]["Authorization"] == "Bearer s3cret-admin-key"
    with pytest.raises(RuntimeError, match="404 unknown_retriever") as err:
        swap_server("http://127.0.0.1:8000", "sparse", version, tmp_path / "models")
    assert "s3cret" not in str(err.value)
    with pytest.raises(ValueError, match="not under the swap root"):
        swap_server("http://127.0.0.1:8000", "dense", version, tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="use https"):  # the key never goes in clear text off this machine
        swap_server("http://serve.example.com:8000", "dense", version, tmp_path / "models")
    with pytest.raises(ValueError, match="without credentials"):
        swap_server("https://user:pw@serve.example.com", "dense", version, tmp_path / "models")
    assert len(sent) == 2


@pytest.mark.parametrize("ending", ["done", "failed"])
def test_swap_that_outlives_its_request_is_followed_to_its_end(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                              ending: str) -> None:
    """A 202 (the server's swap goes on past limits.swap_timeout_s): the CLI polls the swap's record and reports
    what the server says — the version it ended on, or the error it failed with."""
    import httpx

    from retrec.pipelines.reindex import checks

    version = tmp_path / "models" / "v9"
    version.mkdir(parents=True)
    swap_id, polls = "c" * 32, []
    record = {"swap_id": swap_id, "retriever": "dense", "version": "v9"}
    monkeypatch.setattr(httpx, "post", lambda url, **kw: httpx.Response(202, json={**record, "status": "pending"}))

    def get(url: str, **kw: object) -> httpx.Response:
        polls.append(url)
        status = "pending" if len(polls) < 2 else ending
        error = {"error": {"code": "bad_bundle", "message": "shard 0: checksum mismatch"}} if status == "failed" else {}
        return httpx.Response(200, json={**record, "status": status, **error})

    monkeypatch.setattr(httpx, "get", get)
    monkeypatch.setattr(checks.time, "sleep", lambda s: None)
    monkeypatch.setenv("RETREC_ADMIN_KEY", "s3cret-admin-key")
    if ending == "done":
        assert checks.swap_server("http://127.0.0.1:8000", "dense", version, tmp_path / "models")["status"] == "done"
    else:
        with pytest.raises(RuntimeError, match="swap failed on the server: bad_bundle: shard 0: checksum"):
            checks.swap_server("http://127.0.0.1:8000", "dense", version, tmp_path / "models")
    assert polls == [f"http://127.0.0.1:8000/v1/admin/swaps/{swap_id}"] * 2


def test_reindex_of_a_token_kind_equals_retrec_index(tiny_data: Path, tmp_path: Path) -> None:
    """Token payloads (one matrix per document) travel through the parts store; float16 stores are not reused."""
    from tests.tiny_models import tiny_multivector_encoder

    model = tiny_multivector_encoder(tmp_path / "mv")
    ids, texts = corpus_texts(read_corpus(tiny_data))
    built = build_from_texts(index_kind("muvera"), ids, texts, model=model, shards=2)
    indexed = publish_index(built.index, tmp_path / "index-muvera", "x", texts=(ids, texts), encoder=built.encoder)
    config = ReindexConfig(kind="muvera", data=tiny_data, out=tmp_path / "muvera", model=model, shards=2, local=True,
                           part_size=64, progress=False)
    first = reindex(config)
    payload = {k: v for k, v in _files(first.version).items() if k.startswith("shards/")}
    assert payload == {k: v for k, v in _files(indexed).items() if k.startswith("shards/")}
    again = reindex(config)  # nothing changed, yet the lossy float16 store is encoded again, to the same files
    assert again.report["plan"]["reused"] == 0 and again.report["plan"]["encode"] == 300
    assert {k: v for k, v in _files(again.version).items() if k.startswith("shards/")} == payload


def test_reindex_of_a_sparse_kind_equals_retrec_index(tiny_data: Path, tmp_path: Path) -> None:
    """Sparse payloads (term ids and weights per document) travel through the parts store."""
    from tests.tiny_models import tiny_sparse_encoder

    model = tiny_sparse_encoder(tmp_path / "sp")
    ids, texts = corpus_texts(read_corpus(tiny_data))
    built = build_from_texts(index_kind("sparse"), ids, texts, model=model, shards=2)
    indexed = publish_index(built.index, tmp_path / "index-sparse", "x", texts=(ids, texts), encoder=built.encoder)
    config = ReindexConfig(kind="sparse", data=tiny_data, out=tmp_path / "sparse", model=model, shards=2, local=True,
                           part_size=64, progress=False)
    first = reindex(config)
    payload = {k: v for k, v in _files(first.version).items() if k.startswith("shards/")}
    assert payload and payload == {k: v for k, v in _files(indexed).items() if k.startswith("shards/")}


def test_one_reindex_at_a_time_per_out_folder_for_the_whole_run(tiny_data: Path, tmp_path: Path) -> None:
    """Issue 44: the lock covers every stage (not only encoding) and its file is never removed, so a second run
    into the same folder is refused with a clear error while the first holds it, and runs after it proceed."""
    import fcntl

    from retrec.pipelines.reindex.job import LOCK

    out = tmp_path / "bm25"
    out.mkdir()
    with open(out / LOCK, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a first run, mid-publish
        with pytest.raises(RuntimeError, match=r"another retrec reindex into .* is running"):
            reindex(ReindexConfig(kind="bm25", data=tiny_data, out=out, local=True, progress=False))
    first = reindex(ReindexConfig(kind="bm25", data=tiny_data, out=out, local=True, progress=False))
    assert first.current and (out / LOCK).is_file()  # kept: a later run locks the same file
    assert reindex(ReindexConfig(kind="bm25", data=tiny_data, out=out, local=True, progress=False)).current


def test_swap_reads_the_servers_admin_key_variable_and_the_old_name_with_a_warning(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 45: one variable name on both sides — the server reads $RETREC_ADMIN_KEYS, so does --swap."""
    import httpx

    from retrec.pipelines.reindex.checks import swap_server

    version = tmp_path / "models" / "v1"
    version.mkdir(parents=True)
    sent: list[str] = []
    monkeypatch.setattr(httpx, "post", lambda url, **kw: sent.append(kw["headers"]["Authorization"]) or
                        httpx.Response(200, json={"retriever": "dense", "version": "v1", "previous": "v0"}))
    monkeypatch.delenv("RETREC_ADMIN_KEY", raising=False)
    monkeypatch.setenv("RETREC_ADMIN_KEYS", "first-admin-key-0123456789,second-admin-key-0123456789")
    swap_server("http://127.0.0.1:8000", "dense", version, tmp_path / "models")
    monkeypatch.delenv("RETREC_ADMIN_KEYS")
    monkeypatch.setenv("RETREC_ADMIN_KEY", "old-name-admin-key-0123456789")
    swap_server("http://127.0.0.1:8000", "dense", version, tmp_path / "models")
    assert sent == ["Bearer first-admin-key-0123456789", "Bearer old-name-admin-key-0123456789"]
    assert "old name" in caplog.text and "old-name-admin-key" not in caplog.text
