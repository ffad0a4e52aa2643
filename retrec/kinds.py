"""One registry of bundle kinds: what each kind is for and where its code lives (named, never imported here).

Every artifact bundle has a ``kind`` in its manifest (``index/bm25``, ``model/dense``, ...). This module is the
one place that says, for each kind: its **role** (an index, a query encoder, a recommender, a table, a
re-ranker), its **payload** (what an index searches with, or what a query encoder produces: text, a dense
vector, sparse term weights, a variable-length token matrix), and its code as ``"module:attr"`` strings that
are imported only when used (this module imports nothing of retrec, so every layer may read it):

- ``load``: ``load(path, **options) -> object`` — an index (:class:`retrec.contracts.Index`: ``search(payloads,
  k) -> list[Hits]``; with ``shard=i`` one shard of it), a query encoder (:class:`~retrec.contracts.QueryEncoder`:
  ``encode_queries(texts) -> payloads``), a recommender (:class:`~retrec.contracts.Recommender`), a re-ranker
  (:class:`~retrec.contracts.Reranker`) or a table (:class:`~retrec.contracts.Table`); its signature names every
  option it takes, one name per option across kinds (``shard``, ``verify``, ``use_gpu``, ``threads``, ...), and
  it refuses any other with the list (:func:`retrec.contracts.strict_options`);
- ``build``: index kinds only — ``build(doc_ids, texts, *, encoder, factory, shards, progress) -> index``
  (an object with ``save(directory, name=...) -> Manifest``); what ``retrec index KIND`` and ``retrec eval
  --retriever`` call;
- ``assemble``: index kinds only — ``assemble(doc_ids, encoded, *, encoder, factory, shards) -> index`` from
  documents already encoded (rows in ``doc_ids`` order): by the query encoder's ``encode_documents`` for encoded
  kinds, by the kind's ``prepare(texts, **options) -> per-document payloads`` (e.g. BM25's terms) for text kinds;
  what ``retrec reindex`` calls after encoding or preparing the documents in parallel. An index that can give
  its documents' encodings back exactly has ``encoded_documents() -> (doc_ids, encoded) | None`` (incremental
  reindexing reuses them);
- ``check``: index kinds only — ``check(index_manifest, encoder_manifest) -> int | None`` raising
  :class:`retrec.bundle.BundleError` when the pair does not fit (before a swap, an eval or a load, and at the
  first query on a version a serving replica did not check); an int is the width of the query vectors the index
  searches (a compatible encoder's old space: its vectors' first dimensions), None their whole width;
- ``serve``: the Ray Serve deployment of one shard / one recommender replica (default: the generic one);
- ``default_model``: a callable giving the query-encoder bundle used when none is named (e.g. zero-shot MiniLM);
- ``train`` and ``train_config``: model kinds that can be trained — ``train(data, out, cfg, *, resume, command)
  -> Path`` writes the bundle (a trainer may also take ``kind``, the kind string: one function for several kinds),
  ``cfg`` an instance of the ``train_config`` dataclass, whose fields (declared with
  :func:`retrec.pipelines.train.options.option`: default, help, choices) become the options of
  ``retrec train NAME`` (``NAME``: ``train_name``, default the kind's name after ``model/``); the dataclass's
  docstring is the command's help and its ``data_help`` class attribute the help of ``--data``.

``eval_names`` are the names ``retrec eval --retriever NAME`` and ``/v1/search {"retriever": NAME}`` know the
kind by. Adding a model family is its own modules plus one :func:`register` call — built in below, or in a
plugin module named in ``$RETREC_PLUGINS`` (comma-separated module names, imported on first use of the
registry, also in Ray workers, which inherit the variable) or in the ``retrec.kinds`` entry-point group.

Example::

    from retrec import kinds
    kinds.get("index/dense").payload              # "dense"
    kinds.by_eval_name("bm25").kind               # "index/bm25"
    index = kinds.call(kinds.get("index/bm25").load, "artifacts/scifact-bm25", shard=0, use_gpu=False)
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import threading
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Literal

Role = Literal["index", "query_encoder", "recommender", "table", "reranker"]
Payload = Literal["text", "dense", "sparse", "tokens"]
ROLES: tuple[str, ...] = ("index", "query_encoder", "recommender", "table", "reranker")
PAYLOADS: tuple[str, ...] = ("text", "dense", "sparse", "tokens")
PLUGINS_ENV = "RETREC_PLUGINS"
ENTRY_POINT_GROUP = "retrec.kinds"

# Every kind string, defined once.
BM25_INDEX = "index/bm25"
DENSE_INDEX = "index/dense"
DENSE_MODEL = "model/dense"
COMPAT_MAP = "model/compat-map"
RERANKER_MODEL = "model/reranker"
MULTIVECTOR_MODEL = "model/multivector"
SPARSE_MODEL = "model/sparse"
SPARSE_INDEX = "index/sparse"
MUVERA_INDEX = "index/muvera"
MAXSIM_INDEX = "index/maxsim"
BERT4REC_MODEL = "model/bert4rec"
SASREC_MODEL = "model/sasrec"
ONEREC_MODEL = "model/onerec"
MARKOV_MODEL = "model/markov"
MARKOV_DECAY_MODEL = "model/markov-decay"
COOC_MODEL = "model/cooc"
FUSION_MODEL = "model/rec-fusion"
EMBEDDING_TABLE = "table/embedding"
EMBEDDING_TABLE_DELTA = "table/embedding-delta"


class UnknownKindError(ValueError):
    """A bundle kind, eval name or role that the registry does not know."""


@dataclass(frozen=True)
class Kind:
    """How retrec treats one bundle kind (see the module docstring for each field's contract)."""

    kind: str
    role: Role
    description: str
    load: str | None = None
    payload: Payload | None = None
    build: str | None = None
    assemble: str | None = None
    prepare: str | None = None
    check: str | None = None
    serve: str | None = None
    default_model: str | None = None
    train: str | None = None  # "module:function" writing a bundle of this kind (see the module docstring)
    train_config: str | None = None  # "module:Class": the config dataclass of ``train``
    train_name: str | None = None  # ``retrec train NAME`` (default: the kind's name after the slash)
    encoder_kinds: tuple[str, ...] = ()  # index kinds searched with encoded queries: the encoders that fit
    eval_names: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)  # kind-specific defaults (e.g. {"factory": "Flat"})

    def __post_init__(self) -> None:
        if "/" not in self.kind:
            raise ValueError(f"kind {self.kind!r}: expected 'role/name', e.g. 'index/bm25'")
        if self.role not in ROLES:
            raise ValueError(f"kind {self.kind!r}: role {self.role!r} is not one of {', '.join(ROLES)}")
        if self.payload is not None and self.payload not in PAYLOADS:
            raise ValueError(f"kind {self.kind!r}: payload {self.payload!r} is not one of {', '.join(PAYLOADS)}")
        if self.role == "index" and self.payload is None:
            raise ValueError(f"kind {self.kind!r}: an index kind names the payload it searches with")
        for ref in (self.load, self.build, self.assemble, self.prepare, self.check, self.serve, self.default_model,
                    self.train, self.train_config):
            if ref is not None and ref.count(":") != 1:
                raise ValueError(f"kind {self.kind!r}: {ref!r} is not 'module:attr'")
        if (self.train is None) != (self.train_config is None):
            raise ValueError(f"kind {self.kind!r}: a trainer names both train and train_config")
        if self.train is not None and self.role == "index":
            raise ValueError(f"kind {self.kind!r}: indexes are built (retrec index), not trained")

    @property
    def command_name(self) -> str | None:
        """``retrec train NAME`` for a trainable kind (None otherwise)."""
        if self.train is None:
            return None
        return self.train_name or self.kind.partition("/")[2]

    @property
    def needs_encoder(self) -> bool:
        """True for index kinds whose queries are encoded by a query-encoder bundle first."""
        return self.role == "index" and self.payload != "text"


