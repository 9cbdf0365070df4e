"""The dashboard under load: a real Prometheus scrapes a real server every second through a short load run
(loadtests' users: one more than the slots, some barge-in turns); then every query of
deploy/grafana/lfm-audio.json, sent to Prometheus' HTTP API as Grafana would send it, returns data over the run,
the panels that must move do, and the main panels render (loadtests.dashboard, the script behind
docs/loadtests/dashboard.png)."""

from __future__ import annotations

import json
import re

import pytest

from loadtests.dashboard import (
    DASHBOARD,
    DEMO,
    DEMO_SLOTS,
    MAIN_PANELS,
    finite,
    panel_queries,
    query_range,
    render,
    scraped_load,
)
from tests.deploy.promql import dashboard_queries

pytestmark = pytest.mark.slow

RATE_INTERVAL = "10s"  # ten 1-second scrapes: what Grafana's $__rate_interval would be for such a scrape interval
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def window(tmp_path_factory):
    with scraped_load(tmp_path_factory.mktemp("dashboard")) as w:
        yield w


def values(window, expr: str) -> list[float]:
    return [v for _, v in finite(query_range(window.prometheus, expr, window.start, window.end, 1))]


def test_the_load_ran(window):
    s = window.run["summary"]
    assert s["rejections"] == DEMO.users - DEMO_SLOTS and s["sessions"] == DEMO_SLOTS, s
    assert s["errors"] == 0 and s["turns_completed"] == DEMO_SLOTS * DEMO.turns, window.run["error_messages"]


def test_every_panel_query_returns_data(window):
    model = json.loads(DASHBOARD.read_text())
    queries = panel_queries(model, RATE_INTERVAL)
    assert len(queries) >= 30  # every target of every panel (a dashboard with its panels lost would pass empty)
    for panel, target, expr in queries:
        assert values(window, expr), f"panel {panel['title']!r} {target['refId']}: no data for {expr}"
    for where, selector in dashboard_queries(model):
        if where.startswith("variable"):  # label_values(selector, label): the selector must match
            assert values(window, re.sub(r"\$\{?\w+\}?", ".+", selector)), where


def panel(title: str, ref: str = "A") -> str:
    model = json.loads(DASHBOARD.read_text())
    return next(e for p, t, e in panel_queries(model, RATE_INTERVAL) if p["title"] == title and t["refId"] == ref
                and p["type"] == "timeseries")


def test_the_panels_follow_the_load(window):
    assert max(values(window, panel("Sessions active"))) == DEMO_SLOTS  # both slots' sessions at once
    assert max(values(window, panel("Slots used / capacity"))) == DEMO_SLOTS
    assert max(values(window, panel("Sessions rejected by reason"))) > 0  # the refused user
    assert 0 < max(values(window, panel("Time to first audio (5m)"))) < 10  # seconds, from real turns
    assert 0 < max(values(window, panel("Decode step duration"))) < 1
    assert max(values(window, panel("Audio in / out", "B"))) > 0  # speech went out


def test_the_main_panels_render(window, tmp_path):
    out = render(window.prometheus, window.start, window.end, tmp_path / "dashboard.png",
                 rate_interval=RATE_INTERVAL, note="test")
    data = out.read_bytes()
    assert data.startswith(PNG) and len(data) > 50_000  # nine plotted panels; an empty figure is far smaller
    import matplotlib.image

    height, width, _ = matplotlib.image.imread(out).shape
    assert width > 1200 and height > 800 and len(MAIN_PANELS) == 9
