"""A bounded soak: the load generator's users, round after round, against one server for a fixed time, while the
server process's RSS, open file descriptors and threads are sampled; then their trend after warm-up is judged.

Each round opens fresh sessions (users x turns_per_session turns, real speech paced in real time), so a leak per
turn and a leak per session both show as a slope. Between rounds, with no session open, the idle figures are
sampled too: fds and threads should come back to the same values there.

    python -m loadtests soak --minutes 20            # make soak: the committed report in docs/soak
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import numpy as np

from loadtests.clips import speech_clip
from loadtests.runner import run_users
from loadtests.scenario import CLIP_TEXT, Scenario
from loadtests.serve import ServerProcess

__all__ = ["METRICS", "TOLERANCES", "SoakConfig", "add_parser", "judge", "sample", "soak", "trend"]

METRICS = ("rss_mb", "fds", "threads")
# Allowed growth per minute over the judged window (the samples after warm-up), and why it is that much.
TOLERANCES = {
    # A leak of one reply's audio per turn (4 s at 24 kHz float32, 0.38 MB) at ~25 turns a minute is ~10 MB/min,
    # 5x this. A slower creep holds but shows in the quarter slopes: the 40-minute soak here grew 1.5-2.1 MB/min in
    # its second half with the Python heap flat (docs/reliability.md "Soak"), an open question, not noise.
    "rss_mb": 2.0,
    # One descriptor or thread kept per session (about 5 sessions a minute here) is 5x this; a live sample varies
    # with the sessions open at that moment (0..users sockets), which a least-squares fit averages out (+-0.06/min).
    "fds": 1.0,
    "threads": 1.0,
}
IDLE_SETTLE_S = 1.0  # after a round, before the idle sample: the server closes the sessions' tasks and sockets


@dataclass(frozen=True)
class SoakConfig:
    minutes: float = 20.0
    users: int = 4  # sessions at once (the server gets as many slots)
    turns_per_session: int = 5  # then the session closes and the next round opens a fresh one
    max_output_tokens: int = 80  # about 4 s of reply, as the load test
    clip_s: float = 3.5
    transport: str = "websocket"
    interval_s: float = 5.0  # between samples
    warmup_fraction: float = 0.5  # the trend is fitted over the samples after this fraction of the run

    def scenario(self, left_s: float) -> Scenario:
        return Scenario(users=self.users, turns=self.turns_per_session, transport=self.transport,
                        clip_s=self.clip_s, max_output_tokens=self.max_output_tokens, ramp_s=1.0,
                        duration_s=max(left_s, 0.0))


def sample(pid: int) -> dict:
    """RSS (MB), open file descriptors and threads of process `pid` and its children together (from /proc): the
    server runs the model in a child process (streaming/worker.py), whose growth counts as much as its own."""
    rss_kb = fds = threads = 0
    for p in _tree(pid):
        try:
            status = Path(f"/proc/{p}/status").read_text()
            fd_count = len(os.listdir(f"/proc/{p}/fd"))
        except (FileNotFoundError, ProcessLookupError):  # exited between the listing and the read
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        rss_kb += int(fields["VmRSS"].split()[0])
        fds += fd_count
        threads += int(fields["Threads"])
    return {"rss_mb": rss_kb / 1024, "fds": fds, "threads": threads}


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            with contextlib.suppress(FileNotFoundError):
                todo += [int(c) for c in task.read_text().split()]
    return out


def trend(times_s: list[float], values: list[float]) -> float | None:
    """The least-squares slope of values over time, per minute (None with fewer than 3 samples)."""
    if len(times_s) < 3:
        return None
    slope, _ = np.polyfit(np.asarray(times_s, float) / 60.0, np.asarray(values, float), 1)
    return float(slope)


def judge(samples: list[dict], warmup_s: float, tolerances: dict[str, float] = TOLERANCES) -> dict:
    """Per metric: the slope after warm-up, the tolerance, the first/last/peak values, and whether it holds."""
    judged = [s for s in samples if s["t"] >= warmup_s]
    out = {}
    for m in METRICS:
        slope = trend([s["t"] for s in judged], [s[m] for s in judged])
        values = [s[m] for s in samples]
        out[m] = {"slope_per_min": slope, "tolerance_per_min": tolerances[m], "samples": len(judged),
                  "quarter_slopes_per_min": _quarters(samples, m),
                  "first": values[0] if values else None, "last": values[-1] if values else None,
                  "peak": max(values) if values else None,
                  "holds": slope is not None and slope <= tolerances[m]}
    return out


def _quarters(samples: list[dict], metric: str) -> list[float | None]:
    """The slope in each quarter of the run: whether growth is slowing (warm-up) or steady (a leak)."""
    if not samples:
        return []
    span = samples[-1]["t"] / 4 or 1.0
    parts = [[s for s in samples if q * span <= s["t"] < (q + 1) * span or (q == 3 and s["t"] >= 4 * span)]
             for q in range(4)]
    return [trend([s["t"] for s in p], [s[metric] for s in p]) for p in parts]


async def _sampler(pid: int, origin: float, interval_s: float, into: list[dict], stop: asyncio.Event) -> None:
    while not stop.is_set():
        into.append({"t": round(time.monotonic() - origin, 2), **sample(pid)})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)


async def _soak(cfg: SoakConfig, server: ServerProcess, log) -> dict:
    clip = speech_clip(CLIP_TEXT, cfg.clip_s)
    origin = time.monotonic()
    end = origin + cfg.minutes * 60
    samples: list[dict] = []
    idle: list[dict] = []
    rounds: list[dict] = []
    stop = asyncio.Event()
    sampling = asyncio.create_task(_sampler(server.proc.pid, origin, cfg.interval_s, samples, stop))
    async with httpx.AsyncClient(timeout=5) as http:
        try:
            while time.monotonic() < end:
                run = await run_users(cfg.scenario(end - time.monotonic()), clip, server.ws, progress=False)
                await asyncio.sleep(IDLE_SETTLE_S)
                used = (await http.get(server.base + "/readyz")).json()["slots"]["used"]
                idle.append({"t": round(time.monotonic() - origin, 2), "slots_used": used,
                             **sample(server.proc.pid)})
                s = run["summary"]
                rounds.append({k: s[k] for k in ("sessions", "rejections", "turns_expected", "turns_completed",
                                                 "errors", "unexpected_events", "underruns")}
                              | {"error_messages": run["error_messages"], "wall_s": round(s["wall_s"], 2)})
                last = idle[-1]
                log(f"round {len(rounds)} at {last['t']:.0f} s: {s['turns_completed']}/{s['turns_expected']} "
                    f"turns, {s['errors']} errors; idle RSS {last['rss_mb']:.1f} MB, {last['fds']} fds, "
                    f"{last['threads']} threads, {used} slots used")
        finally:
            stop.set()
            await sampling
    return {"samples": samples, "idle": idle, "rounds": rounds, "wall_s": round(time.monotonic() - origin, 2)}


def soak(cfg: SoakConfig, *, server_args: list[str] = (), tolerances: dict[str, float] = TOLERANCES,
         log_dir: Path | None = None, log=print) -> dict:
    """Start a server, soak it, stop it; the whole document (see judge() for the verdict's shape)."""
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="lfm-audio-soak-"))
    args = list(server_args)
    if cfg.transport == "webrtc":
        from loadtests.webrtc import SERVER_ARGS

        args += SERVER_ARGS
    with ServerProcess(cfg.users, log_dir / "server-soak.log", args) as server:
        run = asyncio.run(_soak(cfg, server, log))
        log_text = server.log_path.read_text(errors="replace")
    rounds = run["rounds"]
    totals = {k: sum(r[k] for r in rounds) for k in ("sessions", "rejections", "turns_expected",
                                                     "turns_completed", "errors", "unexpected_events",
                                                     "underruns")}
    totals["rounds"] = len(rounds)
    totals["error_messages"] = sorted({e for r in rounds for e in r["error_messages"]})[:20]
    totals["slots_left_used"] = max((i["slots_used"] for i in run["idle"]), default=0)
    totals["server_tracebacks"] = log_text.count("Traceback")
    verdict = judge(run["samples"], cfg.warmup_fraction * run["wall_s"], tolerances)
    failures = [f"{m}: {v['slope_per_min']} per minute > {v['tolerance_per_min']}" for m, v in verdict.items()
                if not v["holds"]]
    lost = totals["turns_expected"] - totals["turns_completed"]
    failures += [f"{lost} turns not completed"] * bool(lost)
    failures += [f"{totals[k]} {k}" for k in ("errors", "rejections", "server_tracebacks") if totals[k]]
    failures += [f"{totals['slots_left_used']} slots still used between rounds"] * bool(totals["slots_left_used"])
    return {"config": asdict(cfg), "server_args": args, "server_log": str(server.log_path), **run,
            "totals": totals, "trend": verdict, "failures": failures, "holds": not failures}


