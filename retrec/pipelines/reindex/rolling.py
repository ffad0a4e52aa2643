"""``retrec reindex --rolling``: move a dense index to a new encoder shard by shard while it serves.

The new encoder must record compatibility with the encoder of the current version (``retrec train dense
--compatible-with``, BT² or BCT, or a ``retrec compat fit`` map): its vectors' first ``old_dim`` dimensions (a
map's whole output) live in the old space, so old and re-encoded documents can be ranked together there.

Steps, for shards ``0 … S-1`` of the current version (its shard count and assignment kept):

1. encode shard ``s``'s documents with the new encoder (resumable parts, on Ray or ``--local``, kept in
   ``OUT/.reindex/`` until the end: a killed run resumes where it stopped);
2. publish a version in the **old space**: shards ``≤ s`` hold the new encoder's old-space vectors, the others the
   current version's; ``config.shard_encoders`` stamps each shard with the encoder that produced it
   (:func:`retrec.index.encoder_check.check_shard_stamps` refuses a stamp without compatibility at every load,
   swap and first query); verify it (sample queries with the new encoder), optionally gate it on judged queries
   (``--eval-data``), move ``current`` and call ``on_version`` (the CLI's ``--swap`` to a running server);
3. after the last shard, when the new encoder is wider than the old space (BT²'s extra dimensions), one more
   version in the **new space**, built from the same stored encodings (nothing is encoded again) and stamped with
   the new encoder: its queries search it whole.

A server that serves the new encoder (``retrec serve`` with it as the retriever's encoder) answers throughout:
each swap is the usual checked, all-replicas-then-flip swap, and every version it flips to holds scores of one
space. Documents must be the current version's (same ids and texts): edits go through a normal reindex first.
Memory: the old vectors (mixed in place), the new encoder's full vectors and the index each step builds — about
three copies of ``documents × dim × 4`` bytes at the peak.

Example::

    rolling_reindex(ReindexConfig(kind="dense", data=Path("data/scifact"), out=Path("/models/scifact-dense"),
                                  model=Path("artifacts/dense-bt2"), rolling=True), on_version=print)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from retrec import kinds
from retrec.bundle import BundleError, read_manifest
from retrec.data.corpus import corpus_fields
from retrec.index.encoder_check import check_encoder, index_check_ref, shard_stamp
from retrec.index.generic import encoding_identity, load_query_encoder, publish_index, read_documents
from retrec.pipelines.reindex.checks import GateError, current_version, move_current, verify_version
from retrec.pipelines.reindex.parts import PartStore, encode_parts, plan_parts
from retrec.runtime.vectors import l2_normalize

__all__ = ["rolling_reindex"]

log = logging.getLogger(__name__)


def _old_space(vectors: np.ndarray, width: int) -> np.ndarray:
    """A compatible encoder's vectors in the old space: their first ``width`` dimensions, unit length."""
    return l2_normalize(vectors[:, :width]) if vectors.shape[1] > width else np.asarray(vectors, np.float32)


def _base(cfg: Any, kind: kinds.Kind, corpus: Any) -> tuple[Path, Any, list[dict[str, Any]]]:
    """The current version, loaded, with each shard's stamp; refused unless it indexes exactly this corpus."""
    base = current_version(cfg.out)
    if base is None:
        raise ValueError(f"--rolling re-encodes the current version shard by shard: {cfg.out} has none (build one "
                         "with `retrec reindex` first)")
    manifest = read_manifest(base)
    if manifest.kind != kind.kind or kind.payload != "dense":
        raise ValueError(f"--rolling moves dense indexes (index/dense); {base.name} is {manifest.kind}")
    if cfg.shards not in (1, manifest.config["shards"]):
        raise ValueError(f"--rolling keeps the current version's {manifest.config['shards']} shards; leave out "
                         "--shards (a new shard count is a full reindex)")
    recorded = read_documents(manifest)
    if recorded is None:
        raise ValueError(f"{base.name} records no content hashes: reindex it once without --rolling")
    hashes, _ = recorded
    changed = sum(hashes.get(d) != h for d, h in zip(corpus.doc_ids, corpus.hashes))
    removed = len(set(hashes) - set(corpus.doc_ids))
    if changed or removed:
        raise ValueError(f"--rolling re-encodes the documents {base.name} indexes; the corpus has {changed} new or "
                         f"changed and {removed} removed: reindex those first (without --rolling)")
    index = kinds.call(kind.load, base, verify=True, use_gpu=False)
    if index.encoded_documents() is None:
        raise ValueError(f"{base.name} stores its vectors lossily ({index.factory}): --rolling needs them back")
    enc = index.encoder or {}
    own = {"name": enc.get("name"), "version": enc.get("version"), "dim": index.dim,
           "similarity": index.similarity, "compat": None}
    stamps = manifest.config.get("shard_encoders") or [own] * manifest.config["shards"]
    return base, index, stamps


