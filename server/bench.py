"""`lfm-audio bench`: our speed against the reference implementation's, measured in one run.

Every measurement runs in a fresh subprocess (ours with this interpreter, the reference's in its own
venv via bench/reference_bench.py) with the same checkpoint, prompt, thread count and greedy decoding,
so that the ratios compare like with like and peak memory is per process. Results go to
bench/out/bench.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["run_bench"]

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ITEMS = {"tiny": 300, "full": 36}


def clip(seconds: float, seed: int):
    """The same synthetic 16 kHz speech-like clip as bench/reference_bench.py."""
    import torch

    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * 16000)) / 16000
    f0 = 120 + 40 * torch.sin(2 * math.pi * 0.7 * t)
    phase = 2 * math.pi * torch.cumsum(f0, 0) / 16000
    x = sum(torch.sin(k * phase) / k for k in range(1, 6)) * (0.5 + 0.5 * torch.sin(2 * math.pi * 3 * t) ** 2)
    return (0.2 * x + 0.02 * torch.randn(t.shape, generator=g)).float()


def worker(args: argparse.Namespace) -> None:
    """Our side of one measurement; prints one JSON line."""
    import torch

    from models.checkpoint import load_checkpoint
    from models.sampling import SamplingParams
    from models.speech import SpeechDecoder
    from server.offline import open_chat, run_turn

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    ckpt = load_checkpoint(args.ckpt, dtype=getattr(torch, args.dtype))
    load_s = time.perf_counter() - t0
    speech = None
    if args.speech:
        speech = SpeechDecoder(ckpt.detokenizer or ckpt.mimi, rows=1)
    greedy = (SamplingParams(), SamplingParams())
    warm = open_chat(ckpt, "chat")
    run_turn(warm, speech, "chat", audio_16k=clip(1.0, 99).numpy(), max_new_tokens=8, sampling=greedy)

    chat = open_chat(ckpt, "chat", capacity=8192)
    turns = []
    for turn in range(args.turns):
        r = run_turn(chat, speech, "chat", audio_16k=clip(args.clip_seconds, turn).numpy(),
                     max_new_tokens=args.items, sampling=greedy)
        frames = sum(1 for i in r.items if not isinstance(i, int))
        turns.append({"items": len(r.items), "frames": frames, "seconds": r.seconds,
                      "first_item_s": r.first_item_seconds, "first_audio_s": r.first_audio_seconds,
                      "decode_frames_per_s": frames / (r.seconds - r.first_item_seconds)})
    print(json.dumps({"impl": "ours", "load_s": load_s, "turns": turns,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def _run(cmd: list[str]) -> dict:
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _checkpoint(size: str, out: Path) -> Path:
    from models.random_checkpoint import RANDOM_MARKER, write_random_checkpoint

    path = out / f"ckpt-{size}"
    if not (path / RANDOM_MARKER).is_file():
        write_random_checkpoint(path, size, seed=0, detokenizer="both", progress=True)
    return path


def _reference_python(args: argparse.Namespace) -> str | None:
    if args.no_reference:
        return None
    if args.reference_venv:
        return str(Path(args.reference_venv) / "bin" / "python")
    venv = subprocess.run([str(ROOT / "tools/golden/setup_venv.sh")], capture_output=True, text=True, cwd=ROOT)
    if venv.returncode != 0:
        print(f"reference venv unavailable, measuring ours only:\n{venv.stderr[-2000:]}", file=sys.stderr)
        return None
    return str(ROOT / venv.stdout.strip().splitlines()[-1] / "bin" / "python")


def run_bench(args: argparse.Namespace) -> int:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    ref_python = _reference_python(args)
    rows = []
    for size in args.sizes.split(","):
        ckpt = _checkpoint(size, out)
        items = args.frames or DEFAULT_ITEMS[size]
        common = ["--ckpt", str(ckpt), "--items", str(items), "--threads", str(args.threads)]
        ours = _run([sys.executable, "-m", "server.bench", "--worker", *common])
        row = {"size": size, "ours": ours}
        print(f"[{size}] ours: {ours['turns'][0]['decode_frames_per_s']:.1f} frames/s", file=sys.stderr)
        if ref_python:
            row["reference"] = _run([ref_python, str(ROOT / "bench/reference_bench.py"), *common])
            print(f"[{size}] reference: {row['reference']['turns'][0]['decode_frames_per_s']:.1f} frames/s",
                  file=sys.stderr)
        row["ours_with_speech"] = _run([sys.executable, "-m", "server.bench", "--worker", "--speech", *common])
        rows.append(row)
    (out / "bench.json").write_text(json.dumps(rows, indent=2))
    (out / "bench.md").write_text(_markdown(rows, args.threads))
    print((out / "bench.md").read_text())
    return 0


def _markdown(rows: list[dict], threads: int) -> str:
    lines = [f"# lfm-audio bench (one session, greedy, fp32, {threads} threads, 4 s user clip)", "",
             "| checkpoint | ours frames/s | reference frames/s | ratio | ours + decoder frames/s | "
             "ours peak RSS MB | reference peak RSS MB |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        o = r["ours"]["turns"][0]["decode_frames_per_s"]
        s = r["ours_with_speech"]["turns"][0]["decode_frames_per_s"]
        ref = r.get("reference")
        f = ref["turns"][0]["decode_frames_per_s"] if ref else float("nan")
        lines.append(f"| {r['size']} | {o:.1f} | {f:.1f} | {o / f:.2f}x | {s:.1f} | {r['ours']['peak_rss_mb']:.0f} | "
                     f"{ref['peak_rss_mb'] if ref else float('nan'):.0f} |")
    lines += ["", "frames/s: audio frames generated per second of the decode loop (after the first item); "
              "real time needs 12.5 frames/s plus the interleaved text steps."]
    return "\n".join(lines) + "\n"


def _worker_main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--speech", action="store_true", help="also decode the audio (streaming)")
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--turns", type=int, default=1)
    ap.add_argument("--clip-seconds", type=float, default=4.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="float32")
    worker(ap.parse_args())


if __name__ == "__main__":
    _worker_main()
