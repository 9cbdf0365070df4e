"""Where one session's time goes at full size, against the machine's memory bandwidth:
`python -m bench.breakdown --ckpt DIR --configs bf16,int8+compile,... [--reference-venv V]`.

Each configuration is measured in its own subprocess (`python -m bench.breakdown worker ...`), in rounds
that alternate the configurations (and the reference's single-session run, and ours), so that a busy
machine slows all of them alike; the report gives medians over rounds. Every worker also measures a
streaming-read bandwidth (the sum of a 1 GiB tensor) in the same process, and knows the bytes each
component must read per call, so each time sits next to its bandwidth bound.

Components, one session (B=1), timed one by one after warm-up:
  backbone: one decode step at position POSITION;  text_head: tied head + argmax;
  depth_linear: hidden -> 8 codebook inputs;  depth_pass: one of the depthformer's 8 passes (6 layers,
  its codebook head, top-k sampling);  sampling: top-k 4 of 2049 logits alone;  embed: text + frame
  embedding;  speech: the streaming speech decoder, one frame.
A frame of interleaved chat costs 1.5 backbone steps (18 steps per 12 frames), 0.5 text heads, one
depth_linear and 8 depth passes; `python_ms` is what a real turn spends per frame beyond those.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from bench.clips import write_clips
from bench.harness import ROOT, checkpoint, common_flags, our_worker, reference
from bench.report import STEPS_PER_FRAME, TEXT_PER_FRAME

__all__ = ["CONFIGS", "bandwidth_gbs", "run", "worker"]

CONFIGS = {  # name: (dtype, weights, compile)
    "fp32": ("float32", "dense", False), "fp32+compile": ("float32", "dense", True),
    "bf16": ("bfloat16", "dense", False), "bf16+compile": ("bfloat16", "dense", True),
    "int8": ("bfloat16", "int8", False), "int8+compile": ("bfloat16", "int8", True),
    "int4": ("bfloat16", "int4", False), "int4+compile": ("bfloat16", "int4", True),
}
POSITION = 256  # backbone positions already held: a short conversation
REPEATS = 7


def _sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _median_ms(fn, repeats: int = REPEATS, device="cpu") -> float:
    fn()
    times = []
    for _ in range(repeats):
        times.append(_timed(fn, device))
    return 1e3 * statistics.median(times)


def bandwidth_gbs(device="cpu") -> float:
    """Streaming read: the sum of a 1 GiB fp32 tensor (far beyond any cache), best of a few."""
    import torch

    big = torch.ones(1 << 28, device=device)
    best = min(_timed(big.sum, device) for _ in range(5))
    return big.numel() * 4 / best / 1e9


def _timed(fn, device="cpu") -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def _nbytes(module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def worker(args: argparse.Namespace) -> dict:
    import torch

    from bench.single import worker as single_worker
    from models.checkpoint import load_checkpoint
    from models.config import AUDIO_VOCAB
    from models.lfm2 import BackboneState
    from models.sampling import sample_with_noise
    from models.speech import SpeechDecoder, pick_decoder

    torch.set_num_threads(args.threads)
    dtype, weights, compile = CONFIGS[args.config]
    if args.device != "cpu":  # the GPU path: bf16 (CUDA graphs come with compile)
        dtype = "bfloat16"
    ckpt = load_checkpoint(args.ckpt, device=args.device, dtype=getattr(torch, dtype), weights=weights)
    m = ckpt.model
    dev, hidden = m.device, m.cfg.lfm.hidden_size
    state = BackboneState.allocate(m.cfg.lfm, 1, POSITION + 64, device=dev, dtype=m.dtype)
    x, h = torch.randn(1, hidden, dtype=m.dtype, device=dev), torch.randn(1, hidden, dtype=m.dtype, device=dev)
    pos = torch.tensor([POSITION], device=dev)
    t, k = torch.ones(1, device=dev), torch.full((1,), 4, dtype=torch.long, device=dev)
    noise = torch.empty(1, m.cfg.codebooks, AUDIO_VOCAB, device=dev).exponential_()
    if compile:
        from models.compiled import CompiledSteps

        steps = CompiledSteps(m, state)
        active = torch.ones(1, dtype=torch.bool, device=dev)
        backbone = lambda: steps.backbone_step(x, pos, active)  # noqa: E731
        frame = lambda: steps.audio_frame(h, t, k, noise, 4)  # noqa: E731
    else:
        backbone = lambda: m.lfm(x[:, None], state, pos, kv_len=POSITION + 1)  # noqa: E731
        frame = lambda: m.audio_frame(h, lambda i, logits: sample_with_noise(logits, t, k, noise[:, i], 4))  # noqa: E731
    logits = torch.randn(1, AUDIO_VOCAB, device=dev)
    codes = torch.randint(0, AUDIO_VOCAB - 1, (1, m.cfg.codebooks), device=dev)
    speech = SpeechDecoder(pick_decoder(ckpt), rows=1)
    speech.start([0])
    parts = {
        "backbone": backbone, "frame": frame,
        "text_head": lambda: m.text_logits(h).argmax(-1),
        "depth_linear": lambda: m.depth_linear(h),
        "sampling": lambda: sample_with_noise(logits, t, k, noise[:, 0], 4),
        "embed": lambda: (m.embed_text(codes[:, 0]), m.embed_frames(codes)),
        "speech": lambda: speech.step(codes, [0]),
    }
    ms = {name: [] for name in parts}
    with torch.inference_mode():
        for fn in parts.values():  # warm-up (compilation) before any timing
            fn()
        gbs = [bandwidth_gbs(dev)]
        for _ in range(3):  # rounds alternate the components, as the orchestrator alternates processes
            for name, fn in parts.items():
                ms[name].append(_median_ms(fn, device=dev))
            gbs.append(bandwidth_gbs(dev))
    out = {name: statistics.median(v) for name, v in ms.items()}
    out["depth_pass"] = (out.pop("frame") - out["depth_linear"]) / m.cfg.codebooks
    layers = m.lfm.layers
    depth_head = _nbytes(m.depth_embeddings[0]) - m.depth_embeddings[0].embedding.weight.nbytes
    text_head = _nbytes(m.text_head) if m.text_head is not None else m.lfm.embed_tokens.weight.nbytes
    out["bytes"] = {"backbone": _nbytes(layers), "text_head": text_head, "depth_linear": _nbytes(m.depth_linear),
                    "depth_pass": _nbytes(m.depthformer) + depth_head}
    out["bandwidth_gbs"] = statistics.median(gbs)
    # a real turn, as the single-session benchmark runs it: frames/s and the per-frame remainder
    turn = single_worker(argparse.Namespace(**{**vars(args), "dtype": dtype, "weights": weights, "compile": compile,
                                               "speech": False, "capacity": POSITION * 8}), ckpt=ckpt)
    out["turn"] = turn["turns"][0]
    model_ms = (STEPS_PER_FRAME * out["backbone"] + TEXT_PER_FRAME * out["text_head"] + out["depth_linear"]
                + m.cfg.codebooks * out["depth_pass"] + out["embed"])
    out["model_ms_per_frame"] = model_ms
    out["python_ms"] = 1e3 / out["turn"]["decode_frames_per_s"] - model_ms
    return out


def run(args: argparse.Namespace) -> dict:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    ckpt = Path(args.ckpt) if args.ckpt else checkpoint("full", out)
    clips = write_clips(out / "clips-1.safetensors", turns=1)
    common = [*common_flags(ckpt, args.items, args.threads, device=args.device), "--clips", str(clips)]
    configs = args.configs.split(",")
    runs: dict[str, list[dict]] = {}
    for rnd in range(args.rounds):
        if args.reference_venv:
            r = reference(str(Path(args.reference_venv) / "bin" / "python"), *common)
            runs.setdefault("reference", []).append(r)
            print(f"[round {rnd}] reference: {r['turns'][0]['decode_frames_per_s']:.2f} frames/s", file=sys.stderr)
        for name in configs:
            r = our_worker("breakdown", "worker", "--config", name, *common)
            runs.setdefault(name, []).append(r)
            print(f"[round {rnd}] {name}: {r['turn']['decode_frames_per_s']:.2f} frames/s, backbone "
                  f"{r['backbone']:.1f} ms, depth pass {r['depth_pass']:.2f} ms, {r['bandwidth_gbs']:.1f} GB/s",
                  file=sys.stderr)
    result = {"threads": args.threads, "items": args.items, "rounds": args.rounds, "runs": runs}
    (out / "breakdown.json").write_text(json.dumps(result, indent=2))
    from bench.report import breakdown_markdown

    (out / "breakdown.md").write_text(breakdown_markdown(result))
    print((out / "breakdown.md").read_text())
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:
        from bench.harness import add_worker_flags

        ap = add_worker_flags(argparse.ArgumentParser(prog="python -m bench.breakdown worker"))
        ap.add_argument("--config", choices=CONFIGS, required=True)
        ap.add_argument("--clips", type=Path, required=True)
        print(json.dumps(worker(ap.parse_args(argv[1:]))))
        return 0
    ap = argparse.ArgumentParser(prog="python -m bench.breakdown", description=__doc__.split("\n")[0])
    ap.add_argument("--ckpt", help="a full-size checkpoint (default: bench/out/ckpt-full, written once)")
    ap.add_argument("--configs", default="fp32,bf16,bf16+compile,int8+compile,int4+compile")
    ap.add_argument("--reference-venv", help="also time the reference's single session in every round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--items", type=int, default=36, help="items of the timed turn")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cuda: the GPU path (bf16, CUDA graphs with +compile)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    run(ap.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
