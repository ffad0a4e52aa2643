"""Ray Serve application: search (every registered retriever kind, hybrid fusion) and recommendation over HTTP.

Modules: ``app`` (``build_app``: deployments chosen by bundle kind from :mod:`retrec.kinds`), ``registry``
(what serving reads from the registry), ``ingress`` (FastAPI routes), ``scatter`` (batched scatter/gather
over shards), ``payloads`` (per payload type batch packing), ``versions`` (index versions and swaps),
``shards`` / ``encoders`` / ``recommenders`` (one deployment class per role), ``placement`` (where a query
encoder runs), ``schemas`` (HTTP models), ``config`` (the ``args`` schema), ``middleware`` / ``errors`` /
``metrics``, ``admin`` (request paths under the models root, errors with request ids), ``launch``
(start/stop from a serve config). Imports index and inference runtimes only — never torch.

Example::

    retrec serve --config configs/serve.yaml        # or: serve run configs/serve.yaml
"""
