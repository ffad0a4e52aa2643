"""Offline evaluation: ``ir_metrics`` (IR and next-item metrics), ``retrieval`` (runs a retriever over a split),
``rec`` (next-item evaluation), ``hybrid`` (fused retrievers), ``rerank`` (re-ranked runs), ``compare`` (paired
tests), and the builders of what is evaluated: ``retrievers`` (from the registry of kinds) and ``recommenders``.
"""