def markdown(doc: dict) -> str:
    from loadtests.soak_report import markdown as render

    return render(doc)


def write(doc: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "soak.json", out / "soak.md"]
    # one line per top-level key: a 40-minute soak's samples would otherwise be thousands of lines
    paths[0].write_text("{\n" + ",\n".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in doc.items()) + "\n}\n")
    paths[1].write_text(markdown(doc))
    return paths


def add_parser(sub) -> None:
    d = SoakConfig()
    p = sub.add_parser("soak", help="a bounded soak: rounds of sessions for --minutes, RSS/fds/threads trend judged")
    p.add_argument("--minutes", type=float, default=d.minutes)
    p.add_argument("--users", type=int, default=d.users, help="sessions at once (the server's slots)")
    p.add_argument("--turns-per-session", type=int, default=d.turns_per_session)
    p.add_argument("--max-output-tokens", type=int, default=d.max_output_tokens)
    p.add_argument("--clip-s", type=float, default=d.clip_s)
    p.add_argument("--transport", choices=["websocket", "webrtc"], default=d.transport)
    p.add_argument("--interval-s", type=float, default=d.interval_s, help="seconds between samples")
    p.add_argument("--warmup-fraction", type=float, default=d.warmup_fraction,
                   help="the trend is fitted after this fraction of the run")
    p.add_argument("--tolerance", action="append", default=[], metavar="NAME=PER_MIN", type=_tolerance,
                   help=f"allowed growth per minute of {', '.join(METRICS)} (repeat; defaults {TOLERANCES})")
    p.add_argument("--server-arg", action="append", default=[], metavar="ARG", help="passed to `serve` (repeat)")
    p.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "lfm-audio-soak")
    p.set_defaults(func=cmd_soak)


