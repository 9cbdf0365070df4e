"""What every suite needs: measurement subprocesses, checkpoints, the reference's venv, worker flags."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from models.defaults import CHAT_PROMPT, WEIGHTS

__all__ = [
    "ROOT", "add_worker_flags", "checkpoint", "common_flags", "our_worker", "reference", "reference_python", "run_json",
]

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_SCRIPT = ROOT / "bench" / "reference_bench.py"


def run_json(cmd: list[str]) -> dict:
    """Runs one measurement from the repository root; its last stdout line is its JSON result."""
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def our_worker(module: str, *flags: str) -> dict:
    """One of our measurements: `python -m bench.<module> FLAGS` with this interpreter."""
    return run_json([sys.executable, "-m", f"bench.{module}", *flags])


def reference(python: str, *flags: str) -> dict:
    """One of the reference's measurements, in its venv; the prompt is ours, passed as a flag."""
    return run_json([python, str(REFERENCE_SCRIPT), "--system-prompt", CHAT_PROMPT, *flags])


def checkpoint(size: str, out: Path) -> Path:
    """A seeded random checkpoint of `size` under `out`, written once and reused."""
    from models.random_checkpoint import RANDOM_MARKER, write_random_checkpoint

    path = out / f"ckpt-{size}"
    if not (path / RANDOM_MARKER).is_file():
        write_random_checkpoint(path, size, seed=0, detokenizer="both", progress=True)
    return path


def reference_python(args: argparse.Namespace) -> str | None:
    """The reference venv's interpreter (set up by tools/golden/setup_venv.sh unless given), or None."""
    if args.no_reference:
        return None
    if args.reference_venv:
        return str(Path(args.reference_venv) / "bin" / "python")
    venv = subprocess.run([str(ROOT / "tools/golden/setup_venv.sh")], capture_output=True, text=True, cwd=ROOT)
    if venv.returncode != 0:
        print(f"reference venv unavailable, measuring ours only:\n{venv.stderr[-2000:]}", file=sys.stderr)
        return None
    return str(ROOT / venv.stdout.strip().splitlines()[-1] / "bin" / "python")


def add_worker_flags(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags every worker of ours takes (the reference script takes the same names)."""
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--items", type=int, default=200, help="max items (text tokens + audio frames) per answer")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--weights", choices=WEIGHTS, default=WEIGHTS[0], help="models/quant.py's formats")
    ap.add_argument("--device", default="cpu")
    return ap


def common_flags(ckpt: Path, items: int, threads: int, dtype: str = "float32", device: str = "cpu") -> list[str]:
    return ["--ckpt", str(ckpt), "--items", str(items), "--threads", str(threads), "--dtype", dtype,
            "--device", device]
