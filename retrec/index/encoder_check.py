"""Whether a query encoder fits an index version: the same dimension, similarity and encoder bundle version.

Every encoded index kind (dense, sparse, multi-vector) records its encoder bundle (name, version, dim,
similarity, absolute path) and refuses, on load or swap, an encoder whose vectors are not comparable.

Example::

    ref = encoder_ref(load_bundle("artifacts/scifact-dense"))   # {"name", "version", "dim", "similarity", "path"}
    check_encoder(index_check_ref(index_manifest), ref)         # BundleError naming the mismatch, else None
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from retrec.bundle import BundleError, Manifest


def encoder_ref(encoder: Manifest | Mapping[str, Any]) -> dict[str, Any]:
    """What an index records about its encoder bundle: name, version, dim, similarity and absolute path."""
    if isinstance(encoder, Manifest):
        compat = encoder.config.get("compat")
        return {"name": encoder.name, "version": encoder.version, "dim": int(encoder.dims["dim"]),
                "similarity": encoder.config.get("similarity"),
                "path": str(Path(encoder.path).resolve()) if encoder.path is not None else None,
                "compat": {"name": compat["old"]["name"], "version": compat["old"]["version"],
                           "old_dim": int(compat["old_dim"])} if compat else None}
    return {k: encoder.get(k) for k in ("name", "version", "dim", "similarity", "path", "compat")}


def check_encoder(index_ref: Mapping[str, Any], encoder: Manifest | Mapping[str, Any],
                  where: str = "index") -> int | None:
    """Refuse an encoder whose dimension, similarity or bundle version differs from the index's — unless it was
    trained compatible with the index's encoder (``retrec train dense --compatible-with``): then the width of the
    old space its queries search in (their first dimensions), else None (the index's own encoder)."""
    enc = encoder_ref(encoder)
    if enc["similarity"] is not None and index_ref.get("similarity") != enc["similarity"]:
        raise BundleError(f"{where}: metric mismatch — index similarity {index_ref.get('similarity')!r}, "
                          f"encoder {enc['name']!r} uses {enc['similarity']!r}")
    name, version = index_ref.get("encoder_name"), index_ref.get("encoder_version")
    compat = enc.get("compat") or {}
    if name is not None and (name, version) != (enc["name"], enc["version"]):
        if (compat.get("name"), compat.get("version")) == (name, version) and compat.get("old_dim") == int(
                index_ref["dim"]):
            return int(compat["old_dim"])
        raise BundleError(f"{where}: built with encoder {name!r} version {version!r}, not "
                          f"{enc['name']!r} version {enc['version']!r}, which records no compatibility with it; "
                          "its vectors are not comparable")
    if int(index_ref["dim"]) != int(enc["dim"]):
        raise BundleError(f"{where}: dimension {index_ref['dim']} does not match encoder {enc['name']!r} "
                          f"(dim {enc['dim']}); rebuild the index with this encoder")
    return None


def index_check_ref(manifest: Manifest) -> dict[str, Any]:
    """What :func:`check_encoder` compares, read from an ``index/dense`` manifest."""
    enc = manifest.config.get("encoder") or {}
    return {"dim": manifest.dims["dim"], "similarity": manifest.config["similarity"],
            "encoder_name": enc.get("name"), "encoder_version": enc.get("version")}


def check_index(index: Manifest, encoder: Manifest | Mapping[str, Any]) -> None:
    """Registry hook (serving, ``retrec serve``'s pairing): refuse a query encoder that this index version's
    vectors did not come from — a compatible one too, for now: serving does not yet search shards in an encoder's
    old space (in process, :meth:`FaissIndex.load` does)."""
    where = str(index.path or index.name)
    if check_encoder(index_check_ref(index), encoder, where=where) is not None:
        raise BundleError(f"{where}: encoder {encoder_ref(encoder)['name']!r} is compatible with this index's "
                          "encoder, but serving cannot search an index through that yet; serve the index's own "
                          "encoder, or re-encode the index")