def _tolerance(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    try:
        if name in METRICS:
            return name, float(value)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"NAME=PER_MIN with NAME one of {', '.join(METRICS)}, got {text!r}")


def cmd_soak(a: argparse.Namespace) -> int:
    from loadtests.sweep import environment

    if a.minutes <= 0 or a.interval_s <= 0 or not 0 <= a.warmup_fraction < 1:
        raise ValueError("--minutes and --interval-s must be positive, --warmup-fraction in [0, 1)")
    cfg = SoakConfig(minutes=a.minutes, users=a.users, turns_per_session=a.turns_per_session,
                     max_output_tokens=a.max_output_tokens, clip_s=a.clip_s, transport=a.transport,
                     interval_s=a.interval_s, warmup_fraction=a.warmup_fraction)
    env = environment(a.server_arg)  # the load average before the soak: what else the machine was doing
    tolerances = TOLERANCES | dict(a.tolerance)
    doc = {"environment": env, **soak(cfg, server_args=a.server_arg, tolerances=tolerances,
                                      log=lambda m: print(m, flush=True))}
    doc["environment"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    for path in write(doc, a.out):
        print("wrote", path)
    print("holds" if doc["holds"] else "FAILS: " + "; ".join(doc["failures"]))
    return 0 if doc["holds"] else 1
