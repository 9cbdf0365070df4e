"""`python -m bench [--suite single|engine|ttfa|all] ...` from the repository root (`make bench`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.engine import SESSIONS, run_engine
from bench.harness import reference_python
from bench.single import DEFAULT_ITEMS, VARIANTS, run_single


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description="lfm-audio's speed against the reference "
                                "implementation, every measurement a subprocess of one run")
    p.add_argument("--sizes", default="tiny,full", help="checkpoint sizes to measure")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="torch device of our workers (the engine suite; cuda: bf16)")
    p.add_argument("--frames", type=int, default=0, help="audio frames per measurement (0 = per size default)")
    p.add_argument("--reference-venv", help="the reference's venv (default: tools/golden/setup_venv.sh)")
    p.add_argument("--no-reference", action="store_true", help="measure ours only")
    p.add_argument("--suite", choices=["single", "engine", "ttfa", "all"], default="all",
                   help="single: one session vs the reference; engine: batching and time to first audio; "
                        "ttfa: only the time to first audio")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help=f"our variants in the single suite, of {', '.join(VARIANTS)}")
    p.add_argument("--dtypes", default="float32,bfloat16", help="dtypes of the engine measurements")
    p.add_argument("--sessions", default=",".join(map(str, SESSIONS)),
                   help="concurrent sessions of the batching sweep")
    p.add_argument("--turns", type=int, default=5, help="turns of the time-to-first-audio conversation")
    p.add_argument("--ttfa-items", type=int, default=120,
                   help="items (text tokens + audio frames) per answer in that conversation: 120 is about 5 s of "
                        "speech, what a spoken answer is")
    p.add_argument("--compile", action="store_true", help="engine sweep with compiled decode steps")
    p.add_argument("--out", type=Path, default=Path("bench/out"))
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for flag, value, known in (("--variants", args.variants, VARIANTS), ("--sizes", args.sizes, DEFAULT_ITEMS)):
        unknown = set(value.split(",")) - set(known)
        if unknown:
            parser.error(f"{flag}: unknown {', '.join(sorted(unknown))}; choose from {', '.join(known)}")
    if not all(s.isdigit() and int(s) > 0 for s in args.sessions.split(",")):
        parser.error(f"--sessions: positive integers separated by commas, got {args.sessions!r}")
    args.out.mkdir(parents=True, exist_ok=True)
    ref_python = reference_python(args)
    if args.suite in ("single", "all"):
        run_single(args, ref_python)
    if args.suite in ("engine", "ttfa", "all"):
        run_engine(args, ref_python, ("ttfa",) if args.suite == "ttfa" else ("throughput", "ttfa"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
