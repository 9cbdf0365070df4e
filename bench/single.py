"""One session, ours against the reference: audio frames per second of the decode loop, first audio,
warm-up, peak memory; and the event-loop cost of the WebSocket audio path. Writes bench.{md,json}.

`python -m bench.single --ckpt DIR ...` is our side of one measurement (prints one JSON line); the
orchestration is `run_single`, called by `python -m bench --suite single`.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

from bench.clips import read_clips, write_clips
from bench.harness import add_worker_flags, checkpoint, common_flags, our_worker, reference
from bench.report import single_markdown

__all__ = ["DEFAULT_ITEMS", "VARIANTS", "protocol_costs", "run_single"]

DEFAULT_ITEMS = {"tiny": 300, "full": 36}  # per measurement: a few seconds of decoding on this CPU
WARMUP_ITEMS = 24
VARIANTS = {  # key: (label, extra worker flags)
    "eager": ("ours, eager", []),
    "compiled": ("ours, compiled", ["--compile"]),
    "speech": ("ours, compiled + streaming decoder", ["--compile", "--speech"]),
}
REFERENCE_LABEL = "reference (liquid-audio 1.3.0)"


def run_single(args: argparse.Namespace, ref_python: str | None) -> list[dict]:
    out: Path = args.out
    clips = write_clips(out / "clips-1.safetensors", turns=1)
    results = []
    for size in args.sizes.split(","):
        items = args.frames or DEFAULT_ITEMS[size]
        common = [*common_flags(checkpoint(size, out), items, args.threads), "--clips", str(clips)]
        runs = {}
        if ref_python:
            runs[REFERENCE_LABEL] = reference(ref_python, *common)
        for key in args.variants.split(","):
            label, flags = VARIANTS[key]
            runs[label] = our_worker("single", *common, *flags)
        for label, r in runs.items():
            print(f"[{size}] {label}: {r['turns'][0]['decode_frames_per_s']:.1f} frames/s", file=sys.stderr)
        results.append({"size": size, "items": items, "runs": runs})
    costs = protocol_costs()
    (out / "bench.json").write_text(json.dumps({"single": results, "protocol_us_per_frame": costs}, indent=2))
    (out / "bench.md").write_text(single_markdown(results, costs, args.threads))
    print((out / "bench.md").read_text())
    return results


def protocol_costs(n: int = 2000) -> dict[str, float]:
    """Event-loop work per 80 ms audio frame on the WebSocket path, microseconds: encoding the PCM,
    base64, the JSON event; and the input side for 80 ms of microphone audio."""
    import base64

    import numpy as np

    from models.defaults import FRAME_S, FRAME_SAMPLES, WIRE_RATE
    from streaming.audio import AudioFormat, InputDecoder, OutputEncoder

    rng = np.random.default_rng(0)
    frame = (0.1 * rng.standard_normal(FRAME_SAMPLES)).astype(np.float32)
    out: dict[str, float] = {}
    for name in ("pcm16", "g711_ulaw"):
        enc = OutputEncoder(AudioFormat.parse(name))
        t0 = time.perf_counter()
        for _ in range(n):
            data = enc.encode(frame)
            json.dumps({"type": "response.output_audio.delta", "event_id": "event_x", "response_id": "resp_x",
                        "item_id": "item_x", "output_index": 0, "content_index": 0,
                        "delta": base64.b64encode(data).decode()})
        out[f"send_{name}_us"] = 1e6 * (time.perf_counter() - t0) / n
    mic_pcm16 = (0.1 * rng.standard_normal(round(WIRE_RATE * FRAME_S)) * 32767).astype("<i2")
    mic = base64.b64encode(mic_pcm16.tobytes()).decode()
    dec = InputDecoder(AudioFormat.parse("pcm16"))
    t0 = time.perf_counter()
    for _ in range(n):
        event = json.loads(json.dumps({"type": "input_audio_buffer.append", "audio": mic}))
        dec.decode(base64.b64decode(event["audio"]))
    out["receive_pcm16_us"] = 1e6 * (time.perf_counter() - t0) / n
    return out


# ---- our side of one measurement (a subprocess)
def _turn(chat, speak: bool, audio_16k, items: int):
    """One greedy chat turn through the one-slot engine (streaming/offline.py: the only calls into it)."""
    from models.sampling import SamplingParams
    from streaming.offline import run_turn

    greedy = (SamplingParams(), SamplingParams())
    return run_turn(chat, "chat", speak=speak, audio_16k=audio_16k.numpy(), max_new_tokens=items, sampling=greedy)


def _open(ckpt, capacity: int, compile: bool):
    from streaming.offline import open_chat

    return open_chat(ckpt, "chat", capacity=capacity, compile=compile)


def worker(args: argparse.Namespace, ckpt=None) -> dict:
    """One measurement; `ckpt`: an already loaded checkpoint (bench/breakdown.py), else args.ckpt is loaded."""
    import torch

    from models.checkpoint import load_checkpoint
    from models.defaults import CHAT_PROMPT

    torch.set_num_threads(args.threads)
    warmup_clip, clips = read_clips(args.clips)
    t0 = time.perf_counter()
    if ckpt is None:
        ckpt = load_checkpoint(args.ckpt, device=args.device, dtype=getattr(torch, args.dtype), weights=args.weights)
    load_s = time.perf_counter() - t0
    chat = _open(ckpt, args.capacity, args.compile)
    # warm-up (and compilation) on a throwaway turn, then a fresh conversation on the same row
    t0 = time.perf_counter()
    _turn(chat, args.speech, warmup_clip, WARMUP_ITEMS)
    warmup_s = time.perf_counter() - t0
    chat.restart()
    chat.turn("system", text=CHAT_PROMPT)
    turns = []
    first = time.perf_counter()
    for audio in clips:
        r = _turn(chat, args.speech, audio, args.items)
        frames = sum(1 for i in r.items if not isinstance(i, int))
        turns.append({"items": len(r.items), "frames": frames, "seconds": r.seconds,
                      "first_item_s": r.first_item_seconds, "first_audio_s": r.first_audio_seconds,
                      "decode_frames_per_s": frames / (r.seconds - r.first_item_seconds)})
    return {"impl": "ours", "compile": args.compile, "load_s": load_s, "warmup_s": warmup_s,
            "total_s": time.perf_counter() - first, "turns": turns,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    from models.defaults import MAX_CONTEXT

    ap = add_worker_flags(argparse.ArgumentParser(description="our side of one single-session measurement; prints "
                                                                   "one JSON line"))
    ap.add_argument("--clips", type=Path, required=True, help="bench/clips.py's file: warm-up and user clips")
    ap.add_argument("--speech", action="store_true", help="also decode the audio (streaming)")
    ap.add_argument("--capacity", type=int, default=MAX_CONTEXT, help="positions of the session's state")
    print(json.dumps(worker(ap.parse_args())))


if __name__ == "__main__":
    main()
