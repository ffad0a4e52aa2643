"""The application's ``args`` (the ``args:`` block of a serve config YAML), parsed and validated once.

The same dict is accepted by ``build_app(args)`` from ``retrec serve --config``, ``serve run`` and
``serve deploy``. Relative bundle paths resolve against ``base_dir`` (default: the working directory).

Shards across Ray nodes: a retriever's ``shards.resources`` (every shard) and ``shard_resources`` (one entry per
shard of the index) are Ray custom resources its shard replicas ask for, so each runs only on the nodes offering
them (``ray start --resources``, KubeRay's ``rayStartParams.resources``); ``max_replicas_per_node`` spreads a
role's replicas over nodes.

Example::

    cfg = ServingConfig.model_validate({
        "retrievers": {"bm25": {"index": "runs/demo/bundles/bm25"}},
        "recommenders": {"bert4rec": {"bundle": "runs/demo/bundles/bert4rec"}},
    })
    pinned = RetrieverConfig.model_validate({"index": "/models/dense", "placement": "deployment",
                                             "shard_resources": [{"node_a": 0.01}, {"node_b": 0.01}]})
    pinned.shard_options("dense", 1, 2)["ray_actor_options"]["resources"]   # {"node_b": 0.01}
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# Ray's own resources, asked for through num_cpus / num_gpus (and memory options), never as custom resources.
RESERVED_RESOURCES = frozenset({"CPU", "GPU", "memory", "object_store_memory"})
RESOURCE_PRECISION = 1e-4  # Ray refuses a non-zero fractional quantity below this


def check_resources(resources: dict[str, float]) -> dict[str, float]:
    """Ray custom resources a replica asks for, checked the way Ray would refuse them (but with the config's
    words): a name that is not empty and not one of :data:`RESERVED_RESOURCES`, a quantity > 0 and >= 0.0001.

    >>> check_resources({"shard_node_a": 0.01})
    {'shard_node_a': 0.01}
    """
    for name, quantity in resources.items():
        if not name.strip() or name != name.strip():
            raise ValueError(f"resource name {name!r}: empty or padded with spaces")
        if name in RESERVED_RESOURCES:
            raise ValueError(f"resource {name!r} is Ray's own: use num_cpus / num_gpus, not resources")
        if not quantity >= RESOURCE_PRECISION:
            raise ValueError(f"resource {name!r}: quantity {quantity!r} must be >= {RESOURCE_PRECISION} "
                             "(a small fraction, e.g. 0.01, pins without limiting replicas per node)")
    return resources


Resources = Annotated[dict[str, float], AfterValidator(check_resources)]


class ReplicaOptions(_Strict):
    """Replica count and Ray resources of one role; ``max_ongoing_requests`` bounds each replica's queue."""

    replicas: int = Field(1, ge=1, le=64)
    num_cpus: float = Field(0.25, ge=0.0)
    num_gpus: float = Field(0.0, ge=0.0)
    max_ongoing_requests: int = Field(32, ge=1, le=10_000)
    max_queued_requests: int = Field(256, ge=-1, description="queued at each caller beyond this: 503")
    retry_after_s: float = Field(1.0, ge=0, description="Retry-After of Ray's own 503 on a full queue")
    resources: Resources = Field(default_factory=dict, description="Ray custom resources each replica asks for "
                                 "(its ray_actor_options.resources): the replicas run only on nodes that offer them "
                                 "(`ray start --resources`, KubeRay's rayStartParams resources), e.g. "
                                 "{shard_node_a: 0.01}; CPUs and GPUs are num_cpus / num_gpus")
    max_replicas_per_node: int | None = Field(None, ge=1, le=100, description="at most this many of the role's "
                                              "replicas on one Ray node (1: each replica on its own node, so a "
                                              "node lost takes one replica, not all); default: no bound")

    def deployment_options(self, name: str, resources: dict[str, float] | None = None) -> dict[str, Any]:
        """Serve deployment options; ``resources`` (e.g. one shard's pinning) are merged over :attr:`resources`."""
        actor: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        wanted = {**self.resources, **(resources or {})}
        if wanted:
            actor["resources"] = wanted
        options = {
            "name": name,
            "num_replicas": self.replicas,
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
            "backpressure_config": {"status_code": 503, "retry_after_s": self.retry_after_s},
            "ray_actor_options": actor,
            "health_check_period_s": 2.0,
            "health_check_timeout_s": 10.0,
        }
        if self.max_replicas_per_node is not None:
            options["max_replicas_per_node"] = self.max_replicas_per_node
        return options


