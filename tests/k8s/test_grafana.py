"""k8s/grafana/retrec-serving.json: a valid Grafana dashboard (the parts of Grafana's dashboard JSON model a
dashboard import reads) whose every query names a metric the app exports, with the suffix its type gets and labels
it carries (Ray's metrics agent adds ``application``, ``deployment``, ``replica``; histograms add ``le``)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema

from retrec.serving.prometheus import METRICS, OnlineMetrics

DASHBOARD = Path(__file__).resolve().parents[2] / "k8s" / "grafana" / "retrec-serving.json"
RAY_TAGS = {"application", "deployment", "replica", "SessionName", "Version", "instance", "job"}
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
_DATASOURCE = {"type": "object", "required": ["type", "uid"], "properties": {"type": {"const": "prometheus"}}}
# Grafana's dashboard JSON model (grafana.com/docs: "JSON model"), the fields an import reads
SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["uid", "title", "panels", "schemaVersion", "time", "templating"],
    "properties": {
        "uid": {"type": "string", "pattern": "^[a-zA-Z0-9_-]{1,40}$"},
        "title": {"type": "string", "minLength": 1},
        "schemaVersion": {"type": "integer", "minimum": 30},
        "time": {"type": "object", "required": ["from", "to"]},
        "refresh": {"type": "string"},
        "templating": {"type": "object", "required": ["list"], "properties": {"list": {"type": "array", "items": {
            "type": "object", "required": ["name", "type"],
            "properties": {"type": {"enum": ["query", "datasource", "custom", "constant", "interval", "textbox"]}}}}}},
        "panels": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["id", "type", "title", "gridPos", "targets", "datasource"],
            "properties": {
                "id": {"type": "integer", "minimum": 1},
                "type": {"enum": ["timeseries", "table", "stat", "gauge", "bargauge", "heatmap", "text"]},
                "datasource": _DATASOURCE,
                "gridPos": {"type": "object", "required": ["x", "y", "w", "h"], "properties": {
                    "x": {"type": "integer", "minimum": 0, "maximum": 23}, "y": {"type": "integer", "minimum": 0},
                    "w": {"type": "integer", "minimum": 1, "maximum": 24}, "h": {"type": "integer", "minimum": 1}}},
                "targets": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["refId", "expr"],
                    "properties": {"refId": {"type": "string", "pattern": "^[A-Z]$"},
                                   "expr": {"type": "string", "minLength": 1}, "datasource": _DATASOURCE}}}}}},
    },
}


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _exported() -> dict[str, Any]:
    online = OnlineMetrics()
    return {m.name: m for m in [*METRICS._metrics(), online.seq, online.staleness]}


def test_the_dashboard_is_a_valid_grafana_dashboard() -> None:
    dash = _dashboard()
    jsonschema.validate(dash, SCHEMA)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dash["panels"]:
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
    cells = [(p["gridPos"]["x"] + dx, p["gridPos"]["y"] + dy) for p in dash["panels"]
             for dx in range(p["gridPos"]["w"]) for dy in range(p["gridPos"]["h"])]
    assert len(cells) == len(set(cells)), "panels overlap"
    variables = {v["name"] for v in dash["templating"]["list"]}
    for panel in dash["panels"]:
        for target in panel["targets"]:
            for used in re.findall(r"\$(?!__)(\w+)", target["expr"]):
                assert used in variables, (panel["title"], used)


def test_every_query_names_an_exported_metric_with_its_labels() -> None:
    exported, seen = _exported(), set()
    for panel in _dashboard()["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
            names = re.findall(r"\bray_(retrec_\w+)", expr)
            assert names, f"{panel['title']}: no retrec metric in {expr}"
            for full in names:
                base = next((n for n in exported if any(full == n + s for s in SUFFIXES[exported[n].kind])), None)
                assert base is not None, f"{panel['title']}: {full} is not exported (or has the wrong suffix)"
                seen.add(base)
                buckets = ["le"] if exported[base].kind == "histogram" else []
                labels = {*exported[base].labelnames, *RAY_TAGS, *buckets}
                for group in re.findall(r"by \(([^)]*)\)", expr):
                    for label in (x.strip() for x in group.split(",")):
                        assert label in labels, (panel["title"], base, label)
                for label in re.findall(r"(\w+)=~?\"", expr):
                    assert label in labels, (panel["title"], base, label)
    # the operator's questions: traffic, latency, errors, batching, partial results, versions, staleness
    assert {"retrec_requests", "retrec_request_latency_seconds", "retrec_encoder_batch_size",
            "retrec_shard_batch_size", "retrec_partial_responses", "retrec_index_version_info",
            "retrec_online_staleness_seconds"} <= seen
