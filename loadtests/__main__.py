"""python -m loadtests run | sweep | report | soak: see README.md."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from loadtests import soak
from loadtests.links import check_loopback
from loadtests.scenario import MAX_USERS, Scenario, Thresholds

DEFAULT_OUT = Path(tempfile.gettempdir()) / "lfm-audio-loadtest"  # scratch; `make loadtest` writes docs/loadtests


def _scenario_args(p: argparse.ArgumentParser) -> None:
    d = Scenario()
    g = p.add_argument_group("scenario")
    g.add_argument("--turns", type=int, default=d.turns, help="turns per user")
    g.add_argument("--transport", choices=["websocket", "webrtc"], default=d.transport)
    g.add_argument("--clip-text", default=d.clip_text, help="what espeak-ng says")
    g.add_argument("--clip-s", type=float, default=d.clip_s, help="the clip's voiced length, seconds")
    g.add_argument("--chunk-ms", type=int, default=d.chunk_ms, help="mic chunk per input_audio_buffer.append")
    g.add_argument("--silence-ms", type=int, default=d.silence_ms, help="server_vad silence_duration_ms")
    g.add_argument("--turn-detection", choices=["server_vad", "semantic_vad"], default=d.turn_detection)
    g.add_argument("--eagerness", choices=["low", "medium", "high", "auto"], default=d.eagerness,
                   help="semantic_vad's eagerness")
    g.add_argument("--speculative-start", choices=["on", "off"], default=None,
                   help="session.lfm_audio.speculative_start (default: the server's)")
    g.add_argument("--max-output-tokens", type=int, default=d.max_output_tokens)
    g.add_argument("--ramp-s", type=float, default=d.ramp_s, help="user starts spread over this many seconds")
    g.add_argument("--pause-s", type=float, default=d.pause_s, help="after a reply has played, before speaking")
    g.add_argument("--duration-s", type=float, default=d.duration_s,
                   help="start no turn after this many seconds (--turns stays the cap)")
    g.add_argument("--barge-in", type=float, default=d.barge_in, help="fraction of turns spoken over the reply")
    g.add_argument("--barge-in-after-s", type=float, default=d.barge_in_after_s)
    g.add_argument("--push-to-talk", type=float, default=d.push_to_talk,
                   help="fraction of users without server VAD (they commit and ask for the response)")
    g.add_argument("--seed", type=int, default=d.seed, help="draws the push-to-talk users and barge-in turns")
    g.add_argument("--turn-timeout-s", type=float, default=d.turn_timeout_s, help="longest wait inside a turn")
    g.add_argument("--deadline-s", type=float, default=None, help="hard limit on one run (default: derived)")
    t = p.add_argument_group("thresholds (what the sweep demands)")
    t.add_argument("--max-underruns", type=int, default=Thresholds().max_underruns)
    t.add_argument("--p95-commit-ms", type=float, default=Thresholds().p95_commit_to_audio_s * 1000,
                   help="p95 of committed -> first audio, ms")
    s = p.add_argument_group("server")
    s.add_argument("--url", help="an already running server (http://127.0.0.1:PORT) instead of starting one")
    s.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                   help="passed to `serve` (repeat; e.g. --server-arg=--device --server-arg=cuda)")
    o = p.add_argument_group("output")
    o.add_argument("--out", type=Path, default=DEFAULT_OUT, help="report folder")
    o.add_argument("--no-plots", action="store_true")
    o.add_argument("--no-progress", action="store_true")


def _scenario(a: argparse.Namespace, users: int) -> Scenario:
    return Scenario(users=users, turns=a.turns, transport=a.transport, clip_text=a.clip_text, clip_s=a.clip_s,
                    chunk_ms=a.chunk_ms, silence_ms=a.silence_ms, max_output_tokens=a.max_output_tokens,
                    turn_detection=a.turn_detection, eagerness=a.eagerness,
                    speculative_start=None if a.speculative_start is None else a.speculative_start == "on",
                    ramp_s=a.ramp_s, pause_s=a.pause_s, duration_s=a.duration_s, barge_in=a.barge_in,
                    barge_in_after_s=a.barge_in_after_s, push_to_talk=a.push_to_talk, seed=a.seed,
                    turn_timeout_s=a.turn_timeout_s, deadline_s=a.deadline_s)


def _thresholds(a: argparse.Namespace) -> Thresholds:
    return Thresholds(max_underruns=a.max_underruns, p95_commit_to_audio_s=a.p95_commit_ms / 1000)


def _users(text: str) -> list[int]:
    try:
        values = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"a comma-separated list of user counts, got {text!r}") from None
    if not values or values[0] < 1 or values[-1] > MAX_USERS:
        raise argparse.ArgumentTypeError(f"user counts must be 1..{MAX_USERS}")
    return values


def _print_run(run: dict) -> None:
    from loadtests.report import crosscheck_table, summary_table

    print(summary_table([run]))
    print()
    print(crosscheck_table(run))
    for e in run.get("error_messages", []):
        print("error:", e)
    print(flush=True)


def _doc(a: argparse.Namespace, runs: list[dict], scenario: Scenario, **extra) -> dict:
    from loadtests.sweep import environment

    return {"environment": environment(a.server_arg), "scenario": scenario.to_json(),
            "thresholds": _thresholds(a).to_json(), **extra, "runs": runs}


def cmd_run(a: argparse.Namespace) -> int:
    from loadtests.report import write
    from loadtests.sweep import run_at

    scenario = _scenario(a, a.users)
    run = run_at(scenario, url=a.url, server_args=a.server_arg, max_sessions=a.max_sessions, log_dir=a.out,
                 thresholds=_thresholds(a), progress=not a.no_progress)
    _print_run(run)
    for path in write(_doc(a, [run], scenario), a.out, plots=not a.no_plots):
        print("wrote", path)
    return 0 if not run["summary"]["errors"] else 1


def cmd_sweep(a: argparse.Namespace) -> int:
    from loadtests.report import write
    from loadtests.sweep import sweep

    scenario = _scenario(a, a.users[0])
    done: list[dict] = []

    def after_each(run: dict) -> None:  # the report grows run by run: an interrupted sweep keeps what it measured
        done.append(run)
        _print_run(run)
        write(_doc(a, sorted(done, key=lambda r: r["summary"]["users"]), scenario), a.out, plots=False)

    result = sweep(scenario, a.users, url=a.url, server_args=a.server_arg, log_dir=a.out,
                   thresholds=_thresholds(a), keep_going=a.keep_going, bisect=a.bisect,
                   progress=not a.no_progress, report=after_each)
    for path in write(_doc(a, result["runs"], scenario, capacity=result["capacity"]), a.out,
                      plots=not a.no_plots):
        print("wrote", path)
    print(f"capacity: {result['capacity']} users hold the thresholds")
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    from loadtests.report import from_json

    for path in from_json(a.json, a.out, plots=not a.no_plots):
        print("wrote", path)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="one run at N users")
    p.add_argument("--users", type=int, default=1, help=f"simulated users, 1..{MAX_USERS}")
    p.add_argument("--max-sessions", type=int, help="the started server's slots (default: --users)")
    _scenario_args(p)
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("sweep", help="runs at several N, a fresh server each; the largest N holding the thresholds")
    p.add_argument("--users", type=_users, default=[1, 2, 4, 8], help="comma-separated N (default 1,2,4,8)")
    p.add_argument("--keep-going", action="store_true", help="measure every N even after one fails")
    p.add_argument("--bisect", action="store_true", help="narrow down between the last N held and the first failed")
    _scenario_args(p)
    p.set_defaults(func=cmd_sweep)
    p = sub.add_parser("report", help="regenerate report.md and the plots from a report.json")
    p.add_argument("json", type=Path)
    p.add_argument("--out", type=Path, help="folder (default: the JSON's)")
    p.add_argument("--no-plots", action="store_true")
    p.set_defaults(func=cmd_report)
    soak.add_parser(sub)
    a = parser.parse_args(argv)
    try:
        if getattr(a, "url", None):
            check_loopback(a.url)
        return a.func(a)
    except (ValueError, RuntimeError) as e:
        print(f"loadtests: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
