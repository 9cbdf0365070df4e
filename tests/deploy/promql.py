"""What the deploy tests share: the files under deploy/, what the server really exports, the metric names in a
PromQL expression, the dashboard's queries as plain PromQL, and promtool."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from server.metrics import Metrics
from streaming.messages import EngineStats

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "rules.yml"
RULES_TEST = PROMETHEUS_DIR / "rules_test.yml"
SCRAPE_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "lfm-audio.json"
JOB = "lfm-audio"  # the scrape job the rules' `up` alerts expect
BUILD = {"version": "0.0.0", "model": "tiny", "decoder": "mimi", "device": "cpu"}

# Grafana's built-in variables, as plain PromQL for a query sent straight to Prometheus.
GRAFANA_BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h", "__range_s": "3600",
                    "__interval_ms": "15000"}


def tool(name: str) -> str:
    """A Prometheus binary: CI installs Debian's `prometheus`, so a missing one fails rather than skips."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (Debian package: prometheus)")
    return path


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([tool("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


# --- what the server exports ---

def exercised_metrics() -> Metrics:
    """A real `Metrics` with every method called, so that every family (labelled ones too) has samples."""
    m = Metrics(BUILD)
    m.session_started("websocket")
    m.session_ended("websocket", 12.0)
    m.rejected("full")
    m.error("session")
    m.error_event("invalid_value")
    m.interruption()
    m.audio_in(1.0)
    m.audio_out(2.0)
    m.response(ttfa_speech_end_s=0.9, ttfa_commit_s=0.4, ttft_s=0.2, rtf=0.7)
    m.event_loop_lag(0.003)
    m.watch_runner_process(os.getpid())  # any live process: its /proc reads as the runner's would
    m.update_from(EngineStats(slots_total=4, slots_used=1, steps=3, step_seconds=[0.02], batch_sizes=[1],
                              prefill_seconds=[0.05], prefill_positions=10, queue_depth=1,
                              skipped_rows=1, sessions_failed=1, alive=True))
    return m


def series_names(m: Metrics) -> set[str]:
    """The sample names in the exposition text (counters with _total, histograms as _bucket/_sum/_count)."""
    body = m.render()[0].decode()
    return {re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group() for line in body.splitlines()
            if line and not line.startswith("#")}


def family_names(m: Metrics) -> set[str]:
    return set(re.findall(r"^# TYPE (\S+) ", m.render()[0].decode(), re.M))


def family_of(series: str, families: set[str]) -> str:
    for suffix in ("_total", "_bucket", "_sum", "_count", ""):
        if series.endswith(suffix) and series.removesuffix(suffix) in families:
            return series.removesuffix(suffix)
    raise KeyError(series)


# --- PromQL ---

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
             "offset", "inf", "nan"}
_STRING = r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`'
_TOKEN = re.compile(r"(?P<num>0x[0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)|(?P<id>[A-Za-z_:][A-Za-z0-9_:]*)")


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (not functions, keywords, label names or durations)."""
    s = re.sub(_STRING, '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # ranges and subqueries
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)  # label lists
    s = re.sub(r"\boffset\s+-?\w+", " ", s)
    names = set()
    for m in _TOKEN.finditer(s):
        name = m.group("id")
        if name and name.lower() not in _KEYWORDS and not re.match(r"\s*\(", s[m.end():]):
            names.add(name)
    return names


def variables(expr: str) -> set[str]:
    return {m.group(1) for m in re.finditer(r"\$\{?(\w+)(?::\w+)?\}?", expr)}


def to_promql(expr: str, template_vars: set[str]) -> str:
    """A Grafana query as Prometheus would get it: built-ins at fixed values, every template variable as `.+`
    (what "All" sends). An unknown variable stays as it is, and Prometheus refuses the query."""

    def sub(m: re.Match) -> str:
        name = m.group(1)
        if name in GRAFANA_BUILTINS:
            return GRAFANA_BUILTINS[name]
        return ".+" if name in template_vars else m.group(0)

    return re.sub(r"\$\{?(\w+)(?::\w+)?\}?", sub, expr)


# --- the files ---

def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def template_vars(model: dict) -> set[str]:
    return {v["name"] for v in model["templating"]["list"]}


def dashboard_queries(model: dict) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable; label_values(selector, label) gives its
    selector."""
    out = []
    for panel in model["panels"]:
        for target in panel.get("targets", []):
            out.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for var in model["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            m = re.fullmatch(r"\s*label_values\(\s*(?:(.+),\s*)?(\w+)\s*\)\s*", query)
            assert m and m.group(1), f"variable {var['name']}: expected label_values(selector, label), got {query}"
            out.append((f"variable {var['name']}", m.group(1)))
    return out
