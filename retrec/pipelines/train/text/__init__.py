"""Text families trained on a BEIR collection: ``dense`` (TAS-B bi-encoder), ``sparse`` (SPLADE), ``multivector``
(ColBERT-style tokens), ``reranker`` (cross-encoder).

Shared, family-neutral: ``config.py`` (options of every text trainer), ``data.py`` (training set, dev split,
miners), ``contrastive.py`` (TAS-Balanced steps of the bi-encoders), ``teachers.py``, ``tas_sampling.py``,
``pseudo_queries.py``. One module per family holds its adapter (model, loss, export) and entry point.
"""
