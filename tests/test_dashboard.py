"""The Grafana dashboard in ``deploy/grafana/brulee.json`` against a real agent's ``/metrics``:
it parses, its panels are laid out on Grafana's 24-column grid, and every query names only
metrics (and labels) that the running agent exports — so a renamed metric fails here, not on
someone's wall screen."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.agent_fixtures import REPO, running_agent

DASHBOARD = REPO / "deploy" / "grafana" / "brulee.json"
METRIC = re.compile(r"\bbrulee_[a-z0-9_]+\b")
SELECTOR = re.compile(r"\b(brulee_[a-z0-9_]+)\{([^}]*)\}")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|ignoring|on|without)\s*\(([^)]*)\)")
LEGEND = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
pytestmark = pytest.mark.timeout(120)


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def queries(doc: dict) -> list[tuple[str, str]]:
    """Every PromQL expression of the dashboard with its legend (templating queries too)."""
    found = [
        (t["expr"], t.get("legendFormat", "")) for p in doc["panels"] for t in p.get("targets", [])
    ]
    for var in doc["templating"]["list"]:
        if var["type"] == "query":
            found.append((var["query"]["query"], ""))
            assert var["definition"] == var["query"]["query"]
    return found


def exported(url: str) -> dict[str, set[str]]:
    """The series names a real agent's ``/metrics`` exports, each with the labels it carries."""
    text = requests.get(f"{url}/metrics", timeout=10).text
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for suffix in SUFFIXES.get(family.type, ("",)):
            names.setdefault(family.name + suffix, set())
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


def test_dashboard_parses_and_is_laid_out():
    doc = dashboard()
    assert doc["uid"] == "brulee-agent" and doc["title"]
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    for p in doc["panels"]:
        pos = p["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24 and pos["h"] > 0, p["title"]
        for target in p.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}"
            expr = target["expr"]
            assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}")
    kinds = {p["type"] for p in doc["panels"]}
    assert {"timeseries", "stat", "row"} >= kinds
    assert len(queries(doc)) >= 20


def test_dashboard_uses_only_what_a_real_agent_exports(test_models: Path):
    with running_agent(test_models, 64 * 1024 * 1024, workers=1, token="t") as agent:
        body = {"inputs": np.zeros((1, 8, 8, 1)).tolist()}
        for path in ("function", "function", "async-function"):  # a miss, a hit, a job
            resp = requests.post(f"{agent['url']}/{path}/digits-cnn", json=body, timeout=60)
            assert resp.status_code in (200, 202), resp.text
        names = exported(agent["url"])
    for expr, legend in queries(dashboard()):
        used = set(METRIC.findall(expr))
        assert used, expr
        missing = used - set(names)
        assert not missing, f"{sorted(missing)} not in /metrics ({expr})"
        labels = set().union(*(names[m] for m in used))
        if not labels:
            continue  # no series yet (e.g. no eviction happened): the names were checked
        for metric, matchers in SELECTOR.findall(expr):
            given = set(MATCHER.findall(matchers))
            if names[metric]:  # (a metric with no series yet shows no labels)
                assert given <= names[metric] | {"le"}, f"{metric}: not all of {given} ({expr})"
        grouped = {g.strip() for group in GROUPING.findall(expr) for g in group.split(",")}
        assert grouped - {""} <= labels | {"le"}, f"{grouped} ({expr})"
        assert set(LEGEND.findall(legend)) <= grouped | labels, legend
