"""The contracts of the kinds' hooks, in code: what each hook's product is, and how a hook takes options.

:mod:`retrec.kinds` names each kind's hooks as ``"module:attr"`` strings; this module says what they give back, as
:class:`typing.Protocol` classes (structural: a plugin's classes satisfy them without importing this module), and
holds the types every layer shares (layer 0: it imports nothing of retrec but, for type checkers, the manifest).

Products, by role (:data:`PRODUCTS`):

- ``index`` → :class:`Index`: ``search(payloads, k) -> list[Hits]``, ``save(directory, name=...) -> Manifest``,
  ``doc_ids`` and ``len()``; one that can give its documents' encodings back exactly is also
  :class:`StoredEncodings` (incremental reindexing reuses them);
- ``query_encoder`` → :class:`QueryEncoder` (``encode_queries(texts) -> payloads``), and :class:`DocumentEncoder`
  for the encoders that index kinds build with (``encode_documents``);
- ``recommender`` → :class:`Recommender`; ``reranker`` → :class:`Reranker`; ``table`` → :class:`Table`;
- a :class:`Retriever` (query texts → hits) is what evaluation and serving search: an index with its encoder;
- a model kind's ``train`` hook is a :class:`Trainer` (:func:`is_trainer` checks its signature).

Payloads by :data:`retrec.kinds.PAYLOADS`: ``text`` a list of strings, ``dense`` ``float32 [n, dim]``, ``sparse``
one :data:`SparseVector` per text, ``tokens`` one ``float32 [tokens, dim]`` matrix per text.

Options: a hook's signature says what it takes. One name per option across kinds (``threads``, never
``num_threads``: :data:`RENAMED_OPTIONS` still reads the old name, with a DeprecationWarning). A loader refuses an
option it does not take (:func:`strict_options`, :class:`UnknownOptionError` listing the ones it takes);
:func:`call_hook` passes a caller's general options (``shard``, ``use_gpu``, ``verify``) only where a hook takes
them, and a user's explicit ones always, so that an option no hook takes is refused, never dropped.

Example::

    from retrec import contracts, kinds
    index = contracts.call_hook("index/bm25", kinds.resolve(kinds.get("index/bm25").load), "artifacts/bm25",
                                context={"shard": 0, "use_gpu": False})
    isinstance(index, contracts.Index)                              # True
    index.save("artifacts/bm25-copy").kind                          # "index/bm25" (a Manifest)
    contracts.call_hook("index/bm25", kinds.resolve(kinds.get("index/bm25").load), "artifacts/bm25",
                        options={"foo": 1})   # UnknownOptionError: index/bm25 takes no option 'foo'; it takes: ...
"""

from __future__ import annotations

import functools
import inspect
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from retrec.bundle import Manifest

Hits = list[tuple[str, float]]  # one query's (doc_id, score), best first
ItemList = list[tuple[str, float]]  # one history's (item_id, score), best first
SparseVector = tuple[np.ndarray, np.ndarray]  # (int64 term ids [t], float32 weights [t])
RENAMED_OPTIONS: dict[str, str] = {"num_threads": "threads"}  # old option name -> its one name across kinds

P = ParamSpec("P")
R = TypeVar("R")


@dataclass
class SkipReport:
    """History items a model does not know: counted, with a few examples."""

    unknown_items: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, item: str) -> None:
        self.unknown_items += 1
        if len(self.examples) < 5:
            self.examples.append(item)


@runtime_checkable
class Retriever(Protocol):
    """Query texts → ranked hits; rankings are deterministic (score descending, ties by doc_id descending)."""

    name: str

    def search(self, queries: Sequence[str], k: int) -> list[Hits]:
        """Top-``k`` hits for each query, best first."""
        ...


