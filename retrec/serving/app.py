"""``build_app(args)``: the whole Ray Serve application, composed with deployment handles.

Deployments: ``Ingress`` (FastAPI; by default it also runs the ONNX query encoder with dynamic batching,
``encoder.placement: deployment`` moves that to a ``QueryEncoder`` deployment), one deployment per index
shard (``bm25-shard-0``, ``dense-shard-N``), one per recommender (``recommender-NAME``). Which deployment
serves a bundle is decided by the bundle's ``kind`` — adding a retriever or recommender is one entry in
:data:`RETRIEVER_KINDS` / :data:`RECOMMENDER_KINDS`.

Example (also what ``configs/serve.yaml`` holds under ``args:``)::

    app = build_app({"retrievers": {"bm25": {"index": "runs/demo/bundles/bm25"}},
                     "recommenders": {"bert4rec": {"bundle": "runs/demo/bundles/bert4rec"}}})
    serve.run(app, name="retrec", route_prefix="/")

    # or: serve run configs/serve.yaml   /   retrec serve --config configs/serve.yaml
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.serve import Application
from ray.serve.deployment import Deployment

from retrec.bundle import BundleError, read_manifest
from retrec.serving.config import RetrieverConfig, ServingConfig
from retrec.serving.encoders import QueryEncoder
from retrec.serving.ingress import Ingress
from retrec.serving.recommenders import Recommender
from retrec.serving.shards import BM25Shard, DenseShard, IndexRef, index_ref

log = logging.getLogger("retrec.serving")


@dataclass(frozen=True)
class RetrieverKind:
    """How to serve an index bundle kind: the shard deployment, its input, its shard count and args."""

    deployment: Deployment
    input: str  # "text": the query string goes to the shards; "vector": the encoder's query vector does
    shard_count: Callable[[dict[str, Any]], int]
    shard_args: Callable[[int, IndexRef, ServingConfig], dict[str, Any]]


RETRIEVER_KINDS: dict[str, RetrieverKind] = {
    "index/bm25": RetrieverKind(BM25Shard, "text", lambda config: 1, lambda i, ref, cfg: {"initial": ref}),
    "index/dense": RetrieverKind(DenseShard, "vector", lambda config: int(config["shards"]),
                                 lambda i, ref, cfg: {"shard": i, "initial": ref, "use_gpu": cfg.use_gpu}),
}
RECOMMENDER_KINDS: dict[str, Deployment] = {"model/bert4rec": Recommender}


def _exists(path: str) -> bool:
    return (Path(path) / "manifest.json").is_file()


def _deployable(role: str, name: str, path: str, optional: bool) -> bool:
    """True when the bundle exists; a missing optional bundle is skipped with a warning, a required one refused."""
    if _exists(path):
        return True
    if optional:
        log.warning("%s %s: no bundle at %s; not deployed", role, name, path)
        return False
    raise BundleError(f"{role} {name!r}: no bundle at {path}")


def _encoder(cfg: ServingConfig, name: str, rc: RetrieverConfig) -> dict[str, Any]:
    """The query encoder: ``{"bundle", "kwargs"}`` built inside the ingress, or a ``QueryEncoder`` deployment."""
    if rc.encoder is None:
        raise BundleError(f"retriever {name!r}: a dense index needs 'encoder: <model/dense bundle>'")
    path = cfg.resolve(rc.encoder)
    if not _exists(path):
        raise BundleError(f"retriever {name!r}: encoder bundle {path} not found")
    e = cfg.encoder
    kwargs = {"variant": e.variant, "max_batch_size": e.max_batch_size, "batch_wait_timeout_s": e.batch_wait_timeout_s,
              "threads": e.threads, "use_gpu": cfg.use_gpu}
    if e.placement == "ingress":
        return {"placement": "ingress", "bundle": path, "kwargs": kwargs}
    max_ongoing = max(e.replicas.max_ongoing_requests, e.max_batch_size)
    options = {**e.replicas.deployment_options("QueryEncoder"), "max_ongoing_requests": max_ongoing}
    return {"placement": "deployment", "handle": QueryEncoder.options(**options).bind(path, **kwargs)}


def build_app(args: dict[str, Any]) -> Application:
    """The application for a serve config's ``args`` (see :class:`retrec.serving.config.ServingConfig`)."""
    cfg = ServingConfig.model_validate(args)
    if cfg.base_dir is None:  # swaps resolve relative paths the way this build did
        cfg = cfg.model_copy(update={"base_dir": os.getcwd()})
    retrievers: dict[str, dict[str, Any]] = {}
    encoder: dict[str, Any] | None = None
    encoder_path: str | None = None
    for name, rc in cfg.retrievers.items():
        path = cfg.resolve(rc.index)
        if not _deployable("retriever", name, path, rc.optional):
            continue
        manifest = read_manifest(path)
        kind = RETRIEVER_KINDS.get(manifest.kind)
        if kind is None:
            raise BundleError(f"retriever {name!r}: bundle kind {manifest.kind!r} cannot be served "
                              f"(servable: {', '.join(RETRIEVER_KINDS)})")
        if kind.input == "vector":
            if encoder is None:
                encoder, encoder_path = _encoder(cfg, name, rc), cfg.resolve(rc.encoder or "")
            elif cfg.resolve(rc.encoder or "") != encoder_path:
                raise BundleError(f"retriever {name!r}: one query encoder per application ({encoder_path})")
        ref = index_ref(path)
        shards = []
        for i in range(kind.shard_count(manifest.config)):
            shard_args = kind.shard_args(i, ref, cfg)
            shards.append(kind.deployment.options(**rc.shards.deployment_options(f"{name}-shard-{i}")
                                                  ).bind(**shard_args))
        retrievers[name] = {"input": kind.input, "kind": manifest.kind, "shards": shards, "ref": ref}
    recommenders: dict[str, Any] = {}
    for name, mc in cfg.recommenders.items():
        path = cfg.resolve(mc.bundle)
        if not _deployable("recommender", name, path, mc.optional):
            continue
        kind = read_manifest(path).kind
        if kind not in RECOMMENDER_KINDS:
            raise BundleError(f"recommender {name!r}: bundle kind {kind!r} cannot be served "
                              f"(servable: {', '.join(RECOMMENDER_KINDS)})")
        recommenders[name] = RECOMMENDER_KINDS[kind].options(
            **mc.replicas.deployment_options(f"recommender-{name}")).bind(path)
    if not retrievers and not recommenders:
        raise BundleError("nothing to serve: every configured bundle is missing")
    # Index swaps without restarts: a `deployments: [{name: Ingress, user_config: {indexes: {...}}}]` override.
    return Ingress.options(**cfg.ingress.deployment_options("Ingress")).bind(
        cfg.model_dump(), retrievers, encoder, recommenders)
