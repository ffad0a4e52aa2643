"""How a batch of query payloads travels to an index shard, per payload type (``Kind.payload``).

The batched scatter collects one payload per request (the query text, or what the retriever's query
encoder produced) and packs them into the one argument of ``search_many(payloads, k, ref)``:

- ``text``: ``list[str]``;
- ``dense``: ``float32 [n, dim]`` (``np.stack``);
- ``sparse``: ``list[(int64 ids [t], float32 weights [t])]`` — term ids and their weights;
- ``tokens``: ``list[float32 [t_i, dim]]`` — one matrix per query, ``t_i`` may differ between queries.

Example::

    pack("dense", [np.ones(4), np.zeros(4)]).shape                    # (2, 4)
    [m.shape for m in pack("tokens", [np.ones((3, 8)), np.ones((5, 8))])]   # [(3, 8), (5, 8)]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

Packer = Callable[[Sequence[Any]], Any]


def _text(rows: Sequence[Any]) -> list[str]:
    return [str(r) for r in rows]


def _dense(rows: Sequence[Any]) -> np.ndarray:
    return np.stack(rows).astype(np.float32, copy=False)


def _sparse(rows: Sequence[Any]) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for ids, weights in rows:
        ids, weights = np.asarray(ids, np.int64), np.asarray(weights, np.float32)
        if ids.shape != weights.shape or ids.ndim != 1:
            raise ValueError(f"sparse payload: {ids.shape} term ids for {weights.shape} weights")
        out.append((ids, weights))
    return out


def _tokens(rows: Sequence[Any]) -> list[np.ndarray]:
    out = [np.asarray(r, np.float32) for r in rows]
    if any(m.ndim != 2 for m in out) or len({m.shape[1] for m in out}) > 1:
        raise ValueError(f"tokens payload: expected [t, dim] matrices of one dim, got {[m.shape for m in out]}")
    return out


PACKERS: dict[str, Packer] = {"text": _text, "dense": _dense, "sparse": _sparse, "tokens": _tokens}


def packer(payload: str) -> Packer:
    """The pack function of a payload type (resolved once, when the ingress starts)."""
    if payload not in PACKERS:
        raise ValueError(f"payload {payload!r} has no pack function; known: {', '.join(PACKERS)}")
    return PACKERS[payload]


def pack(payload: str, rows: Sequence[Any]) -> Any:
    """One ``search_many`` argument from ``rows`` (one payload per query, in order)."""
    return packer(payload)(rows)
