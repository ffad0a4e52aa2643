"""OneRec at inference: the ONNX encoder and decoder step driven by the trie-constrained beam search (no torch).

A ``model/onerec`` bundle holds ``encoder.onnx`` (history code tokens ``[B, T, depth]``, then each item's row + 1
when the model embeds items → ``memory``, ``padding``),
``decoder_step.onnx`` (``memory``, ``padding``, decoder ``tokens [B, n]`` → the next token's ``logp [B, vocab]``) and
``semantic_ids.parquet`` (``item_id``, ``codes``: one unique code tuple per item; the trie is built from it at load).
Histories are raw item ids; ids without a semantic ID are skipped and counted, never an error.

- :meth:`OneRecRecommender.generate`: the top-``k`` next items (beam search over one item, ``max(k, list_beam)``
  beams) — the ranked list ``retrec eval-rec`` scores and ``/v1/recommend`` returns;
- :meth:`OneRecRecommender.generate_sessions`: the best next session of ``session`` items (``beam`` beams), no item
  twice.

Example::

    rec = OneRecRecommender.load("artifacts/onerec-beauty")
    rec.recommend([["12", "7"]], k=10)            # [[(item_id, -rank), ...]]
    rec.generate_sessions([["12", "7"]])          # [[item_id, ...]]: one session per history
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from retrec.bundle import BundleError, Manifest, load_bundle
from retrec.contracts import strict_options
from retrec.kinds import ONEREC_MODEL
from retrec.runtime.onnx_session import create_session
from retrec.runtime.recommender import GeneratingRecommender, ItemList, SkipReport, known_rows
from retrec.runtime.semantic_ids import CodeTree, beam_search

IDS_FILE = "semantic_ids.parquet"


def write_semantic_ids(path: str | Path, item_ids: Sequence[str], codes: np.ndarray) -> None:
    table = pa.table({"item_id": pa.array([str(i) for i in item_ids], pa.string()),
                      "codes": pa.array(np.asarray(codes, np.int32).tolist(), pa.list_(pa.int32()))})
    pq.write_table(table, str(path))


def read_semantic_ids(path: str | Path, max_code: int = 1 << 20) -> tuple[list[str], np.ndarray]:
    """Item ids and their codes ``int64 [items, depth]``; a malformed file is a :class:`BundleError`."""
    import pyarrow.compute as pc

    try:
        table = pq.read_table(str(path))
    except (OSError, pa.ArrowException) as exc:
        raise BundleError(f"{path}: not a readable Parquet file") from exc
    if table.column_names[:2] != ["item_id", "codes"]:
        raise BundleError(f"{path}: expected columns item_id, codes")
    ids, codes = table.column("item_id"), table.column("codes")
    if not pa.types.is_string(ids.type) or not (pa.types.is_list(codes.type) and pa.types.is_integer(
            codes.type.value_type)) or ids.null_count or codes.null_count or not len(ids):
        raise BundleError(f"{path}: item_id must be non-null strings and codes non-null lists of integers")
    lengths = pc.list_value_length(codes)
    depth = pc.min_max(lengths).as_py()
    flat = pc.list_flatten(codes)
    if depth["min"] != depth["max"] or not depth["min"] or flat.null_count:
        raise BundleError(f"{path}: every item needs a code tuple of the same length, without nulls")
    values = flat.to_numpy(zero_copy_only=False).astype(np.int64)
    if values.min() < 0 or values.max() >= max_code:
        raise BundleError(f"{path}: codes must be in 0..{max_code - 1}")
    item_ids = [str(i) for i in ids.to_pylist()]
    if len(set(item_ids)) != len(item_ids):
        raise BundleError(f"{path}: an item id appears twice")
    return item_ids, values.reshape(len(item_ids), int(depth["min"]))


class OneRecRecommender(GeneratingRecommender):
    def __init__(self, manifest: Manifest, threads: int | None = None) -> None:
        if manifest.kind != ONEREC_MODEL:
            raise BundleError(f"{manifest.path}: a {manifest.kind[:80]!r} bundle, not {ONEREC_MODEL}")
        self.manifest = manifest
        self.item_ids, codes = read_semantic_ids(manifest.file(IDS_FILE))
        try:
            self.tree = CodeTree(codes)
        except ValueError as exc:
            raise BundleError(f"{manifest.path}: {exc}") from exc
        dims = manifest.dims
        for key in ("max_len", "session", "beam", "depth", "vocab"):
            if type(dims.get(key)) is not int or not 1 <= dims[key] <= 1 << 20:
                raise BundleError(f"{manifest.path}: dims.{key} must be a positive integer")
        model = manifest.config.get("model")
        if not isinstance(model, dict):
            raise BundleError(f"{manifest.path}: config.model must be an object")
        sizes = model.get("level_sizes")
        if (dims["depth"], dims["vocab"]) != (self.tree.depth, self.tree.vocab) or sizes != self.tree.sizes.tolist():
            raise BundleError(f"{manifest.path}: semantic ids of depth {self.tree.depth} and {self.tree.vocab} tokens, "
                              f"the model's are {dims['depth']} and {dims['vocab']}")
        list_beam = dims.get("list_beam", dims["beam"])  # bundles before list_beam: one beam for both
        if type(list_beam) is not int or not 1 <= list_beam <= 1 << 20:
            raise BundleError(f"{manifest.path}: dims.list_beam must be a positive integer")
        self.max_len, self.session, self.beam = dims["max_len"], dims["session"], dims["beam"]
        self.list_beam = list_beam
        items = model.get("items", 0)  # bundles before item inputs: code tokens only
        if type(items) is not int or items not in (0, len(self.item_ids)):
            raise BundleError(f"{manifest.path}: config.model.items must be 0 or the {len(self.item_ids)} items of "
                              f"the semantic ids, not {str(items)[:40]!r}")
        self.item_inputs = bool(items)
        self.generate_k = max(10, list_beam)  # the list eval-rec ranks (items beyond it tie, at expected rank)
        self.encoder = create_session(manifest.file("encoder.onnx"), threads=threads)
        width = self.encoder.get_inputs()[0].shape[-1]
        if width != self.tree.depth + self.item_inputs:
            raise BundleError(f"{manifest.path}: encoder.onnx reads {str(width)[:20]} columns per history item, the "
                              f"manifest says {self.tree.depth + self.item_inputs}")
        self.decoder = create_session(manifest.file("decoder_step.onnx"), threads=threads)

    @classmethod
    @strict_options(ONEREC_MODEL)
    def load(cls, directory: str | Path, threads: int | None = None) -> OneRecRecommender:
        return cls(load_bundle(directory, kind=ONEREC_MODEL), threads=threads)

    @property
    def name(self) -> str:
        return f"{self.manifest.name}@{self.manifest.version}"

    def rows(self, histories: Sequence[Sequence[str]], report: SkipReport | None = None) -> list[np.ndarray]:
        """Raw ids → catalogue rows, unknown ids dropped (and counted in ``report``)."""
        return [known_rows(h, self.positions(list(h)), report) for h in histories]

    def generate_rows(self, row_histories: Sequence[np.ndarray], beam: int, items: int, exclude_seen: bool = True,
                      batch: int = 256) -> list[np.ndarray]:
        """Item rows ``[n, items]`` of each history's best ``beam`` sessions, best first."""
        out: list[np.ndarray] = []
        for start in range(0, len(row_histories), batch):
            chunk = list(row_histories[start:start + batch])
            history = self.tree.history_tokens(chunk, self.max_len, self.item_inputs)
            memory, padding = self.encoder.run(["memory", "padding"], {"history": history})

            def step(users: np.ndarray, tokens: np.ndarray, memory: np.ndarray = memory,
                     padding: np.ndarray = padding) -> np.ndarray:
                return self.decoder.run(["logp"], {"memory": memory[users], "padding": padding[users],
                                                   "tokens": tokens})[0]

            out += beam_search(step, self.tree, len(chunk), beam, items, chunk if exclude_seen else None)[0]
        return out

    def generate(self, histories: Sequence[Sequence[str]], k: int, report: SkipReport | None = None,
                 exclude_seen: bool = True) -> list[list[str]]:
        if k < 1:
            return [[] for _ in histories]
        lists = self.generate_rows(self.rows(histories, report), max(k, self.list_beam), 1, exclude_seen)
        return [[self.item_ids[r] for r in rows[:k, 0]] for rows in lists]

    def generate_sessions(self, histories: Sequence[Sequence[str]], items: int | None = None,
                          report: SkipReport | None = None, exclude_seen: bool = True) -> list[list[str]]:
        items = items or self.session
        if not 1 <= items <= self.session:
            raise ValueError(f"this model generates sessions of 1..{self.session} items, not {items}")
        best = self.generate_rows(self.rows(histories, report), self.beam, items, exclude_seen)
        return [[self.item_ids[r] for r in rows[0]] if len(rows) else [] for rows in best]

    def recommend(self, histories: Sequence[Sequence[str]], k: int = 10, exclude_seen: bool = True,
                  report: SkipReport | None = None) -> list[ItemList]:
        lists = self.generate(histories, k, report, exclude_seen)
        return [[(item, -float(r)) for r, item in enumerate(items, start=1)] for items in lists]
