"""The embedded default dataset: small, deterministic, generated here (no download).

Text side: documents about topics; each document has a few *key terms* shared only with its near
duplicates; queries name those key terms, half of the time through a *synonym* that never appears in
documents, so exact-match BM25 is good but imperfect and a learned model has something to learn. The words
are real English by default (``language="english"``, what ``retrec data default`` and ``retrec demo`` write:
the common words of the MiniLM vocabulary as running text, semantic fields of its content words as topics, key
terms from the document's field and their nearest neighbours in MiniLM's embedding space as synonyms —
``english_words.json``, made by benchmarks/english_words.py — text a pretrained encoder reads as language, so that
zero-shot and trained neural retrievers rank as on real collections) or pseudo-words (``language="pseudo"``, the
test suite's: nothing a pretrained model knows). Recommendation side: items sit in genre chains; users
mostly move to the next item of the chain they are in, sometimes jump within preferred genres,
rarely pick a popular item — a sequence model beats popularity by a wide margin.

It is for the demo and tests, not for claims.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from retrec.atomic import atomic_parquet
from retrec.data.schemas import CORPUS, INTERACTIONS, QRELS, QUERIES

ENGLISH_WORDS = "english_words.json"
_Pools = tuple[list[str], list[list[str]], list[list[str]], dict[str, str]]
_ONSETS = ["b", "c", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "st", "pl", "tr"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ou"]


@dataclass(frozen=True)
class Mix:
    """A document's words: its length range and the shares of general words, topic words and key terms; a
    query's count of general words."""

    length: tuple[int, int]
    general: float
    topic: float
    keys: float
    query_general: int


# English: shorter documents about their key terms (measured on the demo's collection, 2026-12-07: BM25 nDCG@10
# 0.699, zero-shot MiniLM 0.620, their RRF 0.719 — SciFact's order; with the pseudo-words' mix MiniLM read the
# documents' 60% of common words and fell to 0.32)
MIXES = {"pseudo": Mix((40, 120), 0.6, 0.3, 0.06, 2), "english": Mix((20, 60), 0.3, 0.4, 0.3, 1)}


@dataclass(frozen=True)
class SyntheticConfig:
    seed: int = 13
    topics: int = 24
    docs: int = 2000
    queries_train: int = 300
    queries_test: int = 150
    users: int = 1200
    items: int = 600
    genres: int = 30
    language: str = "english"  # real words (english_words.json), or "pseudo" (the tests': nothing pretrained)


def _words(rng: np.random.Generator, n: int, syllables: int, taken: set[str]) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        w = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables))
        if w not in taken:
            taken.add(w)
            out.append(w)
    return out


def _pseudo_pools(rng: np.random.Generator, cfg: SyntheticConfig, n_groups: int) -> _Pools:
    taken: set[str] = set()
    general = _words(rng, 400, 2, taken)
    topic_words = [_words(rng, 40, 3, taken) for _ in range(cfg.topics)]
    keys = [_words(rng, 3, 3, taken) for _ in range(n_groups)]
    synonyms = {w: s for group in keys for w, s in zip(group, _words(rng, 3, 4, taken))}
    return general, topic_words, keys, synonyms


def _english_pools(rng: np.random.Generator, cfg: SyntheticConfig, n_groups: int) -> _Pools:
    words = json.loads((Path(__file__).with_name(ENGLISH_WORDS)).read_text(encoding="utf-8"))
    fields, synonyms = words["topics"], words["synonyms"]
    if cfg.topics > len(fields):
        raise ValueError(f"language='english' has {len(fields)} topics, not {cfg.topics}")
    order = rng.permutation(len(fields))[:cfg.topics]
    topic_words = [fields[int(i)][:40] for i in order]
    candidates = [[w for w in fields[int(i)][40:] if w in synonyms] for i in order]
    for pool in candidates:
        rng.shuffle(pool)
    keys = []
    for g in range(n_groups):  # a group's key terms come from its topic's field, each used by one group only
        pool = candidates[g % cfg.topics]
        if len(pool) < 3:
            raise ValueError(f"language='english' runs out of key terms at {n_groups} groups; use fewer documents")
        keys.append([pool.pop() for _ in range(3)])
    return list(words["general"]), topic_words, keys, {w: synonyms[w] for group in keys for w in group}


