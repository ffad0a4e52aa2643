"""Any registered index kind, read through the registry: build it, open a saved version, search it.

One wrapper, :class:`IndexRetriever`, turns an index of any kind into a :class:`~retrec.index.retriever.
Retriever`: query texts go straight to a text-payload index (bm25) or through the kind's query encoder first
(dense, and later sparse / multi-vector kinds). Nothing here names a kind: the registry says what each one
needs (``payload``, ``encoder_kinds``, ``default_model``, ``build``, ``load``, ``check``).

An index version of an encoded kind records its query encoder in ``config.encoder`` (name, version and the
absolute ``path``), so :func:`open_index` can load it alone; another encoder may be named instead and is
refused by the kind's ``check`` hook when the index's vectors did not come from it.

Example::

    from retrec import kinds
    kind = index_kind("dense")                                     # eval name or "index/dense"
    encoder = load_query_encoder(kind, None)                       # the kind's default_model (zero-shot MiniLM)
    index = build_index(kind, doc_ids, texts, encoder=encoder, shards=2)
    IndexRetriever("dense", index, encoder).search(["what causes scurvy"], k=10)
    publish_index(index, "artifacts/scifact-dense", name="scifact-dense")   # temp sibling, fsync, rename
    retriever = open_index("artifacts/scifact-dense")              # encoder from the recorded path
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from retrec import kinds
from retrec.bundle import BundleError, Manifest, load_bundle, publish, read_manifest
from retrec.contracts import Hits, Index, call_hook, check_options
from retrec.index.filters import DocumentMetadata

DOCUMENTS = "documents.parquet"  # in every index version: doc_id and the sha256 of the text it indexed
LOAD_ARGS = ("shard", "encoder", "verify", "use_gpu")  # set by open_index and serving, never by index_options
OPEN_ARGS = ("model", "verify", "use_gpu", "index_options")  # open_index's own; the rest go to the query encoder
StoredFields = dict[str, dict[str, str]]  # "title" / "metadata" (JSON) -> doc id -> value
FIELDS_KEY = "retrec.metadata_fields"  # documents.parquet metadata: the fields of its documents' metadata
ENCODING_KEY = "retrec.encoding"  # documents.parquet metadata: the encoder identity of an encoded kind's vectors


class IndexRetriever:
    """``search(queries, k)`` over an index of any kind; ``encoder`` encodes the queries of encoded kinds."""

    def __init__(self, name: str, index: Index, encoder: Any | None = None, manifest: Manifest | None = None) -> None:
        self.name = name
        self.index = index
        self.encoder = encoder
        self.manifest = manifest  # the index version's manifest when opened from a folder

    def search(self, queries: Sequence[str], k: int) -> list[Hits]:
        """Top-``k`` hits for each query text, best first."""
        payloads = list(queries) if self.encoder is None else self.encoder.encode_queries(list(queries))
        return self.index.search(payloads, k)

    @property
    def doc_ids(self) -> list[str] | None:
        """The indexed document ids (:attr:`retrec.contracts.Index.doc_ids`; None for an index without them)."""
        ids = getattr(self.index, "doc_ids", None)
        return None if ids is None else list(ids)

    def save(self, directory: str | Path, name: str | None = None, metrics: dict[str, Any] | None = None
             ) -> Manifest:
        """Save the index version in place (the encoder bundle stays where it is; see :func:`publish_index`)."""
        return self.index.save(directory, name=name or self.name, metrics=metrics)


def index_kind(name: str) -> kinds.Kind:
    """The index kind an eval name (``bm25``) or kind string (``index/bm25``) stands for."""
    kind = kinds.get(name) if "/" in name else kinds.by_eval_name(name, "index")
    if kind.role != "index":
        raise kinds.UnknownKindError(f"{name!r} is a {kind.role} kind, not an index; index kinds: "
                                     f"{', '.join(k.kind for k in kinds.by_role('index'))}")
    return kind


def display_name(kind: kinds.Kind) -> str:
    """What results call a retriever of this kind: its first eval name, else the kind string."""
    return kind.eval_names[0] if kind.eval_names else kind.kind


def load_query_encoder(kind: kinds.Kind, model: str | Path | None, **options: Any) -> Any:
    """The query encoder of an encoded index kind: bundle ``model``, else the kind's ``default_model``; ``options``
    go to the encoder's loader (e.g. ``threads=1``), refused with the list of its options when it takes no such one
    (:class:`~retrec.contracts.UnknownOptionError`)."""
    if not kind.needs_encoder:
        raise ValueError(f"{kind.kind} searches with text: it has no query encoder")
    if model is None:
        if kind.default_model is None:
            raise ValueError(f"{kind.kind} has no default query encoder; name a bundle of kind "
                             f"{' or '.join(kind.encoder_kinds)}")
        model = kinds.resolve(kind.default_model)()
    manifest = read_manifest(model)
    if manifest.kind not in kind.encoder_kinds:
        raise BundleError(f"{model}: a {manifest.kind!r} bundle; {kind.kind} queries are encoded by "
                          f"{' or '.join(kind.encoder_kinds) or 'no registered kind'} bundles")
    return call_hook(manifest.kind, kinds.resolve(kinds.get(manifest.kind).load), model, options=options)


def build_index(
    kind: kinds.Kind, doc_ids: Sequence[str], texts: Sequence[str], *, encoder: Any | None = None,
    factory: str | None = None, shards: int = 1, progress: bool = False, **options: Any,
) -> Any:
    """The kind's ``build`` over the documents (``encoder`` for encoded kinds; factory default from the kind)."""
    if kind.build is None:
        raise ValueError(f"{kind.kind} cannot be built from a corpus (no build hook registered)")
    if kind.needs_encoder and encoder is None:
        raise ValueError(f"{kind.kind} needs a query encoder to encode the documents")
    args: dict[str, Any] = {"factory": factory or kind.options.get("factory"), "shards": shards,
                            "progress": progress, **options}
    if kind.needs_encoder:
        args["encoder"] = encoder
    return kinds.call(kind.build, list(doc_ids), list(texts), **args)


