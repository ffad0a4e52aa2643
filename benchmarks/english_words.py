"""Build ``retrec/data/english_words.json``: the real-English word pools of the embedded default dataset.

From the packaged MiniLM's vocabulary (BERT uncased, roughly in frequency order): the first common whole words
become the *general* vocabulary (function words and everyday words, drawn by Zipf); the content words (letters
only, 4-14 characters, past the most frequent ones) are embedded with the zero-shot MiniLM encoder and clustered
into topics by k-means on the unit sphere — each topic a semantic field, its words ordered by closeness to the
centroid — and every content word gets its nearest neighbour in the embedding space as a *synonym* candidate.
The generator (retrec/data/synthetic.py) draws documents' topic words and key terms from a topic and writes
queries that name a key term half of the time through its synonym, which no document contains.

Deterministic (k-means seeded); run once, the JSON is committed:

    python benchmarks/english_words.py --encoder ~/.cache/retrec/minilm-onnx --out retrec/data/english_words.json
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

GENERAL = 400  # the most frequent whole words: the documents' running text
SKIP_FREQUENT = 1500  # content words start after these
TOPICS = 24
PER_TOPIC = 220


def vocabulary(encoder: Path) -> list[str]:
    tokens = (encoder / "tokenizer" / "vocab.txt").read_text(encoding="utf-8").split("\n")
    return [t for t in tokens[1996:] if re.fullmatch(r"[a-z]+", t)]  # past [unused*] and single characters


def kmeans(x: np.ndarray, k: int, seed: int = 0, iters: int = 30) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centroids = x[rng.choice(len(x), size=k, replace=False)]
    for _ in range(iters):
        labels = np.argmax(x @ centroids.T, axis=1)
        for c in range(k):
            members = x[labels == c]
            if len(members):
                mean = members.mean(axis=0)
                centroids[c] = mean / np.linalg.norm(mean)
    return centroids, np.argmax(x @ centroids.T, axis=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--encoder", type=Path, required=True, help="the zero-shot MiniLM bundle (model/dense)")
    ap.add_argument("--out", type=Path, default=Path("retrec/data/english_words.json"))
    args = ap.parse_args()
    from retrec.runtime.onnx_encoder import OnnxEncoder

    words = vocabulary(args.encoder)
    general = words[:GENERAL]
    content = [w for w in words[SKIP_FREQUENT:] if 4 <= len(w) <= 14]
    print(f"{len(general)} general words, {len(content)} content words; encoding", flush=True)
    vectors = OnnxEncoder(args.encoder).encode_queries(content, batch_size=512)
    vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    centroids, labels = kmeans(vectors, TOPICS)
    topics = []
    for c in range(TOPICS):
        members = np.flatnonzero(labels == c)
        order = members[np.argsort(-(vectors[members] @ centroids[c]))]
        topics.append([content[i] for i in order[:PER_TOPIC]])
    used = {w for t in topics for w in t}
    synonyms = {}
    taken: set[str] = set()
    for t in topics:
        for w in t:
            sims = vectors @ vectors[content.index(w)]
            for j in np.argsort(-sims)[1:40]:
                candidate = content[j]
                if candidate not in used and candidate not in taken and not candidate.startswith(w[:4]):
                    synonyms[w] = candidate
                    taken.add(candidate)
                    break
    out = {"about": "real English word pools of the embedded default dataset, from the MiniLM vocabulary; made by "
                    "benchmarks/english_words.py", "general": general, "topics": topics, "synonyms": synonyms}
    args.out.write_text(json.dumps(out, separators=(",", ":")) + "\n", encoding="utf-8")
    sizes = sorted(len(t) for t in topics)
    print(f"wrote {args.out}: {TOPICS} topics ({sizes[0]}-{sizes[-1]} words), {len(synonyms)} synonyms", flush=True)
    for t in topics[:6]:
        print("  ", " ".join(t[:12]), "|", " ".join(f"{w}->{synonyms.get(w)}" for w in t[:4]))


if __name__ == "__main__":
    main()
