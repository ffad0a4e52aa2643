"""The resumable, parallel encoding stage of ``retrec reindex``: documents in parts, each part encoded by a pool of
ONNX encoders (Ray actors, or this process with ``local``) and written with a completion record.

A reindex's work folder (``ROOT/.reindex/KEY``) is named by a digest of everything that decides its output (index
kind, the encoder bundle's files, the part size, and the id and content hash of every document to encode, in
order), so the same command run again finds it, and a changed corpus or model never does. Each finished part is
``parts/NNNNNN.safetensors`` (written atomically) followed by its record ``parts/NNNNNN.json`` (the file's sha256,
its row count and a digest of its doc ids): a part counts as done only when its record exists and matches, so a job
killed at any point resumes at the parts it had not finished. Parts are renamed into place but not fsynced: the
record's checksum, not the disk, decides that a part is done, so a part a power cut damaged is simply encoded again
(measured on a 2-core VM's disk: a part's four fsyncs took 7-20 ms, 26-80 s at 4,000 parts; without them 0.5-1.3 ms).

Documents are ordered by text length before they are cut into parts, so each part holds texts of similar length
(little padding in its batches) — and so does every actor.

Example::

    store = PartStore(root / ".reindex" / key)
    encode_parts(plan, store, kind="index/dense", model=bundle, local=True, threads=2)
    ids, vectors = store.read(0)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save

from retrec.atomic import atomic_write_bytes
from retrec.bundle import load_arrays, sha256_file
from retrec.console import ProgressLog

log = logging.getLogger(__name__)
IN_FLIGHT_PER_ACTOR = 2  # a queued part per actor, so none waits for the driver between parts


@dataclass(frozen=True)
class Part:
    number: int
    doc_ids: list[str]
    texts: list[str]


def _ids_digest(doc_ids: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for doc_id in doc_ids:
        digest.update(doc_id.encode("utf-8") + b"\x1f")
    return digest.hexdigest()


def plan_parts(doc_ids: Sequence[str], texts: Sequence[str], part_size: int) -> list[Part]:
    """The documents to encode in parts of ``part_size``, shortest texts first (ties by doc id): deterministic."""
    if part_size < 1:
        raise ValueError(f"part size must be >= 1, got {part_size}")
    order = sorted(range(len(doc_ids)), key=lambda i: (len(texts[i]), doc_ids[i]))
    return [Part(n, [doc_ids[i] for i in chunk], [texts[i] for i in chunk])
            for n, chunk in enumerate(order[s:s + part_size] for s in range(0, len(order), part_size))]


class PartStore:
    """Finished parts of one reindex, each a safetensors file plus its completion record."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        (folder / "parts").mkdir(parents=True, exist_ok=True)

    def _paths(self, number: int) -> tuple[Path, Path]:
        stem = self.folder / "parts" / f"{number:06d}"
        return stem.with_suffix(".safetensors"), stem.with_suffix(".json")

    def done(self, part: Part) -> bool:
        """Whether ``part`` was finished: its record exists and matches the file and the part's doc ids."""
        data, record = self._paths(part.number)
        if not (data.is_file() and record.is_file()):
            return False
        try:
            meta = json.loads(record.read_text())
            return (meta["rows"] == len(part.doc_ids) and meta["ids"] == _ids_digest(part.doc_ids)
                    and meta["sha256"] == sha256_file(data))
        except (OSError, ValueError, KeyError, TypeError):
            return False

    def write(self, part: Part, encoded: np.ndarray | list[np.ndarray] | list[tuple[np.ndarray, np.ndarray]]) -> None:
        """Store a part's encodings (rows in ``part.doc_ids`` order), then its completion record. A list of
        matrices (token payloads: one ``[tokens, dim]`` per document) is stored concatenated with the lengths; a
        list of ``(term ids, weights)`` (sparse payloads) as the concatenated ids and weights with the lengths."""
        if len(encoded) != len(part.doc_ids):
            raise ValueError(f"part {part.number}: {len(encoded)} encodings for {len(part.doc_ids)} documents")
        data, record = self._paths(part.number)
        if isinstance(encoded, list) and encoded and isinstance(encoded[0], tuple):  # sparse: (term ids, weights)
            tensors = {"term_ids": np.concatenate([np.asarray(i, np.int64) for i, _ in encoded]),
                       "term_weights": np.concatenate([np.asarray(w, np.float32) for _, w in encoded]),
                       "term_lengths": np.array([len(i) for i, _ in encoded], dtype=np.int64)}
        elif isinstance(encoded, list):
            tensors = {"tokens": np.ascontiguousarray(np.concatenate(encoded)),
                       "lengths": np.array([len(m) for m in encoded], dtype=np.int64)}
        else:
            tensors = {"encoded": np.ascontiguousarray(encoded)}
        payload = save(tensors)
        atomic_write_bytes(data, payload, durable=False)
        meta = {"rows": len(part.doc_ids), "ids": _ids_digest(part.doc_ids),
                "sha256": hashlib.sha256(payload).hexdigest()}
        atomic_write_bytes(record, json.dumps(meta).encode(), durable=False)

    def read(self, part: Part) -> np.ndarray | list[np.ndarray] | list[tuple[np.ndarray, np.ndarray]]:
        tensors = load_arrays(str(self._paths(part.number)[0]))
        if "term_lengths" in tensors:
            cuts = np.cumsum(tensors["term_lengths"])[:-1]
            return list(zip(np.split(tensors["term_ids"], cuts), np.split(tensors["term_weights"], cuts)))
        if "lengths" in tensors:
            return np.split(tensors["tokens"], np.cumsum(tensors["lengths"])[:-1])
        return tensors["encoded"]


