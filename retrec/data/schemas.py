"""Canonical Parquet schemas. IDs are strings everywhere; timestamps are int64 (seconds or order).

| table        | columns                                         |
|--------------|-------------------------------------------------|
| corpus       | doc_id: string, title: string, text: string     |
| queries      | query_id: string, text: string                  |
| qrels        | query_id: string, doc_id: string, relevance: int32 |
| interactions | user_id: string, item_id: string, timestamp: int64 |

A dataset folder in canonical form holds ``corpus.parquet``, ``queries.parquet``,
``qrels/{split}.parquet`` and/or ``interactions.parquet``.
"""

from __future__ import annotations

import pyarrow as pa

CORPUS = pa.schema([("doc_id", pa.string()), ("title", pa.string()), ("text", pa.string())])
QUERIES = pa.schema([("query_id", pa.string()), ("text", pa.string())])
QRELS = pa.schema([("query_id", pa.string()), ("doc_id", pa.string()), ("relevance", pa.int32())])
INTERACTIONS = pa.schema([("user_id", pa.string()), ("item_id", pa.string()), ("timestamp", pa.int64())])
