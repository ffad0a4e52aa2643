"""Batch reindexing (``retrec reindex``): ``job`` (the run: plan, encode, assemble, publish, locally or on Ray),
``parts`` (the resumable, parallel encoding of the documents in parts), ``checks`` (what follows publication:
verify the version, gate it on judged queries, move ``current``, ask a running server to swap).
"""
