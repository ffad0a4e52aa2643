"""A word bigram language model with unigram interpolation, sampled for many documents at once with numpy.

Words are whitespace tokens exactly as they appear (case and punctuation kept), so a tokenizer downstream (BM25's,
a subword encoder's) sees the domain's tokens. The model is fitted on a list of texts:

* a document's first word is drawn from the first words of the fitted texts;
* each next word, with probability ``1 - unigram_weight``, follows the current word as in the fitted texts
  (maximum-likelihood bigram), otherwise (and always after a word never followed by another) it is drawn from the
  unigram distribution. The chain's stationary distribution is the fitted unigram distribution, so generated
  text keeps the base's term statistics (Zipf-like), while the texts themselves are locally plausible and
  globally incoherent: no base document is reproduced (a trigram model on a small corpus would copy passages).

Storage: every token occurrence once, grouped by its predecessor (``succ``, int32) with the row offsets of each
word (``offsets``, int64), plus every token (``tokens``, int32, for unigram draws): ~8 bytes per fitted token.
Drawing a successor with the right probability is then one gather per step (pick a uniform occurrence in the
current word's row), done for a whole batch of documents per step; documents are processed longest first so
the documents still growing at step ``t`` are a prefix of the batch.

Example::

    import numpy as np
    from retrec.data.bigram import BigramModel

    model = BigramModel.fit(["The cat sat on the mat .", "The dog sat on a log ."])
    ids, offsets = model.sample(np.random.default_rng(0), np.array([5, 3]))
    print(model.texts(ids, offsets))        # ['The on a log .', 'The cat sat'] (5% of steps: a unigram draw)
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BigramModel:
    """A fitted bigram model; see the module docstring. Build it with :meth:`fit`."""

    vocab: np.ndarray  # object array of the distinct words, in order of first occurrence
    starts: np.ndarray  # int32 ids of the first word of every non-empty fitted text
    offsets: np.ndarray  # int64 (V + 1,): successors of word w are succ[offsets[w]:offsets[w + 1]]
    succ: np.ndarray  # int32 successor occurrences grouped by predecessor
    tokens: np.ndarray  # int32 every token occurrence (uniform draws = unigram distribution)
    bigrams: int  # distinct (word, next word) pairs
    unigram_weight: float = 0.05

    @classmethod
    def fit(cls, texts: Iterable[str], unigram_weight: float = 0.05) -> BigramModel:
        """Fit on ``texts`` (whitespace tokens); an empty model (no tokens) is allowed and samples nothing."""
        if not 0.0 <= unigram_weight <= 1.0:
            raise ValueError(f"unigram_weight must be in [0, 1], got {unigram_weight}")
        index: dict[str, int] = {}
        ids: list[int] = []
        first: list[int] = []  # position of each non-empty text's first token
        for text in texts:
            words = text.split()
            if words:
                first.append(len(ids))
                ids.extend([index.setdefault(w, len(index)) for w in words])
        tokens = np.asarray(ids, dtype=np.int32)
        starts_pos = np.asarray(first, dtype=np.int64)
        vocab = np.empty(len(index), dtype=object)
        vocab[:] = list(index)
        follows = np.ones(len(tokens), dtype=bool)  # token k is preceded by token k-1 of the same text
        follows[starts_pos] = False
        nxt = np.flatnonzero(follows)
        prev_ids, next_ids = tokens[nxt - 1], tokens[nxt]
        order = np.argsort(prev_ids, kind="stable")
        offsets = np.zeros(len(vocab) + 1, dtype=np.int64)
        np.cumsum(np.bincount(prev_ids, minlength=len(vocab)), out=offsets[1:])
        pairs = prev_ids.astype(np.int64) * max(len(vocab), 1) + next_ids
        return cls(vocab=vocab, starts=tokens[starts_pos], offsets=offsets, succ=next_ids[order].astype(np.int32),
                   tokens=tokens, bigrams=int(np.unique(pairs).size), unigram_weight=float(unigram_weight))

    @property
    def empty(self) -> bool:
        return self.tokens.size == 0

    def stats(self) -> dict[str, int | float]:
        """Sizes worth recording in provenance."""
        return {"tokens": int(self.tokens.size), "vocabulary": int(self.vocab.size), "bigrams": self.bigrams,
                "texts": int(self.starts.size), "unigram_weight": self.unigram_weight}

    def _next(self, rng: np.random.Generator, cur: np.ndarray) -> np.ndarray:
        """One next word for each current word in ``cur`` (two uniform draws per word, in a fixed order)."""
        u = rng.random(cur.size)
        to_unigram = rng.random(cur.size) < self.unigram_weight
        row = self.offsets[cur]
        degree = self.offsets[cur + 1] - row
        to_unigram |= degree == 0  # a word only ever seen last: back off
        pick = row + np.minimum((u * degree).astype(np.int64), np.maximum(degree - 1, 0))
        bigram = self.succ[np.minimum(pick, max(self.succ.size - 1, 0))] if self.succ.size else cur
        unigram = self.tokens[np.minimum((u * self.tokens.size).astype(np.int64), self.tokens.size - 1)]
        return np.where(to_unigram, unigram, bigram)

    def sample(self, rng: np.random.Generator, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Word ids of one document per entry of ``lengths`` (in words): ``(ids, offsets)``, document ``i`` being
        ``ids[offsets[i]:offsets[i + 1]]``. The draws depend only on ``rng``'s state and ``lengths``."""
        lengths = np.asarray(lengths, dtype=np.int64)
        offsets = np.zeros(lengths.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        ids = np.empty(int(offsets[-1]), dtype=np.int32)
        if ids.size == 0:
            return ids, offsets
        if self.empty:
            raise ValueError("cannot sample words from an empty model (it was fitted on no text)")
        order = np.argsort(-lengths, kind="stable")  # longest first: the documents still growing are a prefix
        sorted_len = lengths[order]
        pos = offsets[:-1][order]
        n = int(np.count_nonzero(sorted_len > 0))
        cur = self.starts[rng.integers(0, self.starts.size, size=n)]
        ids[pos[:n]] = cur
        growing = np.searchsorted(-sorted_len, -np.arange(1, int(sorted_len[0])), side="left")  # #docs longer than t
        for t, n in enumerate(growing.tolist(), start=1):
            cur = self._next(rng, cur[:n])
            ids[pos[:n] + t] = cur
        return ids, offsets

    def texts(self, ids: np.ndarray, offsets: np.ndarray) -> list[str]:
        """The documents of :meth:`sample`'s output as strings (words joined by single spaces)."""
        words = self.vocab[ids].tolist()
        bounds = offsets.tolist()
        return [" ".join(words[a:b]) for a, b in itertools.pairwise(bounds)]