def _score(version: Path, data: Any, model: Path) -> float:
    from retrec.pipelines.eval.retrieval import evaluate_retriever
    from retrec.pipelines.eval.retrievers import open_retriever

    return float(evaluate_retriever(open_retriever(version, data, model), data, progress=False).metrics["nDCG@10"])


def rolling_reindex(cfg: Any, kind: kinds.Kind, corpus: Any, report: dict[str, Any],
                    store_for: Callable[[dict[str, Any], list[str], list[bytes]], PartStore],
                    new_version_dir: Callable[[Path], Path],
                    on_version: Callable[[Path], None] | None = None) -> tuple[Path, PartStore]:
    """Run the steps above; returns the last version published (``current``) and the part store (the caller
    removes it). ``store_for(identity, ids, hashes)`` gives the resumable store of the new encoder's encodings.
    A run after a killed one resumes: parts already encoded are read back, shards already stamped with the new
    encoder are not published again."""
    base, index, stamps = _base(cfg, kind, corpus)
    encoder = load_query_encoder(kind, cfg.model, **({"variant": cfg.variant} if cfg.variant else {}))
    try:
        width = check_encoder(index_check_ref(read_manifest(base)), encoder.manifest, where=base.name)
    except BundleError as exc:
        raise BundleError(f"{exc}. A rolling re-encode needs an encoder trained --compatible-with the current "
                          "one (or a `retrec compat fit` map); otherwise run a full reindex") from exc
    if width is None:
        raise ValueError(f"{base.name} was built by this encoder already: nothing to roll")
    data = None
    if cfg.eval_data is not None:
        from retrec.data.beir import load_retrieval_data

        data = load_retrieval_data(cfg.eval_data, split="test")
    doc_ids, vectors = index.encoded_documents()
    row = {d: i for i, d in enumerate(doc_ids)}
    mixed = np.asarray(vectors, np.float32)
    text = dict(zip(corpus.doc_ids, corpus.texts))
    store = store_for(encoding_identity(encoder), corpus.doc_ids, corpus.hashes)
    parts, offset = [], 0
    for ids in index.shard_ids:
        planned = [replace(p, number=p.number + offset) for p in plan_parts(ids, [text[d] for d in ids],
                                                                              cfg.part_size)]
        parts.append(planned)
        offset += len(planned)
    stamp = shard_stamp(encoder.manifest)
    step = _Step(cfg, kind, index, doc_ids, [text[d] for d in doc_ids], encoder, report, data, new_version_dir,
                 on_version)
    report["rolling"] = {"from": stamps[0]["name"], "to": stamp["name"], "old_space": width, "steps": [],
                         "base": base.name}
    if data is not None:
        report["rolling"]["base_nDCG@10"] = step.previous = _score(base, data, Path(cfg.model))
    full: np.ndarray | None = None
    last = base
    for s, shard_parts in enumerate(parts):
        started = time.perf_counter()
        ran = encode_parts(shard_parts, store, kind=kind.kind, model=Path(cfg.model).absolute(), local=cfg.local,
                           actors=cfg.actors, threads=cfg.threads, gpus=cfg.gpus_per_actor,
                           ray_address=cfg.ray_address, progress=cfg.progress,
                           options={"variant": cfg.variant} if cfg.variant else {})
        for part in shard_parts:
            block = store.read(part)
            if full is None:
                full = np.zeros((len(doc_ids), block.shape[1]), np.float32)
            rows = [row[d] for d in part.doc_ids]
            full[rows] = block
            mixed[rows] = _old_space(block, width)
        if stamps[s] == stamp:
            log.info("rolling: shard %d/%d is on %s already (a resumed run)", s + 1, len(parts), stamp["name"])
            continue
        stamps = [*stamps[:s], stamp, *stamps[s + 1:]]
        last = step.publish(mixed, stamps, f"shard {s + 1}/{len(parts)}", encoded=ran.get("documents"),
                            started=started)
        log.info("rolling: shard %d/%d on %s (%s)", s + 1, len(parts), stamp["name"], last.name)
    if full is not None and full.shape[1] > width:  # the new space: the same encodings, searched whole
        last = step.publish(full, None, "new space", encoded=0, started=time.perf_counter())
    return last, store