BUILTIN: tuple[Kind, ...] = (
    Kind(BM25_INDEX, "index", "BM25 (Lucene variant, bm25s) over title + text", payload="text",
         load="retrec.index.bm25_index:load_index", build="retrec.index.bm25_index:build_index",
         prepare="retrec.index.bm25_index:prepare_documents", assemble="retrec.index.bm25_index:assemble_index",
         eval_names=("bm25",)),
    Kind(DENSE_INDEX, "index", "dense vectors in FAISS shards (any index_factory string), inner product",
         payload="dense", load="retrec.index.faiss_index:load_index", build="retrec.index.dense_retriever:build_index",
         assemble="retrec.index.dense_retriever:assemble_index",
         check="retrec.index.faiss_index:check_index", default_model="retrec.models.text_encoder:zero_shot_bundle",
         encoder_kinds=(DENSE_MODEL, COMPAT_MAP), eval_names=("dense",), options={"factory": "auto"}),
    Kind(DENSE_MODEL, "query_encoder", "ONNX bi-encoder (MiniLM; zero-shot or TAS-B trained)", payload="dense",
         load="retrec.runtime.onnx_encoder:OnnxEncoder",
         train="retrec.pipelines.train.text.dense:train_dense",
         train_config="retrec.pipelines.train.text.config:DenseTrainConfig"),
    Kind(COMPAT_MAP, "query_encoder", "a new dense encoder and a linear map of its vectors into an old encoder's "
         "space (retrec compat fit): searches the old encoder's index", payload="dense",
         load="retrec.runtime.compat_map:CompatMapEncoder"),
    Kind(MUVERA_INDEX, "index", "multi-vector: MUVERA FDEs in FAISS shards (fast-scan PQ or any index_factory "
         "string), each shard's "
         "top candidates re-ranked by exact MaxSim over its float16 token store", payload="tokens",
         load="retrec.index.multivector:load_index", build="retrec.index.multivector:build_muvera",
         assemble="retrec.index.multivector:assemble_muvera", check="retrec.index.faiss_index:check_index",
         encoder_kinds=(MULTIVECTOR_MODEL,), eval_names=("muvera",)),
    Kind(MAXSIM_INDEX, "index", "multi-vector: exact brute-force MaxSim over every document's token vectors "
         "(the reference MUVERA approximates)", payload="tokens", load="retrec.index.multivector:load_index",
         build="retrec.index.multivector:build_maxsim", assemble="retrec.index.multivector:assemble_maxsim",
         check="retrec.index.faiss_index:check_index", encoder_kinds=(MULTIVECTOR_MODEL,), eval_names=("maxsim",)),
    Kind(MULTIVECTOR_MODEL, "query_encoder", "ONNX token encoder (MiniLM + a projection, L2-normalised per token; "
         "ColBERT-style)", payload="tokens", load="retrec.runtime.token_encoder:OnnxTokenEncoder",
         train="retrec.pipelines.train.text.multivector:train_multivector",
         train_config="retrec.pipelines.train.text.config:MultivectorTrainConfig"),
    Kind(SPARSE_INDEX, "index", "learned sparse: an inverted index over quantised impacts (uint8 or float16), "
         "sharded, exact top-k by posting-list accumulation", payload="sparse",
         load="retrec.index.sparse_index:load_index", build="retrec.index.sparse_index:build_index",
         assemble="retrec.index.sparse_index:assemble_index", check="retrec.index.faiss_index:check_index",
         encoder_kinds=(SPARSE_MODEL,), eval_names=("sparse",)),
    Kind(SPARSE_MODEL, "query_encoder", "ONNX SPLADE encoder (MiniLM + a head tied to the word embeddings; "
         "siamese, or inference-free: queries weighted by a table)", payload="sparse",
         load="retrec.runtime.sparse_encoder:OnnxSparseEncoder",
         train="retrec.pipelines.train.text.sparse:train_sparse",
         train_config="retrec.pipelines.train.text.config:SparseTrainConfig"),
    Kind(RERANKER_MODEL, "reranker", "ONNX cross-encoder (MiniLM + a linear head) scoring (query, document) pairs",
         load="retrec.runtime.reranker:OnnxReranker",
         train="retrec.pipelines.train.text.reranker:train_reranker",
         train_config="retrec.pipelines.train.text.config:RerankerTrainConfig"),
    Kind(BERT4REC_MODEL, "recommender", "BERT4Rec: ONNX user encoder over a collisionless item table",
         load="retrec.runtime.sequence_recommender:SequenceRecommender.load", eval_names=("bert4rec",),
         train="retrec.pipelines.train.seq.bert4rec:train_bert4rec",
         train_config="retrec.pipelines.train.seq.config:BERT4RecTrainConfig"),
    Kind(MARKOV_MODEL, "recommender", "first-order Markov chain: transition counts backed off to popularity",
         load="retrec.runtime.count_recommender:CountBundle.load", eval_names=("markov",),
         train="retrec.pipelines.train.seq.counts:train_count_kind",
         train_config="retrec.pipelines.train.seq.config:CountTrainConfig"),
    Kind(MARKOV_DECAY_MODEL, "recommender", "transitions from the last items of the history, weighted by recency "
         "(the decay chosen on the validation item)",
         load="retrec.runtime.count_recommender:CountBundle.load", eval_names=("markov-decay",),
         train="retrec.pipelines.train.seq.counts:train_count_kind",
         train_config="retrec.pipelines.train.seq.config:CountTrainConfig"),
    Kind(COOC_MODEL, "recommender", "item co-occurrence in histories (cosine), summed over the history by recency",
         load="retrec.runtime.count_recommender:CountBundle.load", eval_names=("cooc",),
         train="retrec.pipelines.train.seq.counts:train_count_kind",
         train_config="retrec.pipelines.train.seq.config:CountTrainConfig"),
    Kind(FUSION_MODEL, "recommender", "weighted sum of its component recommenders' normalised scores",
         load="retrec.runtime.fused_recommender:FusedRecommender.load", eval_names=("fusion",),
         train="retrec.pipelines.train.seq.rec_fusion:train_fusion_kind",
         train_config="retrec.pipelines.train.seq.config:FusionTrainConfig", train_name="fusion"),
    Kind(SASREC_MODEL, "recommender", "SASRec: causal ONNX user encoder over a collisionless item table",
         load="retrec.runtime.sequence_recommender:SequenceRecommender.load", eval_names=("sasrec",),
         train="retrec.pipelines.train.seq.sasrec:train_sasrec",
         train_config="retrec.pipelines.train.seq.config:SASRecTrainConfig"),
    Kind(ONEREC_MODEL, "recommender", "OneRec: semantic IDs generated by an encoder–decoder (sparse-MoE decoder), "
         "ONNX steps driven by a trie-constrained beam search",
         load="retrec.runtime.onerec:OneRecRecommender.load", eval_names=("onerec",),
         train="retrec.pipelines.train.seq.onerec:train_onerec",
         train_config="retrec.pipelines.train.seq.config:OneRecTrainConfig"),
    Kind(EMBEDDING_TABLE, "table", "collisionless embedding table snapshot (Parquet + safetensors)",
         load="retrec.tables:FrozenTable.load"),
    Kind(EMBEDDING_TABLE_DELTA, "table", "collisionless embedding table delta since a snapshot"),
)