def recorded_encoder(manifest: Manifest) -> str | None:
    """The query-encoder bundle path an index version recorded (``config.encoder.path``), if any."""
    encoder = manifest.config.get("encoder")
    return encoder.get("path") if isinstance(encoder, dict) else None


def open_index(
    path: str | Path, *, model: str | Path | None = None, verify: bool = True, use_gpu: bool | None = None,
    index_options: dict[str, Any] | None = None, **encoder_options: Any,
) -> IndexRetriever:
    """A saved index version of any kind as a retriever; ``model`` overrides the recorded query encoder;
    ``index_options`` go to the kind's loader (e.g. muvera's ``candidates``), refused unless it names them;
    ``encoder_options`` to the query encoder's (e.g. ``threads``), refused by it, or here for a text kind.

    Raises :class:`BundleError` for a bundle that is not an index, an encoded index with no encoder to use,
    or an encoder the kind's ``check`` hook refuses.
    """
    manifest = read_manifest(path)
    try:
        kind = kinds.get(manifest.kind)
    except kinds.UnknownKindError as exc:
        raise BundleError(f"{path}: {exc}") from exc
    if kind.role != "index":
        raise BundleError(f"{path}: a {kind.kind} bundle ({kind.role}), not an index version")
    if kind.load is None:
        raise BundleError(f"{path}: kind {kind.kind} has no registered loader")
    encoder = None
    if kind.needs_encoder:
        encoder_path = model if model is not None else recorded_encoder(manifest)
        if encoder_path is None:
            raise BundleError(f"{path}: this index records no query-encoder path; name the encoder bundle "
                              "(--model BUNDLE, or model= in retrec.load)")
        if model is None and not Path(encoder_path).is_dir():
            raise BundleError(f"{path}: its query encoder {encoder_path} is not there any more; name the encoder "
                              "bundle (--model BUNDLE, or model= in retrec.load)")
        encoder = load_query_encoder(kind, encoder_path, **encoder_options)
        if kind.check is not None:
            try:
                kinds.resolve(kind.check)(manifest, encoder.manifest)
            except BundleError as exc:
                raise BundleError(f"query encoder {encoder_path} does not fit index {path}: {exc}") from exc
    elif model is not None:
        raise BundleError(f"{path}: a {kind.kind} index searches with the query text; it takes no model")
    else:
        check_options(f"{path}: {kind.kind} (no query encoder)", encoder_options, OPEN_ARGS[1:])
    if index_options:
        kinds.check_params(kind.load, index_options, f"a {kind.kind} index", LOAD_ARGS)
    args: dict[str, Any] = {**(index_options or {}), "verify": verify, "use_gpu": use_gpu}
    if encoder is not None:
        args["encoder"] = encoder.manifest
    index = kinds.call(kind.load, path, **args)
    return IndexRetriever(display_name(kind), index, encoder, manifest)


def content_hash(text: str) -> bytes:
    """The 32-byte sha256 of the text a document was indexed with (what incremental reindexing compares)."""
    return hashlib.sha256(text.encode("utf-8")).digest()


def documents_table(doc_ids: Sequence[str], texts: Sequence[str], encoding: dict[str, Any] | None = None,
                    fields: StoredFields | None = None) -> pa.Table:
    """``documents.parquet``: every indexed doc id, the :func:`content_hash` of its text and the text (plus, from
    ``fields``, ``title`` and ``metadata`` — a JSON object per document, what filters read); for encoded kinds the
    :func:`encoding_identity` of the encoder that produced the index's vectors, in the file's metadata."""
    if len(doc_ids) != len(texts):
        raise ValueError(f"{len(doc_ids)} doc ids for {len(texts)} texts")
    columns = {"doc_id": pa.array(list(doc_ids), pa.string()),
               "sha256": pa.array([content_hash(t) for t in texts], pa.binary(32)),
               "text": pa.array(list(texts), pa.string())}  # what hits show (retrec.load, the console)
    for name, by_id in (fields or {}).items():
        columns[name] = pa.array([by_id.get(d) for d in doc_ids], pa.string())
    table = pa.table(columns)
    meta = {} if encoding is None else {ENCODING_KEY: json.dumps(encoding, sort_keys=True)}
    if "metadata" in columns:  # the fields filters may name, readable without the rows
        found = {key for value in columns["metadata"].to_pylist() if value for key in json.loads(value)}
        meta[FIELDS_KEY] = json.dumps(sorted(found))
    return table.replace_schema_metadata(meta) if meta else table


