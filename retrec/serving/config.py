"""The application's ``args`` (the ``args:`` block of a serve config YAML), parsed and validated once.

The same dict is accepted by ``build_app(args)`` from ``retrec serve --config``, ``serve run`` and
``serve deploy``. Relative bundle paths resolve against ``base_dir`` (default: the working directory).

Example::

    cfg = ServingConfig.model_validate({
        "retrievers": {"bm25": {"index": "runs/demo/bundles/bm25"}},
        "recommenders": {"bert4rec": {"bundle": "runs/demo/bundles/bert4rec"}},
    })
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReplicaOptions(_Strict):
    """Replica count and Ray resources of one role; ``max_ongoing_requests`` bounds each replica's queue."""

    replicas: int = Field(1, ge=1, le=64)
    num_cpus: float = Field(0.25, ge=0.0)
    num_gpus: float = Field(0.0, ge=0.0)
    max_ongoing_requests: int = Field(32, ge=1, le=10_000)
    max_queued_requests: int = Field(256, ge=-1, description="queued at each caller beyond this: 503")
    retry_after_s: float = Field(1.0, ge=0, description="Retry-After of Ray's own 503 on a full queue")

    def deployment_options(self, name: str) -> dict[str, Any]:
        return {
            "name": name,
            "num_replicas": self.replicas,
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
            "backpressure_config": {"status_code": 503, "retry_after_s": self.retry_after_s},
            "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
            "health_check_period_s": 2.0,
            "health_check_timeout_s": 10.0,
        }


class RetrieverConfig(_Strict):
    """One retriever: its index version (any registered index kind) and, for kinds searched with encoded
    queries (payload other than text, e.g. ``index/dense``), the query-encoder bundle it was built with."""

    index: str
    encoder: str | None = None
    optional: bool = Field(False, description="skip this retriever (with a warning) when its bundle is missing")
    shards: ReplicaOptions = Field(default_factory=ReplicaOptions)


class RecommenderConfig(_Strict):
    bundle: str
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


class LimitsConfig(_Strict):
    max_body_bytes: int = Field(64 * 1024, ge=1024)
    max_inflight: int = Field(64, ge=1, description="requests in progress per ingress replica before 503")
    retry_after_s: int = Field(1, ge=0)
    request_timeout_s: float = Field(10.0, gt=0)
    shard_timeout_s: float = Field(2.0, gt=0, description="a shard slower than this is dropped: partial result")
    encoder_timeout_s: float = Field(5.0, gt=0, description="query encoding slower than this fails the request (503)")
    swap_timeout_s: float = Field(25.0, gt=0, description="an admin index swap slower than this answers 504 and is "
                                  "abandoned (the previous version stays active); keep it under the proxy's "
                                  "http_options.request_timeout_s")


class AuthConfig(_Strict):
    """Optional API keys (``Authorization: Bearer KEY`` or ``X-API-Key``); off when no key is configured."""

    api_keys_env: str | None = "RETREC_API_KEYS"
    api_keys_file: str | None = None


class ServingConfig(_Strict):
    retrievers: dict[str, RetrieverConfig] = Field(default_factory=dict)
    recommenders: dict[str, RecommenderConfig] = Field(default_factory=dict)
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    ingress: ReplicaOptions = Field(default_factory=lambda: ReplicaOptions(max_ongoing_requests=128))
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    use_gpu: bool | None = Field(None, description="null: use a GPU when FAISS/ONNX Runtime see one")
    admin: bool = Field(True, description="enable POST /v1/admin/indexes (index version swaps)")
    base_dir: str | None = None

    @model_validator(mode="after")
    def _some_model(self) -> ServingConfig:
        if not self.retrievers and not self.recommenders:
            raise ValueError("configure at least one retriever or recommender")
        return self

    def resolve(self, path: str) -> str:
        """An absolute path for a configured bundle path."""
        p = Path(os.path.expandvars(path)).expanduser()
        if not p.is_absolute():
            p = Path(self.base_dir or os.getcwd()) / p
        return str(p.resolve())
