"""What ``retrec reindex`` does after a version is published: verify it, gate it on judged queries, move
``current`` to it, and (on request) ask a running server to swap to it.

Example::

    verify_version(version, doc_ids, texts, model=None)     # every checksum, every document, sample queries
    move_current(root, version)                              # ROOT/current -> VERSION in one rename
    swap_server("http://127.0.0.1:8000", "dense", version, models_root=root.parent)
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from retrec.bundle import BundleError
from retrec.index.generic import open_index

log = logging.getLogger(__name__)
CURRENT = "current"
SAMPLE_QUERIES = 8
ADMIN_KEY_ENV = "RETREC_ADMIN_KEYS"  # the server's (admin.keys_env's default): one name on both sides
LEGACY_ADMIN_KEY_ENV = "RETREC_ADMIN_KEY"  # the name --swap read before; still read, with a warning
SWAP_ID = re.compile(r"^[0-9a-f]{32}$")  # the server's swap ids (retrec/serving/swaps.py)


class GateError(RuntimeError):
    """The new version was published but scored too far below the current one; ``current`` did not move."""


def verify_version(version: Path, doc_ids: list[str], texts: list[str], model: Path | None) -> dict[str, Any]:
    """Load ``version`` with every check and answer a sample of queries (each a document's first words):
    refuses a wrong document set or a search that fails or returns too few hits."""
    retriever = open_index(version, model=model, verify=True, use_gpu=False)
    indexed = retriever.doc_ids
    if indexed is not None and sorted(indexed) != sorted(doc_ids):
        raise BundleError(f"{version.name}: indexes {len(indexed)} documents, the corpus has {len(doc_ids)}")
    rng = np.random.default_rng(0)
    sample = sorted(rng.choice(len(doc_ids), size=min(SAMPLE_QUERIES, len(doc_ids)), replace=False).tolist())
    queries = [" ".join(texts[i].split()[:16]) or doc_ids[i] for i in sample]
    hits = retriever.search(queries, k=10)
    want = min(10, len(doc_ids))
    short = [q for q, h in zip(queries, hits) if len(h) < want and q.strip()]
    if len(hits) != len(queries) or (short and retriever.encoder is not None):
        raise BundleError(f"{version.name}: {len(short)} of {len(queries)} sample queries got fewer than {want} hits")
    found = sum(doc_ids[i] in {d for d, _ in h} for i, h in zip(sample, hits))
    return {"documents": len(doc_ids), "sample_queries": len(queries), "sample_self_hits": found}


def gate(eval_data: Path, version: Path, current: Path | None, *, model: Path | None,
         max_drop: float) -> dict[str, Any]:
    """nDCG@10 of the new version (and of the current one) on ``eval_data``'s test queries; GateError when it
    fell more than ``max_drop`` below the current version's."""
    from retrec.data.beir import load_retrieval_data
    from retrec.pipelines.eval.retrieval import evaluate_retriever
    from retrec.pipelines.eval.retrievers import open_retriever

    data = load_retrieval_data(eval_data, split="test")
    new = evaluate_retriever(open_retriever(version, data, model), data, progress=False).metrics["nDCG@10"]
    out: dict[str, Any] = {"nDCG@10": new}
    if current is None:
        return out
    try:
        old = evaluate_retriever(open_retriever(current, data), data, progress=False).metrics["nDCG@10"]
    except (BundleError, ValueError, OSError) as exc:
        log.warning("the current version %s cannot be evaluated (%s): gating on the new version alone",
                    current.name, exc)
        out["current_unscored"] = str(exc)[:200]
        return out
    out["current_nDCG@10"] = old
    if new < old - max_drop:
        raise GateError(f"{version.name}: nDCG@10 {new:.4f} on {eval_data.name} is more than {max_drop} below the "
                        f"current version's {old:.4f}; {CURRENT} stays on {current.name} (the new version stays "
                        "published beside it)")
    return out


def current_version(out: Path) -> Path | None:
    """The version ``out/current`` names, when it is a version folder inside ``out`` (else None, logged)."""
    link = out / CURRENT
    if not (link / "manifest.json").is_file():
        return None
    target = link.resolve()
    if target.parent != out.resolve():
        log.warning("%s points outside %s: not used as the base or the gate's peer", link, out)
        return None
    return target


def move_current(out: Path, version: Path) -> None:
    """Point ``out/current`` at ``version`` in one rename (a reader sees the old target or the new one)."""
    link = out / CURRENT
    if link.exists() and not link.is_symlink():
        raise FileExistsError(f"{link}: exists and is not a symlink; refusing to replace it")
    tmp = out / f".{CURRENT}.{secrets.token_hex(4)}"
    os.symlink(version.name, tmp)
    os.replace(tmp, link)
    fd = os.open(out, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def swap_server(url: str, retriever: str, version: Path, models_root: Path, *, key_env: str = ADMIN_KEY_ENV,
                timeout_s: float = 120.0) -> dict[str, Any]:
    """Ask the server at ``url`` to load ``version`` for ``retriever`` (``POST /v1/admin/indexes``, the admin key
    from ``$RETREC_ADMIN_KEYS``, the first if several, as the server reads them; the old ``$RETREC_ADMIN_KEY`` still
    works, with a warning); the version is named relative to ``models_root``, the folder the server's
    ``admin.models_root`` is. The key goes over https, or plain http to a loopback address only; no proxy from
    the environment. Raises RuntimeError with the server's code and message (never the key or the URL's
    credentials)."""
    import httpx

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or parts.username or parts.password:
        raise ValueError("--swap takes http(s)://HOST[:PORT] without credentials (the key comes from "
                         f"${key_env})")
    if parts.scheme == "http" and not _loopback(parts.hostname):
        raise ValueError("--swap sends the admin key: use https, or http to a loopback address (127.0.0.1, "
                         "a kubectl port-forward)")
    key = (os.environ.get(key_env) or "").split(",")[0].strip()
    if not key and key_env == ADMIN_KEY_ENV and os.environ.get(LEGACY_ADMIN_KEY_ENV):
        log.warning("$%s is the old name of the admin key's variable; set $%s (the server reads that one)",
                    LEGACY_ADMIN_KEY_ENV, ADMIN_KEY_ENV)
        key = os.environ[LEGACY_ADMIN_KEY_ENV].strip()
    if not key:
        raise RuntimeError(f"--swap needs the server's admin key in ${key_env}")
    try:
        relative = version.resolve().relative_to(models_root.resolve()).as_posix()
    except ValueError as exc:
        raise ValueError(f"{version} is not under the swap root {models_root} (the server's admin.models_root "
                         "as seen from here: --swap-root)") from exc
    base = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}/v1/admin"
    headers = {"Authorization": f"Bearer {key}"}
    deadline = time.monotonic() + timeout_s
    response = _call(httpx.post, f"{base}/indexes", parts.hostname, parts.port, json={"retriever": retriever,
                     "path": relative}, headers=headers, timeout=timeout_s, trust_env=False)
    body = _body(response)
    while response.status_code == 202 and body.get("status") == "pending":  # still loading: follow its record
        swap_id = str(body.get("swap_id", ""))
        if not SWAP_ID.match(swap_id) or time.monotonic() > deadline:
            raise RuntimeError(f"swap still running on the server after {timeout_s:g} s (swap_id {swap_id[:32]}); "
                               "GET /v1/admin/swaps/SWAP_ID tells how it ends")
        time.sleep(1.0)
        response = _call(httpx.get, f"{base}/swaps/{swap_id}", parts.hostname, parts.port, headers=headers,
                         timeout=30.0, trust_env=False)
        body = _body(response)
        if response.status_code == 200 and body.get("status") == "pending":
            response = httpx.Response(202)
        elif response.status_code == 200 and body.get("status") == "failed":
            error = body.get("error") if isinstance(body.get("error"), dict) else {}
            raise RuntimeError(f"swap failed on the server: {error.get('code', '')}: "
                               f"{str(error.get('message', ''))[:300]}")
    if response.status_code != 200:
        error = body.get("error") if isinstance(body.get("error"), dict) else body
        raise RuntimeError(f"swap refused: HTTP {response.status_code} {error.get('code', '')}: "
                           f"{str(error.get('message', ''))[:300]}")
    return body


def _call(method: Any, url: str, host: str | None, port: int | None, **kwargs: Any) -> Any:
    import httpx

    try:
        return method(url, **kwargs)
    except httpx.HTTPError as exc:
        raise RuntimeError(f"swap: no answer from {host}:{port or ''} ({type(exc).__name__})") from None


def _body(response: Any) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    return body if isinstance(body, dict) else {"message": response.text[:200]}
