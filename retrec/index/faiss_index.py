"""Dense index: FAISS shards (any ``index_factory`` string), inner product, saved as an index version.

Documents go to one of N shards by a stable hash of their id (blake2b, not Python's salted
``hash()``); each shard holds a FAISS index and a Parquet table of its doc ids. A search asks every
shard for its top-k — widened until ties at the cut-off are all in — and merges them in the order
:func:`retrec.index.retriever.top_k` uses (score descending, then doc_id descending), so N exact shards
give exactly what one exact index gives. FAISS's ``-1`` padding is never returned.

The bundle (kind ``index/dense``) names the encoder bundle it was built with (name, version,
similarity, dim); loading against an encoder refuses a different dimension, similarity or version.
Shards are memory-mapped when FAISS supports it, and moved to the GPUs when FAISS sees any.
Factory strings are FAISS's own; note ``IVF…,PQ32x8`` also trains polysemous codes (≈ 60 s on 5k×384,
one core) — ``IVF…,PQ32x8np`` skips that (≈ 3.5 s) and searches the same way.

Example::

    index = FaissIndex.build(doc_vectors, doc_ids, factory="HNSW32", shards=4, encoder=encoder.manifest)
    hits = index.search(encoder.encode_queries(["what causes scurvy"]), k=10)   # [[(doc_id, score), ...]]
    index.save("artifacts/scifact-dense")
    FaissIndex.load("artifacts/scifact-dense", encoder=encoder.manifest)
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from retrec.bundle import BundleError, Manifest, load_bundle, publish
from retrec.contracts import strict_options
from retrec.index.retriever import Hits
from retrec.kinds import DENSE_INDEX
from retrec.runtime.vectors import l2_normalize

KIND = DENSE_INDEX
METRIC = "inner_product"
SIMILARITIES = ("cosine", "dot")
SHARD_HASH = "blake2b-64 mod shards"
# factory tokens whose stored vectors differ from the input (incremental reindexing encodes again)
LOSSY = ("PQ", "SQ", "LSH", "RaBitQ", "LSQ", "RQ", "PCA", "ITQ")
log = logging.getLogger(__name__)


def shard_of(doc_id: str, shards: int) -> int:
    """Stable shard number of a doc id (the same in every process and Python version)."""
    digest = hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % shards


def encoder_ref(encoder: Manifest | Mapping[str, Any]) -> dict[str, Any]:
    """What an index records about its encoder bundle: name, version, dim, similarity and absolute path."""
    if isinstance(encoder, Manifest):
        return {"name": encoder.name, "version": encoder.version, "dim": int(encoder.dims["dim"]),
                "similarity": encoder.config.get("similarity"),
                "path": str(Path(encoder.path).resolve()) if encoder.path is not None else None}
    return {k: encoder.get(k) for k in ("name", "version", "dim", "similarity", "path")}


def check_encoder(index_ref: Mapping[str, Any], encoder: Manifest | Mapping[str, Any], where: str = "index") -> None:
    """Refuse an encoder whose dimension, similarity or bundle version differs from the index's."""
    enc = encoder_ref(encoder)
    if int(index_ref["dim"]) != int(enc["dim"]):
        raise BundleError(f"{where}: dimension {index_ref['dim']} does not match encoder {enc['name']!r} "
                          f"(dim {enc['dim']}); rebuild the index with this encoder")
    if enc["similarity"] is not None and index_ref.get("similarity") != enc["similarity"]:
        raise BundleError(f"{where}: metric mismatch — index similarity {index_ref.get('similarity')!r}, "
                          f"encoder {enc['name']!r} uses {enc['similarity']!r}")
    name, version = index_ref.get("encoder_name"), index_ref.get("encoder_version")
    if name is not None and (name, version) != (enc["name"], enc["version"]):
        raise BundleError(f"{where}: built with encoder {name!r} version {version!r}, not "
                          f"{enc['name']!r} version {enc['version']!r}; its vectors are not comparable")


def new_index(dim: int, factory: str) -> faiss.Index:
    """An empty inner-product FAISS index from an ``index_factory`` string; ValueError for a string FAISS refuses."""
    try:
        return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ValueError(f"FAISS cannot build index {factory!r} over {dim}-d vectors: "
                         f"{str(exc).strip().splitlines()[-1][:200]}") from None


def train_index(index: faiss.Index, vectors: np.ndarray, factory: str, shard: int) -> None:
    """Train ``index`` on ``vectors`` when its factory needs training (IVF, PQ, ...); ValueError naming the shard."""
    if index.is_trained:
        return
    try:
        index.train(vectors)
    except RuntimeError as exc:
        raise ValueError(f"shard {shard}: cannot train {factory!r} on {len(vectors)} vectors ({exc}); "
                         "use fewer shards/lists or a Flat/HNSW factory") from exc


