"""The Grafana dashboard, without Grafana: a well-formed JSON model on a Prometheus datasource variable, whose
queries name only series the server really exports and cover every metric it exports. (That each query is valid
PromQL that Prometheus accepts is checked against a real Prometheus in test_prometheus.py.)"""

from __future__ import annotations

import pytest

from tests.deploy.promql import (
    GRAFANA_BUILTINS,
    dashboard,
    dashboard_queries,
    exercised_metrics,
    family_names,
    family_of,
    metric_names,
    series_names,
    template_vars,
    variables,
)

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


@pytest.fixture(scope="module")
def model() -> dict:
    return dashboard()


def test_json_model(model):
    assert model["uid"] == "lfm-audio" and model["title"] and isinstance(model["schemaVersion"], int)
    ds = [v for v in model["templating"]["list"] if v["type"] == "datasource"]
    assert [(v["name"], v["query"]) for v in ds] == [("datasource", "prometheus")]
    for var in model["templating"]["list"]:
        if var["type"] == "query":
            assert var["datasource"] == DATASOURCE, var["name"]
    ids = [p["id"] for p in model["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    panels = [p for p in model["panels"] if p["type"] != "row"]
    assert len(panels) >= 20
    for p in panels:
        where = p["title"]
        assert p["datasource"] == DATASOURCE, where  # never a hard-coded datasource uid
        assert p["targets"], where
        assert len({t["refId"] for t in p["targets"]}) == len(p["targets"]), where
        for t in p["targets"]:
            assert t["expr"].strip() and t.get("datasource", DATASOURCE) == DATASOURCE, where
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, where


def test_panels_do_not_overlap(model):
    taken: dict[tuple[int, int], str] = {}
    for p in model["panels"]:
        g = p["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in taken, f"{p['title']!r} overlaps {taken[x, y]!r}"
                taken[x, y] = p["title"]


def test_queries_name_only_exported_series(model):
    exported = series_names(exercised_metrics())
    queries = dashboard_queries(model)
    assert len(queries) >= 30
    for where, expr in queries:
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr}"
        assert names <= exported, f"{where}: {sorted(names - exported)} not exported by the server: {expr}"


def test_every_exported_metric_is_on_the_dashboard(model):
    m = exercised_metrics()
    families = family_names(m)
    shown = {family_of(n, families) for _, expr in dashboard_queries(model) for n in metric_names(expr)}
    assert families - shown == set()


def test_latency_panels_show_p50_and_p95_from_both_points(model):
    ttfa = [t["expr"] for p in model["panels"] for t in p.get("targets", [])
            if "lfm_audio_time_to_first_audio_seconds_bucket" in t["expr"] and "by (since, le)" in t["expr"]]
    assert {e.split(",")[0] for e in ttfa} >= {"histogram_quantile(0.5", "histogram_quantile(0.95"}
    for metric in ("lfm_audio_time_to_first_text_seconds", "lfm_audio_decode_step_duration_seconds",
                   "lfm_audio_prefill_duration_seconds", "lfm_audio_real_time_factor_ratio"):
        exprs = [t["expr"] for p in model["panels"] for t in p.get("targets", []) if metric + "_bucket" in t["expr"]]
        assert any(e.startswith("histogram_quantile(0.5,") for e in exprs), metric
        assert any(e.startswith("histogram_quantile(0.95,") for e in exprs), metric


def test_variables_are_defined(model):
    defined = template_vars(model) | set(GRAFANA_BUILTINS)
    for where, expr in dashboard_queries(model):
        assert variables(expr) <= defined, f"{where}: {sorted(variables(expr) - defined)} undefined in {expr}"


@pytest.mark.parametrize(("expr", "names"), [
    ("up", {"up"}),
    ('sum by (le) (rate(lfm_audio_x_bucket{job=~"$job", le!="sum"}[$__rate_interval]))', {"lfm_audio_x_bucket"}),
    ("histogram_quantile(0.95, sum(rate(a_bucket[5m])) by (le, since))", {"a_bucket"}),
    ("a / on(instance) group_left(version) b", {"a", "b"}),
    ("a > bool 1e3 and b offset 5m unless c @ 100", {"a", "b", "c"}),
    ('label_replace(a, "dst", "lfm_audio_fake", "src", "(.*)")', {"a"}),
    ("max_over_time(a[5m:1m]) > -Inf or NaN", {"a"}),
    ("instance:lfm_audio_decode_step_duration_seconds:p95_5m > 0.06", {
        "instance:lfm_audio_decode_step_duration_seconds:p95_5m"}),
    ("sum(lfm_audio_sesions_active)", {"lfm_audio_sesions_active"}),  # a typo is a name, caught as unexported
])
def test_metric_names(expr, names):
    assert metric_names(expr) == names
