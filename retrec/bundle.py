"""Artifact bundles: a directory plus ``manifest.json``; the one reader/writer for every kind.

A manifest records kind, name, version, schema version, creation time, the producing command and
config, dimensions/vocabulary facts, a metrics snapshot and the sha256 of every file. Loading
verifies the schema version and every checksum and refuses on any mismatch. ``manifest.json`` is
validated by one pydantic model (:class:`Manifest`); a file entry is a relative POSIX path inside the
bundle (no absolute path, ``..``, backslash, drive letter or empty part), and a bundle holds regular files
and folders only: a symlink inside it is refused (the bundle folder itself may be a link, e.g. a model
store), so nothing outside a bundle is ever read, checksummed or named in an error.

Publishing is atomic: :func:`publish` hands out a hidden temporary sibling of the target, writes
the manifest last, fsyncs every file and directory, then renames it into place (an existing version
is swapped out in one ``renameat2(RENAME_EXCHANGE)`` and removed). A reader sees the old version or
the new one, never a partial one; a writer that fails publishes nothing. Single files (checkpoints,
curves, run files, caches) go through :func:`atomic_write_bytes` / :func:`atomic_write_text` /
:func:`atomic_open`, or :func:`atomic_path` for writers that take a file name.

Example::

    with publish("artifacts/bm25") as pub:            # pub.path: the temporary directory
        (pub.path / "vocab.json").write_text("{}")
        pub.set_manifest(kind="index/bm25", name="scifact-bm25", config={"k1": 0.9})
    manifest = load_bundle("artifacts/bm25", kind="index/bm25")   # raises BundleError if tampered
    atomic_write_text("run.ckpt/curve.json", "[]")     # temp + fsync + rename
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as _dt
import errno
import hashlib
import json
import os
import secrets
import shlex
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from retrec.atomic import _fsync_dir, atomic_open, atomic_path, atomic_write_bytes, atomic_write_text, fsync_tree
from retrec.version import __version__

__all__ = ["MANIFEST", "SCHEMA_VERSION", "BundleError", "FileEntry", "Manifest", "Publication", "atomic_open",
           "atomic_path", "atomic_write_bytes", "atomic_write_text", "fsync_tree", "load_bundle", "publish",
           "read_manifest", "sha256_file", "write_manifest"]

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1
_CHUNK = 1 << 20


class BundleError(RuntimeError):
    """An artifact directory that cannot be used: missing, wrong kind/schema, or corrupted."""


class FileEntry(BaseModel):
    """One file of a bundle: its sha256 and size (``bytes`` in the JSON)."""

    model_config = ConfigDict(strict=True, populate_by_name=True)
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    size: Annotated[int, Field(ge=0, alias="bytes")]


class Manifest(BaseModel):
    """``manifest.json``: the one schema every reader validates and every writer writes; :attr:`path` is the
    bundle folder it was read from or written to (not part of the JSON).

    Example::

        Manifest.model_validate(json.loads(Path("b/manifest.json").read_text()))  # ValidationError if malformed
        load_bundle("b").file("model.onnx")     # a listed file's path inside the bundle
    """

    model_config = ConfigDict(strict=True, arbitrary_types_allowed=True)
    schema_version: int
    kind: str
    name: str
    version: str
    created: str
    command: str
    config: dict[str, Any] = Field(default_factory=dict)
    dims: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    files: dict[str, FileEntry] = Field(default_factory=dict)
    retrec_version: str = "unknown"
    path: Path | None = Field(default=None, exclude=True, repr=False)

    @field_validator("files")
    @classmethod
    def _entries_inside(cls, files: dict[str, FileEntry]) -> dict[str, FileEntry]:
        for rel in files:
            if not _relative(rel):
                raise ValueError(f"file entry {rel[:80]!r} is not a relative path inside the bundle")
        return files

    def to_json(self) -> dict[str, Any]:
        """The JSON document (``manifest.json``'s content)."""
        return self.model_dump(mode="json", by_alias=True)

    def file(self, relpath: str) -> Path:
        """Path of a file listed in the manifest (refuses unlisted files and paths through a symlink)."""
        if relpath not in self.files:
            raise BundleError(f"{self.path}: manifest lists no file {relpath[:80]!r}")
        assert self.path is not None
        return _inside(self.path, relpath)


def _relative(rel: str) -> bool:
    """Whether a manifest entry is a plain relative POSIX path below the bundle folder (not the manifest)."""
    return bool(rel) and rel != MANIFEST and "\\" not in rel and "\x00" not in rel and ":" not in rel[:2] \
        and all(part not in ("", ".", "..") for part in rel.split("/"))


def _inside(root: Path, rel: str) -> Path:
    """``root / rel``, refusing an entry that leaves the bundle or passes through a symlink."""
    if not _relative(rel):
        raise BundleError(f"{root}: file entry {rel[:80]!r} is not a relative path inside the bundle")
    path = root
    for part in rel.split("/"):
        path = path / part
        if path.is_symlink():
            raise BundleError(f"{root}: {rel} is or passes through a symlink; a bundle holds regular files only")
    return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _bundle_files(directory: Path) -> list[Path]:
    """Every regular file under ``directory`` but the manifest; a symlink anywhere below it is refused."""
    found = []
    for folder, dirs, names in os.walk(directory):
        for name in dirs + names:
            path = Path(folder, name)
            if path.is_symlink():
                raise BundleError(f"{directory}: {path.relative_to(directory).as_posix()} is a symlink; "
                                  "a bundle holds regular files only")
            if name in names and path.is_file() and path.relative_to(directory).as_posix() != MANIFEST:
                found.append(path)
    return sorted(found)


def _make_manifest(root: Path, *, kind: str, name: str, version: str | None = None,
                   config: dict[str, Any] | None = None, dims: dict[str, Any] | None = None,
                   metrics: dict[str, Any] | None = None, command: str | None = None) -> Manifest:
    if not root.is_dir():
        raise BundleError(f"{root}: not a directory")
    now = _dt.datetime.now(_dt.UTC)
    files = {
        p.relative_to(root).as_posix(): FileEntry(sha256=sha256_file(p), size=p.stat().st_size)
        for p in _bundle_files(root)
    }
    return Manifest(
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
        retrec_version=__version__,
        path=root,
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
    """Checksum every file under ``directory`` and write its ``manifest.json`` (atomically, fsynced).

    This writes in place; to publish a whole new version atomically use :func:`publish`.
    """
    root = Path(directory)
    manifest = _make_manifest(root, kind=kind, name=name, version=version, config=config, dims=dims,
                              metrics=metrics, command=command)
    atomic_write_text(root / MANIFEST, json.dumps(manifest.to_json(), indent=2, sort_keys=True) + "\n")
    return manifest


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories in one atomic step (Linux ``renameat2``); False where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, f"cannot swap {b} with its new version: {os.strerror(err)}")


def _recover(final: Path) -> None:
    """Put back a version left aside by a writer that died between the two renames of the fallback swap."""
    if final.exists():
        return
    aside = sorted(final.parent.glob(f".{final.name}.old-*"), key=lambda p: p.stat().st_mtime)
    for candidate in reversed(aside):
        if (candidate / MANIFEST).is_file():
            os.rename(candidate, final)
            return


class Publication:
    """A version being written: files go under :attr:`path`; :meth:`set_manifest` says what to record."""

    def __init__(self, final: Path, path: Path) -> None:
        self.final = final
        self.path = path
        self.manifest: Manifest | None = None  # the published manifest, after the ``with`` block
        self._fields: dict[str, Any] | None = None
        self._adopted = False

    def set_manifest(self, *, kind: str, name: str, version: str | None = None, config: dict[str, Any] | None = None,
                     dims: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None,
                     command: str | None = None) -> None:
        """The manifest fields (see :func:`write_manifest`); the manifest itself is written last, on publishing."""
        self._fields = {"kind": kind, "name": name, "version": version, "config": config, "dims": dims,
                        "metrics": metrics, "command": command}

    def adopt(self) -> None:
        """Publish what :attr:`path` holds as it is: a whole bundle whose writer wrote its own manifest (a kind's
        ``save``, an exporter). It is verified (every checksum) instead of re-manifested; a bad one publishes
        nothing."""
        self._adopted = True

    def draft(self, **fields: Any) -> Manifest:
        """An in-memory manifest of the files written so far (nothing written): for self-checks before publishing."""
        return _make_manifest(self.path, **{**(self._fields or {}), **fields})


def _check_replaceable(final: Path, replace: bool) -> bool:
    """Whether ``final`` holds a version to swap out; refuses what must not be replaced."""
    if not final.exists():
        return False
    if not final.is_dir():
        raise FileExistsError(f"{final}: exists and is not a directory")
    if not any(final.iterdir()):
        return False
    if not replace:
        raise FileExistsError(f"{final}: not empty; a version is published into a new or empty directory")
    if not (final / MANIFEST).is_file():
        raise FileExistsError(f"{final}: exists and is not a retrec bundle (no {MANIFEST}); refusing to replace it")
    return True


@contextlib.contextmanager
def publish(final_dir: str | os.PathLike[str], *, replace: bool = True) -> Iterator[Publication]:
    """Write a bundle into a hidden temporary sibling and publish it atomically at ``final_dir``.

    Inside the block write files under ``pub.path`` and call ``pub.set_manifest(...)`` (or ``pub.adopt()`` when
    the writer wrote a whole bundle, manifest included). On leaving it
    the manifest is written last, every file and folder fsynced, and the directory renamed into place;
    an existing version (a bundle) is swapped out atomically and removed (``replace=False`` refuses a
    non-empty target). On any exception, or without ``set_manifest``, nothing is published and the
    temporary directory is removed. ``pub.manifest`` holds the published manifest afterwards.
    """
    final = Path(final_dir)
    final.parent.mkdir(parents=True, exist_ok=True)
    _recover(final)
    _check_replaceable(final, replace)
    tmp = final.parent / f".{final.name}.publish-{secrets.token_hex(4)}"
    tmp.mkdir()
    pub = Publication(final, tmp)
    try:
        yield pub
        if pub._adopted:
            manifest = load_bundle(tmp)
        elif pub._fields is None:
            raise BundleError(f"{final}: nothing published (the writer set no manifest)")
        else:
            manifest = write_manifest(tmp, **pub._fields)
        fsync_tree(tmp)
        if _check_replaceable(final, replace):
            if not _exchange(tmp, final):  # fallback: two renames (_recover repairs a crash between them)
                aside = final.parent / f".{final.name}.old-{secrets.token_hex(4)}"
                os.rename(final, aside)
                os.rename(tmp, final)
                os.rename(aside, tmp)
        else:
            if final.is_dir():
                final.rmdir()  # an empty placeholder
            try:
                os.rename(tmp, final)
            except OSError as exc:  # another writer published first: replace theirs (or refuse)
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not _check_replaceable(final, replace):
                    raise
                if not _exchange(tmp, final):
                    raise
        _fsync_dir(final.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the failed attempt, or the version swapped out
    manifest.path = final
    pub.manifest = manifest


MAX_MANIFEST_BYTES = 64 * 2**20  # a manifest lists files: even a million of them stays under this


def read_manifest(directory: str | os.PathLike[str]) -> Manifest:
    """Parse ``manifest.json`` without checking file contents (see :func:`load_bundle`)."""
    root = Path(directory)
    path = root / MANIFEST
    try:
        if path.is_symlink():
            raise BundleError(f"{root}: {MANIFEST} is a symlink; a bundle holds regular files only")
        if not path.is_file():
            raise BundleError(f"{root}: no {MANIFEST}; not a retrec bundle")
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise BundleError(f"{path}: {path.stat().st_size} bytes, more than a manifest holds "
                              f"({MAX_MANIFEST_BYTES}); refused unread")
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: unreadable manifest ({exc})") from exc
    except (OSError, ValueError) as exc:  # a name too long, a NUL byte, no permission: not a bundle we can read
        raise BundleError(f"{str(root)[:200]}: not a readable retrec bundle ({type(exc).__name__})") from exc
    if not isinstance(data, dict):
        raise BundleError(f"{path}: malformed manifest (a JSON object expected, got {type(data).__name__})")
    schema = data.get("schema_version")
    if schema != SCHEMA_VERSION or isinstance(schema, bool):
        raise BundleError(
            f"{path}: schema_version {schema!r} is not supported (this retrec reads {SCHEMA_VERSION})"
        )
    try:
        manifest = Manifest.model_validate({**data, "path": None})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'manifest'}: {e['msg']}" for e in exc.errors()[:5])
        raise BundleError(f"{path}: malformed manifest ({problems})") from exc
    manifest.path = root
    return manifest


def load_bundle(
    directory: str | os.PathLike[str], kind: str | None = None, verify: bool = True,
    only: Callable[[str], bool] | None = None,
) -> Manifest:
    """Read and verify a bundle: schema version, expected kind, and sha256 of every file (``only``: of the files
    it accepts — what a reader of part of a bundle reads, e.g. one shard; the others must still exist)."""
    manifest = read_manifest(directory)
    root = Path(directory)
    if kind is not None and manifest.kind != kind:
        raise BundleError(f"{root}: bundle kind is {manifest.kind!r}, expected {kind!r}")
    if verify:
        for rel, info in manifest.files.items():
            path = _inside(root, rel)
            if not path.is_file():
                raise BundleError(f"{root}: file {rel} listed in the manifest is missing")
            if only is not None and not only(rel):
                continue
            actual = sha256_file(path)
            if actual != info.sha256:
                raise BundleError(
                    f"{root}: checksum mismatch for {rel} (manifest {info.sha256[:12]}…, "
                    f"file {actual[:12]}…); the file is corrupted or was changed after publishing"
                )
        extra = {p.relative_to(root).as_posix() for p in _bundle_files(root)} - set(manifest.files)
        if extra:
            raise BundleError(f"{root}: files not in the manifest: {sorted(extra)[:5]}")
    return manifest


def load_arrays(path: str | Path) -> dict[str, Any]:
    """The numpy arrays of a safetensors file; a header whose shapes, dtypes or offsets do not fit the file
    (e.g. one claiming 2^34 elements) is a ``BundleError`` before anything is allocated (safetensors checks
    them against the file's length; it maps the file, never reads what a header merely claims)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except SafetensorError as exc:
        raise BundleError(f"{Path(path).name}: not a readable safetensors file ({exc}); refused before "
                          "loading") from exc
