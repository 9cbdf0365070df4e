"""One load run: N users against one server, a progress bar, a hard deadline, and the summary of what they saw."""

from __future__ import annotations

import asyncio
import random
import time

import numpy as np
from tqdm import tqdm

from loadtests.clips import Clip
from loadtests.scenario import Scenario
from loadtests.turns import METRICS, Turn
from loadtests.user import User, UserResult

__all__ = ["percentiles", "run_users", "summarize"]


def percentiles(values: list[float]) -> dict:
    v = np.asarray([x for x in values if x is not None], float)
    if v.size == 0:
        return {"count": 0, "mean": None, "p50": None, "p95": None, "p99": None, "max": None}
    p50, p95, p99 = np.percentile(v, [50, 95, 99])
    return {"count": int(v.size), "mean": float(v.mean()), "p50": float(p50), "p95": float(p95),
            "p99": float(p99), "max": float(v.max())}


def plan(scenario: Scenario) -> tuple[list[bool], list[list[bool]]]:
    """Who pushes to talk and which turns barge in: drawn from the seed, so a rerun repeats the mix."""
    rng = random.Random(scenario.seed)
    ptt = [rng.random() < scenario.push_to_talk for _ in range(scenario.users)]
    barge = [[t > 0 and rng.random() < scenario.barge_in for t in range(scenario.turns)]
             for _ in range(scenario.users)]
    return ptt, barge


async def run_users(scenario: Scenario, clip: Clip, url: str, *, progress: bool = True) -> dict:
    """Start the users along the ramp, wait for them all (or the deadline), and summarize."""
    ptt, barge = plan(scenario)
    origin = time.monotonic()
    stop_at = origin + scenario.duration_s if scenario.duration_s is not None else None
    total = scenario.users * scenario.turns if scenario.duration_s is None else None  # a duration: open-ended
    bar = tqdm(total=total, desc=f"{scenario.users} users", unit="turn",
               disable=not progress, leave=False, dynamic_ncols=True)
    seen = {"underruns": 0, "errors": 0}

    def on_turn(t: Turn) -> None:
        seen["underruns"] += t.player.underruns
        bar.update(1)
        bar.set_postfix(underruns=seen["underruns"], refresh=False)

    users = [User(i, scenario, clip, url, push_to_talk=ptt[i], barge_in=barge[i], on_turn_done=on_turn,
                  stop_at=stop_at) for i in range(scenario.users)]

    async def staggered(user: User, i: int) -> UserResult:
        await asyncio.sleep(scenario.ramp_s * i / scenario.users)
        return await user.run()

    tasks = [asyncio.create_task(staggered(u, i)) for i, u in enumerate(users)]
    _, late = await asyncio.wait(tasks, timeout=scenario.deadline())
    for task in late:  # past the hard deadline: stop them and say so
        task.cancel()
    await asyncio.gather(*late, return_exceptions=True)
    wall = time.monotonic() - origin
    bar.close()
    results = [u.result for u in users]
    for i in (i for i, t in enumerate(tasks) if t in late):
        results[i].errors.append(f"stopped at the run's deadline ({scenario.deadline():.0f} s)")
    for t, r in zip(tasks, results, strict=True):
        if t not in late and t.exception() is not None:
            r.errors.append(f"client crashed: {type(t.exception()).__name__}: {t.exception()}")
    return summarize(scenario, results, origin, wall)


def summarize(scenario: Scenario, results: list[UserResult], origin: float, wall_s: float) -> dict:
    turns = [t for r in results for t in r.turns]
    done = [t for t in turns if t.completed]
    figures = [t.figures() for t in done]
    admitted = [r for r in results if r.rejected is None]
    expected = len(admitted) * scenario.turns if scenario.duration_s is None else len(turns)
    summary = {
        "users": scenario.users,
        "sessions": sum(1 for r in admitted if not any(e.startswith("connect") for e in r.errors)),
        "rejections": sum(1 for r in results if r.rejected is not None),
        "turns_expected": expected,
        "turns_completed": len(done),
        "errors": sum(len(r.errors) for r in results),
        "unexpected_events": sum(r.unexpected for r in results),
        "cancelled": sum(1 for t in turns if t.status == "cancelled"),
        "underruns": sum(t.player.underruns for t in done),
        "turns_with_underruns": sum(1 for t in done if t.player.underruns),
        "gap_s": sum(t.player.gap_s for t in done),
        "audio_s": sum(t.player.received_s for t in done),
        "client_lag_max_s": max((r.mic_late_max_s for r in results), default=0.0),
        "wall_s": wall_s,
        **{k: percentiles([f[k] for f in figures]) for k in METRICS},
        "gap_per_turn_s": percentiles([t.player.gap_s for t in done]),
        # The server knows an end of speech only from its VAD: push-to-talk turns have none there.
        "ttfa_speech_end_vad_s": percentiles([f["ttfa_speech_end_s"] for t, f in zip(done, figures, strict=True)
                                              if not t.push_to_talk]),
    }
    return {"summary": summary,
            "error_messages": sorted({e for r in results for e in r.errors})[:20],
            "turns": [t.to_json(origin) for t in turns]}
