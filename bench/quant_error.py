"""The error of quantized weights against dense bf16 on the same inputs: `python -m bench.quant_error`.

Three figures per format, over a 2-turn greedy chat (user clips from bench/clips.py):
  - logit KL(dense || quantized) and top-1 agreement, teacher-forced: the quantized model is fed the
    dense model's own greedy items, so both see the same inputs at every step; text steps over the
    text vocabulary, audio steps over each codebook's 2049 logits (codebook by codebook, each given the
    dense model's earlier codes);
  - greedy sequence agreement: both models generate freely; the share of items equal up to the first
    difference, and the audio frames each model speaks before end-of-audio (peers report that 4-bit
    weights end this model's speech early).

`measure(ref_trace, ckpt, quantized_model, clips, items)` is what the tiny-model test calls.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.clips import read_clips, write_clips
from models.checkpoint import Checkpoint
from models.config import EOA
from models.defaults import CHAT_PROMPT, SamplingParams
from models.lfm2_audio import LFM2AudioModel
from streaming.messages import Mode
from streaming.offline import Chat

__all__ = ["Trace", "measure", "run_chat"]


@dataclass
class Trace:
    """One greedy chat: the items of each turn, and the logits seen before each choice."""

    items: list[list] = field(default_factory=list)
    text_logits: list[Tensor] = field(default_factory=list)  # [V] per text step
    audio_logits: list[Tensor] = field(default_factory=list)  # [2049] per codebook step

    @property
    def flat(self) -> list:
        return [i for turn in self.items for i in turn]


def run_chat(ckpt: Checkpoint, model: LFM2AudioModel, clips: list[Tensor], items: int,
             forced: Trace | None = None) -> Trace:
    """A greedy chat of len(clips) turns on `model` (in place of the checkpoint's own), through the one
    turn driver (streaming/offline.py). With `forced`, every choice is the forced trace's instead of the
    model's own (teacher forcing); the logits recorded are the model's either way."""
    trace = Trace()
    script = iter(forced.flat) if forced is not None else None
    pending_codes: list[int] = []
    dense_text, dense_frame = model.text_logits, model.audio_frame

    def text_logits(h: Tensor) -> Tensor:
        logits = dense_text(h)
        trace.text_logits.append(logits[0].float())
        if script is None:
            return logits
        forced_token = next(script)
        out = torch.full_like(logits, float("-inf"))
        out[:, forced_token] = 0
        return out

    def audio_frame(h: Tensor, pick) -> Tensor:
        if script is not None:
            pending_codes[:] = next(script)

        def record(i: int, logits: Tensor) -> Tensor:
            trace.audio_logits.append(logits[0].float())
            token = pick(i, logits)
            return token if script is None else torch.full_like(token, pending_codes[i])

        return dense_frame(h, record)

    model.text_logits, model.audio_frame = text_logits, audio_frame  # instance attributes shadow the methods
    try:
        chat = Chat(replace(ckpt, model=model), capacity=2048)
        chat.turn("system", text=CHAT_PROMPT)
        greedy = SamplingParams()
        for audio in clips:
            chat.turn("user", audio=audio.numpy())
            done = chat.respond(Mode.CHAT, items, greedy, greedy, speak=False)
            trace.items.append(list(done.items))
    finally:
        del model.text_logits, model.audio_frame
    return trace


def _kl_top1(ref: list[Tensor], cand: list[Tensor]) -> tuple[float, float, float]:
    """(mean KL(ref || cand) in nats, max KL, top-1 agreement) over paired logit vectors."""
    if not ref:
        return 0.0, 0.0, 1.0
    p, q = torch.stack(ref), torch.stack(cand)
    lp, lq = F.log_softmax(p, -1), F.log_softmax(q, -1)
    kl = (lp.exp() * (lp - lq)).sum(-1)
    return float(kl.mean()), float(kl.max()), float((p.argmax(-1) == q.argmax(-1)).float().mean())


def _speech_frames(items: list) -> int:
    """Frames spoken before the first end-of-audio frame (or the turn's end)."""
    n = 0
    for item in items:
        if isinstance(item, tuple):
            if item[0] == EOA:
                break
            n += 1
    return n


def measure(ref: Trace, ckpt: Checkpoint, quantized: LFM2AudioModel, clips: list[Tensor],
            items: int) -> tuple[dict, Trace]:
    """Every figure of the module docstring for a model against the trace `ref` of the model it
    approximates (run_chat on the same clips and items); also returns the model's own free trace."""
    forced = run_chat(ckpt, quantized, clips, items, forced=ref)
    free = run_chat(ckpt, quantized, clips, items)
    text_kl, text_kl_max, text_top1 = _kl_top1(ref.text_logits, forced.text_logits)
    audio_kl, audio_kl_max, audio_top1 = _kl_top1(ref.audio_logits, forced.audio_logits)
    a, b = ref.flat, free.flat
    same = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return {
        "text_kl": text_kl, "text_kl_max": text_kl_max, "text_top1": text_top1, "text_steps": len(ref.text_logits),
        "audio_kl": audio_kl, "audio_kl_max": audio_kl_max, "audio_top1": audio_top1,
        "audio_steps": len(ref.audio_logits),
        "greedy_prefix": same / max(len(a), 1), "greedy_items": len(a),
        "speech_frames_dense": [_speech_frames(t) for t in ref.items],
        "speech_frames_quantized": [_speech_frames(t) for t in free.items],
    }, free


def main(argv: list[str] | None = None) -> int:
    from models.checkpoint import load_checkpoint
    from models.quant import quantize_model

    ap = argparse.ArgumentParser(prog="python -m bench.quant_error", description=__doc__.split("\n")[0])
    ap.add_argument("--ckpt", required=True, help="checkpoint directory (a full-size random one: make-checkpoint)")
    ap.add_argument("--formats", default="int8,int4")
    ap.add_argument("--items", type=int, default=48, help="items per answer")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, help="write the JSON result here too")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    clips = read_clips(write_clips(Path("bench/out/clips-2.safetensors"), turns=2))[1]
    # bf16's own error against fp32 first: the scale the quantized formats' error is read against
    ckpt = load_checkpoint(args.ckpt, dtype=torch.float32)
    with torch.inference_mode():
        fp32 = run_chat(ckpt, ckpt.model, clips, args.items)
        ckpt.model.to(torch.bfloat16)  # the weights are stored in bf16: the same as loading them so
        result = {}
        result["bf16 vs fp32"], ref = measure(fp32, ckpt, ckpt.model, clips, args.items)
    for fmt in args.formats.split(","):
        q = quantize_model(copy.deepcopy(ckpt.model), fmt)
        with torch.inference_mode():
            result[fmt], _ = measure(ref, ckpt, q, clips, args.items)
        del q
        print(f"{fmt}: {json.dumps(result[fmt])}", file=sys.stderr)
    text = json.dumps({"checkpoint": str(args.ckpt), "items": args.items, "against": "bf16 dense", **result},
                      indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
