"""A run at one N (against a URL, or a server started for it) and the capacity sweep over several N.

The sweep starts a fresh `serve --max-sessions N` for every N: that is the configuration the issue measured, the
engine batches at most N rows, and no run inherits another's cache, queue or counters. A reused server (`--url`)
is faster to sweep but holds max-sessions at its own value, so its N is only the number of users.
"""

from __future__ import annotations

import asyncio
import platform
import subprocess
import sys
import time
from pathlib import Path

from loadtests import prom
from loadtests.clips import speech_clip
from loadtests.runner import run_users
from loadtests.scenario import Scenario, Thresholds
from loadtests.serve import ROOT, ServerProcess

__all__ = ["environment", "run_at", "sweep"]


def environment(server_args: list[str]) -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "commit": commit, "python": platform.python_version(),
            "machine": platform.machine(), "cpus": _cpus(), "load_average": _load(), "server_args": server_args,
            "command": " ".join(["python -m loadtests", *sys.argv[1:]])}


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


def _load() -> list[float] | None:
    import os

    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def _client_side(summary: dict) -> dict:
    """The client's figures in the shape prom.crosscheck compares."""
    return {**{k: summary[k] for k in prom.HISTOGRAMS}, "ttfa_speech_end_s": summary["ttfa_speech_end_vad_s"],
            "underruns": summary["underruns"], "gap_s": summary["gap_s"],
            "rejections": summary["rejections"], "cancelled": summary["cancelled"],
            "sessions": summary["sessions"]}


async def _measure(scenario: Scenario, clip, ws_url: str, base: str, progress: bool) -> dict:
    before = prom.scrape(base)
    run = await run_users(scenario, clip, ws_url, progress=progress)
    await asyncio.sleep(0.5)  # let the server finish closing the sessions (their counts) before the last scrape
    server = prom.delta(prom.scrape(base), before)
    run["server"] = server
    run["crosscheck"] = prom.crosscheck(server, _client_side(run["summary"]))
    return run


def run_at(scenario: Scenario, *, url: str | None, server_args: list[str], max_sessions: int | None,
           log_dir: Path, thresholds: Thresholds, progress: bool = True) -> dict:
    """One run at scenario.users: against `url` (http://127.0.0.1:PORT), or a fresh server with
    `--max-sessions max_sessions` (default: the number of users)."""
    clip = speech_clip(scenario.clip_text, scenario.clip_s)
    if url is not None:
        base = url.rstrip("/")
        run = asyncio.run(_measure(scenario, clip, base.replace("http", "ws", 1) + "/v1", base, progress))
        run["max_sessions"] = None
    else:
        slots = max_sessions or scenario.users
        if scenario.transport == "webrtc":
            from loadtests.webrtc import SERVER_ARGS

            server_args = [*server_args, *SERVER_ARGS]
        with ServerProcess(slots, log_dir / f"server-{scenario.users}.log", server_args) as server:
            run = asyncio.run(_measure(scenario, clip, server.ws, server.base, progress))
        run["max_sessions"] = slots
    run["clip"] = {"text": clip.text, "seconds": round(clip.seconds, 3), "espeak_wpm": clip.wpm}
    run["failures"] = thresholds.check(run["summary"])
    run["holds"] = not run["failures"]
    return run


def sweep(base: Scenario, users: list[int], *, url: str | None, server_args: list[str], log_dir: Path,
          thresholds: Thresholds, keep_going: bool = False, bisect: bool = False, progress: bool = True,
          report=lambda run: None) -> dict:
    """Runs at each N in increasing order; stops after the first that fails (unless keep_going); with `bisect`,
    then narrows down between the last N that held and the first that failed. Capacity: the largest N that held
    with every smaller N measured also holding."""
    runs: dict[int, dict] = {}

    def at(n: int) -> dict:
        runs[n] = run_at(base.with_users(n), url=url, server_args=server_args, max_sessions=None,
                         log_dir=log_dir, thresholds=thresholds, progress=progress)
        report(runs[n])
        return runs[n]

    for n in sorted(set(users)):
        if not at(n)["holds"] and not keep_going:
            break
    if bisect:
        while True:
            good = [n for n in runs if runs[n]["holds"] and all(runs[m]["holds"] for m in runs if m < n)]
            bad = [n for n in runs if not runs[n]["holds"]]
            if not good or not bad or min(bad) - max(good) <= 1:
                break
            at((max(good) + min(bad)) // 2)
    ordered = [runs[n] for n in sorted(runs)]
    capacity = 0
    for run in ordered:
        if not run["holds"]:
            break
        capacity = run["summary"]["users"]
    return {"capacity": capacity, "runs": ordered}
