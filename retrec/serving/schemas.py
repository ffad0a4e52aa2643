"""HTTP request/response models of the serving API (``/v1``), validated with bounds.

Every request model forbids unknown fields, refuses NaN/inf and is strict about JSON types (``k: true``,
``k: 5.5``, ``k: "5"``, ``rrf_k: false`` or ``exclude_seen: 1`` are refused), so a typo or a poisoned value is
a 422 rather than a silently different answer. Two JSON spellings of one number stay one number, as the
OpenAPI 3.1 document (JSON Schema) says: ``k: 5.0`` is the integer 5 and ``rrf_k: 60`` the number 60.0.

Retriever and model names are the application's: the descriptions list the registered kinds' eval names
(:mod:`retrec.kinds`), and each ingress replica
publishes its deployed names as enums (and the default: hybrid when two or more retrievers are deployed, else
the one; the first recommender configured) in its OpenAPI schema
(:func:`openapi_schema`), fusion weight keys included.

Example::

    SearchRequest(query="what causes scurvy", k=10, retriever="hybrid",
                  fusion=FusionOptions(method="rrf", rrf_k=60))
    RecommendRequest(history=["12", "7"], k=10, model="bert4rec")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from fastapi import FastAPI
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, model_validator

from retrec.serving.registry import describe

MAX_K = 1000
MAX_OFFSET = 1000  # so a search reads at most MAX_K + MAX_OFFSET hits a retriever
MAX_QUERY_CHARS = 2000
MAX_HISTORY = 1000
MAX_ITEM_ID_CHARS = 256
MAX_BODY_BYTES = 64 * 1024
MAX_BATCH = 64  # queries or histories in one batch request
HYBRID = "hybrid"  # the fused ranking of every deployed retriever; no retriever may take this name



def _whole_number(value: Any) -> Any:
    """A JSON number with no fraction (``5.0``) is that integer; anything else goes to strict validation."""
    return int(value) if type(value) is float and value.is_integer() else value


_WHOLE = BeforeValidator(_whole_number)  # after the bounds in Annotated, so they stay JSON Schema bounds
ItemId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ITEM_ID_CHARS)]
Weight = Annotated[float, Field(ge=0.0, le=1000.0, allow_inf_nan=False)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


class FusionOptions(_Strict):
    """How ``retriever: hybrid`` combines its retrievers' rankings.

    ``rrf``: sum of ``weight / (rrf_k + rank)``; ``minmax``: sum of ``weight * (s - min) / (max - min)``;
    ``zscore``: sum of ``weight * (s - min) / std`` per retriever (a retriever's missing document contributes 0).
    ``depth`` hits are fetched from each.
    """

    method: Literal["rrf", "minmax", "zscore"] = "rrf"
    rrf_k: Annotated[float, Field(ge=0.0, le=10_000.0, allow_inf_nan=False)] = 60.0
    weights: dict[Annotated[str, StringConstraints(max_length=32)], Weight] | None = Field(
        default=None, max_length=8, description="per retriever, e.g. {'bm25': 0.3, 'dense': 0.7}; default 1 each")
    depth: Annotated[int, Field(ge=1, le=MAX_K), _WHOLE] = 100


QueryText = Annotated[str, StringConstraints(min_length=1, max_length=MAX_QUERY_CHARS)]
DocField = Literal["text", "title", "metadata"]


FilterScalar = Annotated[str, StringConstraints(max_length=256)] | Annotated[
    float, Field(allow_inf_nan=False)] | bool
FieldName = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Bound = Annotated[float, Field(allow_inf_nan=False)] | None


class InCondition(_Strict):
    in_: Annotated[list[FilterScalar], Field(min_length=1, max_length=256)] = Field(alias="in")


class RangeCondition(_Strict):
    """A numeric range: at most one lower (``gte`` / ``gt``) and one upper (``lte`` / ``lt``) bound."""

    gte: Bound = None
    gt: Bound = None
    lte: Bound = None
    lt: Bound = None


class SearchOptions(_Strict):
    """What a search asks besides its query (shared by ``/v1/search`` and ``/v1/search/batch``)."""

    k: Annotated[int, Field(ge=1, le=MAX_K), _WHOLE] = 10
    offset: Annotated[int, Field(ge=0, le=MAX_OFFSET), _WHOLE] = Field(
        0, description="hits to skip (paging): the answer is ranks offset+1 .. offset+k")
    retriever: Annotated[str, StringConstraints(min_length=1, max_length=32)] | None = Field(
        default=None, description="a deployed retriever, or hybrid (all of them fused); default: hybrid "
        f"when two or more are deployed, else the one. Registered retriever kinds: {describe('index')}")
    fusion: FusionOptions = Field(default_factory=FusionOptions)
    rerank: bool = Field(False, description="re-order the first stage's top hits (the configured depth) with the "
                         "deployed cross-encoder (`rerank:` in the serve config); only false when none is deployed")
    return_fields: list[DocField] = Field(
        default_factory=list, alias="return", max_length=3,
        description="document fields to add to each hit, from what the index version stores (its "
        "documents.parquet); a field the version does not store is left out")
    timings: bool = Field(False, description="add per-stage timings (ms) to the response")
    filter: dict[FieldName, FilterScalar | InCondition | RangeCondition] | None = Field(
        None, max_length=8, description="metadata conditions, all of which a hit's document meets: field: value "
        "(equality), field: {in: [...]}, field: {gte/gt/lte/lt: number}; the top k of the matching documents "
        "(a field the index version does not store: 400)")

    def filter_spec(self) -> dict[str, Any] | None:
        """The filter as plain JSON (what :func:`retrec.index.filters.parse_filter` reads), None for none."""
        if not self.filter:
            return None
        return {name: cond.model_dump(by_alias=True, exclude_none=True) if isinstance(cond, BaseModel) else cond
                for name, cond in self.filter.items()}


class SearchRequest(SearchOptions):
    query: QueryText


class BatchSearchRequest(SearchOptions):
    """Several queries with the same options: one response each, in the same order."""

    queries: Annotated[list[QueryText], Field(min_length=1, max_length=MAX_BATCH)] = Field(
        description=f"at most {MAX_BATCH} queries")


class Component(BaseModel):
    score: float
    rank: int


def _absent(value: Any) -> bool:
    return value is None


class Hit(BaseModel):
    doc_id: str
    score: float
    rank: int
    components: dict[str, Component] | None = Field(
        None, exclude_if=_absent,
        description="hybrid: each retriever's score and rank of this document (absent: not in its top depth)")
    text: str | None = Field(None, exclude_if=_absent, description="with return: text (when the version stores it)")
    title: str | None = Field(None, exclude_if=_absent, description="with return: title (when stored)")
    metadata: dict[str, Any] | None = Field(None, exclude_if=_absent, description="with return: metadata (when stored)")


class SearchResponse(BaseModel):
    retriever: str
    hits: list[Hit]
    index_versions: dict[str, str] = Field(description="index version searched, per retriever")
    partial: bool = Field(description="true when a shard failed or timed out; hits come from the others")
    failed_shards: list[str] = Field(default_factory=list)
    reranked_by: str | None = Field(None, description="NAME@VERSION of the cross-encoder that re-ordered the hits")
    reranked: bool = Field(False, description="whether the hits were re-ranked: false without `rerank`, and when the "
                           "re-ranker missed its deadline or was too busy (the first stage's order is returned)")
    took_ms: float
    timings: dict[str, float] | None = Field(
        None, description="with timings: total_ms, encode_ms, search_ms.RETRIEVER, fuse_ms, rerank_ms, fields_ms")


class BatchSearchResponse(BaseModel):
    results: list[SearchResponse]
    took_ms: float


class QualityRequest(_Strict):
    """The console's quality check: a retriever's search against its exact search on a sample of its documents."""

    retriever: Annotated[str, StringConstraints(min_length=1, max_length=32)]
    sample: Annotated[int, Field(ge=1, le=100), _WHOLE] = Field(
        20, description="documents of the index version whose texts are the queries (a deterministic sample)")
    k: Annotated[int, Field(ge=1, le=100), _WHOLE] = 10


class QualityResponse(BaseModel):
    retriever: str
    index_version: str
    queries: int
    k: int
    recall: float = Field(description="mean recall@k of the search against exact search")
    search_ms: dict[str, float] = Field(description="the search's latency per query: p50, p99, mean")
    exact_ms: dict[str, float] = Field(description="exact search's latency per query: p50, p99, mean")


class RecommendOptions(_Strict):
    k: Annotated[int, Field(ge=1, le=MAX_K), _WHOLE] = 10
    model: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = Field(
        default=None, description="a deployed recommender; default: the first configured. Registered "
        f"recommender kinds: {describe('recommender')}")
    exclude_seen: bool = True
    explain: bool = Field(False, description="a fusion model: each component's part of every item's score")


class RecommendRequest(RecommendOptions):
    """Exactly one of ``history`` and ``user`` (the OpenAPI document says so with ``oneOf``)."""

    model_config = ConfigDict(**RecommendOptions.model_config,
                              json_schema_extra={"oneOf": [{"required": ["history"]}, {"required": ["user"]}]})
    # (defaults are not validated: absent is allowed, an explicit null is not)
    history: Annotated[list[ItemId], Field(min_length=1, max_length=MAX_HISTORY)] = Field(
        default=None, description="the user's items, oldest first; or give user")  # type: ignore[assignment]
    user: Annotated[str, StringConstraints(min_length=1, max_length=256)] = Field(
        default=None, description="a user whose history the event log holds (a recommender with events)")  # type: ignore[assignment]

    @model_validator(mode="after")
    def _history_or_user(self) -> RecommendRequest:
        if (self.history is None) == (self.user is None):
            raise ValueError("give exactly one of history (items) and user (a user id)")
        return self


class Item(BaseModel):
    item_id: str
    score: float
    rank: int
    components: dict[str, float] | None = Field(
        None, exclude_if=_absent, description="with explain, a fusion model: each component's weight x probability")


class RecommendResponse(BaseModel):
    model: str
    model_version: str
    items: list[Item]
    skipped_unknown: int = Field(description="history items the model does not know (skipped)")
    unknown_examples: list[str] = Field(default_factory=list)
    took_ms: float


class BatchRecommendRequest(RecommendOptions):
    """Several histories with the same options: one response each, in the same order."""

    histories: Annotated[list[Annotated[list[ItemId], Field(min_length=1, max_length=MAX_HISTORY)]],
                         Field(min_length=1, max_length=MAX_BATCH)] = Field(
        description=f"at most {MAX_BATCH} histories, each the user's items, oldest first")


class BatchRecommendResponse(BaseModel):
    results: list[RecommendResponse]
    took_ms: float


class SwapRequest(_Strict):
    """Admin: move ``retriever`` to the index version at ``path`` once every shard has loaded it."""

    retriever: Annotated[str, StringConstraints(min_length=1, max_length=32)]
    path: Annotated[str, StringConstraints(min_length=1, max_length=1024, pattern=r"^[^\x00-\x1f\x7f]+$")] = Field(
        description="the bundle folder, relative to the configured admin.models_root (taken literally: no '~', "
        "'$VAR', '..' or absolute paths; symlinks must stay inside the root; no control characters)")


class EventsRequest(_Strict):
    """User actions for the event log, taken whole or refused whole (each checked by
    :func:`retrec.events.parse_events`: exactly ``user``, ``item``, ``timestamp`` in Unix seconds, ``type``)."""

    events: list[Any] = Field(description="[{user, item, timestamp, type}, ...], at most events.max_batch")


class EventsResponse(BaseModel):
    accepted: int
    first_offset: int = Field(description="the event log offset of the batch's first event")
    next_offset: int


class ErrorBody(BaseModel):
    code: str
    message: str
    request_id: str | None = Field(None, description="quote it to the operator: the details are in the server log")


class ErrorResponse(BaseModel):
    """The one error shape: ``{"error": {"code": ..., "message": ...}}``."""

    error: ErrorBody


@dataclass
class PublishedNames:
    """The names one ingress replica serves (set when it starts; one ingress per process)."""

    retrievers: list[str] = field(default_factory=list)  # deployed, in config order (plus hybrid when > 1)
    recommenders: list[str] = field(default_factory=list)
    swappable: list[str] = field(default_factory=list)  # deployed retrievers (no hybrid)
    filter_fields: list[str] = field(default_factory=list)  # metadata fields every deployed retriever's version has
    rerank: bool = False  # a re-ranker is deployed: "rerank": true is accepted


PUBLISHED = PublishedNames()


def _enum(schema: dict[str, Any], model: str, prop: str, names: list[str], default: str | None) -> None:
    """``model.prop`` becomes a string enum of ``names`` (nullable, with its documented ``default`` — what the
    server uses for null or a missing field — when it has one)."""
    props = schema.get("components", {}).get("schemas", {}).get(model, {}).get("properties", {})
    if prop not in props or not names:
        return
    old = props[prop]
    enum = {"type": "string", "enum": list(names)}
    props[prop] = {"anyOf": [enum, {"type": "null"}]} if default is not None else dict(enum)
    props[prop]["title"] = old.get("title", prop.title())
    if default is not None:
        props[prop]["default"] = default
    if "description" in old:
        props[prop]["description"] = old["description"]


def _enum_keys(schema: dict[str, Any], model: str, prop: str, names: list[str], none_when_empty: bool = False) -> None:
    """The keys of the (optional) mapping ``model.prop`` become an enum of ``names`` (with ``none_when_empty``
    and no names: the mapping takes no keys)."""
    prop_schema = schema.get("components", {}).get("schemas", {}).get(model, {}).get("properties", {}).get(prop, {})
    for option in prop_schema.get("anyOf", [prop_schema]):
        if option.get("type") == "object" and names:
            option["propertyNames"] = {"type": "string", "enum": list(names)}
        elif option.get("type") == "object" and none_when_empty:
            option["maxProperties"] = 0


def openapi_schema(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema of ``app`` with this replica's retriever and model names as enums (install it as
    ``app.openapi = functools.partial(openapi_schema, app)``)."""
    schema = FastAPI.openapi(app)  # generated once, cached by FastAPI
    retrievers, recommenders = PUBLISHED.retrievers, PUBLISHED.recommenders
    for model in ("SearchRequest", "BatchSearchRequest"):
        _enum(schema, model, "retriever", retrievers,
              default=HYBRID if HYBRID in retrievers else next(iter(retrievers), None))
    for model in ("RecommendRequest", "BatchRecommendRequest"):
        _enum(schema, model, "model", recommenders, default=next(iter(recommenders), None))
    _enum(schema, "SwapRequest", "retriever", PUBLISHED.swappable, default=None)
    _enum(schema, "QualityRequest", "retriever", PUBLISHED.swappable, default=None)
    _enum_keys(schema, "FusionOptions", "weights", PUBLISHED.swappable)
    for model in ("SearchRequest", "BatchSearchRequest"):
        _enum_keys(schema, model, "filter", PUBLISHED.filter_fields, none_when_empty=True)
    for model in ("SearchRequest", "BatchSearchRequest"):
        rerank = schema.get("components", {}).get("schemas", {}).get(model, {}).get("properties", {})
        if "rerank" in rerank and not PUBLISHED.rerank:
            rerank["rerank"]["enum"] = [False]  # nothing deployed to re-rank with
    _security(schema)
    return schema


def _security(schema: dict[str, Any]) -> None:
    """Declare the API key (``X-API-Key`` or ``Authorization: Bearer``; admin routes take an admin key the same
    way) so ``/docs``' Authorize button and generated clients send it; public paths say they need none."""
    from retrec.serving.middleware import GUARD

    schema.setdefault("components", {})["securitySchemes"] = {
        "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key",
                   "description": "an API key (an admin key for /v1/admin/*)"},
        "Bearer": {"type": "http", "scheme": "bearer", "description": "the same key as a bearer token"}}
    if not GUARD.require_keys and not GUARD.admin_keys:
        return  # auth.mode: none and no admin plane: nothing asks for a key
    schema["security"] = [{"ApiKey": []}, {"Bearer": []}]
    for path, operations in schema.get("paths", {}).items():
        public = path in GUARD.public_paths or (not GUARD.require_keys and not path.startswith("/v1/admin/"))
        if public:
            for operation in operations.values():
                operation["security"] = []