@runtime_checkable
class Index(Protocol):
    """What an index kind's ``load``, ``build`` and ``assemble`` hooks give: payloads of the kind → hits."""

    @property
    def doc_ids(self) -> Sequence[str]:
        """Every document id held (shard by shard)."""
        ...

    def __len__(self) -> int: ...

    def search(self, queries: Any, k: int) -> list[Hits]:
        """Top-``k`` hits for each query payload (see the module doc), best first."""
        ...

    def save(self, directory: str | os.PathLike[str], name: str = ..., metrics: dict[str, Any] | None = None
             ) -> Manifest:
        """Publish the index version as a bundle at ``directory``; its verified manifest."""
        ...


@runtime_checkable
class StoredEncodings(Protocol):
    """An index that may give its documents' encodings back exactly (None when it stores them lossily)."""

    def encoded_documents(self) -> tuple[list[str], Any] | None: ...


@runtime_checkable
class QueryEncoder(Protocol):
    """What a query-encoder kind's ``load`` gives: query texts → the payloads its index kinds search with."""

    manifest: Manifest
    dim: int
    similarity: str

    def encode_queries(self, texts: Sequence[str]) -> Any: ...


@runtime_checkable
class DocumentEncoder(QueryEncoder, Protocol):
    """A query encoder that also encodes documents (what ``build`` and ``retrec reindex`` index)."""

    def encode_documents(self, texts: Sequence[str], batch_size: int | None = None, progress: bool = False) -> Any:
        ...


@runtime_checkable
class Recommender(Protocol):
    """What a recommender kind's ``load`` gives: raw-id histories → catalogue scores and top-k lists."""

    name: str

    @property
    def item_ids(self) -> Sequence[str]: ...

    def score(self, histories: Sequence[Sequence[str]], report: SkipReport | None = None) -> np.ndarray: ...

    def recommend(self, histories: Sequence[Sequence[str]], k: int = 10, exclude_seen: bool = True,
                  report: SkipReport | None = None) -> list[ItemList]: ...


@runtime_checkable
class Reranker(Protocol):
    """What a re-ranker kind's ``load`` gives: (query, document) scores and a first stage's hits re-ordered."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    first_stage_weight: float

    def score(self, query: str, documents: Sequence[str]) -> np.ndarray: ...

    def rerank(self, query: str, ids: Sequence[str], text: Callable[[str], str], depth: int | None = None,
               first_scores: Sequence[float] | None = None,
               first_stage_weight: float | None = None) -> tuple[list[str], np.ndarray]: ...

    def dev_warning(self) -> str | None: ...


@runtime_checkable
class Table(Protocol):
    """What a table kind's ``load`` gives: raw ids (int64, or strings by fingerprint) → embedding rows."""

    dim: int
    default_vector: np.ndarray

    def __len__(self) -> int: ...

    def lookup(self, keys: Any) -> np.ndarray: ...

    def embed(self, keys: Any) -> np.ndarray: ...

    def raw_ids(self, keys: Any) -> list[str | None]: ...


class Trainer(Protocol):
    """A kind's ``train`` hook: writes a bundle of the kind at ``out`` from ``data`` and returns its folder.

    ``cfg`` is an instance of the kind's ``train_config`` dataclass (its fields are ``retrec train NAME``'s options,
    ``device`` and ``precision`` among them); a trainer may also take ``kind`` (one function for several kinds).
    """

    def __call__(self, data: str | os.PathLike[str], out: str | os.PathLike[str], cfg: Any, *, resume: bool = ...,
                 command: str | None = ...) -> os.PathLike[str]: ...


