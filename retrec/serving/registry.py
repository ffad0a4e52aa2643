"""What serving reads from :mod:`retrec.kinds`: loaders, deployments, checks and the names the API knows.

Everything here runs when the application is built or a replica starts (``build_app``, ``__init__``),
never per request. Loaders are called with serving's options (``shard``, ``use_gpu``, ``threads``,
``variant``, ...) through :func:`retrec.kinds.call_supported`: only the ones a loader accepts are passed.

Example::

    load = loader("index/dense")                                # FaissIndex's registry loader
    index = call_supported(load, "/idx/v1", shard=0, use_gpu=False, threads=2)   # threads dropped
    retriever_names()                                           # ["bm25", "dense", ...registered plugins]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from retrec import kinds
from retrec.bundle import BundleError


def kind_of(kind: str, role: str, where: str) -> kinds.Kind:
    """The registered kind, refusing a different role (``where`` names the config entry in the message)."""
    try:
        k = kinds.get(kind)
    except kinds.UnknownKindError as exc:
        raise BundleError(f"{where}: {exc}") from exc
    if k.role != role:
        servable = ", ".join(x.kind for x in kinds.by_role(role)) or "none"
        raise BundleError(f"{where}: bundle kind {kind!r} is a {k.role}, not a {role} (servable: {servable})")
    if k.load is None:
        raise BundleError(f"{where}: bundle kind {kind!r} has no loader in the registry; it cannot be served")
    return k


def loader(kind: str) -> Callable[..., Any]:
    """The registry loader of ``kind`` (imported now)."""
    ref = kinds.get(kind).load
    if ref is None:
        raise BundleError(f"bundle kind {kind!r} has no loader in the registry")
    return kinds.resolve(ref)


def check_hook(kind: str) -> Callable[..., None] | None:
    """The kind's swap-compatibility check ``check(index_manifest, encoder_manifest_or_None)``, if any."""
    ref = kinds.get(kind).check
    return kinds.resolve(ref) if ref else None


def deployment(kind: str, default: Any) -> Any:
    """The Serve deployment for ``kind``: its registry ``serve`` entry, else ``default``."""
    from ray import serve
    from ray.serve.deployment import Deployment

    ref = kinds.get(kind).serve
    if ref is None:
        return default
    obj = kinds.resolve(ref)
    return obj if isinstance(obj, Deployment) else serve.deployment(obj)


def retriever_names() -> list[str]:
    """Eval names of every registered index kind (what ``/v1/search`` knows, deployed or not)."""
    return kinds.eval_names("index")


def recommender_names() -> list[str]:
    """Eval names of every registered recommender kind."""
    return kinds.eval_names("recommender")


def describe(role: str) -> str:
    """``name (kind: description)`` for every registered kind of ``role`` with eval names."""
    return "; ".join(f"{', '.join(k.eval_names)} ({k.kind}: {k.description})"
                     for k in kinds.by_role(role) if k.eval_names)