class RetrieverConfig(_Strict):
    """One retriever: its index version (any registered index kind) and, for kinds searched with encoded
    queries (payload other than text, e.g. ``index/dense``), the query-encoder bundle it was built with."""

    index: str
    encoder: str | None = None
    optional: bool = Field(False, description="skip this retriever (with a warning) when its bundle is missing")
    placement: Literal["auto", "ingress", "deployment"] = Field(
        "auto", description="where its shards run: inside each ingress replica (no hop per query; one copy of the "
        "index per ingress replica), their own deployments (own memory, replicas, GPUs), or auto: ingress for "
        "an index of at most 256 MiB that asks for no GPU and is not pinned to nodes (retrec.serving.placement)")
    shards: ReplicaOptions = Field(default_factory=ReplicaOptions, description="shard deployments (placement: "
                                   "deployment); unused in the ingress. shards.resources pins every shard")
    shard_resources: list[Resources] | None = Field(
        None, min_length=1, description="per-shard pinning (placement: deployment): entry i is the Ray custom "
        "resources of shard i's replicas (merged over shards.resources), e.g. [{node_a: 0.01}, {node_b: 0.01}] "
        "puts shard 0 on the nodes offering node_a and shard 1 on those offering node_b; one entry per shard of "
        "the index (checked against its manifest when the application is built)")

    @property
    def pinned(self) -> bool:
        """Its shards ask for custom resources (``auto`` placement then means ``deployment``)."""
        return bool(self.shard_resources or self.shards.resources)

    @model_validator(mode="after")
    def _pinning_needs_deployments(self) -> RetrieverConfig:
        if self.placement == "ingress" and self.pinned:
            raise ValueError("shard pinning (shards.resources / shard_resources) needs placement: deployment "
                             "(shards inside the ingress run where the ingress runs)")
        return self

    def shard_options(self, name: str, shard: int, count: int) -> dict[str, Any]:
        """Deployment options of shard ``shard`` of ``count`` (the index manifest's shard count) of retriever
        ``name``: ``shards`` with that shard's entry of ``shard_resources``.

        Example::

            rc.shard_options("dense", 1, 4)["ray_actor_options"]["resources"]   # {"node_b": 0.01}
        """
        from retrec.serving.shards import shard_deployment

        extra = None
        if self.shard_resources is not None:
            if len(self.shard_resources) != count:
                raise ValueError(f"retriever {name!r}: shard_resources has {len(self.shard_resources)} entries, "
                                 f"its index {self.index} has {count} shard(s): give one entry per shard")
            extra = self.shard_resources[shard]
        return self.shards.deployment_options(shard_deployment(name, shard), extra)


class RecommenderConfig(_Strict):
    bundle: str
    online: bool = Field(False, description="bundle is an online model folder: serve its current version and apply "
                         "its deltas as the online trainer publishes them")
    poll_s: float = Field(1.0, gt=0, le=3600, description="online: how often a replica looks for new deltas")
    optional: bool = False
    replicas: ReplicaOptions = Field(default_factory=ReplicaOptions)


class EncoderConfig(_Strict):
    """Query encoders (one per encoder bundle the retrievers name): where they run, variant, batching, threads.

    ``placement: ingress`` (default) runs each encoder inside each ingress replica (no deployment hop
    per query; ``replicas`` is then unused); ``deployment`` serves each as a ``QueryEncoder`` deployment with
    ``replicas``. ``max_batch_size`` bounds both the encoders' batches and the ingress's batched shard calls
    (``1`` turns dynamic batching off: one encoder call and one call per shard for every request).
    """

    placement: Literal["ingress", "deployment"] = "ingress"
    variant: str = "fp32"
    max_batch_size: int = Field(16, ge=1, le=1024)
    batch_wait_timeout_s: float = Field(0.004, ge=0.0, le=1.0)
    threads: int | None = Field(None, ge=1, description="ONNX intra-op threads; default: the replica's CPUs")
    replicas: ReplicaOptions = Field(default_factory=lambda: ReplicaOptions(num_cpus=1.0, max_ongoing_requests=64))


