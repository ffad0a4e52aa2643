"""``retrec reindex``: a new index version of a corpus — encoded in parallel on Ray, resumable, incremental,
verified, published atomically, then made ``current`` (and, on request, swapped into a running server).

Layout: ``ROOT/VERSION/`` (exactly what ``retrec index KIND`` writes, ``documents.parquet`` included) and the
symlink ``ROOT/current -> VERSION``, moved only after the version verified (checksums, document count, a sample
of queries answered) and, with ``eval_data``, scored no more than ``max_drop`` nDCG@10 below the current
version. Work in progress lives in ``ROOT/.reindex/KEY`` (see :mod:`retrec.pipelines.reindex_parts`) and is
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
import hashlib
import logging
import os
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from retrec import kinds
from retrec.bundle import BundleError, read_manifest
from retrec.data.beir import corpus_texts
from retrec.data.corpus import read_corpus
from retrec.index.generic import (
    content_hash,
    display_name,
    index_kind,
    load_query_encoder,
    open_index,
    publish_index,
    read_documents,
)
from retrec.pipelines.reindex_parts import PartStore, encode_parts, plan_parts, prepare_documents

log = logging.getLogger(__name__)
CURRENT = "current"
WORK = ".reindex"
SAMPLE_QUERIES = 8
PREPARE_ON_RAY_DOCS = 200_000


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
    gpus_per_actor: float = 0.0
    part_size: int = 256
    ray_address: str | None = None
    local: bool = False
    eval_data: Path | None = None
    max_drop: float = 0.01
    name: str | None = None
    progress: bool = True


@dataclass
class ReindexResult:
    version: Path
    current: bool  # whether ``current`` now names this version
    report: dict[str, Any] = field(default_factory=dict)


class GateError(RuntimeError):
    """The new version was published but scored too far below the current one; ``current`` did not move."""


def _prepare_on_ray(cfg: ReindexConfig, texts: list[str]) -> bool:
    """Whether a text kind's documents are prepared on Ray: on a cluster (an address, or Ray already running), or
    when the corpus is large enough to repay starting a local Ray (measured: BM25 terms of SciFact's 5,183
    documents take 1.2 s in one process, 5.5 s with a local Ray started for them)."""
    import sys

    if cfg.local:
        return False
    running = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    return bool(running or cfg.ray_address or os.environ.get("RAY_ADDRESS")) or len(texts) >= PREPARE_ON_RAY_DOCS


def _stage(report: dict[str, Any], name: str, start: float, **extra: Any) -> None:
    report[name] = {"seconds": round(time.perf_counter() - start, 3), **extra}


def _encoder_model(kind: kinds.Kind, model: Path | None) -> Path:
    if model is not None:
        return Path(model).absolute()
    if kind.default_model is None:
        raise ValueError(f"{kind.kind} has no default query encoder; name one with --model")
    return Path(kinds.resolve(kind.default_model)()).absolute()


def _model_digest(model: Path) -> str:
    manifest = read_manifest(model)
    return hashlib.sha256("".join(f"{k}:{v.sha256};" for k, v in sorted(manifest.files.items())).encode()).hexdigest()


def _base_version(cfg: ReindexConfig) -> Path | None:
    if cfg.full:
        return None
    if cfg.base is not None:
        base = Path(cfg.base) if os.sep in cfg.base else cfg.out / cfg.base
        if not (base / "manifest.json").is_file():
            raise FileNotFoundError(f"base version {cfg.base}: no index version there")
        return base.resolve()
    current = cfg.out / CURRENT
    return current.resolve() if (current / "manifest.json").is_file() else None


def _reusable(kind: kinds.Kind, base: Path | None, model: Path) -> tuple[dict[str, bytes], dict[str, np.ndarray]]:
    """``(hashes, encodings)`` of the base version's documents when its encodings can be reused, else empty."""
    if base is None:
        return {}, {}
    manifest = read_manifest(base)
    why = None
    hashes = read_documents(manifest) if manifest.kind == kind.kind else None
    if manifest.kind != kind.kind:
        why = f"it is a {manifest.kind} version"
    elif hashes is None:
        why = "it records no content hashes (documents.parquet)"
    else:
        try:
            if kind.check is not None:
                kinds.resolve(kind.check)(manifest, read_manifest(model))
            encoded = getattr(kinds.call(kind.load, base, verify=True, use_gpu=False), "encoded_documents", None)
            pairs = encoded() if encoded is not None else None
            if pairs is None:
                why = "its index cannot give its vectors back exactly (a lossy factory)"
            else:
                return hashes, dict(zip(pairs[0], pairs[1]))
        except BundleError as exc:
            why = f"its encoder differs ({exc})"
    log.info("base %s not reused: %s; encoding every document", base.name, why)
    return {}, {}


