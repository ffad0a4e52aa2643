"""Pipelines: the offline jobs that turn data into artifacts, by domain.

- ``train/``: model training, one shared loop (``loop.py``, ``options.py``, ``lr_schedule.py``) and two domains:
  ``text/`` (dense, sparse, multivector, reranker over a BEIR collection) and ``seq/`` (bert4rec, sasrec, onerec,
  onerec_dpo, counts, fusion over interactions). Each family is one module beside its config.
- ``eval/``: offline evaluation (IR and next-item metrics, retrieval, recommendation, hybrid, re-ranking runs).
- ``reindex/``: batch reindexing of a corpus into a new index version, locally or on Ray.

The demo that drives them all end to end is a command (``retrec/cli/demo.py``).
"""