_registry: dict[str, Kind] = {}
_plugins_loaded = False
_lock = threading.RLock()


def register(kind: Kind, *, replace: bool = False) -> Kind:
    """Add a kind (plugins call this on import). Registering another definition of a known kind is refused."""
    _load_plugins()  # built-ins first, so listings keep their order whoever registers first
    with _lock:
        known = _registry.get(kind.kind)
        if known is not None and known != kind and not replace:
            raise ValueError(f"kind {kind.kind!r} is registered already")
        taken = {n: k.kind for k in _registry.values() if k.kind != kind.kind for n in k.eval_names}
        clash = sorted(n for n in kind.eval_names if n in taken)
        if clash:
            raise ValueError(f"kind {kind.kind!r}: eval name(s) {clash} already name {taken[clash[0]]!r}")
        _registry[kind.kind] = kind
        return kind


def unregister(kind: str) -> None:
    """Remove a kind (tests that register a toy kind for one test)."""
    with _lock:
        _registry.pop(kind, None)


def _load_plugins() -> None:
    global _plugins_loaded
    with _lock:
        if _plugins_loaded:
            return
        _plugins_loaded = True
        for k in BUILTIN:
            _registry.setdefault(k.kind, k)
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            ep.load()  # the plugin registers its kinds on import
        for module in filter(None, (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(","))):
            importlib.import_module(module)


