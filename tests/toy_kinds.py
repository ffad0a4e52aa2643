"""Two toy bundle kinds defined only here, to prove that a new model kind needs no edit under retrec/.

- ``index/toy-overlap`` (eval name ``toy``): a text-payload index scoring documents by how many distinct
  query words they contain (ties: doc_id descending, like every retriever). Stored as JSON + manifest.
- ``model/toy-popular`` (eval name ``toypop``): a recommender that generates the catalogue's most popular
  items as a list (the :class:`GeneratingRecommender` adapter turns it into scores), trained by
  ``retrec train toy`` (:func:`train_toy`, options from :class:`ToyTrainConfig`).

Both follow :mod:`retrec.contracts` without importing it (an :class:`~retrec.contracts.Index` and a
:class:`~retrec.contracts.Recommender`, loaders whose signatures name every option they take). Importing this module
registers both; Ray workers import it through ``$RETREC_PLUGINS=tests.toy_kinds``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from retrec import kinds
from retrec.bundle import Manifest, load_bundle, read_manifest, write_manifest
from retrec.data.interactions import load_interactions, user_sequences
from retrec.index.retriever import Hits, top_k
from retrec.pipelines.train.options import check_choices, option
from retrec.runtime.recommender import GeneratingRecommender, SkipReport

TOY_INDEX = "index/toy-overlap"
TOY_RECOMMENDER = "model/toy-popular"
_WORD = re.compile(r"\w+")


def _words(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text)}


class OverlapIndex:
    name = "toy"

    def __init__(self, doc_ids: Sequence[str], words: Sequence[set[str]]) -> None:
        self.doc_ids = list(doc_ids)
        self.words = [set(w) for w in words]

    def __len__(self) -> int:
        return len(self.doc_ids)

    def search(self, queries: Sequence[str], k: int) -> list[Hits]:
        out = []
        for q in queries:
            qw = _words(q)
            scores = np.array([len(qw & w) for w in self.words], dtype=np.float32)
            out.append([h for h in top_k(scores, self.doc_ids, k) if h[1] > 0])
        return out

    def save(self, directory: str | os.PathLike[str], name: str = "toy", metrics: dict[str, Any] | None = None
             ) -> Manifest:
        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        (root / "docs.json").write_text(json.dumps({"ids": self.doc_ids, "words": [sorted(w) for w in self.words]}))
        return write_manifest(root, kind=TOY_INDEX, name=name, config={"shards": 1},
                              dims={"documents": len(self.doc_ids)}, metrics=metrics)


def build_toy_index(doc_ids: Sequence[str], texts: Sequence[str], **_: Any) -> OverlapIndex:
    return OverlapIndex(doc_ids, [_words(t) for t in texts])


def load_toy_index(path: str | os.PathLike[str], *, shard: int | None = None) -> OverlapIndex:
    manifest = load_bundle(path, kind=TOY_INDEX)
    data = json.loads(manifest.file("docs.json").read_text())
    return OverlapIndex(data["ids"], [set(w) for w in data["words"]])


class PopularRecommender(GeneratingRecommender):
    """Generates the most popular catalogue items (counts stored in the bundle), history ignored."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.manifest = load_bundle(path, kind=TOY_RECOMMENDER)
        counts: dict[str, int] = json.loads(self.manifest.file("counts.json").read_text())
        self.item_ids = sorted(counts)
        self.ranked = sorted(counts, key=lambda i: (-counts[i], i))
        self.name = self.manifest.name

    def generate(self, histories: Sequence[Sequence[str]], k: int,
                 report: SkipReport | None = None) -> list[list[str]]:
        known = set(self.item_ids)
        for h in histories:
            for item in h:
                if item not in known and report is not None:
                    report.add(str(item))
        return [self.ranked[:k] for _ in histories]


def write_toy_recommender(out: str | os.PathLike[str], sequences: Sequence[Sequence[str]]) -> Path:
    """A ``model/toy-popular`` bundle counting the items of ``sequences``."""
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for seq in sequences:
        for item in seq:
            counts[str(item)] = counts.get(str(item), 0) + 1
    (root / "counts.json").write_text(json.dumps(counts))
    write_manifest(root, kind=TOY_RECOMMENDER, name="toy-popular", dims={"items": len(counts)})
    return root


kinds.register(kinds.Kind(TOY_INDEX, "index", "toy: distinct query words a document contains", payload="text",
                          load="tests.toy_kinds:load_toy_index", build="tests.toy_kinds:build_toy_index",
                          eval_names=("toy",)))
@dataclass
class ToyTrainConfig:
    """Count the items of the interactions; writes {kind} ({description})."""

    data_help: ClassVar[str] = "interactions: folder or file (Parquet, sequential, MovieLens)"

    min_count: int = option(1, "items seen fewer times are left out")
    device: str = option("auto", "cpu only (counting)")
    precision: Literal["auto", "fp32"] = option("auto", "fp32 only")

    def __post_init__(self) -> None:
        check_choices(self)
        if self.min_count < 1:
            raise ValueError("min_count must be at least 1")


def train_toy(data: str | os.PathLike[str], out: str | os.PathLike[str], cfg: ToyTrainConfig, *,
              resume: bool = False, command: str | None = None) -> Path:
    """The toy kind's trainer, found by ``retrec train toy`` through the registry."""
    sequences = user_sequences(load_interactions(data)).items
    counts: dict[str, int] = {}
    for seq in sequences:
        for item in seq:
            counts[str(item)] = counts.get(str(item), 0) + 1
    kept = [[i for i in seq if counts[str(i)] >= cfg.min_count] for seq in sequences]
    root = write_toy_recommender(out, kept)
    m = read_manifest(root)
    write_manifest(root, kind=TOY_RECOMMENDER, name=m.name, dims=m.dims, command=command,
                   config={"train": {**asdict(cfg), "device": "cpu", "precision": "fp32"}})
    return root


kinds.register(kinds.Kind(TOY_RECOMMENDER, "recommender", "toy: most popular items, generated as a list",
                          load="tests.toy_kinds:PopularRecommender", eval_names=("toypop",),
                          train="tests.toy_kinds:train_toy", train_config="tests.toy_kinds:ToyTrainConfig",
                          train_name="toy"))