def generate_retrieval(cfg: SyntheticConfig) -> tuple[pa.Table, pa.Table, dict[str, pa.Table]]:
    rng = np.random.default_rng(cfg.seed)
    n_groups = cfg.docs // 3
    if cfg.language not in ("pseudo", "english"):
        raise ValueError(f"language must be 'pseudo' or 'english', not {cfg.language!r}")
    pools = _english_pools if cfg.language == "english" else _pseudo_pools
    general, topic_words, keys, synonyms = pools(rng, cfg, n_groups)
    zipf = 1.0 / np.arange(1, len(general) + 1)
    zipf /= zipf.sum()

    mix = MIXES[cfg.language]
    doc_ids, titles, texts, doc_group, doc_topic = [], [], [], [], []
    for d in range(cfg.docs):
        g = int(rng.integers(n_groups)) if d >= n_groups else d  # every group has ≥ 1 document
        t = g % cfg.topics
        length = int(rng.integers(*mix.length))
        parts = list(rng.choice(general, size=int(length * mix.general), p=zipf))
        parts += list(rng.choice(topic_words[t], size=int(length * mix.topic)))
        parts += list(rng.choice(keys[g], size=max(2, int(length * mix.keys))))
        rng.shuffle(parts)
        doc_ids.append(f"D{d:05d}")
        titles.append(" ".join(rng.choice(topic_words[t], size=3)))
        texts.append(" ".join(parts))
        doc_group.append(g)
        doc_topic.append(t)
    docs_of_group: dict[int, list[int]] = {}
    for d, g in enumerate(doc_group):
        docs_of_group.setdefault(g, []).append(d)

    n_q = cfg.queries_train + cfg.queries_test
    groups = rng.choice(n_groups, size=n_q, replace=False)
    query_ids, query_texts = [], []
    qrels: dict[str, tuple[list[str], list[str], list[int]]] = {"train": ([], [], []), "test": ([], [], [])}
    for i, g in enumerate(groups):
        t = int(g) % cfg.topics
        words = [synonyms[w] if rng.random() < 0.5 else w for w in rng.choice(keys[g], size=2, replace=False)]
        words += list(rng.choice(topic_words[t], size=2)) + list(rng.choice(general[:50], size=mix.query_general))
        rng.shuffle(words)
        qid = f"Q{i:04d}"
        query_ids.append(qid)
        query_texts.append(" ".join(words))
        split = "train" if i < cfg.queries_train else "test"
        for d in docs_of_group[int(g)]:
            qrels[split][0].append(qid)
            qrels[split][1].append(doc_ids[d])
            qrels[split][2].append(1)
    corpus = pa.table([doc_ids, titles, texts], schema=CORPUS)
    queries = pa.table([query_ids, query_texts], schema=QUERIES)
    qrel_tables = {s: pa.table([q, d, pa.array(r, pa.int32())], schema=QRELS) for s, (q, d, r) in qrels.items()}
    return corpus, queries, qrel_tables


def generate_interactions(cfg: SyntheticConfig) -> pa.Table:
    rng = np.random.default_rng(cfg.seed + 1)
    per_genre = cfg.items // cfg.genres
    popularity = 1.0 / np.arange(1, cfg.items + 1) ** 0.8
    popularity = popularity[rng.permutation(cfg.items)]
    popularity /= popularity.sum()
    users, items, stamps = [], [], []
    clock = 1_600_000_000
    for u in range(cfg.users):
        liked = rng.choice(cfg.genres, size=2, replace=False)
        genre = int(rng.choice(liked))
        pos = int(rng.integers(per_genre))
        for _ in range(int(rng.integers(6, 25))):
            r = rng.random()
            if r < 0.7:  # next in the chain
                pos = (pos + int(rng.integers(1, 3))) % per_genre
            elif r < 0.9:  # jump within preferred genres
                genre = int(rng.choice(liked))
                pos = int(rng.integers(per_genre))
            else:  # something popular
                item = int(rng.choice(cfg.items, p=popularity))
                genre, pos = divmod(item, per_genre)
                genre = min(genre, cfg.genres - 1)
            clock += int(rng.integers(60, 86_400))
            users.append(f"U{u:05d}")
            items.append(f"I{genre * per_genre + pos:04d}")
            stamps.append(clock)
    return pa.table([users, items, pa.array(stamps, pa.int64())], schema=INTERACTIONS)


def write_default_dataset(directory: str | Path, cfg: SyntheticConfig | None = None) -> Path:
    """Write the default dataset in canonical Parquet form and return its folder."""
    cfg = cfg or SyntheticConfig()
    root = Path(directory)
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    corpus, queries, qrels = generate_retrieval(cfg)
    atomic_parquet(corpus, root / "corpus.parquet")
    atomic_parquet(queries, root / "queries.parquet")
    for split, table in qrels.items():
        atomic_parquet(table, root / "qrels" / f"{split}.parquet")
    atomic_parquet(generate_interactions(cfg), root / "interactions.parquet")
    return root
