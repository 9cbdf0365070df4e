"""A real Prometheus scraping a real server: after one real turn the latency histograms arrive with a non-zero count,
the rules load and evaluate without error (the recorded time to first audio comes out of the real histogram), and
every dashboard query is valid PromQL that returns data where the server has series."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import websockets
import yaml

from server.metrics import Metrics
from tests.deploy.promql import (
    JOB,
    RULES,
    SCRAPE_CONFIG,
    dashboard,
    dashboard_queries,
    family_names,
    family_of,
    metric_names,
    rules,
    series_names,
    template_vars,
    to_promql,
    tool,
)
from tests.server.harness import ServerProcess, free_port

pytestmark = pytest.mark.slow


KEY = "sk-prometheus-0123456789"  # the server's API key: the shipped config scrapes with a bearer token


class PrometheusProcess:
    """/usr/bin/prometheus on a free loopback port with a temporary data dir, scraping `target` every second
    with the example config's job, rules and bearer token (its key file, here next to the config as shipped)."""

    def __init__(self, tmp: Path, target: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        config = yaml.safe_load(SCRAPE_CONFIG.read_text())
        config["global"] = {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
        config["rule_files"] = [str(RULES)]
        config["scrape_configs"][0]["static_configs"] = [{"targets": [target]}]
        self.config = tmp / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config))
        (tmp / config["scrape_configs"][0]["authorization"]["credentials_file"]).write_text(KEY + "\n")
        self.log_path = tmp / "prometheus.log"
        self.cmd = [tool("prometheus"), f"--config.file={self.config}", f"--storage.tsdb.path={tmp / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}"]
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> PrometheusProcess:
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            self.wait(lambda: httpx.get(self.base + "/-/ready", timeout=1).status_code == 200, 30, "ready")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def wait(self, check, timeout: float, what: str):
        """Poll `check` until it returns something truthy; fail after `timeout` seconds with the log."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}:\n{self.log()}")
            try:
                result = check()
            except httpx.HTTPError:
                result = None
            if result:
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"prometheus: not {what} after {timeout} s:\n{self.log()}")
            time.sleep(0.25)

    def log(self) -> str:
        return self.log_path.read_text()[-3000:]

    def api(self, path: str, **params) -> dict:
        reply = httpx.get(self.base + "/api/v1/" + path, params=params, timeout=10)
        body = reply.json()
        assert reply.status_code == 200 and body["status"] == "success", (path, params, reply.text[:2000])
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        data = self.api("query", query=expr)
        assert data["resultType"] in ("vector", "scalar"), (expr, data)
        return data["result"] if data["resultType"] == "vector" else [{"metric": {}, "value": data["result"]}]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None


async def text_turn(server: ServerProcess) -> None:
    async with websockets.connect(server.ws + "/realtime?model=lfm-audio", max_size=None, open_timeout=30,
                                  additional_headers={"Authorization": f"Bearer {KEY}"}) as ws:

        async def until(kind: str) -> dict:
            while True:
                event = json.loads(await ws.recv())
                assert event["type"] != "error", event
                if event["type"] == kind:
                    return event

        await asyncio.wait_for(until("session.created"), 30)
        await ws.send(json.dumps({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "hello"}]}}))
        await ws.send(json.dumps({"type": "response.create", "response": {"max_output_tokens": 20}}))
        done = await asyncio.wait_for(until("response.done"), 120)
        assert done["response"]["status"] in ("completed", "incomplete"), done  # incomplete: max_output_tokens


@pytest.fixture(scope="module")
def prom(tiny_dir, tmp_path_factory):
    """Server and Prometheus, after one turn has been scraped. Both stop whatever happens."""
    tmp = tmp_path_factory.mktemp("prometheus")
    t0 = time.monotonic()
    with (ServerProcess(tiny_dir, tmp, env={"LFM_AUDIO_API_KEYS": KEY}) as server,
          PrometheusProcess(tmp, f"127.0.0.1:{server.port}") as prom):
        assert httpx.get(server.base + "/metrics", timeout=5).status_code == 401  # keyed: only the scrape's token
        # A scrape before the turn, so that the turn is an increase that rate() sees.
        prom.wait(lambda: prom.value(f'up{{job="{JOB}"}} == 1'), 30, "scraping the server")
        asyncio.run(text_turn(server))
        prom.wait(lambda: prom.value('lfm_audio_time_to_first_audio_seconds_count{since="commit"} > 0'), 30,
                  "seeing the turn")
        prom.wait(lambda: prom.value("sum(lfm_audio_session_duration_seconds_count) > 0"), 30, "seeing the session end")
        print(f"server + prometheus + one turn scraped in {time.monotonic() - t0:.1f} s")
        yield prom


def test_the_turn_reaches_prometheus(prom):
    for series in ("lfm_audio_time_to_first_audio_seconds_count{since=\"commit\"}",
                   "lfm_audio_time_to_first_text_seconds_count", "lfm_audio_real_time_factor_ratio_count",
                   "lfm_audio_decode_step_duration_seconds_count", "lfm_audio_prefill_duration_seconds_count",
                   "lfm_audio_output_audio_seconds_total", "lfm_audio_session_duration_seconds_count"):
        assert prom.value(f"sum({series})") > 0, series
    assert prom.value("lfm_audio_engine_ready") == 1
    assert prom.value("lfm_audio_engine_slots_capacity") == 3  # the harness's --max-sessions
    build = prom.query("lfm_audio_build_info")
    assert len(build) == 1 and build[0]["metric"]["job"] == JOB and build[0]["metric"]["device"] == "cpu"


def test_rules_load_and_evaluate(prom):
    expected = {(r.get("alert") or r["record"]) for r in rules()}

    def evaluated():
        loaded = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
        return loaded if all(not r["lastEvaluation"].startswith("0001-") for r in loaded) else None

    loaded = prom.wait(evaluated, 30, "evaluating every rule")
    assert {r["name"] for r in loaded} == expected and len(loaded) == len(rules())
    for r in loaded:
        assert r["health"] == "ok" and not r.get("lastError"), r
    # The recording rule computes a real quantile from the server's histogram.
    p95 = prom.wait(lambda: prom.value('instance:lfm_audio_time_to_first_audio_seconds:p95_5m{since="commit"} > 0'),
                    30, "recording the time to first audio")  # `> 0` also drops NaN (no responses in the window)
    assert math.isfinite(p95) and 0 < p95 <= 10
    # The session is closed: its slot comes back (the engine frees it a moment after the session ends).
    prom.wait(lambda: prom.query("instance:lfm_audio_engine_slots:utilization == 0"), 30, "recording free slots")


def test_every_dashboard_query_evaluates(prom):
    model = dashboard()
    names = template_vars(model)
    # Series that exist only after an event (a labelled family nobody touched yet): a query on them alone may
    # rightly return nothing. Everything else must return data.
    fresh = Metrics({})
    fresh.watch_runner_process(os.getpid())  # the default server has its runner process from the start
    families = family_names(fresh)
    at_start = {family_of(n, families) for n in series_names(fresh)}
    for where, expr in dashboard_queries(model):
        promql = to_promql(expr, names)
        result = prom.query(promql)  # asserts status success: Prometheus parsed and evaluated it
        if {family_of(n, families) for n in metric_names(promql)} <= at_start:
            assert result, f"{where}: no data for {promql}"