def _work_key(kind: kinds.Kind, model: Path, part_size: int, ids: list[str], hashes: list[bytes]) -> str:
    digest = hashlib.sha256(f"{kind.kind}\x1f{_model_digest(model)}\x1f{part_size}\x1f".encode())
    for doc_id, h in zip(ids, hashes):
        digest.update(doc_id.encode("utf-8") + b"\x1f" + h)
    return digest.hexdigest()[:24]


def _new_version_dir(out: Path) -> Path:
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    candidate, n = out / stamp, 1
    while candidate.exists():
        n += 1
        candidate = out / f"{stamp}-{n}"
    return candidate


def verify_version(version: Path, doc_ids: list[str], texts: list[str], model: Path | None) -> dict[str, Any]:
    """Load ``version`` with every check and answer a sample of queries (each a document's first words):
    refuses a wrong document count or a search that fails or returns too few hits."""
    retriever = open_index(version, model=model, verify=True, use_gpu=False)
    indexed = retriever.doc_ids
    if indexed is not None and sorted(indexed) != sorted(doc_ids):
        raise BundleError(f"{version.name}: indexes {len(indexed)} documents, the corpus has {len(doc_ids)}")
    rng = np.random.default_rng(0)
    sample = sorted(rng.choice(len(doc_ids), size=min(SAMPLE_QUERIES, len(doc_ids)), replace=False).tolist())
    queries = [" ".join(texts[i].split()[:16]) or doc_ids[i] for i in sample]
    hits = retriever.search(queries, k=10)
    want = min(10, len(doc_ids))
    short = [q for q, h in zip(queries, hits) if len(h) < want and q.strip()]
    if len(hits) != len(queries) or (short and retriever.encoder is not None):
        raise BundleError(f"{version.name}: {len(short)} of {len(queries)} sample queries got fewer than {want} hits")
    found = sum(doc_ids[i] in {d for d, _ in h} for i, h in zip(sample, hits))
    return {"documents": len(doc_ids), "sample_queries": len(queries), "sample_self_hits": found}


def _gate(cfg: ReindexConfig, version: Path, current: Path | None) -> dict[str, Any]:
    """nDCG@10 of the new version (and of the current one) on ``cfg.eval_data``; GateError when it dropped."""
    from retrec.data.beir import load_retrieval_data
    from retrec.pipelines.evaluate import evaluate_retriever
    from retrec.pipelines.retrievers import open_retriever

    assert cfg.eval_data is not None
    data = load_retrieval_data(cfg.eval_data, split="test")
    new = evaluate_retriever(open_retriever(version, data, cfg.model), data, progress=False).metrics["nDCG@10"]
    out: dict[str, Any] = {"nDCG@10": new}
    if current is not None:
        try:
            old = evaluate_retriever(open_retriever(current, data), data, progress=False).metrics["nDCG@10"]
        except (BundleError, ValueError) as exc:
            log.warning("current version %s cannot be evaluated (%s); gating on the new one alone", current.name, exc)
            return out
        out["current_nDCG@10"] = old
        if new < old - cfg.max_drop:
            raise GateError(f"{version.name}: nDCG@10 {new:.4f} on {cfg.eval_data.name} is more than "
                            f"{cfg.max_drop} below the current version's {old:.4f}; {CURRENT} stays on "
                            f"{current.name} (the new version stays published beside it)")
    return out