def is_trainer(fn: Callable[..., Any]) -> bool:
    """Whether ``fn``'s signature fits :class:`Trainer`: three positional parameters (data, out, cfg), then
    ``resume`` and ``command`` by keyword (``kind`` optional)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    positional = [p for p in params.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    keywords = {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return len(positional) >= 3 and {"resume", "command"} <= keywords


PRODUCTS: dict[str, type] = {"index": Index, "query_encoder": QueryEncoder, "recommender": Recommender,
                             "reranker": Reranker, "table": Table}


class UnknownOptionError(TypeError, ValueError):
    """An option a hook does not take (a TypeError as Python's own, a ValueError as a bad setting)."""


def option_names(fn: Callable[..., Any], *args: Any) -> tuple[str, ...] | None:
    """The options ``fn`` takes by keyword once ``args`` are bound; None when it takes any (``**kwargs``).

    Example::

        option_names(lambda path, *, shard=None: None, "p")     # ("shard",)
    """
    return _options(inspect.signature(fn), args)


def _options(sig: inspect.Signature, args: tuple[Any, ...]) -> tuple[str, ...] | None:
    params = sig.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    bound = sig.bind_partial(*args).arguments
    return tuple(p.name for p in params if p.name not in bound and p.kind in
                 (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY))


def check_options(what: str, given: Iterable[str], accepted: Iterable[str] | None) -> None:
    """Refuse options not in ``accepted`` (None: any) with an :class:`UnknownOptionError` that lists the taken ones.

    Example::

        check_options("index/bm25", ["foo"], ["shard", "verify"])
        # UnknownOptionError: index/bm25 takes no option 'foo'; it takes: shard, verify
    """
    if accepted is None:
        return
    taken = list(accepted)
    unknown = [name for name in given if name not in taken]
    if unknown:
        names = ", ".join(repr(n) for n in unknown)
        raise UnknownOptionError(f"{what} takes no option{'s' if len(unknown) > 1 else ''} {names}; "
                                 f"it takes: {', '.join(taken) or 'none'}")


def renamed_options(what: str, options: Mapping[str, Any], accepted: Iterable[str] | None) -> dict[str, Any]:
    """``options`` with old names (:data:`RENAMED_OPTIONS`) under their new ones where the hook takes the new one
    and not the old (a DeprecationWarning each); both names at once are refused.

    Example::

        renamed_options("model/dense", {"num_threads": 2}, ["variant", "threads"])    # {"threads": 2}
    """
    out = dict(options)
    taken = None if accepted is None else set(accepted)
    for old, new in RENAMED_OPTIONS.items():
        if old not in out or taken is None or old in taken or new not in taken:
            continue
        if new in out:
            raise UnknownOptionError(f"{what}: give {new!r} alone ({old!r} is its old name)")
        warnings.warn(f"{what}: option {old!r} is now {new!r}", DeprecationWarning, stacklevel=3)
        out[new] = out.pop(old)
    return out


def strict_options(what: str | None = None) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a loader (function, ``__init__`` or the function under ``@classmethod``) so that an option it does
    not take is refused with the list of those it takes (``what`` names it; default: its qualified name). Its
    signature stays visible (``inspect.signature``), so :func:`retrec.kinds.call_supported` still sees it.

    Example::

        @strict_options("index/bm25")
        def load_index(path, *, shard=None, verify=True): ...
        load_index("p", foo=1)   # UnknownOptionError: index/bm25 takes no option 'foo'; it takes: shard, verify
    """
    def wrap(fn: Callable[P, R]) -> Callable[P, R]:
        label = what or fn.__qualname__
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def checked(*args: P.args, **options: P.kwargs) -> R:
            accepted = _options(sig, args)
            options = renamed_options(label, options, accepted)  # type: ignore[assignment]
            check_options(label, options, accepted)
            return fn(*args, **options)

        return checked

    return wrap


def call_hook(what: str, fn: Callable[..., Any], *args: Any, options: Mapping[str, Any] | None = None,
              context: Mapping[str, Any] | None = None) -> Any:
    """``fn(*args, ...)`` with a user's explicit ``options`` (refused when ``fn`` does not take one, the taken ones
    listed; old names renamed) and a caller's general ``context`` options (passed only where ``fn`` takes them;
    an explicit option of the same name wins).

    Example::

        call_hook("model/dense", OnnxEncoder, "artifacts/enc", options={"threads": 1}, context={"use_gpu": False})
    """
    accepted = option_names(fn, *args)
    given = renamed_options(what, options or {}, accepted)
    check_options(what, given, accepted)
    passed = {k: v for k, v in (context or {}).items() if k not in given and (accepted is None or k in accepted)}
    return fn(*args, **passed, **given)

