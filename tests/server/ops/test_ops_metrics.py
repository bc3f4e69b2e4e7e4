"""Every metric docs/operations.md lists exists and follows Prometheus conventions, and the Grafana
dashboard only queries metrics that exist."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from server.metrics import Metrics

ROOT = Path(__file__).resolve().parents[3]


def _exposed() -> dict[str, str]:
    from prometheus_client import generate_latest

    m = Metrics()
    m.tool_calls.labels("tiny", "none", "t", "auto", "valid").inc()  # children, so samples show
    text = generate_latest(m.registry).decode()
    return {f.name: f.type for f in text_string_to_metric_families(text)}


def test_documented_metrics_exist_with_conventional_names() -> None:
    section = (ROOT / "docs" / "operations.md").read_text().split("## Metrics", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"`(callgate_[a-z_]+)", section))
    families = _exposed()
    for name in listed:
        family = name.removesuffix("_total")
        assert family in families, f"docs/operations.md lists {name}, which is not exported"
        kind = families[family]
        assert (kind == "counter") == name.endswith("_total"), f"{name}: counters, and only counters, end in _total"
        if "latency" in name or "duration" in name or "wait" in name or "time" in name:
            assert name.endswith("_seconds"), f"{name}: durations are in seconds"


def test_dashboard_queries_only_exported_metrics() -> None:
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "callgate.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    names = {n for e in exprs for n in re.findall(r"\b(callgate_[a-z_]+)", e)}
    exported = _exposed()
    for name in names:
        base = re.sub(r"_(bucket|count|sum|total)$", "", name)
        assert base in exported, f"the dashboard queries {name}, which is not exported"
    assert len(dashboard["panels"]) >= 10