def move_current(out: Path, version: Path) -> None:
    """Point ``out/current`` at ``version`` in one rename (a reader sees the old target or the new one)."""
    link = out / CURRENT
    if link.exists() and not link.is_symlink():
        raise FileExistsError(f"{link}: exists and is not a symlink; refusing to replace it")
    tmp = out / f".{CURRENT}.{secrets.token_hex(4)}"
    os.symlink(version.name, tmp)
    os.replace(tmp, link)
    fd = os.open(out, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def reindex(cfg: ReindexConfig) -> ReindexResult:
    """Run every stage (see the module docstring); returns the published version and a report per stage."""
    kind = index_kind(cfg.kind)
    report: dict[str, Any] = {"kind": kind.kind}
    start = time.perf_counter()
    doc_ids, texts = corpus_texts(read_corpus(cfg.data))
    if not doc_ids:
        raise ValueError(f"{cfg.data}: the corpus has no documents")
    hashes = [content_hash(t) for t in texts]
    _stage(report, "read", start, documents=len(doc_ids))
    cfg.out.mkdir(parents=True, exist_ok=True)
    base = _base_version(cfg)
    label = (cfg.data if cfg.data.is_dir() else cfg.data.absolute().parent).name
    name = cfg.name or f"{label}-{display_name(kind)}"
    options: dict[str, Any] = {"factory": cfg.factory or kind.options.get("factory"), "shards": cfg.shards}
    work: Path | None = None
    if kind.needs_encoder:
        if kind.assemble is None:
            raise ValueError(f"{kind.kind} registers no assemble hook: it cannot be reindexed in parallel")
        model = _encoder_model(kind, cfg.model)
        start = time.perf_counter()
        old_hashes, old_encoded = _reusable(kind, base, model)
        fresh = [i for i, (d, h) in enumerate(zip(doc_ids, hashes)) if old_hashes.get(d) != h or d not in old_encoded]
        deleted = len(set(old_hashes) - set(doc_ids))
        _stage(report, "plan", start, base=base.name if base else None, reused=len(doc_ids) - len(fresh),
               encode=len(fresh), deleted=deleted)
        log.info("%d documents: %d reused from %s, %d to encode, %d deleted", len(doc_ids), len(doc_ids) - len(fresh),
                 base.name if base else "no base", len(fresh), deleted)
        parts = plan_parts([doc_ids[i] for i in fresh], [texts[i] for i in fresh], cfg.part_size)
        work = cfg.out / WORK / _work_key(kind, model, cfg.part_size, [doc_ids[i] for i in fresh],
                                          [hashes[i] for i in fresh])
        store = PartStore(work)
        report["encode"] = encode_parts(parts, store, kind=kind.kind, model=model, local=cfg.local,
                                        actors=cfg.actors, threads=cfg.threads, gpus=cfg.gpus_per_actor,
                                        ray_address=cfg.ray_address,
                                        progress=cfg.progress)
        start = time.perf_counter()
        by_id = dict(old_encoded)
        for part in parts:
            by_id.update(zip(part.doc_ids, store.read(part)))
        encoded = np.stack([by_id[d] for d in doc_ids])
        encoder = load_query_encoder(kind, model, num_threads=1)
        index = kinds.call(kind.assemble, doc_ids, encoded, encoder=encoder, use_gpu=False, **options)
        _stage(report, "assemble", start, documents=len(doc_ids))
    else:
        if cfg.model is not None:
            raise ValueError(f"{display_name(kind)} takes no model: it searches with the query text")
        start = time.perf_counter()
        if kind.prepare is not None and kind.assemble is not None:  # e.g. BM25: terms in parallel, then indexed
            on_ray = _prepare_on_ray(cfg, texts)
            prepared, report["prepare"] = prepare_documents(texts, kind=kind.kind, local=not on_ray, actors=cfg.actors,
                                                            ray_address=cfg.ray_address, progress=cfg.progress)
            start = time.perf_counter()
            index = kinds.call(kind.assemble, doc_ids, prepared, **options)
        else:
            index = kinds.call(kind.build, doc_ids, texts, progress=cfg.progress, **options)
        _stage(report, "build", start, documents=len(doc_ids), full_rebuild=True)
    start = time.perf_counter()
    version = publish_index(index, _new_version_dir(cfg.out), name, texts=(doc_ids, texts),
                            metrics={"reindex": {k: report[k] for k in ("plan",) if k in report}})
    _stage(report, "publish", start)
    if work is not None:
        shutil.rmtree(work, ignore_errors=True)
        with contextlib.suppress(OSError):
            work.parent.rmdir()  # ROOT/.reindex, when no other reindex is in progress
    start = time.perf_counter()
    report["verify"] = verify_version(version, doc_ids, texts, cfg.model)
    _stage(report, "verify", start, **report["verify"])
    current = cfg.out / CURRENT
    current_target = current.resolve() if (current / "manifest.json").is_file() else None
    if cfg.eval_data is not None:
        start = time.perf_counter()
        scores = _gate(cfg, version, current_target)
        _stage(report, "eval", start, **scores)
    move_current(cfg.out, version)
    return ReindexResult(version=version, current=True, report=report)


ADMIN_KEY_ENV = "RETREC_ADMIN_KEY"


def swap_server(url: str, retriever: str, version: Path, models_root: Path, *, key_env: str = ADMIN_KEY_ENV,
                timeout_s: float = 120.0) -> dict[str, Any]:
    """Ask the server at ``url`` to load ``version`` for ``retriever`` (``POST /v1/admin/indexes``, the admin key
    from ``$RETREC_ADMIN_KEY``); the version is named relative to ``models_root``, the folder the server's
    ``admin.models_root`` is. Raises RuntimeError with the server's code and message (never the key)."""
    import httpx

    key = os.environ.get(key_env)
    if not key:
        raise RuntimeError(f"--swap needs the server's admin key in ${key_env}")
    try:
        relative = version.resolve().relative_to(models_root.resolve()).as_posix()
    except ValueError as exc:
        raise ValueError(f"{version} is not under the swap root {models_root} (the server's admin.models_root "
                         "as seen from here: --swap-root)") from exc
    response = httpx.post(url.rstrip("/") + "/v1/admin/indexes", json={"retriever": retriever, "path": relative},
                          headers={"Authorization": f"Bearer {key}"}, timeout=timeout_s)
    try:
        body = response.json()
    except ValueError:
        body = {"message": response.text[:200]}
    if response.status_code != 200:
        raise RuntimeError(f"swap refused by {url}: HTTP {response.status_code} {body.get('code', '')}: "
                           f"{body.get('message', '')}")
    return body
