"""Any sentence-transformers / Hugging Face BERT encoder as a ``model/dense`` bundle: exported to ONNX once and
cached, so ``retrec eval --retriever dense --model ID_OR_FOLDER``, ``retrec index dense --model …`` and
``retrec.load(…)`` take a Hub id or a local folder where they take a bundle.

Pooling and normalisation come from the folder's sentence-transformers modules (``modules.json``: the Pooling
module's mode; a ``Normalize`` module, or ``similarity_fn_name: cosine``, means L2-normalised vectors and cosine
similarity, else dot product); a plain HF folder gets mean pooling and cosine. The bundle records the model's
name and revision (the Hub snapshot's commit, else the weights' sha256) and lives under
``$RETREC_CACHE/encoders/NAME-VERSION``, the version derived from both and the export format: a new revision is
a new bundle, the same one is reused.

Example::

    bundle = as_encoder_bundle("sentence-transformers/all-MiniLM-L6-v2")   # HF_HUB_OFFLINE=0 the first time
    retrec.load(bundle).encode_queries(["what causes scurvy"])
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import asdict
from pathlib import Path

from retrec.bundle import MANIFEST, BundleError, load_bundle, publish
from retrec.models.hub import model_folder

log = logging.getLogger("retrec.models")
MAX_DOC_TOKENS = 512


def _st_settings(root: Path) -> tuple[bool, int | None]:
    """(normalised, max_seq_length) of a sentence-transformers folder; (True, None) for a plain HF folder."""
    def read(name: str) -> dict:
        path = root / name
        try:
            value = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: unreadable ({exc})") from exc
        return value if isinstance(value, dict | list) else {}

    modules = read("modules.json")
    if not modules:
        return True, None
    normalize = any(str(m.get("type", "")).endswith("Normalize") for m in modules if isinstance(m, dict))
    similarity = read("config_sentence_transformers.json").get("similarity_fn_name")
    length = read("sentence_bert_config.json").get("max_seq_length")  # sentence-transformers < 6
    if length is None:  # 6: the tokenizer's model_max_length
        length = read("tokenizer_config.json").get("model_max_length")
    return normalize or similarity == "cosine", length if isinstance(length, int) and length >= 2 else None


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "--", name).strip("-.")[:80] or "model"


def encoder_bundle(ref: str | Path, cache: str | Path | None = None, quantize: bool = True) -> Path:
    """The ``model/dense`` bundle of a local sentence-transformers/HF folder or Hub id (exported on first use)."""
    folder = model_folder(ref)  # before torch: a wrong name is said as such, whatever is installed
    from retrec.models.text_encoder import (
        EXPORT_FORMAT,
        KIND,
        QUANTIZATION,
        EncoderConfig,
        TextEncoder,
        resolve_base_model,
        write_onnx_files,
    )
    from retrec.process_env import cache_dir
    from retrec.runtime.tokenizer import load_tokenizer

    base = resolve_base_model(folder)
    normalize, length = _st_settings(base.folder)
    config = EncoderConfig(pooling=base.pooling, normalize=normalize, similarity="cosine" if normalize else "dot",
                           max_doc_length=min(length or 256, MAX_DOC_TOKENS), base_model=base.name)
    digest = hashlib.sha256(json.dumps({"revision": base.revision, **asdict(config), "format": EXPORT_FORMAT,
                                        "quantize": quantize and QUANTIZATION}, sort_keys=True).encode())
    version = "hf-" + digest.hexdigest()[:16]
    target = (Path(cache) if cache is not None else cache_dir()) / "encoders" / f"{_safe(base.name)}-{version}"
    if (target / MANIFEST).is_file():
        try:
            load_bundle(target, kind=KIND)
            return target
        except BundleError as exc:
            log.warning("re-exporting %s at %s: %s", base.name, target, exc)
    log.warning("exporting %s (revision %s) to ONNX once: %s", base.name, base.revision[:20], target)
    encoder = TextEncoder.from_pretrained(base.folder, pooling=config.pooling, normalize=config.normalize)
    target.parent.mkdir(parents=True, exist_ok=True)
    with publish(target) as pub:
        config_json, dims = write_onnx_files(encoder, pub.path, tokenizer=load_tokenizer(base.folder), config=config,
                                             quantize=quantize)
        pub.set_manifest(kind=KIND, name=_safe(base.name), version=version, dims=dims,
                         config={**config_json, "base_model_revision": base.revision},
                         command=f"retrec export of {base.name} (automatic)")
    return target


def as_encoder_bundle(ref: str | Path) -> Path:
    """What a ``--model`` / ``retrec.load`` argument names: a retrec bundle as is; a sentence-transformers / HF
    folder (one with ``config.json``) or a Hub id as its exported ``model/dense`` bundle; anything else as given
    (the reader then says why it is not a bundle)."""
    path = Path(ref).expanduser()
    if (path / MANIFEST).is_file() or (path.is_dir() and not (path / "config.json").is_file()):
        return path
    return encoder_bundle(ref)
