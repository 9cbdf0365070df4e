"""The results as markdown tables and a plot; from the measurements' JSON only (no model, no subprocess).

matplotlib is a dev extra: imported only to draw the plot.
"""

from __future__ import annotations

from pathlib import Path

from bench.clips import CLIP_SECONDS
from models.defaults import FRAME_MS, FRAME_S

__all__ = ["STEPS_PER_FRAME", "TEXT_PER_FRAME", "bound_frames_per_s", "breakdown_markdown", "engine_markdown",
           "engine_plot", "single_markdown"]

STEPS_PER_FRAME, TEXT_PER_FRAME = 1.5, 0.5  # interleaved chat: 6 text + 12 audio steps per 12 frames

REAL_TIME_FPS = 1 / FRAME_S  # audio frames per second that keep up with playback


def _fps(run: dict) -> float:
    return run["turns"][0]["decode_frames_per_s"]


def single_markdown(results: list[dict], costs: dict[str, float], threads: int) -> str:
    lines = [f"# lfm-audio bench: one session, greedy, fp32, {threads} threads, {CLIP_SECONDS:g} s user clip", "",
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
              f"to the last; {FRAME_MS} ms of audio each; real time needs {REAL_TIME_FPS:g}/s plus the interleaved "
              "text steps). first audio: from the start of the turn (user clip encoding and prefill included) to "
              "the first audio frame. warm-up: one throwaway turn, including compilation."]
    md = "\n".join(lines) + "\n"
    md += f"\n## Event-loop work per {FRAME_MS} ms audio frame (WebSocket JSON + base64)\n\n"
    md += f"| step | microseconds | share of the {FRAME_MS} ms frame |\n|---|---|---|\n"
    frame_us = FRAME_MS * 1000
    md += "".join(f"| {k.removesuffix('_us')} | {v:.0f} | {v / frame_us:.3%} |\n" for k, v in costs.items())
    return md


def engine_markdown(results: dict, threads: int) -> str:
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
        lines += ["", f"## (b) time to first audio per turn, {CLIP_SECONDS:g} s user clips, answers of "
                  f"{t.get('items_per_turn', 40)} items ({t['size']} checkpoint, {t['dtype']})", "",
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


def engine_plot(results: dict, path: Path) -> None:
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
    sessions = sorted({r["sessions"] for r in results.get("throughput", [])})
    a.plot(sessions, sessions, "k:", label="linear")
    a.set(xscale="log", xlabel="concurrent sessions", ylabel="aggregate frames/s vs 1 session",
          title="(a) batching", xticks=sessions, xticklabels=[str(s) for s in sessions])
    a.legend()
    for t in results.get("ttfa", []):
        turns = range(1, len(t["ours"]["turns"]) + 1)
        b.plot(turns, [x["first_audio_s"] for x in t["ours"]["turns"]], marker="o",
               label=f"lfm-audio, state kept ({t['dtype']})")
        if "reference" in t:
            b.plot(turns, [x["first_audio_s"] for x in t["reference"]["turns"]], marker="s", linestyle="--",
                   label=f"reference, re-prefills ({t['dtype']})")
    b.set(xlabel="turn", ylabel="time to first audio (s)", title=f"(b) time to first audio, {CLIP_SECONDS:g} s clips")
    if results.get("ttfa"):
        b.set_xticks(range(1, len(results["ttfa"][0]["ours"]["turns"]) + 1))
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def breakdown_markdown(result: dict) -> str:
    """bench/breakdown.py's medians over rounds: where a frame's time goes, against the bandwidth bound and
    the reference."""
    import statistics


    runs = result["runs"]
    med = statistics.median
    ref = runs.get("reference")
    ref_fps = med(_fps(r) for r in ref) if ref else None
    head = (f"# One session, full size, {result['threads']} threads: medians of {result['rounds']} alternating "
            "rounds\n\n")
    lines = ["| config | frames/s | vs reference | bound frames/s | share of bound | backbone ms | depth pass ms | "
             "text head ms | depth_linear ms | sampling ms | embed ms | speech ms | python ms/frame | GB/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    if ref:
        lines.append(f"| reference (fp32) | {ref_fps:.2f} | 1.00x | | | | | | | | | | | |")
    for name, rs in runs.items():
        if name == "reference":
            continue
        fps = med(r["turn"]["decode_frames_per_s"] for r in rs)
        bound = med(bound_frames_per_s(r) for r in rs)
        cols = [med(r[c] for r in rs) for c in ("backbone", "depth_pass", "text_head", "depth_linear", "sampling",
                                                 "embed", "speech", "python_ms", "bandwidth_gbs")]
        ratio = f"{fps / ref_fps:.2f}x" if ref_fps else "-"
        lines.append(f"| {name} | {fps:.2f} | {ratio} | {bound:.1f} | {fps / bound:.0%} | "
                     + " | ".join(f"{c:.2f}" for c in cols[:-1]) + f" | {cols[-1]:.1f} |")
    lines += ["", "bound: frames/s if each frame's weight bytes (1.5 backbone steps, 0.5 text heads, depth_linear, "
              "8 depthformer passes) streamed at the GB/s measured in the same process. python ms/frame: a real "
              f"turn's time per frame beyond the components (real time is {FRAME_MS} ms per frame)."]
    return head + "\n".join(lines) + "\n"


def bound_frames_per_s(r: dict, codebooks: int = 8) -> float:
    """Frames/s if every weight byte streamed at the measured bandwidth and nothing else took time."""
    b = r["bytes"]
    per_frame = (STEPS_PER_FRAME * b["backbone"] + TEXT_PER_FRAME * b["text_head"] + b["depth_linear"]
                 + codebooks * b["depth_pass"])
    return r["bandwidth_gbs"] * 1e9 / per_frame