def _gpu_copy(index: faiss.Index, use_gpu: bool | None) -> faiss.Index | None:
    """A GPU copy when FAISS sees GPUs (or ``use_gpu``), else None; unsupported index types stay on CPU."""
    if use_gpu is False or (use_gpu is None and faiss.get_num_gpus() <= 0):
        return None
    try:
        return faiss.index_cpu_to_all_gpus(index)
    except (RuntimeError, AttributeError) as exc:
        log.debug("FAISS index stays on CPU: %s", exc)
        return None


def _read_index(path: Path, mmap: bool) -> faiss.Index:
    flags = [f for f in (getattr(faiss, "IO_FLAG_MMAP_IFC", None), faiss.IO_FLAG_MMAP) if f is not None] if mmap else []
    for flag in flags:
        try:
            return faiss.read_index(str(path), flag)
        except RuntimeError:
            continue
    return faiss.read_index(str(path))


class FaissIndex:
    """N FAISS shards with their doc ids; ``search(vectors, k) -> list[Hits]``."""

    def __init__(
        self, shards: Sequence[faiss.Index], shard_ids: Sequence[Sequence[str]], *, factory: str,
        similarity: str = "cosine", encoder: Mapping[str, Any] | None = None, search_params: str | None = None,
        use_gpu: bool | None = None,
    ) -> None:
        if len(shards) != len(shard_ids) or not shards:
            raise ValueError(f"{len(shards)} shard indices for {len(shard_ids)} id tables")
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
        for i, (index, ids) in enumerate(zip(shards, shard_ids)):
            if index.ntotal != len(ids):
                raise ValueError(f"shard {i}: {index.ntotal} vectors for {len(ids)} doc ids")
        self.dim = int(shards[0].d)
        self.factory = factory
        self.similarity = similarity
        self.encoder = dict(encoder) if encoder is not None else None
        self.cpu_shards = list(shards)
        all_ids = pa.concat_arrays([pa.array(list(ids), pa.string()) for ids in shard_ids])
        if len(pc.unique(all_ids)) != len(all_ids):
            raise ValueError("duplicate doc ids")
        # Global rank of every doc id in ascending (UTF-8 byte = code point) order: the tie-breaker.
        ranks = pc.rank(all_ids, sort_keys="ascending", tiebreaker="first").to_numpy().astype(np.int64) - 1
        offsets = np.cumsum([0] + [len(ids) for ids in shard_ids])
        self._keys = [ranks[offsets[i]:offsets[i + 1]] for i in range(len(shard_ids))]
        self._ids_by_rank = np.empty(len(all_ids), dtype=object)
        self._ids_by_rank[ranks] = np.asarray(all_ids.to_pylist(), dtype=object)
        self.shard_ids = [list(ids) for ids in shard_ids]
        self.search_params = None
        gpu_copies = [_gpu_copy(index, use_gpu) for index in self.cpu_shards]
        self._search_shards = [cpu if gpu is None else gpu for cpu, gpu in zip(self.cpu_shards, gpu_copies)]
        if search_params:
            self.set_search_params(search_params)

    def encoder_check_ref(self) -> dict[str, Any]:
        """The facts :func:`check_encoder` compares: dim, similarity, encoder name and version."""
        enc = self.encoder or {}
        return {"dim": self.dim, "similarity": self.similarity,
                "encoder_name": enc.get("name"), "encoder_version": enc.get("version")}

    def check_encoder(self, encoder: Manifest | Mapping[str, Any]) -> None:
        """Refuse an encoder this index's vectors did not come from (see :func:`check_encoder`)."""
        check_encoder(self.encoder_check_ref(), encoder)

    @property
    def doc_ids(self) -> list[str]:
        """Every document id held, shard by shard."""
        return [d for ids in self.shard_ids for d in ids]

    @property
    def on_gpu(self) -> list[bool]:
        return [s is not c for s, c in zip(self._search_shards, self.cpu_shards)]

    def __len__(self) -> int:
        return len(self._ids_by_rank)

    @classmethod
    def build(
        cls, vectors: np.ndarray, doc_ids: Sequence[str], *, factory: str = "Flat", shards: int = 1,
        similarity: str = "cosine", encoder: Manifest | Mapping[str, Any] | None = None,
        search_params: str | None = None, use_gpu: bool | None = None,
    ) -> FaissIndex:
        """Index ``vectors`` (one row per doc id); cosine normalises them, IVF/PQ factories train per shard."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(doc_ids):
            raise ValueError(f"vectors of shape {vectors.shape} for {len(doc_ids)} doc ids")
        if not len(doc_ids):
            raise ValueError("cannot index an empty corpus")
        if shards < 1:
            raise ValueError(f"shards must be >= 1, got {shards}")
        ref = encoder_ref(encoder) if encoder is not None else None
        if ref is not None:
            if ref["dim"] != vectors.shape[1]:
                raise ValueError(f"vectors have dim {vectors.shape[1]}, encoder {ref['name']!r} has {ref['dim']}")
            similarity = ref["similarity"] or similarity
        if similarity == "cosine":
            vectors = l2_normalize(vectors)
        assignment = np.fromiter((shard_of(d, shards) for d in doc_ids), dtype=np.int64, count=len(doc_ids))
        indices, id_lists = [], []
        for s in range(shards):
            rows = np.flatnonzero(assignment == s)
            index = new_index(vectors.shape[1], factory)
            part = vectors[rows]
            train_index(index, part, factory, s)
            if len(rows):
                index.add(part)
            indices.append(index)
            id_lists.append([doc_ids[i] for i in rows])
        return cls(indices, id_lists, factory=factory, similarity=similarity, encoder=ref,
                   search_params=search_params, use_gpu=use_gpu)

    def encoded_documents(self) -> tuple[list[str], np.ndarray] | None:
        """Every document's vector as indexed (shard by shard), or None when the factory stores them lossily
        (PQ, SQ, ...) or cannot give them back: what an incremental reindex reuses for unchanged documents."""
        if any(token in self.factory for token in LOSSY):
            return None
        parts = []
        try:
            for shard in self.cpu_shards:
                parts.append(shard.reconstruct_n(0, shard.ntotal) if shard.ntotal else
                             np.zeros((0, self.dim), np.float32))
        except RuntimeError as exc:  # e.g. an IVF index without a direct map
            log.info("index vectors cannot be read back (%s): unchanged documents are encoded again", exc)
            return None
        return [d for ids in self.shard_ids for d in ids], np.concatenate(parts).astype(np.float32, copy=False)

    def set_search_params(self, params: str) -> None:
        """FAISS search-time parameters for every shard, e.g. ``"nprobe=16"`` or ``"efSearch=128"``."""
        for cpu, shard in zip(self.cpu_shards, self._search_shards):
            faiss.ParameterSpace().set_index_parameters(cpu, params)
            if shard is not cpu:
                faiss.GpuParameterSpace().set_index_parameters(shard, params)
        self.search_params = params

    def _shard_search(self, s: int, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        shard = self._search_shards[s]
        if shard is not self.cpu_shards[s]:
            try:
                return shard.search(queries, k)
            except RuntimeError:  # e.g. k above the GPU's limit
                pass
        return self.cpu_shards[s].search(queries, k)

    def _complete_top_k(self, s: int, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Shard ``s``'s top ``k`` plus every result tied with its ``k``-th score."""
        n = self.cpu_shards[s].ntotal
        width = min(k + 1, n)
        scores, ids = self._shard_search(s, queries, width)
        while width < n:
            last_valid = ids[:, width - 1] >= 0
            open_rows = np.flatnonzero(last_valid & (scores[:, width - 1] == scores[:, k - 1]))
            if not len(open_rows):
                break
            width = min(2 * width, n)
            more_scores, more_ids = self._shard_search(s, queries[open_rows], width)
            pad = width - scores.shape[1]
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
            scores[open_rows], ids[open_rows] = more_scores, more_ids
        return scores, ids

    def search(self, queries: np.ndarray, k: int) -> list[Hits]:
        """Top-``k`` ``(doc_id, score)`` per query row, merged over shards deterministically."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"query vectors of shape {queries.shape}; this index has dim {self.dim}")
        if k <= 0 or not len(queries):
            return [[] for _ in range(len(queries))]
        if self.similarity == "cosine":
            queries = l2_normalize(queries)
        score_parts, key_parts = [], []
        for s in range(len(self.cpu_shards)):
            if self.cpu_shards[s].ntotal == 0:
                continue
            scores, ids = self._complete_top_k(s, queries, k)
            valid = ids >= 0
            key_parts.append(np.where(valid, self._keys[s][np.where(valid, ids, 0)], -1))
            score_parts.append(np.where(valid, scores, -np.inf).astype(np.float32))
        scores = np.concatenate(score_parts, axis=1)
        keys = np.concatenate(key_parts, axis=1)
        order = np.lexsort((-keys, -scores), axis=-1)[:, :k]
        top_scores = np.take_along_axis(scores, order, axis=1)
        top_keys = np.take_along_axis(keys, order, axis=1)
        out = []
        for row_keys, row_scores in zip(top_keys, top_scores):
            valid = row_keys >= 0
            out.append(list(zip(self._ids_by_rank[row_keys[valid]].tolist(), row_scores[valid].tolist())))
        return out

    def save(self, directory: str | Path, name: str = "dense", metrics: dict[str, Any] | None = None) -> Manifest:
        """Publish the index version atomically: ``shards/NNN.faiss`` + ``shards/NNN.ids.parquet``, manifest.

        Index versions are immutable: a non-empty ``directory`` is refused (FileExistsError).
        """
        encoder = self.encoder or {}
        with publish(directory, replace=False) as pub:
            (pub.path / "shards").mkdir()
            for s, (index, ids) in enumerate(zip(self.cpu_shards, self.shard_ids)):
                faiss.write_index(index, str(pub.path / "shards" / f"{s:03d}.faiss"))
                pq.write_table(pa.table({"doc_id": pa.array(ids, pa.string())}),
                               pub.path / "shards" / f"{s:03d}.ids.parquet")
            pub.set_manifest(
                kind=KIND, name=name, metrics=metrics,
                config={"factory": self.factory, "metric": METRIC, "similarity": self.similarity,
                        "shards": len(self.cpu_shards), "shard_hash": SHARD_HASH, "search_params": self.search_params,
                        "encoder": {"name": encoder.get("name"), "version": encoder.get("version"),
                                    "path": encoder.get("path")}},
                dims={"dim": self.dim, "documents": len(self), "shard_documents": [len(i) for i in self.shard_ids]},
            )
        assert pub.manifest is not None
        return pub.manifest

    @classmethod
    def load(
        cls, directory: str | Path, encoder: Manifest | Mapping[str, Any] | None = None, *, mmap: bool = True,
        use_gpu: bool | None = None, verify: bool = True, shards: Sequence[int] | None = None,
    ) -> FaissIndex:
        """Load (checksums verified) and, given the encoder's manifest, refuse an incompatible one.

        ``shards`` loads only those shard numbers (a serving replica holds one); default: all of them.
        """
        manifest = load_bundle(directory, kind=KIND, verify=verify)
        config, dims = manifest.config, manifest.dims
        if config.get("metric") != METRIC:
            raise BundleError(f"{directory}: metric {config.get('metric')!r} is not supported ({METRIC!r} is)")
        ref = index_check_ref(manifest)
        if encoder is not None:
            check_encoder(ref, encoder, where=str(directory))
        count = int(config["shards"])
        wanted = list(range(count)) if shards is None else list(shards)
        bad = [s for s in wanted if not 0 <= s < count]
        if bad or not wanted:
            raise BundleError(f"{directory}: has {count} shards, cannot load shard(s) {bad or wanted}")
        enc = config.get("encoder") or {}
        shard_indices, id_lists = [], []
        for s in wanted:
            index = _read_index(manifest.file(f"shards/{s:03d}.faiss"), mmap)
            if index.d != int(dims["dim"]) or index.metric_type != faiss.METRIC_INNER_PRODUCT:
                raise BundleError(f"{directory}: shard {s} has dim {index.d} / metric {index.metric_type}, "
                                  f"manifest says dim {dims['dim']} / {METRIC}")
            shard_indices.append(index)
            id_lists.append(pq.read_table(manifest.file(f"shards/{s:03d}.ids.parquet")).column("doc_id").to_pylist())
        encoder_info = ({"name": enc.get("name"), "version": enc.get("version"), "dim": dims["dim"],
                         "similarity": config["similarity"], "path": enc.get("path")}
                        if enc.get("name") is not None else None)
        return cls(shard_indices, id_lists, factory=config["factory"], similarity=config["similarity"],
                   encoder=encoder_info, search_params=config.get("search_params"), use_gpu=use_gpu)


def index_check_ref(manifest: Manifest) -> dict[str, Any]:
    """What :func:`check_encoder` compares, read from an ``index/dense`` manifest."""
    enc = manifest.config.get("encoder") or {}
    return {"dim": manifest.dims["dim"], "similarity": manifest.config["similarity"],
            "encoder_name": enc.get("name"), "encoder_version": enc.get("version")}


def check_index(index: Manifest, encoder: Manifest | Mapping[str, Any]) -> None:
    """Registry hook: refuse a query encoder that this index version's vectors did not come from."""
    check_encoder(index_check_ref(index), encoder, where=str(index.path or index.name))


@strict_options(KIND)
def load_index(
    path: str | Path, *, shard: int | None = None, encoder: Manifest | Mapping[str, Any] | None = None,
    use_gpu: bool | None = None, verify: bool = True,
) -> FaissIndex:
    """Registry loader: the whole index version, or one shard of it (``shard=i``), with every check."""
    return FaissIndex.load(path, encoder, use_gpu=use_gpu, verify=verify,
                           shards=None if shard is None else [shard])