class RerankConfig(_Strict):
    """The optional ``rerank`` stage of ``/v1/search`` (:mod:`retrec.serving.rerankers`): a ``model/reranker``
    bundle re-orders a retriever's top ``depth`` hits when a request says ``"rerank": true``; ``documents`` is the
    collection (a BEIR folder or corpus file) whose texts it reads. A cross-encoder reads every (query, document)
    pair: on 2 CPU cores, ~21 ms per document (MiniLM, 256 tokens; benchmarks/RESULTS.md), so ``depth`` is the
    latency knob."""

    bundle: str
    documents: str
    depth: int = Field(20, ge=1, le=1000, description="hits re-ranked per request (the first stage fetches at "
                       "least this many)")
    variant: Literal["fp32", "int8"] = "fp32"
    first_stage_weight: float | None = Field(None, ge=0.0, le=1.0, description="mix of the first stage's scores "
                                             "into the re-ranker's (0: the re-ranker alone, 1: the first stage's "
                                             "order); default: the bundle's, chosen on dev in training")
    threads: int | None = Field(None, ge=1, description="ONNX intra-op threads; default: the replica's CPUs")
    timeout_s: float = Field(5.0, gt=0, description="the re-ranking's deadline (see on_timeout)")
    on_timeout: Literal["first_stage", "fail"] = Field(
        "first_stage", description="a re-ranking past its deadline, or a re-ranker too busy to take it: "
        "first_stage answers in the first stage's order (`reranked: false`), fail answers 503")
    replicas: ReplicaOptions = Field(default_factory=lambda: ReplicaOptions(num_cpus=1.0, max_ongoing_requests=8))


class LimitsConfig(_Strict):
    max_body_bytes: int = Field(64 * 1024, ge=1024)
    max_inflight: int = Field(64, ge=1, description="requests in progress per ingress replica before 503")
    max_inflight_per_key: int | None = Field(None, ge=1, description="requests one API key may have in progress "
                                             "per ingress replica before 429 (off when unset)")
    retry_after_s: int = Field(1, ge=0)
    request_timeout_s: float = Field(10.0, gt=0)
    shard_timeout_s: float = Field(2.0, gt=0, description="a shard slower than this is dropped: partial result")
    encoder_timeout_s: float = Field(5.0, gt=0, description="query encoding slower than this fails the request (503)")
    swap_timeout_s: float = Field(25.0, gt=0, description="an admin index swap slower than this answers 202 with "
                                  "its swap_id and goes on; GET /v1/admin/swaps/{swap_id} tells how it ended. Keep "
                                  "it under the proxy's http_options.request_timeout_s")
    swap_drain_s: float = Field(30.0, ge=0, description="after a swap, the previous index version stays loaded this "
                                "long for requests in flight, then is released (one copy in memory at rest)")


class AuthConfig(_Strict):
    """API keys (``Authorization: Bearer KEY`` or ``X-API-Key``) on every route but health, readiness, docs
    and (``public_metrics``) metrics.

    ``mode: keys`` (default) needs at least one key (from ``api_keys_env``, comma-separated, and/or
    ``api_keys_file``, one per line): an application with none refuses to start. ``mode: none`` turns keys
    off, and only on a loopback bind unless ``allow_unauthenticated_network`` says an authenticating
    gateway is in front.
    """

    mode: Literal["keys", "none"] = "keys"
    api_keys_env: str | None = "RETREC_API_KEYS"
    api_keys_file: str | None = None
    min_key_length: int = Field(0, ge=0, description="API and admin keys shorter than this are refused at start "
                                "and at every reload (any key under 16 characters is logged as guessable)")
    public_metrics: bool = Field(True, description="/metrics answers without a key (for Prometheus)")
    allow_unauthenticated_network: bool = Field(
        False, description="mode none on a non-loopback HTTP host (only behind an authenticating gateway)")


