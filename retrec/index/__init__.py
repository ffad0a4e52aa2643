"""Indices: BM25 and sparse inverted lists, FAISS shards, embedding tables."""
