"""Inference-only runtime: ONNX Runtime encoders and recommenders loaded from verified bundles, the tokenizer
loader, vector normalisation (no torch imported).

Example::

    from retrec.runtime.onnx_encoder import OnnxEncoder
    encoder = OnnxEncoder("artifacts/minilm-onnx")
    vectors = encoder.encode_queries(["what causes scurvy"])      # float32 (1, 384)
"""
