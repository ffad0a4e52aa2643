"""Inference-only runtime: ONNX Runtime encoders loaded from verified bundles (no torch imported).

Example::

    from retrec.runtime.onnx_encoder import OnnxEncoder
    encoder = OnnxEncoder("artifacts/minilm-onnx")
    vectors = encoder.encode_queries(["what causes scurvy"])      # float32 (1, 384)
    cache_dir()                                                   # ~/.cache/retrec unless RETREC_CACHE is set
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """retrec's cache root: ``$RETREC_CACHE``, else ``~/.cache/retrec`` (exported models, corpus encodings)."""
    value = os.environ.get("RETREC_CACHE")
    return Path(value).expanduser() if value else Path.home() / ".cache" / "retrec"
