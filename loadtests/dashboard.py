"""What ops will see: the main panels of the Grafana dashboard (deploy/grafana/lfm-audio.json), drawn with
matplotlib from a real Prometheus with the dashboard's own queries, legends and units.

    python -m loadtests.dashboard --demo                  # a server, a Prometheus scraping it, a load run
    python -m loadtests.dashboard --prometheus http://127.0.0.1:9090 --minutes 30 --out dashboard.png

`--demo` starts `serve --max-sessions 2` and Debian's `prometheus` (scraping every second, the shipped rules),
runs 3 users (one more than the slots: a refusal; some barge-in turns: interruptions), and writes
docs/loadtests/dashboard.png. Loopback only, like the rest of loadtests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from loadtests.links import check_loopback
from loadtests.scenario import Scenario
from loadtests.serve import ROOT, ServerProcess, free_port

__all__ = ["MAIN_PANELS", "Window", "panel_queries", "prometheus", "query_range", "render", "scraped_load"]

DASHBOARD = ROOT / "deploy" / "grafana" / "lfm-audio.json"
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
OUT = ROOT / "docs" / "loadtests" / "dashboard.png"
JOB = "lfm-audio"  # the shipped scrape config's job name (the rules' `up` alerts select it)
# The timeseries panels drawn, in reading order (titles in the dashboard JSON).
MAIN_PANELS = ("Sessions active", "Slots used / capacity", "Sessions rejected by reason",
               "Time to first audio (5m)", "Real-time factor (5m)", "Decode step duration",
               "Audio in / out", "Underruns", "Event loop lag")
UNITS = {"s": "seconds", "ops": "per second", "percentunit": "fraction", "short": "", "none": ""}
READY_TIMEOUT_S = 30.0


# --- the dashboard's queries --------------------------------------------------------------------------------

def panel_queries(model: dict, rate_interval: str) -> list[tuple[dict, dict, str]]:
    """(panel, target, PromQL) for every panel target: template variables as Grafana's "All" sends them (`.+`),
    `$__rate_interval` as given."""
    out = []
    for panel in model["panels"]:
        for target in panel.get("targets", []):
            out.append((panel, target, promql(target["expr"], rate_interval)))
    return out


def promql(expr: str, rate_interval: str) -> str:
    def sub(m: re.Match) -> str:
        return rate_interval if m.group(1) == "__rate_interval" else ".+"

    return re.sub(r"\$\{?(\w+)(?::\w+)?\}?", sub, expr)


def legend(fmt: str | None, labels: dict, fallback: str) -> str:
    if not fmt or fmt == "__auto":
        return fallback
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt)


def query_range(base: str, expr: str, start: float, end: float, step: float) -> list[dict]:
    """Prometheus' /api/v1/query_range: [{"metric": {...}, "values": [[t, "v"], ...]}, ...]; raises on an error."""
    reply = httpx.get(base + "/api/v1/query_range", params={"query": expr, "start": start, "end": end,
                                                            "step": step}, timeout=30)
    body = reply.json()
    if reply.status_code != 200 or body.get("status") != "success":
        raise RuntimeError(f"{expr}: {reply.status_code} {body.get('error', reply.text[:500])}")
    return body["data"]["result"]


def finite(series: list[dict]) -> list[tuple[float, float]]:
    return [(float(t), float(v)) for s in series for t, v in s["values"] if math.isfinite(float(v))]


# --- drawing ------------------------------------------------------------------------------------------------

