"""Pipelines: training, export, reindexing and evaluation jobs."""
