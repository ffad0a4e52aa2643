"""``retrec reindex``: a new index version of a corpus — encoded in parallel on Ray, resumable, incremental,
verified, published atomically, then made ``current`` (and, on request, swapped into a running server).

Layout: ``ROOT/VERSION/`` (exactly what ``retrec index KIND`` writes, ``documents.parquet`` included) and the
symlink ``ROOT/current -> VERSION``, moved only after the version verified (checksums, document count, a sample
of queries answered) and, with ``eval_data``, scored no more than ``max_drop`` nDCG@10 below the current
version. Work in progress lives in ``ROOT/.reindex/KEY`` (see :mod:`retrec.pipelines.reindex.parts`) and is
removed once the version is published; nothing under ``ROOT/VERSION`` exists before the version is whole.

Stages, for encoded kinds (dense; later sparse, multi-vector through their registry entries):
1. read the corpus and hash every document's text;
2. reuse the base version's encodings (default base: ``ROOT/current``) for documents whose hash is unchanged
   and whose encoder is the same — deleted documents simply drop out; ``full`` re-encodes everything;
3. encode the rest in resumable parts (Ray actors, or this process with ``local``);
4. assemble the index with the kind's ``assemble`` hook, publish, verify, move ``current``.
Text kinds (bm25) are rebuilt whole (their statistics change with any edit): the kind's ``prepare`` (BM25's
terms) in parallel over chunks of the corpus, then its ``assemble``; a kind with neither uses its ``build``.

Example::

    result = reindex(ReindexConfig(kind="dense", data=Path("data/scifact"), out=Path("/models/scifact-dense"),
                                   model=Path("artifacts/tasb-scifact")))
    result.version, result.report["encode"]["docs_per_s"]
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from retrec import kinds
from retrec.bundle import read_manifest
from retrec.contracts import StoredEncodings
from retrec.data.beir import corpus_texts
from retrec.data.corpus import corpus_fields, read_corpus
from retrec.index.generic import (
    content_hash,
    display_name,
    encoding_identity,
    index_kind,
    load_query_encoder,
    publish_index,
    read_documents,
)
from retrec.pipelines.eval.retrievers import BUILD_ARGS
from retrec.pipelines.reindex.checks import GateError, current_version, gate, move_current, verify_version
from retrec.pipelines.reindex.parts import PartStore, encode_parts, plan_parts, prepare_documents
from retrec.version import __version__

__all__ = ["GateError", "ReindexConfig", "ReindexResult", "reindex"]

log = logging.getLogger(__name__)
LOCK = ".reindex.lock"  # in OUT: held by the run, never removed
WORK = ".reindex"
PREPARE_ON_RAY_DOCS = 200_000
REUSE_CHECK_DOCS = 16  # reused documents encoded again before their stored vectors are trusted
REUSE_TOLERANCE = 1e-4
# An int8 model quantises its activations per batch (ONNX Runtime's dynamic quantisation): the same document in
# another batch comes out up to ~0.023 apart (unit vectors, measured on the trained MiniLM) — a retrained or
# damaged model is far beyond that
QUANTIZED_REUSE_TOLERANCE = 0.05


@dataclass
class ReindexConfig:
    kind: str
    data: Path
    out: Path
    model: Path | None = None
    shards: int = 1
    factory: str | None = None
    base: str | None = None  # a version folder name under ``out`` or a path; default: ``out/current``
    full: bool = False
    actors: int | None = None
    threads: int | None = None
    variant: str | None = None  # the encoder's model variant (e.g. int8); default: its loader's (fp32)
    params: dict[str, Any] = field(default_factory=dict)  # the kind's assemble/build parameters (--param)
    gpus_per_actor: float = 0.0
    part_size: int = 256
    ray_address: str | None = None
    local: bool = False
    eval_data: Path | None = None
    max_drop: float = 0.01
    name: str | None = None
    progress: bool = True
    rolling: bool = False  # re-encode the current version shard by shard with a compatible encoder (rolling.py)


@dataclass
class ReindexResult:
    version: Path
    current: bool  # whether ``current`` now names this version
    report: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Corpus:
    doc_ids: list[str]
    texts: list[str]
    hashes: list[bytes]


def _prepare_on_ray(cfg: ReindexConfig, texts: list[str]) -> bool:
    """Whether a text kind's documents are prepared on Ray: when actors are asked for (``--actors N``), on a
    cluster (an address, or Ray already running), or when the corpus is large enough to repay starting a local Ray
    (measured: BM25 terms of SciFact's 5,183 documents take 1.2 s in one process, 5.5 s with a local Ray started
    for them)."""
    import sys

    if cfg.local:
        return False
    running = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    asked = cfg.actors is not None or cfg.ray_address or os.environ.get("RAY_ADDRESS")
    return bool(running or asked) or len(texts) >= PREPARE_ON_RAY_DOCS


def _stage(report: dict[str, Any], name: str, start: float, **extra: Any) -> None:
    report[name] = {"seconds": round(time.perf_counter() - start, 3), **extra}


def _encoder_model(kind: kinds.Kind, model: Path | None) -> Path:
    if model is not None:
        return Path(model).absolute()
    if kind.default_model is None:
        raise ValueError(f"{kind.kind} has no default query encoder; name one with --model")
    return Path(kinds.resolve(kind.default_model)()).absolute()


def _base_version(cfg: ReindexConfig) -> Path | None:
    if cfg.full:
        return None
    if cfg.base is not None:
        base = Path(cfg.base) if os.sep in cfg.base else cfg.out / cfg.base
        if not (base / "manifest.json").is_file():
            raise FileNotFoundError(f"base version {cfg.base}: no index version there")
        return base.resolve()
    return current_version(cfg.out)


def _reusable(kind: kinds.Kind, base: Path | None, encoder: Any, corpus: _Corpus) -> dict[str, np.ndarray]:
    """``doc_id -> encoding`` of the base version's documents whose text is unchanged, when they can be trusted:
    the same kind, the same encoder identity, vectors the index gives back exactly — checked by encoding a sample
    of them again. Anything else (including a damaged base) is logged and nothing is reused."""
    if base is None:
        return {}
    try:
        manifest = read_manifest(base)
        recorded = read_documents(manifest) if manifest.kind == kind.kind else None
        if manifest.kind != kind.kind:
            raise ValueError(f"it is a {manifest.kind} version")
        if recorded is None:
            raise ValueError("it records no content hashes (documents.parquet)")
        hashes, identity = recorded
        if identity != encoding_identity(encoder):
            raise ValueError("its vectors came from another encoder (bundle, variant or document length)")
        index = kinds.call(kind.load, base, verify=True, use_gpu=False)
        pairs = index.encoded_documents() if isinstance(index, StoredEncodings) else None
        if pairs is None:
            raise ValueError("its index cannot give its vectors back exactly (a lossy factory)")
        rows = {d: i for i, d in enumerate(pairs[0])}
        same = [i for i, (d, h) in enumerate(zip(corpus.doc_ids, corpus.hashes)) if hashes.get(d) == h and d in rows]
        picked = np.random.default_rng(0).permutation(same)[:REUSE_CHECK_DOCS].tolist()
        if picked:
            again = encoder.encode_documents([corpus.texts[i] for i in picked])
            stored = pairs[1][[rows[corpus.doc_ids[i]] for i in picked]]
            # a store of lower precision (an approximate index's float16 refine store) keeps vectors rounded to
            # its type, and indexes them so: the fresh encodings are compared rounded alike, within one unit
            diff = float(np.abs(again.astype(stored.dtype).astype(np.float32) - stored.astype(np.float32)).max())
            tolerance = REUSE_TOLERANCE if getattr(encoder, "variant", "fp32") == "fp32" else QUANTIZED_REUSE_TOLERANCE
            if diff > tolerance + (float(np.finfo(stored.dtype).eps) if stored.dtype != np.float32 else 0.0):
                raise ValueError(f"its stored vectors differ from this encoder's by up to {diff:.2g}")
        return {corpus.doc_ids[i]: pairs[1][rows[corpus.doc_ids[i]]] for i in same}
    except Exception as exc:
        log.info("base %s not reused: %s; encoding every document", base.name, exc)
        return {}


def _work_key(kind: kinds.Kind, identity: dict[str, Any], part_size: int, ids: list[str], hashes: list[bytes]) -> str:
    digest = hashlib.sha256(f"{kind.kind}\x1f{sorted(identity.items())}\x1f{part_size}\x1f{__version__}\x1f".encode())
    for doc_id, h in zip(ids, hashes):
        digest.update(doc_id.encode("utf-8") + b"\x1f" + h)
    return digest.hexdigest()[:24]


@contextlib.contextmanager
def _claimed(out: Path) -> Any:
    """Hold ``out`` for this whole run — encode, publish, verify, gate, the move of ``current`` — so another
    reindex of the same folder is refused, never interleaved. The lock file stays (a deleted one would let a
    third run lock a new file while the second still holds the old)."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / LOCK, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"another retrec reindex into {out} is running; wait for it or stop it") from None
        yield


