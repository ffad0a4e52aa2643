"""Data layer: canonical Parquet tables and readers for BEIR, sequential and MovieLens formats."""

from retrec.data.errors import DataError, LoadReport
from retrec.data.schemas import CORPUS, INTERACTIONS, QRELS, QUERIES

__all__ = ["CORPUS", "INTERACTIONS", "QRELS", "QUERIES", "DataError", "LoadReport"]