def registry() -> dict[str, Kind]:
    """Every known kind by kind string (built-ins, entry points, ``$RETREC_PLUGINS`` modules)."""
    _load_plugins()
    return dict(_registry)


def get(kind: str) -> Kind:
    """The registered :class:`Kind` of a bundle kind string."""
    known = registry()
    if kind not in known:
        raise UnknownKindError(f"unknown bundle kind {kind!r}; known kinds: {', '.join(sorted(known))}")
    return known[kind]


def by_role(role: str) -> list[Kind]:
    """Kinds of one role, in registration order."""
    if role not in ROLES:
        raise UnknownKindError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
    return [k for k in registry().values() if k.role == role]


def eval_names(role: str) -> list[str]:
    """Every eval name of the kinds of ``role`` (e.g. the retrievers ``retrec eval`` accepts)."""
    return [n for k in by_role(role) for n in k.eval_names]


def by_eval_name(name: str, role: str | None = None) -> Kind:
    """The kind an eval name (``bm25``, ``dense``, ``bert4rec``) stands for."""
    for k in registry().values():
        if name in k.eval_names and (role is None or k.role == role):
            return k
    names = eval_names(role) if role else [n for k in registry().values() for n in k.eval_names]
    raise UnknownKindError(f"unknown name {name!r}; available: {', '.join(sorted(names))}")


