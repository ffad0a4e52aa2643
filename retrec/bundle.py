"""Artifact bundles: a directory plus ``manifest.json``; the one reader/writer for every kind.

A manifest records kind, name, version, schema version, creation time, the producing command and
config, dimensions/vocabulary facts, a metrics snapshot and the sha256 of every file. Loading
verifies the schema version and every checksum and refuses on any mismatch.

Example::

    write_manifest(out_dir, kind="index/bm25", name="scifact-bm25", config={"k1": 0.9})
    manifest = load_bundle(out_dir, kind="index/bm25")   # raises BundleError if tampered
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shlex
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from retrec import __version__

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1
_CHUNK = 1 << 20


class BundleError(RuntimeError):
    """An artifact directory that cannot be used: missing, wrong kind/schema, or corrupted."""


@dataclass
class Manifest:
    kind: str
    name: str
    version: str
    schema_version: int
    created: str
    command: str
    config: dict[str, Any] = field(default_factory=dict)
    dims: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    retrec_version: str = __version__
    path: Path | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("path")
        return data

    def file(self, relpath: str) -> Path:
        """Absolute path of a file listed in the manifest (refuses unlisted files)."""
        if relpath not in self.files:
            raise BundleError(f"{self.path}: manifest lists no file {relpath!r}")
        assert self.path is not None
        return self.path / relpath


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _bundle_files(directory: Path) -> list[Path]:
    return sorted(
        p for p in directory.rglob("*") if p.is_file() and p.relative_to(directory).as_posix() != MANIFEST
    )


def write_manifest(
    directory: str | os.PathLike[str],
    *,
    kind: str,
    name: str,
    version: str | None = None,
    config: dict[str, Any] | None = None,
    dims: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    command: str | None = None,
) -> Manifest:
    """Checksum every file under ``directory`` and write its ``manifest.json``."""
    root = Path(directory)
    if not root.is_dir():
        raise BundleError(f"{root}: not a directory")
    now = _dt.datetime.now(_dt.UTC)
    files = {
        p.relative_to(root).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in _bundle_files(root)
    }
    manifest = Manifest(
        kind=kind,
        name=name,
        version=version or now.strftime("%Y%m%dT%H%M%SZ"),
        schema_version=SCHEMA_VERSION,
        created=now.isoformat(timespec="seconds"),
        command=command if command is not None else shlex.join(sys.argv),
        config=config or {},
        dims=dims or {},
        metrics=metrics or {},
        files=files,
        path=root,
    )
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest.to_json(), indent=2, sort_keys=True) + "\n")
    tmp.replace(root / MANIFEST)  # atomic publish: a reader sees the old or the new manifest
    return manifest


def read_manifest(directory: str | os.PathLike[str]) -> Manifest:
    """Parse ``manifest.json`` without checking file contents (see :func:`load_bundle`)."""
    root = Path(directory)
    path = root / MANIFEST
    if not path.is_file():
        raise BundleError(f"{root}: no {MANIFEST}; not a retrec bundle")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: unreadable manifest ({exc})") from exc
    schema = data.get("schema_version")
    if schema != SCHEMA_VERSION:
        raise BundleError(
            f"{path}: schema_version {schema!r} is not supported (this retrec reads {SCHEMA_VERSION})"
        )
    try:
        return Manifest(**data, path=root)
    except TypeError as exc:
        raise BundleError(f"{path}: malformed manifest ({exc})") from exc


def load_bundle(
    directory: str | os.PathLike[str], kind: str | None = None, verify: bool = True
) -> Manifest:
    """Read and verify a bundle: schema version, expected kind, and sha256 of every file."""
    manifest = read_manifest(directory)
    root = Path(directory)
    if kind is not None and manifest.kind != kind:
        raise BundleError(f"{root}: bundle kind is {manifest.kind!r}, expected {kind!r}")
    if verify:
        for rel, info in manifest.files.items():
            path = root / rel
            if not path.is_file():
                raise BundleError(f"{root}: file {rel} listed in the manifest is missing")
            actual = sha256_file(path)
            if actual != info["sha256"]:
                raise BundleError(
                    f"{root}: checksum mismatch for {rel} (manifest {info['sha256'][:12]}…, "
                    f"file {actual[:12]}…); the file is corrupted or was changed after publishing"
                )
        extra = {p.relative_to(root).as_posix() for p in _bundle_files(root)} - set(manifest.files)
        if extra:
            raise BundleError(f"{root}: files not in the manifest: {sorted(extra)[:5]}")
    return manifest