class _Step:
    """Publishes one version of the roll: assemble, publish, verify, score (and gate), move ``current``."""

    def __init__(self, cfg: Any, kind: kinds.Kind, base_index: Any, doc_ids: list[str], texts: list[str],
                 encoder: Any, report: dict[str, Any], data: Any, new_version_dir: Callable[[Path], Path],
                 on_version: Callable[[Path], None] | None) -> None:
        self.cfg, self.kind, self.base_index, self.encoder = cfg, kind, base_index, encoder
        self.doc_ids, self.texts, self.report, self.data = doc_ids, texts, report, data
        self.new_version_dir, self.on_version = new_version_dir, on_version
        self.previous: float | None = None
        self.name = cfg.name or read_manifest(current_version(cfg.out)).name
        self.fields = corpus_fields(cfg.data)  # titles and metadata, stored with every version of the roll

    def publish(self, vectors: np.ndarray, stamps: list[dict[str, Any]] | None, step: str, *, encoded: Any,
                started: float) -> Path:
        """Stamped ``stamps``: a version in the old space (the base's encoder, each shard stamped); None: the
        new encoder's own version."""
        cfg = self.cfg
        options = {"factory": cfg.factory or self.base_index.factory, "shards": len(self.base_index.shard_ids)}
        # the old space is the base version's encoder's (its recorded identity: that bundle may be gone)
        encoder = SimpleNamespace(manifest=dict(self.base_index.encoder)) if stamps is not None else self.encoder
        index = kinds.call(self.kind.assemble, self.doc_ids, vectors, encoder=encoder, use_gpu=False, **options)
        space = "old" if stamps is not None else "new"
        version = publish_index(index, self.new_version_dir(cfg.out), self.name, texts=(self.doc_ids, self.texts),
                                encoder=None if stamps is not None else self.encoder,  # old-space rows: not reused
                                config={"shard_encoders": stamps} if stamps is not None else None,
                                metrics={"rolling": {"step": step, "space": space}}, fields=self.fields)
        entry: dict[str, Any] = {"step": step, "space": space, "version": version.name, "encoded": encoded,
                                 "verify": verify_version(version, self.doc_ids, self.texts, cfg.model)}
        if self.data is not None:
            entry["nDCG@10"] = score = _score(version, self.data, Path(cfg.model))
            if self.previous is not None and score < self.previous - cfg.max_drop:
                raise GateError(f"{version.name} ({step}) scores nDCG@10 {score:.4f}, more than {cfg.max_drop} "
                                f"below the version before ({self.previous:.4f}); current was not moved")
            self.previous = score
        move_current(cfg.out, version)
        if self.on_version is not None:
            self.on_version(version)
        entry["seconds"] = round(time.perf_counter() - started, 1)
        self.report["rolling"]["steps"].append(entry)
        return version
