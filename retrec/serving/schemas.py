"""HTTP request/response models of the serving API (``/v1``), validated with bounds.

Every request model forbids unknown fields and refuses NaN/inf, so a typo or a poisoned number is a
422 rather than a silently different answer.

Example::

    SearchRequest(query="what causes scurvy", k=10, retriever="hybrid",
                  fusion=FusionOptions(method="rrf", rrf_k=60))
    RecommendRequest(history=["12", "7"], k=10, model="bert4rec")
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

MAX_K = 1000
MAX_QUERY_CHARS = 2000
MAX_HISTORY = 1000
MAX_ITEM_ID_CHARS = 256
MAX_BODY_BYTES = 64 * 1024
RESERVED_RETRIEVERS = ("sparse", "muvera")  # part of the API, not deployed by this build

ItemId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ITEM_ID_CHARS)]
Weight = Annotated[float, Field(ge=0.0, le=1000.0, allow_inf_nan=False)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class FusionOptions(_Strict):
    """How ``retriever: hybrid`` combines its retrievers' rankings.

    ``rrf``: sum of ``weight / (rrf_k + rank)``; ``minmax``: sum of ``weight * (s - min) / (max - min)``
    per retriever (a retriever's missing document contributes 0). ``depth`` hits are fetched from each.
    """

    method: Literal["rrf", "minmax"] = "rrf"
    rrf_k: Annotated[float, Field(ge=0.0, le=10_000.0, allow_inf_nan=False)] = 60.0
    weights: dict[Annotated[str, StringConstraints(max_length=32)], Weight] | None = Field(
        default=None, max_length=8, description="per retriever, e.g. {'bm25': 0.3, 'dense': 0.7}; default 1 each")
    depth: Annotated[int, Field(ge=1, le=MAX_K)] = 100


class SearchRequest(_Strict):
    query: Annotated[str, StringConstraints(min_length=1, max_length=MAX_QUERY_CHARS)]
    k: Annotated[int, Field(ge=1, le=MAX_K)] = 10
    retriever: Annotated[str, StringConstraints(min_length=1, max_length=32)] = Field(
        default="bm25", description="bm25 | dense | hybrid (sparse, muvera: reserved, not deployed)")
    fusion: FusionOptions = Field(default_factory=FusionOptions)


class Hit(BaseModel):
    doc_id: str
    score: float
    rank: int


class SearchResponse(BaseModel):
    retriever: str
    hits: list[Hit]
    index_versions: dict[str, str] = Field(description="index version searched, per retriever")
    partial: bool = Field(description="true when a shard failed or timed out; hits come from the others")
    failed_shards: list[str] = Field(default_factory=list)
    took_ms: float


class RecommendRequest(_Strict):
    history: Annotated[list[ItemId], Field(min_length=1, max_length=MAX_HISTORY)]
    k: Annotated[int, Field(ge=1, le=MAX_K)] = 10
    model: Annotated[str, StringConstraints(min_length=1, max_length=64)] = "bert4rec"
    exclude_seen: bool = True


class Item(BaseModel):
    item_id: str
    score: float
    rank: int


class RecommendResponse(BaseModel):
    model: str
    model_version: str
    items: list[Item]
    skipped_unknown: int = Field(description="history items the model does not know (skipped)")
    unknown_examples: list[str] = Field(default_factory=list)
    took_ms: float


class SwapRequest(_Strict):
    """Admin: move ``retriever`` to the index version at ``path`` once every shard has loaded it."""

    retriever: Annotated[str, StringConstraints(min_length=1, max_length=32)]
    path: Annotated[str, StringConstraints(min_length=1, max_length=4096)]


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    """The one error shape: ``{"error": {"code": ..., "message": ...}}``."""

    error: ErrorBody