def resolve(ref: str) -> Any:
    """Import ``"package.module:attr.attr"`` and return the attribute."""
    module, _, attr = ref.partition(":")
    if not module or not attr:
        raise ValueError(f"{ref!r} is not 'module:attr'")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def call_supported(fn: Callable[..., Any], *args: Any, **options: Any) -> Any:
    """``fn(*args, **options)`` with only the options ``fn`` accepts (every one if it takes ``**kwargs``).

    The one rule for calling a kind's hooks with a caller's options (``shard``, ``use_gpu``, ``threads``,
    ``verify``, ...): a hook states what it understands by its signature.
    """
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: pass nothing optional
        return fn(*args)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return fn(*args, **options)
    names = {p.name for p in params if p.kind in (inspect.Parameter.KEYWORD_ONLY,
                                                   inspect.Parameter.POSITIONAL_OR_KEYWORD)}
    return fn(*args, **{k: v for k, v in options.items() if k in names})


def call(ref: str, *args: Any, **options: Any) -> Any:
    """Resolve a kind's ``"module:attr"`` hook and call it with the options it accepts."""
    return call_supported(resolve(ref), *args, **options)


def check_params(ref: str, params: dict[str, Any], what: str, reserved: tuple[str, ...] = ()) -> None:
    """Refuse user parameters (``--param NAME=VALUE``) that hook ``ref`` does not name in its signature (a
    ``**kwargs`` catch-all accepts none of them), that the caller sets itself (``reserved``), or whose value is
    not of the annotated type (int, float, bool, str, or None where allowed); ValueError saying what it takes."""
    fn = resolve(ref)
    params_of = inspect.signature(fn).parameters.values()
    named = {p.name for p in params_of if p.kind is inspect.Parameter.KEYWORD_ONLY} - set(reserved)
    unknown = sorted(set(params) - named)
    if unknown:
        takes = ", ".join(sorted(named)) or "none"
        raise ValueError(f"{what} takes no parameter {', '.join(unknown)} (its parameters: {takes})")
    hints = typing.get_type_hints(fn)
    for name, value in params.items():
        allowed = _plain_types(hints.get(name))
        if allowed and not any(_is_a(value, t) for t in allowed):
            expected = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
            raise ValueError(f"{what}: parameter {name} must be {expected}, got {json.dumps(value)}")


def _plain_types(hint: Any) -> tuple[type, ...]:
    """The plain types an annotation allows (``int | None`` → int, NoneType); () when it is anything else."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    return tuple(args) if all(a in (int, float, bool, str, type(None)) for a in args) else ()


def _is_a(value: Any, expected: type) -> bool:
    if expected is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)