def _new_version_dir(out: Path) -> Path:
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    candidate, n = out / stamp, 1
    while candidate.exists():
        n += 1
        candidate = out / f"{stamp}-{n}"
    return candidate


def _encoded_stage(cfg: ReindexConfig, kind: kinds.Kind, corpus: _Corpus, base: Path | None,
                   report: dict[str, Any], options: dict[str, Any]) -> tuple[Any, Any, PartStore]:
    """Encoded kinds: reuse, encode the rest in parts, assemble. Returns ``(index, encoder, parts store)``."""
    if kind.assemble is None:
        raise ValueError(f"{kind.kind} registers no assemble hook: it cannot be reindexed in parallel")
    model = _encoder_model(kind, cfg.model)
    encoder_options = {"variant": cfg.variant} if cfg.variant else {}
    encoder = load_query_encoder(kind, model, **encoder_options)  # this process: identity, reuse check, assembling
    start = time.perf_counter()
    reused = _reusable(kind, base, encoder, corpus)
    fresh = [i for i, d in enumerate(corpus.doc_ids) if d not in reused]
    deleted = 0
    if base is not None and reused:
        deleted = len(set(read_documents(read_manifest(base))[0]) - set(corpus.doc_ids))  # type: ignore[index]
    _stage(report, "plan", start, base=base.name if base else None, reused=len(reused), encode=len(fresh),
           deleted=deleted)
    log.info("%d documents: %d reused from %s, %d to encode, %d deleted", len(corpus.doc_ids), len(reused),
             base.name if base else "no base", len(fresh), deleted)
    fresh_ids = [corpus.doc_ids[i] for i in fresh]
    parts = plan_parts(fresh_ids, [corpus.texts[i] for i in fresh], cfg.part_size)
    store = PartStore(cfg.out / WORK / _work_key(kind, encoding_identity(encoder), cfg.part_size, fresh_ids,
                                                 [corpus.hashes[i] for i in fresh]))
    store.folder.mkdir(parents=True, exist_ok=True)
    report["encode"] = encode_parts(parts, store, kind=kind.kind, model=model, local=cfg.local, actors=cfg.actors,
                                    threads=cfg.threads, gpus=cfg.gpus_per_actor, ray_address=cfg.ray_address,
                                    progress=cfg.progress, options=encoder_options)
    start = time.perf_counter()
    position = {d: i for i, d in enumerate(corpus.doc_ids)}
    encoded: Any = None  # float32 [n, dim], or one [tokens, dim] matrix per document (token payloads)
    for part in parts:
        block = store.read(part)
        if isinstance(block, list):
            encoded = [None] * len(corpus.doc_ids) if encoded is None else encoded
            for doc_id, matrix in zip(part.doc_ids, block):
                encoded[position[doc_id]] = matrix
            continue
        if encoded is None:
            encoded = np.empty((len(corpus.doc_ids), *block.shape[1:]), dtype=block.dtype)
        encoded[[position[d] for d in part.doc_ids]] = block
    for doc_id, vector in reused.items():
        if encoded is None:  # (a float16 store's vectors are indexed as float32, as fresh ones would be)
            encoded = np.empty((len(corpus.doc_ids), *vector.shape), np.promote_types(vector.dtype, np.float32))
        encoded[position[doc_id]] = vector
    reused.clear()
    index = kinds.call(kind.assemble, corpus.doc_ids, encoded, encoder=encoder, use_gpu=False, **options)
    _stage(report, "assemble", start, documents=len(corpus.doc_ids))
    return index, encoder, store


