"""docs/operations.md and what it ships: the Prometheus alert rules and scrape configuration
(checked and unit-tested by promtool, Debian's `prometheus` package, which .ci/run installs),
the Grafana dashboard, and the metrics reference, all held to the families /metrics exposes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

import portal.health  # noqa: F401 - registers the readiness families
from accounts.metrics import REGISTRY

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
OPERATIONS = DOCS / "operations.md"
ALERTS = DOCS / "prometheus" / "alerts.yml"
ALERT_TESTS = DOCS / "prometheus" / "alerts_test.yml"
SCRAPE_CONFIG = DOCS / "prometheus" / "prometheus.yml"
DASHBOARD = DOCS / "grafana" / "cloud-connector.json"
PROMTOOL = shutil.which("promtool")
# Series Prometheus makes itself for every target.
SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",), "info": ("_info",)}
METRIC_NAME = re.compile(r"\b((?:cloud_connector|process|python)_[a-z0-9_]+|up)\b(?!\s*[(=])")
# What Grafana substitutes before a query reaches Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$instance": ".*"}


def promtool(*args: str) -> subprocess.CompletedProcess:
    if PROMTOOL is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing in CI: .ci/run installs Debian's prometheus package")
        pytest.skip("promtool is not installed (apt-get install prometheus; .ci/run does)")
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


def exposed_series() -> set[str]:
    """Every series name the registry's families can produce."""
    names = set()
    for family in REGISTRY.collect():
        for suffix in SUFFIXES.get(family.type, ("",)):
            names.add(family.name + suffix)
    return names


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def dashboard_panels() -> list[dict]:
    return [panel for panel in json.loads(DASHBOARD.read_text())["panels"] if panel["type"] != "row"]


def dashboard_exprs() -> list[str]:
    exprs = []
    for panel in dashboard_panels():
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            exprs.append(expr)
    return exprs


def metric_names(expr: str) -> set[str]:
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    without_labels = re.sub(r"\{[^}]*\}", "{}", without_strings)
    return {name for name in METRIC_NAME.findall(without_labels) if not name.endswith(("_over_time",))}


def test_promtool_accepts_the_alert_rules():
    result = promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_every_alert_fires_on_its_fault_and_stays_silent_otherwise():
    result = promtool("test", "rules", str(ALERT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    tested = set(re.findall(r"alertname: (\w+)", ALERT_TESTS.read_text()))
    assert tested == {rule["alert"] for rule in alert_rules()}, "an alert without a promtool test"


def test_promtool_accepts_the_documented_scrape_configuration():
    result = promtool("check", "config", str(SCRAPE_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dashboards_queries_are_valid_promql(tmp_path):
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"dashboard:query_{i}", "expr": expr} for i, expr in enumerate(dashboard_exprs())],
            }
        ]
    }
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_metric_the_alerts_and_the_dashboard_use_is_exposed_by_the_registry():
    exposed = exposed_series() | SYNTHETIC
    used = {
        **{name: f"alert {rule['alert']}" for rule in alert_rules() for name in metric_names(rule["expr"])},
        **{name: "the dashboard" for expr in dashboard_exprs() for name in metric_names(expr)},
    }
    assert {"cloud_connector_registrations_total", "up", "cloud_connector_sessions"} <= set(used)
    missing = {name: where for name, where in used.items() if name not in exposed}
    assert not missing, f"used but not exposed by /metrics: {missing}"


def test_a_metric_name_that_is_not_exposed_would_be_caught():
    assert metric_names('sum(rate(cloud_connector_frames_relayedd_total{job="x"}[1m]))') == {
        "cloud_connector_frames_relayedd_total"
    }
    assert "cloud_connector_frames_relayedd_total" not in exposed_series()


def test_the_dashboard_is_a_grafana_dashboard_whose_panels_do_not_overlap():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "cloud-connector" and dashboard["schemaVersion"] >= 36
    assert {variable["name"] for variable in dashboard["templating"]["list"]} == {"datasource", "instance"}
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    taken: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {
            (x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells
    for panel in dashboard_panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        assert [target["refId"] for target in panel["targets"]] == [chr(65 + i) for i in range(len(panel["targets"]))]


def test_the_metrics_reference_documents_every_family_of_ours():
    text = OPERATIONS.read_text()
    ours = {family.name for family in REGISTRY.collect() if family.name.startswith("cloud_connector_")}
    undocumented = {
        name
        for name in ours
        if f"`{name}" not in text  # as `name_total`, `name_bucket`... or `name`
    }
    assert not undocumented, f"families missing from docs/operations.md: {sorted(undocumented)}"


def test_every_alert_has_a_runbook_section():
    text = OPERATIONS.read_text()
    for rule in alert_rules():
        assert re.search(rf"^### {rule['alert']}$", text, re.MULTILINE), f"no runbook for {rule['alert']}"
        assert rule["annotations"]["runbook"] == f"docs/operations.md#{rule['alert'].lower()}"
