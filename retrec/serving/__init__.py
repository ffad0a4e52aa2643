"""Ray Serve application: search (BM25, dense, hybrid) and sequential recommendation over HTTP.

Modules: ``app`` (``build_app`` + the bundle-kind registries), ``ingress`` (FastAPI routes, scatter/gather,
index swaps), ``shards`` / ``encoders`` / ``recommenders`` (one deployment class per role), ``fusion``,
``schemas`` (HTTP models), ``config`` (the ``args`` schema), ``middleware`` / ``errors`` / ``metrics``,
``launch`` (start/stop from a serve config). Imports index and inference runtimes only — never torch.

Example::

    retrec serve --config configs/serve.yaml        # or: serve run configs/serve.yaml
"""