class PartEncoder:
    """One encoder of a pool (a Ray actor, or this process): the kind's query encoder with ``threads`` threads and
    ``options`` of its loader (e.g. ``{"variant": "int8"}``)."""

    def __init__(self, kind: str, model: str, threads: int, options: dict[str, Any] | None = None) -> None:
        from retrec import kinds
        from retrec.index.generic import load_query_encoder
        from retrec.process_env import configure_process

        configure_process(threads)
        self.encoder = load_query_encoder(kinds.get(kind), model, threads=threads, **(options or {}))

    def encode(self, number: int, texts: list[str]) -> tuple[int, np.ndarray | list[np.ndarray]]:
        return number, self.encoder.encode_documents(texts)

    def ready(self) -> bool:
        return True


def _ray_init(address: str | None) -> bool:
    """Join the Ray cluster at ``address`` (or ``$RAY_ADDRESS`` / the one this process runs in), else start a
    local one on 127.0.0.1. True when this call started Ray (the caller shuts it down)."""

    import ray

    if ray.is_initialized():
        return False
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, configure_logging=False, log_to_driver=False)
        return True
    from retrec.process_env import available_cpus, start_local_ray

    start_local_ray(num_cpus=available_cpus())
    return True


def encode_parts(
    parts: Sequence[Part], store: PartStore, *, kind: str, model: str | Path, local: bool = False,
    actors: int | None = None, threads: int | None = None, gpus: float = 0.0, ray_address: str | None = None,
    progress: bool = True, on_part: Callable[[Part], None] | None = None, options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Encode every part not yet done into ``store``; returns what ran (actors, threads, parts skipped/encoded,
    documents, seconds). ``local`` encodes in this process; otherwise Ray actors, ``actors`` of them (default:
    the cluster's CPUs // ``threads``) with ``threads`` ONNX threads each (default 1) and ``gpus`` GPUs each (a
    fraction shares one: 0.25 puts four actors on a GPU; ONNX Runtime's CUDA provider is used where installed).
    ``options`` go to the encoder's loader in every actor (e.g. ``{"variant": "int8"}``)."""
    from retrec.process_env import available_cpus

    pending = [p for p in parts if not store.done(p)]
    skipped = len(parts) - len(pending)
    if skipped:
        log.info("resuming: %d of %d parts were finished by an earlier run", skipped, len(parts))
    docs = sum(len(p.doc_ids) for p in pending)
    report: dict[str, Any] = {"parts": len(parts), "parts_skipped": skipped, "parts_encoded": len(pending),
                              "documents": docs}
    start = time.perf_counter()
    label = "encode (this process)" if local else "encode (Ray actors)"
    with ProgressLog(label, total=docs, unit="documents", enabled=progress) as bar:
        def finished(part: Part, encoded: np.ndarray) -> None:
            store.write(part, encoded)
            rate = (bar.done + len(part.doc_ids)) / max(time.perf_counter() - start, 1e-9)
            bar.advance(len(part.doc_ids), note=f"{rate:.0f} docs/s")
            if on_part is not None:
                on_part(part)

        if local or not pending:
            threads = threads or available_cpus()
            report.update(mode="local", actors=1, threads=threads)
            if pending:
                encoder = PartEncoder(kind, str(model), threads, options)
                for part in pending:
                    finished(part, encoder.encode(part.number, part.texts)[1])
        else:
            report.update(mode="ray", **_encode_on_ray(pending, finished, kind=kind, model=model, actors=actors,
                                                        threads=threads or 1, gpus=gpus, address=ray_address,
                                                        options=options))
    report["seconds"] = time.perf_counter() - start
    report["docs_per_s"] = docs / report["seconds"] if docs else 0.0
    running = report["seconds"] - report.get("startup_s", 0.0)  # with Ray: once the actors are up
    report["encoding_docs_per_s"] = docs / running if docs and running > 0 else 0.0
    return report


def _encode_on_ray(pending: Sequence[Part], finished: Callable[[Part, np.ndarray], None], *, kind: str,
                   model: str | Path, actors: int | None, threads: int, gpus: float,
                   address: str | None, options: dict[str, Any] | None = None) -> dict[str, Any]:
    import ray

    begin = time.perf_counter()
    started = _ray_init(address)
    pool: list[Any] = []
    try:
        cpus = int(ray.available_resources().get("CPU", 0)) or int(ray.cluster_resources().get("CPU", 1))
        count = max(1, min(actors or cpus // threads or 1, len(pending)))
        if count * threads > cpus:
            log.warning("%d actors x %d threads ask for more than the cluster's %d CPUs: they wait in turn",
                        count, threads, cpus)
        remote = ray.remote(num_cpus=threads, num_gpus=gpus)(PartEncoder)
        pool.extend(remote.remote(kind, str(Path(model).absolute()), threads, options) for _ in range(count))
        ray.get([actor.ready.remote() for actor in pool])  # Ray and every actor up, its model loaded
        startup = time.perf_counter() - begin
        log.info("encoding %d parts with %d Ray actors x %d ONNX threads (started in %.1f s)", len(pending), count,
                 threads, startup)
        # longest parts first, so the last parts to finish are short ones and no actor idles at the end
        queue = iter(sorted(pending, key=lambda p: -sum(map(len, p.texts))))
        by_number = {p.number: p for p in pending}
        in_flight: dict[Any, Any] = {}

        def submit(actor: Any) -> None:
            part = next(queue, None)
            if part is not None:
                in_flight[actor.encode.remote(part.number, part.texts)] = actor

        for actor in pool:
            for _ in range(IN_FLIGHT_PER_ACTOR):
                submit(actor)
        while in_flight:
            (ref,), _ = ray.wait(list(in_flight), num_returns=1)
            actor = in_flight.pop(ref)
            number, encoded = ray.get(ref)
            finished(by_number[number], encoded)
            submit(actor)
        return {"actors": count, "threads": threads, "gpus_per_actor": gpus, "startup_s": round(startup, 3)}
    finally:
        for actor in pool:
            ray.kill(actor)  # on success and on failure: their CPUs (and GPUs) go back to the cluster
        if started:
            ray.shutdown()


def _prepare_chunk(kind: str, texts: list[str]) -> list[Any]:
    from retrec import kinds

    return kinds.call(kinds.get(kind).prepare, texts)


class ChunkPreparer:
    """One worker of the prepare pool (a Ray actor taking one CPU): a text kind's ``prepare`` hook over chunks."""

    def __init__(self, kind: str) -> None:
        from retrec import kinds

        self.kind = kind
        kinds.resolve(kinds.get(kind).prepare)  # import the kind's module before the first chunk arrives

    def prepare(self, number: int, texts: list[str]) -> tuple[int, list[Any]]:
        return number, _prepare_chunk(self.kind, texts)

    def ready(self) -> bool:
        return True


def prepare_documents(texts: Sequence[str], *, kind: str, local: bool = False, actors: int | None = None,
                      chunk: int = 1024, ray_address: str | None = None,
                      progress: bool = True) -> tuple[list[Any], dict[str, Any]]:
    """A text kind's ``prepare`` hook over every document (e.g. BM25's terms), in chunks of ``chunk`` run by
    ``actors`` Ray actors of one CPU each (default and at most: the cluster's CPUs; so ``actors`` chunks run at
    once, never more) or in this process with ``local``; in input order. The report's ``startup_s`` is the time to
    reach Ray and have every actor up. Not resumable: a text kind's index is rebuilt whole (its statistics change
    with any edit)."""
    chunks = [list(texts[s:s + chunk]) for s in range(0, len(texts), chunk)]
    start = time.perf_counter()
    out: list[list[Any]] = [[] for _ in chunks]
    report: dict[str, Any] = {"documents": len(texts), "chunks": len(chunks)}
    with ProgressLog("prepare", total=len(texts), unit="documents", enabled=progress) as bar:
        if local:
            report.update(mode="local", workers=1)
            for i, part in enumerate(chunks):
                out[i] = _prepare_chunk(kind, part)
                bar.advance(len(part))
        else:
            import ray

            started = _ray_init(ray_address)
            pool: list[Any] = []
            try:
                cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
                if actors is not None and actors > cpus:
                    log.warning("%d prepare actors asked for, the cluster has %d CPUs: using %d", actors, cpus, cpus)
                width = max(1, min(actors or cpus, cpus, len(chunks)))
                remote = ray.remote(num_cpus=1)(ChunkPreparer)
                pool.extend(remote.remote(kind) for _ in range(width))
                ray.get([actor.ready.remote() for actor in pool])
                report.update(mode="ray", workers=width, startup_s=round(time.perf_counter() - start, 3))
                queue = iter(enumerate(chunks))
                in_flight: dict[Any, Any] = {}

                def submit(actor: Any) -> None:
                    nxt = next(queue, None)
                    if nxt is not None:
                        in_flight[actor.prepare.remote(*nxt)] = actor

                for actor in pool:
                    for _ in range(IN_FLIGHT_PER_ACTOR):
                        submit(actor)
                while in_flight:
                    (ref,), _ = ray.wait(list(in_flight), num_returns=1)
                    actor = in_flight.pop(ref)
                    i, prepared = ray.get(ref)
                    out[i] = prepared
                    bar.advance(len(chunks[i]))
                    submit(actor)
            finally:
                for actor in pool:
                    ray.kill(actor)
                if started:
                    ray.shutdown()
    report["seconds"] = time.perf_counter() - start
    return [p for part in out for p in part], report
