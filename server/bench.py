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
    from models.defaults import CHAT_PROMPT
    from models.sampling import SamplingParams
    from models.speech import SpeechDecoder
    from streaming.offline import open_chat, run_turn

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    ckpt = load_checkpoint(args.ckpt, dtype=getattr(torch, args.dtype))
    load_s = time.perf_counter() - t0
    speech = None
    if args.speech:
        speech = SpeechDecoder(ckpt.detokenizer or ckpt.mimi, rows=1)
    greedy = (SamplingParams(), SamplingParams())
    chat = open_chat(ckpt, "chat", capacity=args.capacity, compile=args.compile)
    # warm-up (and compilation) on a throwaway turn, then a fresh conversation on the same row
    t0 = time.perf_counter()
    run_turn(chat, speech, "chat", audio_16k=clip(1.0, 99).numpy(), max_new_tokens=24, sampling=greedy)
    warmup_s = time.perf_counter() - t0
    chat.restart()
    chat.turn("system", text=CHAT_PROMPT)
    turns = []
    first = time.perf_counter()
    for turn in range(args.turns):
        r = run_turn(chat, speech, "chat", audio_16k=clip(args.clip_seconds, turn).numpy(),
                     max_new_tokens=args.items, sampling=greedy)
        frames = sum(1 for i in r.items if not isinstance(i, int))
        turns.append({"items": len(r.items), "frames": frames, "seconds": r.seconds,
                      "first_item_s": r.first_item_seconds, "first_audio_s": r.first_audio_seconds,
                      "decode_frames_per_s": frames / (r.seconds - r.first_item_seconds)})
    print(json.dumps({"impl": "ours", "compile": args.compile, "load_s": load_s, "warmup_s": warmup_s,
                      "total_s": time.perf_counter() - first, "turns": turns,
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


VARIANTS = (  # label, extra worker flags
    ("ours, eager", []),
    ("ours, compiled", ["--compile"]),
    ("ours, compiled + streaming decoder", ["--compile", "--speech"]),
)


def run_bench(args: argparse.Namespace) -> int:
    args.out.mkdir(parents=True, exist_ok=True)
    ref_python = _reference_python(args)
    if args.suite in ("single", "all"):
        run_single_bench(args, ref_python)
    if args.suite in ("engine", "ttfa", "all"):
        from server.bench_engine import run_engine_bench

        parts = ("ttfa",) if args.suite == "ttfa" else ("throughput", "ttfa")
        run_engine_bench(args, ref_python, _checkpoint, parts)
    return 0


def protocol_costs(n: int = 2000) -> dict[str, float]:
    """Event-loop work per 80 ms audio frame on the WebSocket path, microseconds: encoding the PCM,
    base64, the JSON event; and the input side for 80 ms of microphone audio."""
    import base64

    import numpy as np

    from streaming.audio import AudioFormat, InputDecoder, OutputEncoder

    rng = np.random.default_rng(0)
    frame = (0.1 * rng.standard_normal(1920)).astype(np.float32)
    out: dict[str, float] = {}
    for name, fmt in (("pcm16", AudioFormat("pcm16", 24000)), ("g711_ulaw", AudioFormat("pcmu", 8000))):
        enc = OutputEncoder(fmt)
        t0 = time.perf_counter()
        for _ in range(n):
            data = enc.encode(frame)
            json.dumps({"type": "response.output_audio.delta", "event_id": "event_x", "response_id": "resp_x",
                        "item_id": "item_x", "output_index": 0, "content_index": 0,
                        "delta": base64.b64encode(data).decode()})
        out[f"send_{name}_us"] = 1e6 * (time.perf_counter() - t0) / n
    mic = base64.b64encode((0.1 * rng.standard_normal(1920) * 32767).astype("<i2").tobytes()).decode()
    dec = InputDecoder(AudioFormat("pcm16", 24000))
    t0 = time.perf_counter()
    for _ in range(n):
        event = json.loads(json.dumps({"type": "input_audio_buffer.append", "audio": mic}))
        dec.decode(base64.b64decode(event["audio"]))
    out["receive_pcm16_us"] = 1e6 * (time.perf_counter() - t0) / n
    return out


def run_single_bench(args: argparse.Namespace, ref_python: str | None) -> None:
    out: Path = args.out
    results = []
    for size in args.sizes.split(","):
        ckpt = _checkpoint(size, out)
        items = args.frames or DEFAULT_ITEMS[size]
        common = ["--ckpt", str(ckpt), "--items", str(items), "--threads", str(args.threads)]
        runs = {}
        if ref_python:
            runs["reference (liquid-audio 1.3.0)"] = _run([ref_python, str(ROOT / "bench/reference_bench.py"), *common])
        for label, flags in VARIANTS:
            runs[label] = _run([sys.executable, "-m", "server.bench", "--worker", *common, *flags])
        for label, r in runs.items():
            print(f"[{size}] {label}: {_fps(r):.1f} frames/s", file=sys.stderr)
        results.append({"size": size, "items": items, "runs": runs})
    costs = protocol_costs()
    (out / "bench.json").write_text(json.dumps({"single": results, "protocol_us_per_frame": costs}, indent=2))
    md = _markdown(results, args.threads) + "\n## Event-loop work per 80 ms audio frame (WebSocket JSON + base64)\n\n"
    md += "| step | microseconds | share of the 80 ms frame |\n|---|---|---|\n"
    md += "".join(f"| {k[:-3]} | {v:.0f} | {v / 80000:.3%} |\n" for k, v in costs.items())
    (out / "bench.md").write_text(md)
    print((out / "bench.md").read_text())


def _fps(run: dict) -> float:
    return run["turns"][0]["decode_frames_per_s"]


def _markdown(results: list[dict], threads: int) -> str:
    lines = [f"# lfm-audio bench: one session, greedy, fp32, {threads} threads, 4 s user clip", "",
             "| checkpoint | implementation | audio frames/s | vs reference | first audio s | warm-up s | "
             "peak RSS MB |", "|---|---|---|---|---|---|---|"]
    for res in results:
        ref = next((r for label, r in res["runs"].items() if label.startswith("reference")), None)
        for label, r in res["runs"].items():
            ratio = f"{_fps(r) / _fps(ref):.2f}x" if ref else "-"
            warm = f"{r['warmup_s']:.0f}" if "warmup_s" in r else "-"
            lines.append(f"| {res['size']} | {label} | {_fps(r):.1f} | {ratio} | "
                         f"{r['turns'][0]['first_audio_s']:.2f} | {warm} | {r['peak_rss_mb']:.0f} |")
    lines += ["", "audio frames/s: frames generated per second of the decode loop (from the first generated item "
              "to the last; 80 ms of audio each; real time needs 12.5/s plus the interleaved text steps). "
              "first audio: from the start of the turn (user clip encoding and prefill included) to the first "
              "audio frame. warm-up: one throwaway turn, including compilation."]
    return "\n".join(lines) + "\n"


def _worker_main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--engine-worker", action="store_true")
    ap.add_argument("--ttfa-worker", action="store_true")
    ap.add_argument("--sessions", type=int, default=1)
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--speech", action="store_true", help="also decode the audio (streaming)")
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--turns", type=int, default=1)
    ap.add_argument("--clip-seconds", type=float, default=4.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--capacity", type=int, default=4096)
    ap.add_argument("--compile", action="store_true")
    args = ap.parse_args()
    if args.engine_worker or args.ttfa_worker:
        from server.bench_engine import engine_worker, ttfa_worker

        (engine_worker if args.engine_worker else ttfa_worker)(args)
    else:
        worker(args)


if __name__ == "__main__":
    _worker_main()
