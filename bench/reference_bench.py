"""The reference implementation's side of `python -m bench`: one measurement per process, one JSON line.

Runs in the reference's own venv (tools/golden/setup_venv.sh: Python 3.12, liquid-audio) and needs none of
our code: what both sides must share comes in as flags (the system prompt) and as a safetensors file of
the user clips (bench/clips.py writes it: "warmup", then "turn0", "turn1", ...; metadata "sample_rate").

    .cache/golden-venv/bin/python bench/reference_bench.py --ckpt DIR --clips FILE \\
        --system-prompt "Respond with interleaved text and audio." --items 200 --threads 2

What it measures is what the reference's own demo does on every turn, building the chat (the whole history
is re-prefilled and every clip re-encoded on each `generate_interleaved` call) and generating greedily.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch
from safetensors import safe_open

WARMUP_ITEMS = 8


def read_clips(path: Path) -> tuple[int, torch.Tensor, list[torch.Tensor]]:
    """(sample rate, warm-up clip, user clips in turn order)."""
    with safe_open(str(path), framework="pt") as f:
        turns = [f.get_tensor(f"turn{i}") for i in range(len(f.keys()) - 1)]
        return int(f.metadata()["sample_rate"]), f.get_tensor("warmup"), turns


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ckpt", type=Path, required=True)
    ap.add_argument("--clips", type=Path, required=True, help="warm-up and user clips, one turn each")
    ap.add_argument("--system-prompt", required=True)
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from liquid_audio import ChatState, LFM2AudioModel, LFM2AudioProcessor

    rate, warmup_clip, clips = read_clips(args.clips)
    dtype = getattr(torch, args.dtype)
    t0 = time.perf_counter()
    model = LFM2AudioModel.from_pretrained(args.ckpt, device=args.device, dtype=dtype).eval()
    proc = LFM2AudioProcessor.from_pretrained(args.ckpt, device=args.device)
    load_s = time.perf_counter() - t0

    chat = ChatState(proc, dtype=dtype)
    chat.new_turn("system")
    chat.add_text(args.system_prompt)
    chat.end_turn()
    # warm-up on a throwaway chat
    warm = ChatState(proc, dtype=dtype)
    warm.new_turn("user")
    warm.add_audio(warmup_clip[None], rate)
    warm.end_turn()
    warm.new_turn("assistant")
    for _ in model.generate_interleaved(**warm, max_new_tokens=WARMUP_ITEMS):
        pass

    turns = []
    for audio in clips:
        chat.new_turn("user")
        chat.add_audio(audio[None], rate)
        chat.end_turn()
        chat.new_turn("assistant")
        start = time.perf_counter()
        first_audio = first_item = None
        items = []
        for item in model.generate_interleaved(**chat, max_new_tokens=args.items):
            now = time.perf_counter()
            first_item = first_item or now
            if item.numel() == 8 and first_audio is None:
                first_audio = now
            items.append(item)
        end = time.perf_counter()
        frames = sum(1 for i in items if i.numel() == 8)
        text = [i for i in items if i.numel() == 1]
        audio_codes = [i for i in items if i.numel() == 8]
        chat.append(text=torch.stack(text, 1), audio_out=torch.stack(audio_codes, 1),
                    modality_flag=torch.tensor([1 if i.numel() == 1 else 3 for i in items]))
        chat.end_turn()
        turns.append({
            "items": len(items), "frames": frames, "seconds": end - start,
            "first_item_s": first_item - start, "first_audio_s": (first_audio or end) - start,
            "decode_frames_per_s": frames / (end - first_item) if end > first_item else 0.0,
        })
    print(json.dumps({"impl": "reference", "load_s": load_s, "turns": turns,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


if __name__ == "__main__":
    main()
