"""deploy/grafana/provisioning/: the data source and dashboard provisioning files Grafana reads, and what they need
from the dashboard (a fixed uid, no import-time `__inputs`, a data source variable of the provisioned type)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.deploy.promql import DASHBOARD

PROVISIONING = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "provisioning"


def load(name: str) -> dict:
    doc = yaml.safe_load((PROVISIONING / name).read_text())
    assert doc["apiVersion"] == 1
    return doc


def test_one_default_prometheus_data_source():
    sources = load("datasources/prometheus.yaml")["datasources"]
    assert [s["type"] for s in sources] == ["prometheus"]
    assert sources[0]["isDefault"] is True and sources[0]["url"].startswith("http")
    assert sources[0]["access"] == "proxy"  # the browser never talks to Prometheus


def test_the_dashboard_loads_as_provisioned():
    (provider,) = load("dashboards/lfm-audio.yaml")["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")
    text = DASHBOARD.read_text()
    dashboard = json.loads(text)
    assert dashboard["uid"]  # a provisioned dashboard keeps its address across reloads
    assert "__inputs" not in dashboard and "${DS_" not in text  # import placeholders are not resolved here
    (variable,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert variable["query"] == load("datasources/prometheus.yaml")["datasources"][0]["type"]
