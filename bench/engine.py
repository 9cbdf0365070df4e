"""What batching and kept state buy, on the engine as the server runs it (speech decoding included).

(a) throughput: aggregate generated audio frames per second with 1, 2, 4, 8, 16 concurrent sessions
    on one engine, per checkpoint size and dtype.
(b) ttfa: time to first audio of turns 1..N of a conversation with 4 s user clips: our engine (state
    kept, only the new turn prefilled) against the reference, which re-prefills the whole history and
    re-encodes every clip on each turn.

`python -m bench.engine throughput|ttfa --ckpt DIR ...` is our side of one measurement (one JSON line);
`run_engine`, called by `python -m bench --suite engine|ttfa`, runs them and writes engine.{md,json,png}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench.clips import read_clips, write_clips
from bench.harness import add_worker_flags, checkpoint, common_flags, our_worker, reference
from bench.report import engine_markdown, engine_plot

__all__ = ["SESSIONS", "run_engine"]

SESSIONS = (1, 2, 4, 8, 16)
THROUGHPUT_ITEMS = {"tiny": 120, "full": 24}  # per session and measurement
ENGINE_CONTEXT = 2048  # positions per slot: room for the ttfa conversation (5 turns of clip + answer, under 1000)
WARMUP_ITEMS = {"throughput": 24, "ttfa": 16}
RESPONSE_TIMEOUT_S = 3600  # a full-size sweep point on 2 CPU cores takes minutes, not hours


def run_engine(args: argparse.Namespace, ref_python: str | None,
               parts: tuple[str, ...] = ("throughput", "ttfa")) -> dict:
    """Runs the parts asked for; a part not run keeps its results from the last run (engine.json)."""
    out: Path = args.out
    saved = out / "engine.json"
    results: dict = json.loads(saved.read_text()) if saved.is_file() else {}
    sizes = args.sizes.split(",")
    dtypes = args.dtypes.split(",")
    if "throughput" in parts:
        results["throughput"] = []
        for size in sizes:
            for dtype in dtypes:
                for n in (int(s) for s in args.sessions.split(",")):
                    flags = [*common_flags(checkpoint(size, out), THROUGHPUT_ITEMS[size], args.threads, dtype,
                                           args.device),
                             "--sessions", str(n)] + (["--compile"] if args.compile else [])
                    r = our_worker("engine", "throughput", *flags)
                    r.update(size=size, dtype=dtype)
                    results["throughput"].append(r)
                    print(f"[engine {size} {dtype}] {n} sessions: {r['frames_per_s']:.1f} frames/s", file=sys.stderr)
    if "ttfa" in parts:
        size = "full" if "full" in sizes else sizes[0]
        clips = write_clips(out / f"clips-{args.turns}.safetensors", turns=args.turns)
        results["ttfa"] = []
        for dtype in dtypes:
            common = [*common_flags(checkpoint(size, out), args.ttfa_items, args.threads, dtype, args.device),
                      "--clips", str(clips)]
            entry = {"size": size, "dtype": dtype, "items_per_turn": args.ttfa_items,
                     "ours": our_worker("engine", "ttfa", *common)}
            if ref_python:
                entry["reference"] = reference(ref_python, *common)
            results["ttfa"].append(entry)
            print(f"[ttfa {size} {dtype}] turn {args.turns}: ours {entry['ours']['turns'][-1]['first_audio_s']:.2f} s",
                  file=sys.stderr)
    saved.write_text(json.dumps(results, indent=2))
    (out / "engine.md").write_text(engine_markdown(results, args.threads))
    engine_plot(results, out / "engine.png")
    print((out / "engine.md").read_text())
    return results


# ---- our side of one measurement (a subprocess)
def _engine(args: argparse.Namespace, sessions: int):
    import torch

    from models.checkpoint import load_checkpoint
    from streaming.engine import Engine, EngineConfig

    torch.set_num_threads(args.threads)
    ckpt = load_checkpoint(args.ckpt, device=args.device, dtype=getattr(torch, args.dtype), weights=args.weights)
    # threads: the engine's own choice (1 for a small model, else args.threads set above)
    eng = Engine(ckpt, EngineConfig(max_sessions=sessions, max_context=ENGINE_CONTEXT, compile=args.compile))
    eng.start()
    return eng


def _greedy(response_id: str, item_id: str, items: int):
    from streaming.messages import ResponseRequest

    return ResponseRequest(response_id, item_id, max_tokens=items, audio_temperature=0.0)


def throughput_worker(args: argparse.Namespace) -> dict:
    """(a) one point: N sessions generating at once."""
    from models.defaults import CHAT_PROMPT
    from streaming.collector import EventCollector

    eng = _engine(args, args.sessions)
    sink = EventCollector()
    handles = [eng.open(sink) for _ in range(args.sessions)]
    for n, h in enumerate(handles):
        h.add_item("sys", "system", text=CHAT_PROMPT)
        h.add_item("u0", "user", text=f"Hello number {n}, tell me a story.")
    t0 = time.perf_counter()
    for h in handles:  # warm-up (and compilation)
        h.respond(_greedy(f"warm{h.id}", f"aw{h.id}", WARMUP_ITEMS["throughput"]))
    sink.wait_all([f"warm{h.id}" for h in handles], RESPONSE_TIMEOUT_S)
    warmup = time.perf_counter() - t0
    for h in handles:
        h.add_item("u1", "user", text="And then?")
    eng.stats()  # drain
    start = time.perf_counter()
    ids = [f"r{h.id}" for h in handles]
    for h, rid in zip(handles, ids, strict=True):
        h.respond(_greedy(rid, f"a{h.id}", args.items))
    done = sink.wait_all(ids, RESPONSE_TIMEOUT_S)
    frames = sum(d.usage.output_audio_frames for d in done)
    stamps = [t for rid in ids for t in sink.audio_times(rid)]
    first, last = min(stamps), max(stamps)
    stats = eng.stats()
    eng.stop()
    return {"sessions": args.sessions, "frames": frames, "seconds": last - first,
            "wall_s": time.perf_counter() - start, "warmup_s": warmup, "frames_per_s": frames / (last - first),
            "mean_step_ms": 1000 * sum(stats.step_seconds) / max(1, len(stats.step_seconds)),
            "mean_batch": sum(stats.batch_sizes) / max(1, len(stats.batch_sizes))}


def ttfa_worker(args: argparse.Namespace) -> dict:
    """(b) ours: a conversation, one turn per user clip; time to first audio per turn."""
    from models.defaults import CHAT_PROMPT
    from streaming.collector import EventCollector

    warmup_clip, clips = read_clips(args.clips)
    eng = _engine(args, 2)  # the warm-up session's slot is released asynchronously
    sink = EventCollector()
    h = eng.open(sink)
    h.add_item("sys", "system", text=CHAT_PROMPT)
    h.add_item("warm", "user", audio=warmup_clip.numpy())  # warm-up turn, then a fresh conversation
    h.respond(_greedy("warm", "aw", WARMUP_ITEMS["ttfa"]))
    sink.wait("warm", RESPONSE_TIMEOUT_S)
    h.close()
    h = eng.open(sink)
    h.add_item("sys", "system", text=CHAT_PROMPT)
    turns = []
    for turn, audio in enumerate(clips):
        rid = f"t{turn}"
        audio = audio.numpy()
        t0 = time.perf_counter()
        h.add_item(f"u{turn}", "user", audio=audio)
        h.respond(_greedy(rid, f"a{turn}", args.items))
        done = sink.wait(rid, RESPONSE_TIMEOUT_S)
        turns.append({"first_audio_s": sink.first_audio(rid) - t0, "items": len(done.items),
                      "input_positions": done.usage.input_positions, "cached_positions": done.usage.cached_positions})
    eng.stop()
    return {"impl": "ours", "turns": turns}


def main() -> None:
    ap = argparse.ArgumentParser(description="our side of one engine measurement; prints one JSON line")
    parts = ap.add_subparsers(dest="part", required=True)
    p = add_worker_flags(parts.add_parser("throughput", help="(a) one point of the batching sweep"))
    p.add_argument("--sessions", type=int, default=1)
    p.set_defaults(worker=throughput_worker)
    p = add_worker_flags(parts.add_parser("ttfa", help="(b) our conversation"))
    p.add_argument("--clips", type=Path, required=True, help="bench/clips.py's file: warm-up and user clips")
    p.set_defaults(worker=ttfa_worker)
    args = ap.parse_args()
    print(json.dumps(args.worker(args)))


if __name__ == "__main__":
    main()