def _text_stage(cfg: ReindexConfig, kind: kinds.Kind, corpus: _Corpus, report: dict[str, Any],
                options: dict[str, Any]) -> Any:
    """Text kinds: rebuilt whole — the kind's ``prepare`` in parallel then ``assemble``, else its ``build``."""
    if cfg.model is not None or cfg.variant is not None:
        raise ValueError(f"{display_name(kind)} takes no model (nor a variant): it searches with the query text")
    start = time.perf_counter()
    if kind.prepare is not None and kind.assemble is not None:  # e.g. BM25: terms in parallel, then indexed
        prepared, report["prepare"] = prepare_documents(corpus.texts, kind=kind.kind,
                                                        local=not _prepare_on_ray(cfg, corpus.texts),
                                                        actors=cfg.actors, ray_address=cfg.ray_address,
                                                        progress=cfg.progress)
        start = time.perf_counter()
        index = kinds.call(kind.assemble, corpus.doc_ids, prepared, **options)
    else:
        index = kinds.call(kind.build, corpus.doc_ids, corpus.texts, progress=cfg.progress, **options)
    _stage(report, "build", start, documents=len(corpus.doc_ids), full_rebuild=True)
    return index


def _remove_work(store: PartStore | None) -> None:
    if store is None:
        return
    shutil.rmtree(store.folder, ignore_errors=True)
    with contextlib.suppress(OSError):
        store.folder.parent.rmdir()  # ROOT/.reindex, when no other reindex is in progress


