"""`lfm-audio bench --suite engine`: what batching and kept state buy, measured in one run.

(a) Aggregate generated audio frames per second with 1, 2, 4, 8, 16 concurrent sessions on one engine
    (tiny and full-size checkpoints; fp32 and bf16), speech decoding included, as the server runs.
(b) Time to first audio of turns 1..5 of a conversation with 4 s user clips: our engine (state kept,
    only the new turn prefilled) against the reference, which re-prefills the whole history and
    re-encodes every clip on each turn.

Every measurement is a subprocess (ours: this interpreter; the reference: its venv), so that memory
and warm-up do not leak between them. Writes bench/out/engine.{md,json,png}.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

__all__ = ["engine_worker", "run_engine_bench", "ttfa_worker"]

ROOT = Path(__file__).resolve().parents[1]
SESSIONS = (1, 2, 4, 8, 16)


class _Collector:
    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.done: dict[str, object] = {}
        self.first_audio: dict[str, float] = {}
        self.audio_times: list[float] = []
        self.failed: str | None = None

    def __call__(self, event) -> None:
        from streaming.messages import AudioDelta, ResponseDone, SessionFailed

        with self.cond:
            if isinstance(event, AudioDelta):
                now = time.perf_counter()
                self.first_audio.setdefault(event.response_id, now)
                self.audio_times.append(now)
            elif isinstance(event, ResponseDone):
                self.done[event.response_id] = event
            elif isinstance(event, SessionFailed):
                self.failed = event.message
            self.cond.notify_all()

    def wait(self, ids: list[str], timeout: float = 3600) -> None:
        with self.cond:
            ok = self.cond.wait_for(lambda: self.failed or all(i in self.done for i in ids), timeout)
        if self.failed or not ok:
            raise RuntimeError(self.failed or "timed out")


def _engine(args: argparse.Namespace, sessions: int):
    import torch

    from models.checkpoint import load_checkpoint
    from streaming.engine import Engine, EngineConfig

    torch.set_num_threads(args.threads)
    ckpt = load_checkpoint(args.ckpt, dtype=getattr(torch, args.dtype))
    # threads: the engine's own choice (1 for a small model, else args.threads set above)
    eng = Engine(ckpt, EngineConfig(max_sessions=sessions, max_context=args.context, compile=args.compile))
    eng.start()
    return eng


def engine_worker(args: argparse.Namespace) -> None:
    """(a) one point: N sessions generating at once. Prints one JSON line."""
    from models.defaults import CHAT_PROMPT
    from streaming.messages import ResponseRequest

    eng = _engine(args, args.sessions)
    sink = _Collector()
    handles = [eng.open(sink) for _ in range(args.sessions)]
    for n, h in enumerate(handles):
        h.add_item("sys", "system", text=CHAT_PROMPT)
        h.add_item("u0", "user", text=f"Hello number {n}, tell me a story.")
    t0 = time.perf_counter()
    for h in handles:  # warm-up (and compilation)
        h.respond(ResponseRequest(f"warm{h.id}", f"aw{h.id}", max_tokens=24, audio_temperature=0.0))
    sink.wait([f"warm{h.id}" for h in handles])
    warmup = time.perf_counter() - t0
    for h in handles:
        h.add_item("u1", "user", text="And then?")
    eng.stats()  # drain
    start = time.perf_counter()
    sink.audio_times.clear()
    for h in handles:
        h.respond(ResponseRequest(f"r{h.id}", f"a{h.id}", max_tokens=args.items, audio_temperature=0.0))
    sink.wait([f"r{h.id}" for h in handles])
    frames = sum(sink.done[f"r{h.id}"].usage.output_audio_frames for h in handles)
    first, last = min(sink.audio_times), max(sink.audio_times)
    stats = eng.stats()
    eng.stop()
    print(json.dumps({"sessions": args.sessions, "frames": frames, "seconds": last - first,
                      "wall_s": time.perf_counter() - start, "warmup_s": warmup,
                      "frames_per_s": frames / (last - first),
                      "mean_step_ms": 1000 * sum(stats.step_seconds) / max(1, len(stats.step_seconds)),
                      "mean_batch": sum(stats.batch_sizes) / max(1, len(stats.batch_sizes))}))


def ttfa_worker(args: argparse.Namespace) -> None:
    """(b) ours: a conversation of `turns` turns, 4 s clips; time to first audio per turn."""
    from models.defaults import CHAT_PROMPT
    from server.bench import clip
    from streaming.messages import ResponseRequest

    eng = _engine(args, 2)  # the warm-up session's slot is released asynchronously
    sink = _Collector()
    h = eng.open(sink)
    h.add_item("sys", "system", text=CHAT_PROMPT)
    h.add_item("warm", "user", audio=clip(1.0, 99).numpy())  # warm-up turn, then a fresh conversation
    h.respond(ResponseRequest("warm", "aw", max_tokens=16, audio_temperature=0.0))
    sink.wait(["warm"])
    h.close()
    h = eng.open(sink)
    h.add_item("sys", "system", text=CHAT_PROMPT)
    turns = []
    for turn in range(args.turns):
        rid = f"t{turn}"
        audio = clip(args.clip_seconds, turn).numpy()
        t0 = time.perf_counter()
        h.add_item(f"u{turn}", "user", audio=audio)
        h.respond(ResponseRequest(rid, f"a{turn}", max_tokens=args.items, audio_temperature=0.0))
        sink.wait([rid])
        done = sink.done[rid]
        turns.append({"first_audio_s": sink.first_audio[rid] - t0, "items": len(done.items),
                      "input_positions": done.usage.input_positions, "cached_positions": done.usage.cached_positions})
    eng.stop()
    print(json.dumps({"impl": "ours", "turns": turns}))


def run_engine_bench(args: argparse.Namespace, ref_python: str | None, checkpoint,
                     parts: tuple[str, ...] = ("throughput", "ttfa")) -> dict:
    """Runs the parts asked for; a part not run keeps its results from the last run (engine.json)."""
    from server.bench import _run

    out: Path = args.out
    saved = out / "engine.json"
    results: dict = json.loads(saved.read_text()) if saved.is_file() else {}
    sizes = args.sizes.split(",")
    if "throughput" in parts:
        results["throughput"] = []
        for size in sizes:
            ckpt = checkpoint(size, out)
            items = 24 if size == "full" else 120
            for dtype in args.dtypes.split(","):
                for n in SESSIONS:
                    cmd = [sys.executable, "-m", "server.bench", "--engine-worker", "--ckpt", str(ckpt), "--sessions",
                           str(n), "--items", str(items), "--threads", str(args.threads), "--dtype", dtype]
                    if args.compile:
                        cmd.append("--compile")
                    r = _run(cmd)
                    r.update(size=size, dtype=dtype)
                    results["throughput"].append(r)
                    print(f"[engine {size} {dtype}] {n} sessions: {r['frames_per_s']:.1f} frames/s", file=sys.stderr)
    if "ttfa" in parts:
        size = "full" if "full" in sizes else sizes[0]
        ckpt = checkpoint(size, out)
        results["ttfa"] = []
        for dtype in args.dtypes.split(","):
            common = ["--ckpt", str(ckpt), "--turns", str(args.turns), "--items", str(args.ttfa_items),
                      "--threads", str(args.threads), "--dtype", dtype]
            entry = {"size": size, "dtype": dtype, "items_per_turn": args.ttfa_items,
                     "ours": _run([sys.executable, "-m", "server.bench", "--ttfa-worker", *common])}
            if ref_python:
                entry["reference"] = _run([ref_python, str(ROOT / "bench/reference_bench.py"), *common])
            results["ttfa"].append(entry)
            print(f"[ttfa {size} {dtype}] turn {args.turns}: ours {entry['ours']['turns'][-1]['first_audio_s']:.2f} s",
                  file=sys.stderr)
    saved.write_text(json.dumps(results, indent=2))
    (out / "engine.md").write_text(_markdown(results, args.threads))
    _plot(results, out / "engine.png")
    print((out / "engine.md").read_text())
    return results


def _markdown(results: dict, threads: int) -> str:
    lines = [f"# lfm-audio engine bench ({threads} threads)", "", "## (a) aggregate audio frames/s vs sessions", "",
             "| checkpoint | dtype | sessions | frames/s | vs 1 session | mean step ms | mean batch |",
             "|---|---|---|---|---|---|---|"]
    base = {}
    for r in results.get("throughput", []):
        key = (r["size"], r["dtype"])
        base.setdefault(key, r["frames_per_s"])
        lines.append(f"| {r['size']} | {r['dtype']} | {r['sessions']} | {r['frames_per_s']:.1f} | "
                     f"{r['frames_per_s'] / base[key]:.2f}x | {r['mean_step_ms']:.0f} | {r['mean_batch']:.1f} |")
    for t in results.get("ttfa", []):
        lines += ["", f"## (b) time to first audio per turn, 4 s user clips, answers of {t.get('items_per_turn', 40)} "
                  f"items ({t['size']} checkpoint, {t['dtype']})", "",
                  "| turn | ours s | reference s | ours / reference | ours prefilled positions | reused positions |",
                  "|---|---|---|---|---|---|"]
        ref = t.get("reference", {}).get("turns", [])
        for i, o in enumerate(t["ours"]["turns"]):
            r = ref[i]["first_audio_s"] if i < len(ref) else float("nan")
            lines.append(f"| {i + 1} | {o['first_audio_s']:.2f} | {r:.2f} | {o['first_audio_s'] / r:.2f} | "
                         f"{o['input_positions']} | {o['cached_positions']} |")
    lines += ["", "frames/s: audio frames generated (and decoded to speech) per second, all sessions together. "
              "Time to first audio: from the user's clip being submitted to the first audio of the answer "
              "(ours: decoded speech; the reference: the first audio codes)."]
    return "\n".join(lines) + "\n"


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    series: dict = {}
    for r in results.get("throughput", []):
        series.setdefault(f"{r['size']} {r['dtype']}", []).append((r["sessions"], r["frames_per_s"]))
    for label, pts in series.items():
        xs, ys = zip(*pts, strict=True)
        a.plot(xs, [y / ys[0] for y in ys], marker="o", label=label)
    a.plot(SESSIONS, SESSIONS, "k:", label="linear")
    a.set(xscale="log", xlabel="concurrent sessions", ylabel="aggregate frames/s vs 1 session",
          title="(a) batching", xticks=SESSIONS, xticklabels=[str(s) for s in SESSIONS])
    a.legend()
    for t in results.get("ttfa", []):
        turns = range(1, len(t["ours"]["turns"]) + 1)
        b.plot(turns, [x["first_audio_s"] for x in t["ours"]["turns"]], marker="o",
               label=f"lfm-audio, state kept ({t['dtype']})")
        if "reference" in t:
            b.plot(turns, [x["first_audio_s"] for x in t["reference"]["turns"]], marker="s", linestyle="--",
                   label=f"reference, re-prefills ({t['dtype']})")
    b.set(xlabel="turn", ylabel="time to first audio (s)", title="(b) time to first audio, 4 s clips")
    if results.get("ttfa"):
        b.set_xticks(range(1, len(results["ttfa"][0]["ours"]["turns"]) + 1))
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
