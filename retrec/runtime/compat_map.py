"""A query-side compatibility map (``model/compat-map``): a new dense encoder followed by a linear map into an old
encoder's space, so that an encoder trained without any compatibility loss can still search the old encoder's
index (Drift-Adapter's query-side map, EMNLP 2025; fitted by ``retrec compat fit``).

The bundle is small — ``map.safetensors`` (``weight [new_dim, old_dim]``, ``bias [old_dim]``) and a manifest that
names the new encoder bundle (name, version, the digest of its file list, its absolute path) and, like a
compatibly trained encoder, ``config.compat`` (the old encoder's identity and ``old_dim``). Loading it loads the
new encoder from that path and refuses one whose identity changed. Its vectors are the new encoder's, mapped and
normalised: they live in the old space, so every check that accepts a compatible encoder
(:func:`retrec.index.encoder_check.check_encoder`) accepts it, in process and in serving.

Example::

    enc = CompatMapEncoder("artifacts/tasb-to-minilm")   # loads the new encoder it names
    q = enc.encode_queries(["what causes scurvy"])       # float32 [1, old_dim], unit length
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retrec.bundle import BundleError, Manifest, load_arrays, load_bundle
from retrec.contracts import strict_options
from retrec.kinds import COMPAT_MAP
from retrec.runtime.onnx_encoder import OnnxEncoder, Spin
from retrec.runtime.vectors import l2_normalize

__all__ = ["KIND", "MAP_FILE", "CompatMapEncoder", "files_digest"]

KIND = COMPAT_MAP
MAP_FILE = "map.safetensors"


def files_digest(manifest: Manifest) -> str:
    """sha256 over a bundle's file list (each file's name and sha256): the bundle's content identity."""
    return hashlib.sha256("".join(f"{k}:{v.sha256};" for k, v in sorted(manifest.files.items())).encode()).hexdigest()


class CompatMapEncoder:
    """``encode_queries`` / ``encode_documents`` of the named new encoder, mapped into the old space."""

    @strict_options(KIND)
    def __init__(self, bundle: str | Path, *, variant: str = "fp32", threads: int | None = None,
                 providers: Sequence[str] | None = None, batch_size: int = 32, spin: Spin = "always") -> None:
        self.manifest = load_bundle(bundle, kind=KIND)
        new: dict[str, Any] = self.manifest.config["new"]
        try:
            self.base = OnnxEncoder(new["path"], variant=variant, threads=threads, providers=providers,
                                    batch_size=batch_size, spin=spin)
        except (BundleError, OSError) as exc:
            raise BundleError(f"{self.manifest.path}: its new encoder {new['name']!r} cannot be loaded from "
                              f"{new['path']}: {exc}") from exc
        found = self.base.manifest
        if (found.name, found.version, files_digest(found)) != (new["name"], new["version"], new["files_sha256"]):
            raise BundleError(f"{self.manifest.path}: the encoder at {new['path']} is {found.name!r} version "
                              f"{found.version!r} with other files than the map was fitted on; fit the map again")
        tensors = load_arrays(str(self.manifest.file(MAP_FILE)))
        self.weight = np.asarray(tensors["weight"], np.float32)
        self.bias = np.asarray(tensors["bias"], np.float32)
        if self.weight.shape[0] != self.base.dim or self.bias.shape != (self.weight.shape[1],):
            raise BundleError(f"{self.manifest.path}: map of shape {self.weight.shape} does not fit the new "
                              f"encoder's dim {self.base.dim}")
        self.dim = int(self.weight.shape[1])
        self.similarity: str = self.manifest.config["similarity"]
        self.variant, self.threads = self.base.variant, self.base.threads
        self.max_query_length, self.max_doc_length = self.base.max_query_length, self.base.max_doc_length

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def providers(self) -> list[str]:
        return self.base.providers

    def map(self, vectors: np.ndarray) -> np.ndarray:
        """New-space vectors into the old space (normalised when the old space is cosine)."""
        out = np.asarray(vectors, np.float32) @ self.weight + self.bias
        return l2_normalize(out, copy=False) if self.similarity == "cosine" else out

    def encode_queries(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        return self.map(self.base.encode_queries(texts, batch_size))

    def encode_documents(self, texts: Sequence[str], batch_size: int | None = None,
                         progress: bool = False) -> np.ndarray:
        return self.map(self.base.encode_documents(texts, batch_size, progress))
