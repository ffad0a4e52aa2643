"""The admin plane's rules for request-provided bundle paths and for errors it must not echo.

A swap request names a bundle **relative to** ``admin.models_root``: the name is taken literally (no
``~``, ``$VAR`` or ``%VAR%`` expansion), must be a plain relative path without ``..`` components, and its
real path (symlinks resolved) must lie inside the root's real path — a symlink inside the root to a folder
inside it (e.g. ``current -> v2``) is fine, one that leads out is refused. The loaded path is that real
path, so a symlink changed after the check does not change what loads. Messages name the request's own
path, never the resolved one, the root or any environment value.

Example::

    path = bundle_under_root("/models", "scifact-bm25/current")   # "/models/scifact-bm25/20260101T000000Z"
    bundle_under_root("/models", "../etc")                         # ApiError 400 bad_path
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path, PurePosixPath

from retrec.serving.config import ServingConfig
from retrec.serving.errors import ApiError

log = logging.getLogger("retrec.serving")
MAX_SHOWN = 200


def shown(path: str) -> str:
    """The request's path as error messages show it (quoted, bounded)."""
    return repr(path if len(path) <= MAX_SHOWN else path[:MAX_SHOWN] + "...")


def bundle_under_root(root: str, requested: str) -> str:
    """The real path of the bundle ``requested`` names under ``root``, or a 400 that does not say where it looked."""
    bad = ApiError(400, "bad_path", f"path {shown(requested)} must name a bundle folder relative to the models "
                   "root (no absolute path, '..', '~', '$' or control characters; no symlink out of the root)")
    parts = PurePosixPath(requested).parts
    if (not requested or requested.startswith(("/", "\\", "~")) or "\\" in requested or "$" in requested
            or "%" in requested or any(ord(c) < 32 for c in requested) or ".." in parts or not parts
            or all(p == "." for p in parts)):
        raise bad
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(real_root, *parts))
    if real == real_root or os.path.commonpath([real_root, real]) != real_root:
        raise bad
    if not (Path(real) / "manifest.json").is_file():
        raise ApiError(400, "bad_bundle", f"no bundle at {shown(requested)} under the models root")
    return real


def shown_path(path: str | None, root: str | None) -> str | None:
    """How responses name a bundle: its path relative to the models root when it lies under it, else its folder
    name — never where the server's files live."""
    if path is None:
        return None
    if root:
        real_root = os.path.realpath(root)
        if os.path.commonpath([real_root, os.path.realpath(path)]) == real_root:
            return Path(os.path.relpath(os.path.realpath(path), real_root)).as_posix()
    return Path(path).name


def check_trusted(cfg: ServingConfig, path: str, requested: str) -> None:
    """With ``admin.trusted_manifests`` set: refuse (403) a bundle whose manifest digest is not listed there."""
    if cfg.admin.trusted_manifests is None:
        return
    from retrec.serving.shards import manifest_digest

    try:
        lines = Path(cfg.resolve(cfg.admin.trusted_manifests)).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ApiError(503, "unavailable", "the trusted manifest list (admin.trusted_manifests) cannot be "
                       "read") from exc
    trusted = {line.split("#", 1)[0].strip().lower() for line in lines} - {""}
    if manifest_digest(path) not in trusted:
        raise ApiError(403, "untrusted_bundle", f"bundle {shown(requested)}: its manifest digest is not in the "
                       "trusted list (admin.trusted_manifests)")


def failure(status: int, code: str, message: str, what: str, exc: BaseException | None = None) -> ApiError:
    """An ``ApiError`` carrying a fresh request id, after logging ``exc`` (default: the exception being handled).

    The remote error (traceback, pid, node address) goes to the log only; the client gets ``code``,
    ``message`` and ``request_id`` to quote.
    """
    request_id = uuid.uuid4().hex
    log.error("%s failed (request_id=%s)", what, request_id, exc_info=exc if exc is not None else True)
    return ApiError(status, code, f"{message} (request_id {request_id})", request_id=request_id)
