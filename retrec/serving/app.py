"""``build_app(args)``: the whole Ray Serve application, composed with deployment handles, by bundle kind.

Every configured bundle's ``kind`` (its manifest) is looked up in the one registry, :mod:`retrec.kinds`:

- an **index** kind is served as ``manifest.config["shards"]`` shards, each
  :class:`~retrec.serving.shards.IndexShard` (which loads shard ``i`` through the kind's registry loader) or
  the kind's own ``serve`` deployment class; ``placement`` (per retriever, :mod:`retrec.serving.placement`)
  runs them inside each ingress replica (``ingress``: no hop; ``auto`` picks it for small indices) or as one
  deployment per shard (``deployment``: ``NAME-shard-i``); the choice is logged. ``shards.resources`` (every
  shard) and ``shard_resources`` (one entry per shard, checked against the manifest's count) pin the shard
  deployments to the Ray nodes offering those custom resources (``auto`` then means ``deployment``). A kind
  whose payload is not ``text`` needs ``encoder:``, a query-encoder bundle whose kind produces that payload
  (and is one of the index kind's ``encoder_kinds``, when it names any); the pair is checked with the kind's
  ``check`` hook here, and again on every swap.
- **query encoders** are keyed by their bundle: retrievers naming the same bundle share one encoder, and an
  application may use several. ``encoder.placement: ingress`` (default) runs each inside the ``Ingress``
  replica; ``deployment`` serves each as a ``QueryEncoder`` deployment (the first as ``QueryEncoder``,
  others as ``QueryEncoder-NAME`` after the first retriever using them).
- a **reranker** (``rerank:``, optional) is served by :class:`~retrec.serving.rerankers.Reranker` as
  ``Reranker``: the ``rerank`` stage of ``/v1/search``.
- a **recommender** kind is served by :class:`~retrec.serving.recommenders.Recommender` (or its ``serve``
  deployment) as ``recommender-NAME``.

Adding a retriever or recommender kind is a registry entry; nothing here changes.

Exposure: ``auth.mode: none`` is refused here (whichever path deploys: ``retrec serve``, ``serve run``,
``serve deploy``, KubeRay) when the HTTP host Serve binds is not loopback (:func:`serve_http_host`,
:func:`~retrec.serving.config.check_exposure`); the ingress replica refuses ``mode: keys`` without keys.

Example (also what ``configs/serve.yaml`` holds under ``args:``)::

    app = build_app({"retrievers": {"bm25": {"index": "runs/demo/bundles/bm25"}},
                     "recommenders": {"bert4rec": {"bundle": "runs/demo/bundles/bert4rec"}}})
    serve.run(app, name="retrec", route_prefix="/")

    # or: serve run configs/serve.yaml   /   retrec serve --config configs/serve.yaml
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ray.serve import Application

from retrec import kinds
from retrec.bundle import BundleError, read_manifest
from retrec.runtime.online_model import CURRENT
from retrec.serving.config import RetrieverConfig, ServingConfig, check_exposure
from retrec.serving.encoders import QueryEncoder
from retrec.serving.events import event_log_spec
from retrec.serving.ingress import Ingress
from retrec.serving.placement import shard_placement
from retrec.serving.recommenders import Recommender
from retrec.serving.registry import check_hook, deployment, kind_of
from retrec.serving.rerankers import Reranker
from retrec.serving.schemas import HYBRID
from retrec.serving.shards import IndexShard, index_ref
from retrec.serving.versions import INGRESS

log = logging.getLogger("retrec.serving")


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


def _encoder_bundle(cfg: ServingConfig, name: str, rc: RetrieverConfig, index: kinds.Kind) -> str:
    """The retriever's query-encoder bundle path, refused unless its kind produces the index's payload."""
    if rc.encoder is None:
        fits = ", ".join(index.encoder_kinds) or f"a query encoder with payload {index.payload!r}"
        raise BundleError(f"retriever {name!r}: a {index.kind} index needs 'encoder: <bundle>' ({fits})")
    path = cfg.resolve(rc.encoder)
    if not _exists(path):
        raise BundleError(f"retriever {name!r}: encoder bundle {path} not found")
    kind = read_manifest(path).kind
    enc = kind_of(kind, "query_encoder", f"retriever {name!r}: encoder bundle {path}")
    if (index.encoder_kinds and kind not in index.encoder_kinds) or enc.payload != index.payload:
        raise BundleError(f"retriever {name!r}: encoder bundle {path} is a {kind} (payload {enc.payload!r}); "
                          f"a {index.kind} index is searched with {', '.join(index.encoder_kinds) or 'a'} "
                          f"encoder of payload {index.payload!r}")
    return path


def _encoder_spec(cfg: ServingConfig, path: str, deployment_name: str) -> dict[str, Any]:
    """One query encoder: ``{"placement": "ingress", "bundle", "kwargs"}`` or a ``QueryEncoder`` deployment."""
    e = cfg.encoder
    kwargs = {"variant": e.variant, "max_batch_size": e.max_batch_size, "batch_wait_timeout_s": e.batch_wait_timeout_s,
              "threads": e.threads, "use_gpu": cfg.use_gpu}
    if e.placement == "ingress":
        return {"placement": "ingress", "bundle": path, "kwargs": kwargs}
    max_ongoing = max(e.replicas.max_ongoing_requests, e.max_batch_size)
    options = {**e.replicas.deployment_options(deployment_name), "max_ongoing_requests": max_ongoing}
    return {"placement": "deployment", "bundle": path, "handle": QueryEncoder.options(**options).bind(path, **kwargs)}


def serve_http_host() -> str | None:
    """The host Serve's HTTP proxies bind: the running controller's ``http_options.host``; with no controller
    yet, the host Serve would start with; HTTP disabled: ``127.0.0.1`` (nothing is exposed); ``None`` when
    it cannot be read (treated as not loopback)."""
    try:
        import ray
        from ray.serve.config import HTTPOptions
        from ray.serve.context import _get_global_client

        client = _get_global_client(raise_if_no_controller_running=False) if ray.is_initialized() else None
        host = (client.http_config if client is not None else HTTPOptions()).host
        return "127.0.0.1" if host is None else str(host)
    except Exception:  # an unreadable host fails closed in check_exposure
        log.warning("could not read Serve's HTTP host", exc_info=True)
        return None


def build_app(args: dict[str, Any]) -> Application:
    """The application for a serve config's ``args`` (see :class:`retrec.serving.config.ServingConfig`)."""
    cfg = ServingConfig.model_validate(args)
    if cfg.auth.mode == "none":
        check_exposure(cfg, serve_http_host())
    if cfg.base_dir is None:  # swaps resolve relative paths the way this build did
        cfg = cfg.model_copy(update={"base_dir": os.getcwd()})
    if HYBRID in cfg.retrievers:
        raise BundleError(f"retriever name {HYBRID!r} is the fused ranking of all retrievers; rename it")
    retrievers: dict[str, dict[str, Any]] = {}
    encoders: dict[str, dict[str, Any]] = {}
    for name, rc in cfg.retrievers.items():
        path = cfg.resolve(rc.index)
        if not _deployable("retriever", name, path, rc.optional):
            continue
        manifest = read_manifest(path)
        kind = kind_of(manifest.kind, "index", f"retriever {name!r} ({path})")
        encoder = None
        if kind.needs_encoder:
            encoder = _encoder_bundle(cfg, name, rc, kind)
            check = check_hook(kind.kind)
            if check is not None:
                check(manifest, read_manifest(encoder))  # refuse a mismatched pair now, not at the first query
            if encoder not in encoders:
                encoders[encoder] = _encoder_spec(cfg, encoder, "QueryEncoder" if not encoders
                                                  else f"QueryEncoder-{name}")
        ref = index_ref(path)
        n = int(manifest.config.get("shards", 1))
        if rc.pinned and rc.placement == "auto":
            placement, why = "deployment", "auto: pinned to nodes (shards.resources / shard_resources)"
        else:
            placement, why = shard_placement(rc.placement, manifest, cfg.use_gpu, rc.shards.num_gpus)
        log.info("retriever %s: %d %s shard(s) served in %s (%s)", name, n, kind.kind,
                 "each ingress replica" if placement == "ingress" else "their own deployments", why)
        if placement == "ingress":
            shards: list[Any] = [{"placement": "ingress", "kind": kind.kind, "shard": i, "use_gpu": cfg.use_gpu}
                                 for i in range(n)]
        else:
            shard_class = deployment(kind.kind, IndexShard)
            # The versions each shard replica holds: its user_config, which index swaps update (versions.py).
            try:  # shard i's options: shards, with its entry of shard_resources (one per shard of the manifest)
                options = [rc.shard_options(name, i, n) for i in range(n)]
            except ValueError as exc:
                raise BundleError(str(exc)) from exc
            for i, opts in enumerate(options):
                if opts["ray_actor_options"].get("resources"):
                    log.info("retriever %s: shard %d pinned to nodes offering %s", name, i,
                             opts["ray_actor_options"]["resources"])
            shards = [shard_class.options(**opts, user_config={"versions": [ref]}).bind(
                          kind=kind.kind, shard=i, initial=ref, use_gpu=cfg.use_gpu)
                      for i, opts in enumerate(options)]
        retrievers[name] = {"kind": kind.kind, "payload": kind.payload, "placement": placement, "shards": shards,
                            "ref": ref, "encoder": encoder}
    recommenders: dict[str, Any] = {}
    for name, mc in cfg.recommenders.items():
        path = cfg.resolve(mc.bundle)
        model = str(Path(path) / CURRENT) if mc.online else path  # an online folder: its current version
        if not _deployable("recommender", name, model, mc.optional):
            continue
        kind = kind_of(read_manifest(model).kind, "recommender", f"recommender {name!r} ({path})")
        online: dict[str, Any] = {"online": True, "poll_s": mc.poll_s} if mc.online else {}
        if cfg.events.log:  # user histories for requests that name a user
            online["events"] = event_log_spec(cfg)
        recommenders[name] = deployment(kind.kind, Recommender).options(
            **mc.replicas.deployment_options(f"recommender-{name}")).bind(path, kind=kind.kind, **online)
    if not retrievers and not recommenders:
        raise BundleError("nothing to serve: every configured bundle is missing")
    reranker = None
    if cfg.rerank is not None:
        rr = cfg.rerank
        path = cfg.resolve(rr.bundle)
        _deployable("rerank", "bundle", path, optional=False)
        kind_of(read_manifest(path).kind, "reranker", f"rerank bundle {path}")
        reranker = Reranker.options(**rr.replicas.deployment_options("Reranker")).bind(
            path, cfg.resolve(rr.documents), variant=rr.variant, threads=rr.threads,
            first_stage_weight=rr.first_stage_weight)
    # The active index versions: the Ingress user_config (swaps, or a `deployments: [{name: Ingress,
    # user_config: {indexes: {NAME: PATH}}}]` override, update it on every replica; versions.py).
    indexes = {name: r["ref"]["path"] for name, r in retrievers.items()}
    return Ingress.options(**cfg.ingress.deployment_options(INGRESS), user_config={"indexes": indexes}).bind(
        cfg.model_dump(), retrievers, encoders, recommenders, reranker)