def _rolling(cfg: ReindexConfig, kind: kinds.Kind, corpus: _Corpus, report: dict[str, Any],
             on_version: Callable[[Path], None] | None) -> ReindexResult:
    from retrec.pipelines.reindex.rolling import rolling_reindex

    if cfg.model is None:
        raise ValueError("--rolling needs --model: the encoder to move the current version to")
    if cfg.full or cfg.base is not None or cfg.params:
        raise ValueError("--rolling starts from the current version with its structure: it takes no --full, "
                         "--base or --param")
    def store_for(identity: dict[str, Any], ids: list[str], hashes: list[bytes]) -> PartStore:
        store = PartStore(cfg.out / WORK / _work_key(kind, identity, cfg.part_size, ids, hashes))
        store.folder.mkdir(parents=True, exist_ok=True)  # the run holds cfg.out (reindex)
        return store

    version, store = rolling_reindex(cfg, kind, corpus, report, store_for, _new_version_dir, on_version)
    _remove_work(store)
    return ReindexResult(version=version, current=True, report=report)


def reindex(cfg: ReindexConfig, on_version: Callable[[Path], None] | None = None) -> ReindexResult:
    """Run every stage (see the module docstring); returns the published version and a report per stage.

    The parts are kept until ``current`` has moved (or the gate refused the version), so a run killed after
    publishing resumes without encoding again. ``cfg.rolling``: the steps of
    :mod:`retrec.pipelines.reindex.rolling`, ``on_version`` called with each version it makes current. One run
    at a time per ``cfg.out`` (``OUT/.reindex.lock``)."""
    with _claimed(cfg.out):
        return _reindex(cfg, on_version)


def _reindex(cfg: ReindexConfig, on_version: Callable[[Path], None] | None) -> ReindexResult:
    kind = index_kind(cfg.kind)
    report: dict[str, Any] = {"kind": kind.kind}
    start = time.perf_counter()
    doc_ids, texts = corpus_texts(read_corpus(cfg.data))
    if not doc_ids:
        raise ValueError(f"{cfg.data}: the corpus has no documents")
    if len(set(doc_ids)) != len(doc_ids):
        raise ValueError(f"{cfg.data}: duplicate doc ids")
    # content hashes: what an encoded kind's reuse compares; a text kind is rebuilt whole and never reads them
    corpus = _Corpus(doc_ids, texts, [content_hash(t) for t in texts] if kind.needs_encoder else [])
    _stage(report, "read", start, documents=len(doc_ids))
    cfg.out.mkdir(parents=True, exist_ok=True)
    base = _base_version(cfg)
    label = (cfg.data if cfg.data.is_dir() else cfg.data.absolute().parent).name
    options: dict[str, Any] = {"factory": cfg.factory or kind.options.get("factory"), "shards": cfg.shards}
    if cfg.params:
        hook = kind.assemble or kind.build
        if hook is None:
            raise ValueError(f"{display_name(kind)} takes no parameters")
        kinds.check_params(hook, cfg.params, f"retrec reindex {display_name(kind)}", BUILD_ARGS)
        options.update(cfg.params)
    if cfg.rolling:
        return _rolling(cfg, kind, corpus, report, on_version)
    store = encoder = None
    if kind.needs_encoder:
        index, encoder, store = _encoded_stage(cfg, kind, corpus, base, report, options)
    else:
        index = _text_stage(cfg, kind, corpus, report, options)
    start = time.perf_counter()
    version = publish_index(index, _new_version_dir(cfg.out), cfg.name or f"{label}-{display_name(kind)}",
                            texts=(doc_ids, texts), encoder=encoder, fields=corpus_fields(cfg.data),
                            metrics={"reindex": {k: report[k] for k in ("plan",) if k in report}})
    _stage(report, "publish", start)
    start = time.perf_counter()
    report["verify"] = verify_version(version, doc_ids, texts, cfg.model)
    _stage(report, "verify", start, **report["verify"])
    if cfg.eval_data is not None:
        start = time.perf_counter()
        try:
            _stage(report, "eval", start, **gate(cfg.eval_data, version, current_version(cfg.out), model=cfg.model,
                                                 max_drop=cfg.max_drop))
        except GateError:
            _remove_work(store)
            raise
    move_current(cfg.out, version)
    _remove_work(store)
    return ReindexResult(version=version, current=True, report=report)
