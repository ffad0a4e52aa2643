"""Whether a query encoder fits an index version: the same dimension, similarity and encoder bundle version.

Every encoded index kind (dense, sparse, multi-vector) records its encoder bundle (name, version, dim,
similarity, absolute path) and refuses, on load or swap, an encoder whose vectors are not comparable.

Example::

    ref = encoder_ref(load_bundle("artifacts/scifact-dense"))   # {"name", "version", "dim", "similarity", "path"}
    check_encoder(index_check_ref(index_manifest), ref)         # BundleError naming the mismatch, else None
    check_index(index_manifest, encoder_manifest)   # the same, and the old-space width of a compatible encoder
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


def shard_stamp(encoder: Manifest | Mapping[str, Any]) -> dict[str, Any]:
    """What a version records of the encoder that encoded one of its shards (``config.shard_encoders``)."""
    return {k: v for k, v in encoder_ref(encoder).items() if k != "path"}


def check_shard_stamps(manifest: Manifest) -> None:
    """A version whose shards came from different encoders (a rolling re-encode, ``retrec reindex --rolling``)
    lists each shard's encoder in ``config.shard_encoders``; every one must be the version's encoder (whose space
    all its vectors share) or an encoder that records compatibility with it (its vectors in that space). Anything
    else would rank incomparable scores side by side: BundleError."""
    stamps = manifest.config.get("shard_encoders")
    if stamps is None:
        return
    where = str(manifest.path or manifest.name)
    if not isinstance(stamps, list) or len(stamps) != manifest.config.get("shards"):
        raise BundleError(f"{where}: config.shard_encoders must list one encoder per shard")
    enc = manifest.config.get("encoder") or {}
    own = (enc.get("name"), enc.get("version"))
    for shard, stamp in enumerate(stamps):
        compat = (stamp or {}).get("compat") or {}
        if (stamp or {}).get("name") is None:
            raise BundleError(f"{where}: shard {shard} records no encoder")
        if (stamp["name"], stamp.get("version")) == own:
            continue
        if (compat.get("name"), compat.get("version")) != own or compat.get("old_dim") != manifest.dims.get("dim"):
            raise BundleError(f"{where}: shard {shard} was encoded by {stamp['name']!r} version "
                              f"{stamp.get('version')!r}, which records no compatibility with the version's encoder "
                              f"{own[0]!r} version {own[1]!r}: its scores are not comparable with the other shards'")


def index_check_ref(manifest: Manifest) -> dict[str, Any]:
    """What :func:`check_encoder` compares, read from an ``index/dense`` manifest (its shard stamps checked)."""
    check_shard_stamps(manifest)
    enc = manifest.config.get("encoder") or {}
    return {"dim": manifest.dims["dim"], "similarity": manifest.config["similarity"],
            "encoder_name": enc.get("name"), "encoder_version": enc.get("version")}


def check_index(index: Manifest, encoder: Manifest | Mapping[str, Any] | None) -> int | None:
    """Registry hook (``retrec serve``'s pairing, a swap, a query on a version not checked here yet): refuse a
    query encoder that this index version's vectors did not come from and that records no compatibility with
    their encoder (and a version whose shard stamps disagree). Returns the width of the query vectors the index
    searches when the encoder is a compatible one (its old space: their first dimensions), else None."""
    ref = index_check_ref(index)
    return None if encoder is None else check_encoder(ref, encoder, where=str(index.path or index.name))
