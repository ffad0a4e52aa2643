"""A sequence recommender bundle's torch side: the weights and the item order that training continues from.

``model/bert4rec`` and ``model/sasrec`` bundles serve through ONNX (``user_encoder.onnx``) and the item table
(``items/``); they also carry ``weights.safetensors`` (the model's ``state_dict``) and ``item_rows.parquet`` (the
raw item id of each model row), so an online trainer rebuilds the very model that was exported.

Example::

    save_weights(model, item_keys, pub.path)                 # at export
    model, item_keys = load_sequence_model("artifacts/sasrec-beauty")
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from safetensors.torch import load_file, save_file

from retrec.bundle import BundleError, Manifest, load_bundle
from retrec.kinds import BERT4REC_MODEL, SASREC_MODEL
from retrec.models.bert4rec import BERT4Rec, BERT4RecConfig
from retrec.models.sasrec import SASRec

__all__ = ["ITEM_ROWS", "WEIGHTS", "load_sequence_model", "save_weights"]

WEIGHTS = "weights.safetensors"
ITEM_ROWS = "item_rows.parquet"


def save_weights(model: BERT4Rec, item_keys: Sequence[str], folder: str | Path) -> None:
    """Write ``model``'s weights and the raw id of each of its item rows into a bundle being published."""
    if len(item_keys) != model.cfg.num_items:
        raise ValueError(f"{len(item_keys)} item keys for a model of {model.cfg.num_items} items")
    folder = Path(folder)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(folder / WEIGHTS))
    pq.write_table(pa.table({"item_id": pa.array([str(k) for k in item_keys], pa.string())}), folder / ITEM_ROWS)


def load_sequence_model(bundle: str | Path | Manifest) -> tuple[BERT4Rec, list[str]]:
    """The torch model of a verified sequence bundle (eval mode, CPU) and the raw item id of each of its rows."""
    manifest = bundle if isinstance(bundle, Manifest) else load_bundle(bundle)
    if manifest.kind not in (BERT4REC_MODEL, SASREC_MODEL):
        raise BundleError(f"{manifest.path}: a {manifest.kind!r} bundle, not {BERT4REC_MODEL} or {SASREC_MODEL}")
    if WEIGHTS not in manifest.files or ITEM_ROWS not in manifest.files:
        raise BundleError(f"{manifest.path}: no {WEIGHTS} / {ITEM_ROWS} (exported before bundles carried their "
                          "weights): retrain it to continue training from it")
    try:
        cfg = BERT4RecConfig(**manifest.config["model"])
    except (KeyError, TypeError) as exc:
        raise BundleError(f"{manifest.path}: config.model is not a model configuration ({exc})") from None
    model = (SASRec if manifest.kind == SASREC_MODEL else BERT4Rec)(cfg)
    try:
        model.load_state_dict(load_file(str(manifest.file(WEIGHTS))))
    except RuntimeError as exc:
        raise BundleError(f"{manifest.path}: {WEIGHTS} does not fit config.model ({str(exc)[:200]})") from None
    keys = pq.read_table(manifest.file(ITEM_ROWS)).column("item_id").to_pylist()
    if len(keys) != cfg.num_items:
        raise BundleError(f"{manifest.path}: {len(keys)} item rows for {cfg.num_items} items")
    return model.eval(), keys