def metadata_fields(path: str | Path) -> list[str] | None:
    """The metadata fields an index version's documents have (from ``documents.parquet``'s schema), None when
    it records none or cannot be read."""
    try:
        file = Path(path) / DOCUMENTS
        if not file.is_file():
            return None
        found = (pq.read_schema(file).metadata or {}).get(FIELDS_KEY.encode())
        return json.loads(found) if found else None
    except (OSError, ValueError, pa.ArrowException):
        return None


def encoding_identity(encoder: Any) -> dict[str, Any]:
    """What decides a query encoder's document encodings: its bundle's files (sha256 of each), the model variant
    and the document length; two encoders with equal identities encode a document the same way."""
    files = encoder.manifest.files
    digest = hashlib.sha256("".join(f"{k}:{v.sha256};" for k, v in sorted(files.items())).encode()).hexdigest()
    return {"bundle_sha256": digest, "variant": getattr(encoder, "variant", None),
            "max_doc_length": getattr(encoder, "max_doc_length", None)}


def read_documents(manifest: Manifest) -> tuple[dict[str, bytes], dict[str, Any] | None] | None:
    """``(doc_id -> content hash, encoding identity or None)`` of an index version, or None for one published
    without ``documents.parquet``."""
    if DOCUMENTS not in manifest.files:
        return None
    table = pq.read_table(manifest.file(DOCUMENTS), columns=["doc_id", "sha256"])
    meta = (table.schema.metadata or {}).get(ENCODING_KEY.encode())
    return (dict(zip(table.column("doc_id").to_pylist(), table.column("sha256").to_pylist())),
            json.loads(meta) if meta else None)


def read_metadata(path: str | Path) -> DocumentMetadata | None:
    """The documents' ``metadata`` of the index version at ``path`` (for filters), or None when it stores none."""
    manifest = read_manifest(path)
    if DOCUMENTS not in manifest.files or "metadata" not in pq.read_schema(manifest.file(DOCUMENTS)).names:
        return None
    table = pq.read_table(manifest.file(DOCUMENTS), columns=["doc_id", "metadata"])
    return DocumentMetadata(table.column("doc_id").to_pylist(), table.column("metadata").to_pylist())


def read_texts(manifest: Manifest) -> dict[str, str]:
    """doc_id → the text an index version indexed (empty for one published without texts, or before they were
    stored)."""
    if DOCUMENTS not in manifest.files:
        return {}
    path = manifest.file(DOCUMENTS)
    if "text" not in pq.read_schema(path).names:
        return {}
    table = pq.read_table(path, columns=["doc_id", "text"])
    return dict(zip(table.column("doc_id").to_pylist(), table.column("text").to_pylist()))


def publish_index(index: Any, out: str | Path, name: str, *, texts: tuple[Sequence[str], Sequence[str]] | None = None,
                  encoder: Any | None = None, metrics: dict[str, Any] | None = None,
                  config: dict[str, Any] | None = None, fields: StoredFields | None = None) -> Path:
    """Save ``index`` (its kind's ``save``, which writes a whole bundle) and publish it at ``out`` atomically.

    The kind saves into a temporary sibling (:func:`retrec.bundle.publish`); with ``texts = (doc_ids, texts)``
    the version also records ``documents.parquet`` (each document's content hash and, given the ``encoder`` that
    encoded the documents, its :func:`encoding_identity`: what ``retrec reindex`` compares to re-encode only what
    changed) and is re-manifested with the kind's own fields (after verifying the kind's own manifest), ``metrics``
    added and ``config`` merged into the kind's; then the bundle is verified, fsynced and renamed into place. A
    failed or killed save publishes nothing. ``out`` must not exist or be an empty folder: an index version is
    written once.
    """
    out = Path(out).absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: exists and is not an empty folder; an index version is written once — "
                              "choose a new --out")
    with publish(out, replace=False) as pub:
        index.save(pub.path, name=name)
        if texts is None and metrics is None and config is None:
            pub.adopt()
        else:
            saved = load_bundle(pub.path)  # the kind's save, every checksum, before it is re-manifested
            if texts is not None:
                identity = encoding_identity(encoder) if encoder is not None else None
                pq.write_table(documents_table(*texts, encoding=identity, fields=fields), pub.path / DOCUMENTS)
            pub.set_manifest(kind=saved.kind, name=saved.name, version=saved.version,
                             config={**saved.config, **(config or {})},
                             dims=saved.dims, metrics={**saved.metrics, **(metrics or {})}, command=saved.command)
    return out
