"""The Python API: ``retrec.load(path)`` opens any bundle by its kind, for notebooks and scripts.

- an index version (``index/*``) → a :class:`retrec.notebook.Retriever`: ``search("one query", k)`` → hits,
  ``search([queries], k)`` → a list of hit lists; a hit is ``(doc_id, score)`` with ``rank`` and ``text`` (stored
  by the version, or from ``corpus=``); encoded kinds use the query encoder the index recorded, or ``model=``
  (refused when the index's vectors did not come from it);
- a recommender (``model/bert4rec``, a plugin's kind) → the
  :class:`~retrec.runtime.recommender.Recommender`: ``recommend(histories, k)``, ``score(histories)``;
- a query encoder (``model/dense``) → the encoder: ``encode_queries(texts)``; so does a sentence-transformers / Hugging
  Face folder of a BERT encoder, or a Hub id (exported to ONNX once and cached: :mod:`retrec.models.hf_encoders`).

Tables (embedding-table snapshots and deltas) are training/serving state, not something to query: they are
refused with the reason, as are kinds the registry does not know (a plugin not imported: ``$RETREC_PLUGINS``).

Example::

    import retrec
    bm25 = retrec.load("artifacts/scifact-bm25")                  # built by `retrec index bm25`
    bm25.search(["what causes scurvy"], k=10)                     # [[(doc_id, score), ...]]
    dense = retrec.load("artifacts/scifact-dense", model="artifacts/tasb-scifact")
    rec = retrec.load("artifacts/bert4rec-beauty")
    rec.recommend([["B0001", "B0002"]], k=10)                     # [[(item_id, score), ...]]
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from retrec import kinds
from retrec.bundle import BundleError, read_manifest
from retrec.contracts import call_hook


def load(path: str | os.PathLike[str], **options: Any) -> Any:
    """The object a bundle's kind stands for (retriever, recommender or query encoder); see the module doc.

    ``options`` go to the kind's loader; an index also takes ``model=`` (query-encoder bundle), ``verify=`` and
    ``use_gpu=``, and passes the rest to its query encoder (e.g. ``threads=1``). An option the loader does not take
    is refused with the list of those it takes (:class:`~retrec.contracts.UnknownOptionError`), never dropped.
    """
    from retrec.bundle import MANIFEST

    if not (Path(path).expanduser() / MANIFEST).is_file() and _hf_model(path):
        from retrec.models.hf_encoders import as_encoder_bundle

        path = as_encoder_bundle(path)  # a sentence-transformers/HF folder or Hub id: its encoder bundle
    if options.get("model") is not None and _hf_model(options["model"]):
        from retrec.models.hf_encoders import as_encoder_bundle

        options["model"] = as_encoder_bundle(options["model"])
    manifest = read_manifest(path)
    try:
        kind = kinds.get(manifest.kind)
    except kinds.UnknownKindError as exc:
        raise BundleError(f"{path}: {exc} (a plugin's kind? name its module in ${kinds.PLUGINS_ENV})") from exc
    if kind.role == "index":
        from retrec.index.generic import open_index
        from retrec.notebook import Retriever

        corpus = options.pop("corpus", None)
        return Retriever(open_index(path, **options), corpus=corpus)
    if kind.role in ("recommender", "query_encoder") and kind.load is not None:
        if "model" in options:
            raise TypeError(f"model= is for index bundles; {path} is a {kind.kind} bundle")
        return call_hook(kind.kind, kinds.resolve(kind.load), path, options=options)
    raise BundleError(f"{path}: a {kind.kind} bundle ({kind.role}) has nothing to load for search or "
                      "recommendation; retrec.load opens index versions, recommenders and query encoders")


def _hf_model(ref: Any) -> bool:
    """Whether ``ref`` names a sentence-transformers/HF folder (``config.json``, no manifest) or a Hub id that is
    not a local path."""
    from retrec.bundle import MANIFEST
    from retrec.models.hub import is_hub_id

    path = Path(ref).expanduser()
    if path.exists():
        return path.is_dir() and (path / "config.json").is_file() and not (path / MANIFEST).is_file()
    return is_hub_id(str(ref))
