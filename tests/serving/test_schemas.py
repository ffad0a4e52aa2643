"""Request models: JSON types are strict (no bool for a number, no fraction or string for an integer, no 1 for a
bool); a whole JSON number (``5.0``) is the integer it spells, as the OpenAPI 3.1 document says."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from retrec.serving.schemas import RecommendRequest, SearchRequest, SwapRequest


@pytest.mark.parametrize("body", [
    {"query": "q", "k": True}, {"query": "q", "k": 5.5}, {"query": "q", "k": "5"}, {"query": "q", "k": 0.0},
    {"query": "q", "fusion": {"rrf_k": False}}, {"query": "q", "fusion": {"rrf_k": "60"}},
    {"query": "q", "fusion": {"depth": True}}, {"query": "q", "fusion": {"depth": 10.5}},
    {"query": "q", "fusion": {"weights": {"bm25": True}}}, {"query": 5}, {"query": "q", "retriever": 1},
])
def test_search_request_types_are_strict(body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        SearchRequest.model_validate(body)


@pytest.mark.parametrize("body", [
    {"history": ["1"], "k": True}, {"history": ["1"], "k": 3.5}, {"history": [1]}, {"history": ["1"], "k": "3"},
    {"history": ["1"], "exclude_seen": 1}, {"history": ["1"], "exclude_seen": "true"},
])
def test_recommend_request_types_are_strict(body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        RecommendRequest.model_validate(body)


def test_strict_models_still_take_what_json_means() -> None:
    req = SearchRequest.model_validate({"query": "q", "k": 5, "fusion": {"rrf_k": 60, "weights": {"bm25": 1}}})
    assert req.k == 5 and req.fusion.rrf_k == 60.0 and isinstance(req.fusion.rrf_k, float)
    whole = SearchRequest.model_validate({"query": "q", "k": 5.0, "fusion": {"depth": 20.0}})
    assert whole.k == 5 and type(whole.k) is int and whole.fusion.depth == 20
    assert req.fusion.weights == {"bm25": 1.0}
    assert RecommendRequest.model_validate({"history": ["1"], "exclude_seen": False}).exclude_seen is False
    with pytest.raises(ValidationError):
        SwapRequest.model_validate({"retriever": "bm25", "path": 7})
