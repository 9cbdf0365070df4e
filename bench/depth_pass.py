"""The depthformer's cost per pass against its bandwidth bound, before and after its changes:
`python -m bench.depth_pass [--threads 2] [--rounds 5]`.

One process, the full-size depthformer with seeded random weights (no checkpoint needed: its cost does
not depend on the values), B=1, top-k 4 sampling. Variants alternate within each round and the report
gives medians: dense bf16 / int8 / int4 weights, w1 and w3 apart ("before") or stacked ("after",
models/depthformer.py FusedSwiGLU), eager or compiled. The bound is the bytes one pass reads (6
layers and one codebook head) over the streaming-read bandwidth measured in the same rounds.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time

import torch
from torch import nn

from bench.breakdown import bandwidth_gbs
from models.config import AUDIO_VOCAB
from models.depthformer import CodebookEmbedding, Depthformer, FusedSwiGLU
from models.lfm2 import SwiGLU
from models.quant import quantize_model
from models.random_checkpoint import full_config
from models.sampling import sample_with_noise

__all__ = ["main", "unfused"]

FRAMES = 5  # frames per timing


class _Head(nn.Module):
    """The depthformer and its codebook heads, quantizable by models/quant.py like the whole model."""

    def __init__(self) -> None:
        super().__init__()
        cfg = full_config()
        self.cfg = cfg
        self.depthformer = Depthformer(cfg.depthformer, cfg.codebooks)
        self.depth_embeddings = nn.ModuleList(CodebookEmbedding(cfg.depthformer.dim, AUDIO_VOCAB)
                                              for _ in range(cfg.codebooks))
        self.lfm = nn.Module()  # quantize_model walks these: none here but the depthformer's
        self.lfm.layers = nn.ModuleList()
        self.lfm.embed_tokens = nn.Embedding(8, 8)
        self.depth_linear = nn.Linear(8, 8)

    dtype = property(lambda self: self.depth_embeddings[0].embedding.weight.dtype)
    device = property(lambda self: self.depth_embeddings[0].embedding.weight.device)


def unfused(head: _Head) -> _Head:
    """A copy with w1 and w3 apart again: the depthformer as it was before FusedSwiGLU."""
    out = copy.deepcopy(head)
    for layer in out.depthformer.layers:
        f = layer.feed_forward
        if isinstance(f, FusedSwiGLU):
            ffn = SwiGLU(f.w13.in_features, f.ff_dim).to(f.w13.weight.dtype)
            ffn.w1.weight.data, ffn.w3.weight.data = f.w13.weight.data[: f.ff_dim], f.w13.weight.data[f.ff_dim:]
            ffn.w2 = f.w2
            layer.feed_forward = ffn
    return out


def _pass_bytes(head: _Head) -> int:
    tensors = [*head.depthformer.parameters(), *head.depthformer.buffers(),
               *(t for n, t in head.depth_embeddings[0].named_buffers()),
               *(p for n, p in head.depth_embeddings[0].named_parameters() if not n.startswith("embedding."))]
    return sum(t.numel() * t.element_size() for t in tensors)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.depth_pass", description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--weights", default="dense,int8,int4")
    ap.add_argument("--compile", action="store_true", help="also the compiled frame")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = _Head().to(torch.bfloat16).eval()
    base.depthformer.fuse_feed_forward()
    dim = base.cfg.depthformer.dim
    z = torch.randn(1, base.cfg.codebooks, dim, dtype=torch.bfloat16)
    t, k = torch.ones(1), torch.full((1,), 4, dtype=torch.long)
    noise = torch.empty(1, base.cfg.codebooks, AUDIO_VOCAB).exponential_()
    variants = {}
    for weights in args.weights.split(","):
        after = quantize_model(copy.deepcopy(base), weights) if weights != "dense" else base
        before = unfused(after) if weights == "dense" else quantize_model(unfused(base), weights)
        for label, head in (("before", before), ("after", after)):
            def frame(head=head):
                pick = lambda i, logits: sample_with_noise(logits, t, k, noise[:, i], 4)  # noqa: E731
                return head.depthformer.frame(z, head.depth_embeddings, pick)
            variants[f"{weights} {label} eager"] = (frame, _pass_bytes(head))
            if args.compile:
                variants[f"{weights} {label} compiled"] = (torch.compile(frame, dynamic=False, fullgraph=True),
                                                           _pass_bytes(head))
    ms: dict[str, list[float]] = {name: [] for name in variants}
    gbs = []
    with torch.inference_mode():
        for fn, _ in variants.values():
            fn()
        for _ in range(args.rounds):
            gbs.append(bandwidth_gbs())
            for name, (fn, _) in variants.items():
                t0 = time.perf_counter()
                for _ in range(FRAMES):
                    fn()
                ms[name].append(1e3 * (time.perf_counter() - t0) / FRAMES / base.cfg.codebooks)
    bw = statistics.median(gbs)
    rows = {name: {"pass_ms": statistics.median(v), "bytes": variants[name][1],
                   "bound_ms": 1e3 * variants[name][1] / (bw * 1e9)} for name, v in ms.items()}
    print(f"| variant | ms per pass | bound ms | share of bound |  (bandwidth {bw:.1f} GB/s, {args.threads} threads)")
    print("|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['pass_ms']:.2f} | {r['bound_ms']:.2f} | {r['bound_ms'] / r['pass_ms']:.0%} |")
    print(json.dumps({"bandwidth_gbs": bw, "threads": args.threads, "rounds": args.rounds, "variants": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