def render(base: str, start: float, end: float, out: Path, *, step: float = 1.0, rate_interval: str = "1m",
           titles: tuple[str, ...] = MAIN_PANELS, note: str = "") -> Path:
    """The panels titled `titles` (timeseries panels of the dashboard), one subplot each, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    model = json.loads(DASHBOARD.read_text())
    queries = panel_queries(model, rate_interval)
    by_title = {p["title"]: p for p, _, _ in queries if p["type"] == "timeseries"}
    missing = [t for t in titles if t not in by_title]
    if missing:
        raise ValueError(f"no timeseries panel titled {missing} in {DASHBOARD}")
    cols = 3
    rows = math.ceil(len(titles) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.3 * rows), squeeze=False)
    for ax, title in zip(axes.flat, titles, strict=False):
        panel = by_title[title]
        for _, target, expr in (q for q in queries if q[0] is panel):
            for s in query_range(base, expr, start, end, step):
                points = [(float(t) - start, float(v)) for t, v in s["values"]]
                ax.plot([t for t, _ in points], [v for _, v in points], lw=1.4,
                        label=legend(target.get("legendFormat"), s["metric"], target["refId"]))
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        ax.set_title(title, fontsize=11)
        ax.set_ylabel(UNITS.get(unit, unit), fontsize=9)
        ax.set_xlim(0, end - start)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="upper left")
    for ax in axes.flat[len(titles):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("seconds into the run", fontsize=9)
    fig.suptitle("lfm-audio dashboard (deploy/grafana/lfm-audio.json), from Prometheus" + (f": {note}" if note
                                                                                          else ""), fontsize=12)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


# --- a server, a Prometheus and a load run ------------------------------------------------------------------

@contextlib.contextmanager
def prometheus(folder: Path, target: str, scrape_s: float = 1.0) -> Iterator[str]:
    """Debian's `prometheus` on a free loopback port scraping `target` with the shipped job name and rules;
    yields its base URL."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise RuntimeError("prometheus is not installed (Debian package: prometheus)")
    port = free_port()
    config = folder / "prometheus.yml"
    interval = f"{scrape_s:g}s"
    config.write_text(json.dumps({  # JSON is YAML
        "global": {"scrape_interval": interval, "scrape_timeout": interval, "evaluation_interval": interval},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": JOB, "metrics_path": "/metrics", "static_configs": [{"targets": [target]}]}],
    }))
    base = f"http://127.0.0.1:{port}"
    with open(folder / "prometheus.log", "w") as log:
        proc = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={folder / 'data'}",
                                 f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + READY_TIMEOUT_S
            while not _answers(base + "/-/ready"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("prometheus did not start:\n" + (folder / "prometheus.log").read_text()[-2000:])
                time.sleep(0.25)
            yield base
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class Window:
    prometheus: str  # base URL
    server: str  # the scraped server's base URL
    start: float  # unix seconds: the load run's start
    end: float  # after the run, once Prometheus has scraped its end
    run: dict  # loadtests.runner.summarize's result


DEMO = Scenario(users=3, turns=4, barge_in=0.5, ramp_s=3.0, pause_s=1.0, max_output_tokens=40)
DEMO_SLOTS = 2  # one user fewer than DEMO.users: the third is refused (server_full), the refusals panel has data


@contextlib.contextmanager
def scraped_load(folder: Path, scenario: Scenario = DEMO, max_sessions: int = DEMO_SLOTS,
                 server_args: list[str] = (), settle_s: float = 5.0) -> Iterator[Window]:
    """A fresh server, a Prometheus scraping it every second, and one load run; yields the run's window while
    both still run (for queries)."""
    from loadtests.clips import speech_clip
    from loadtests.runner import run_users

    clip = speech_clip(scenario.clip_text, scenario.clip_s)
    with (ServerProcess(max_sessions, folder / "server.log", list(server_args)) as server,
          prometheus(folder, f"127.0.0.1:{server.port}") as prom):
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not query_range(prom, f'up{{job="{JOB}"}} == 1', time.time() - 5, time.time(), 1):
            if time.monotonic() > deadline:
                raise RuntimeError("prometheus is not scraping the server")
            time.sleep(0.5)
        time.sleep(settle_s)  # a few idle scrapes first: rates start from the run's first event
        start = time.time() - settle_s
        run = asyncio.run(run_users(scenario, clip, server.ws, progress=False))
        time.sleep(settle_s)  # the sessions' ends and the last samples reach Prometheus
        yield Window(prom, server.base, start, time.time(), run)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.dashboard", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--demo", action="store_true", help="start a server and a Prometheus and run a load first")
    p.add_argument("--prometheus", help="an existing Prometheus (http://127.0.0.1:PORT) that scrapes lfm-audio")
    p.add_argument("--minutes", type=float, default=15.0, help="with --prometheus: how far back to draw")
    p.add_argument("--rate-interval", default=None, help="$__rate_interval (default: 10s for --demo, else 1m)")
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args(argv)
    if a.demo == bool(a.prometheus):
        p.error("give --demo or --prometheus URL")
    if a.prometheus:
        check_loopback(a.prometheus)
        end = time.time()
        path = render(a.prometheus.rstrip("/"), end - 60 * a.minutes, end, a.out, step=max(1.0, a.minutes),
                      rate_interval=a.rate_interval or "1m")
    else:
        with tempfile.TemporaryDirectory() as tmp, scraped_load(Path(tmp)) as w:
            s = w.run["summary"]
            note = (f"{DEMO.users} users on {DEMO_SLOTS} slots (tiny model, CPU), {s['turns_completed']} turns, "
                    f"{s['rejections']} refused")
            path = render(w.prometheus, w.start, w.end, a.out, rate_interval=a.rate_interval or "10s", note=note)
    print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