class AdminConfig(_Strict):
    """``POST /v1/admin/indexes`` (index version swaps): off unless ``enabled``; its own keys (``keys_env``,
    comma-separated, and/or ``keys_file``; API keys do not open it); a swap names a bundle relative to
    ``models_root`` (no ``~``/``$VAR`` expansion, no ``..``, no symlink out of the root)."""

    enabled: bool = False
    keys_env: str | None = "RETREC_ADMIN_KEYS"
    keys_file: str | None = None
    models_root: str | None = Field(None, description="the folder swaps may name bundles under")
    trusted_manifests: str | None = Field(
        None, description="a file of manifest sha256 digests, one per line (# comments): when set, a swap takes "
        "only a version whose manifest.json is listed (read at every swap; keep it where the jobs that write the "
        "models volume cannot write)")

    @model_validator(mode="before")
    @classmethod
    def _from_bool(cls, value: Any) -> Any:
        if value is False:
            return {"enabled": False}
        if value is True:
            return {"enabled": True}  # refused below: enabling needs models_root (and keys)
        return value

    @model_validator(mode="after")
    def _root_when_enabled(self) -> AdminConfig:
        if self.enabled and not self.models_root:
            raise ValueError("admin: enabled needs models_root (the folder swap requests name bundles under) "
                             "and admin keys (keys_env / keys_file)")
        if self.enabled and not (self.keys_env or self.keys_file):
            raise ValueError("admin: enabled needs keys_env or keys_file (admin keys; API keys do not open it)")
        return self


class EventsConfig(_Strict):
    """``POST /v1/events``: batches of user actions appended to an event log (what online learning reads); off
    (403) unless ``log`` is set. The embedded folder log serves the replicas of one node (a file lock orders
    them); replicas on several nodes share a Redis stream."""

    log: str | None = Field(None, description="a folder (the embedded segment log, relative to base_dir) or "
                            "redis://[:PASSWORD@]HOST:PORT/DB?key=NAME (Redis Streams; $VAR expands)")
    max_batch: int = Field(1000, ge=1, le=10_000, description="events a request may carry")
    max_future_s: float = Field(300.0, ge=0, description="how far past the server's clock a timestamp may be")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="a /v1/events body over this is a 413 (other routes "
                                "keep limits.max_body_bytes)")
    fsync: bool = Field(True, description="folder log: fsync before acknowledging (off: a power cut may lose "
                        "acknowledged events)")
    catalogue: str | None = Field(None, description="a file of the item ids events may name (one a line, or a "
                                  "Parquet item_id column), re-read when it changes; other items are a 422. "
                                  "Default: any item (new items get rows online on admission)")


LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "ip6-localhost"})


def is_loopback(host: str | None) -> bool:
    """True for a loopback address (``127.0.0.0/8``, ``::1``, ``localhost``); ``None`` (unknown) is not."""
    if host is None:
        return False
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ServingConfig(_Strict):
    retrievers: dict[str, RetrieverConfig] = Field(default_factory=dict)
    recommenders: dict[str, RecommenderConfig] = Field(default_factory=dict)
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    ingress: ReplicaOptions = Field(default_factory=lambda: ReplicaOptions(max_ongoing_requests=128))
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    use_gpu: bool | None = Field(None, description="null: use a GPU when FAISS/ONNX Runtime see one")
    admin: AdminConfig = Field(default_factory=AdminConfig)
    rerank: RerankConfig | None = None
    events: EventsConfig = Field(default_factory=EventsConfig)
    base_dir: str | None = None

    @model_validator(mode="after")
    def _some_model(self) -> ServingConfig:
        if not self.retrievers and not self.recommenders:
            raise ValueError("configure at least one retriever or recommender")
        return self

    def resolve(self, path: str) -> str:
        """An absolute path for a bundle path from the operator's config (``~`` and ``$VAR`` expand; relative
        to ``base_dir``). Never for paths from requests: see :func:`retrec.serving.admin.bundle_under_root`."""
        p = Path(os.path.expandvars(path)).expanduser()
        if not p.is_absolute():
            p = Path(self.base_dir or os.getcwd()) / p
        return str(p.resolve())


def check_exposure(cfg: ServingConfig, host: str | None) -> None:
    """Refuse ``auth.mode: none`` on an HTTP host that is not loopback (``None``: unknown, refused too), unless
    ``auth.allow_unauthenticated_network``.

    Example::

        check_exposure(cfg, "0.0.0.0")   # ValueError when cfg.auth.mode == "none"
    """
    if cfg.auth.mode == "none" and not cfg.auth.allow_unauthenticated_network and not is_loopback(host):
        where = f"HTTP host {host!r}" if host is not None else "an HTTP host that could not be determined"
        raise ValueError(f"auth: {{mode: none}} on {where}, which is not loopback: configure API keys "
                         "(auth.mode: keys), bind 127.0.0.1, or set auth.allow_unauthenticated_network: true "
                         "if an authenticating gateway is in front")
