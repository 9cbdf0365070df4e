"""The benchmarks still run: the smallest `python -m bench` as a subprocess, and the reference's side
needing none of our code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # writes a tiny checkpoint and runs a measurement subprocess: ~7 s
def test_smallest_single_session_bench_writes_its_rows(tmp_path):
    frames = 20
    cmd = [sys.executable, "-m", "bench", "--sizes", "tiny", "--no-reference", "--suite", "single",
           "--variants", "eager", "--frames", str(frames), "--threads", "1", "--out", str(tmp_path)]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]

    rows = [line.split("|")[1:-1] for line in (tmp_path / "bench.md").read_text().splitlines()
            if line.startswith("| tiny") or line.startswith("| send_") or line.startswith("| receive_")]
    assert [c.strip() for c in rows[0][:2]] == ["tiny", "ours, eager"]
    assert float(rows[0][2]) > 0  # audio frames/s
    assert [r[0].strip() for r in rows[1:]] == ["send_pcm16", "send_g711_ulaw", "receive_pcm16"]

    result = json.loads((tmp_path / "bench.json").read_text())
    (single,) = result["single"]
    (turn,) = single["runs"]["ours, eager"]["turns"]
    assert single["items"] == frames
    assert 0 < turn["frames"] <= turn["items"] <= frames
    assert set(result["protocol_us_per_frame"]) == {"send_pcm16_us", "send_g711_ulaw_us", "receive_pcm16_us"}


def test_reference_side_reads_the_clips_without_our_code(tmp_path):
    """bench/reference_bench.py runs in another venv: isolated (-I, another cwd), it must still read the clips
    file exactly as we wrote it, importing no module of ours."""
    from bench.clips import read_clips, write_clips
    from models.defaults import INPUT_RATE

    clips = write_clips(tmp_path / "clips.safetensors", turns=2, seconds=0.5)
    probe = (
        "import runpy, sys, torch\n"
        f"ns = runpy.run_path({str(ROOT / 'bench' / 'reference_bench.py')!r})\n"
        f"rate, warm, turns = ns['read_clips']({str(clips)!r})\n"
        f"torch.save({{'rate': rate, 'warm': warm, 'turns': turns}}, {str(tmp_path / 'seen.pt')!r})\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'bench', 'models', 'streaming', 'server'}))\n"
    )
    run = subprocess.run([sys.executable, "-I", "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == "[]"
    seen = torch.load(tmp_path / "seen.pt", weights_only=True)
    warm, turns = read_clips(clips)
    assert seen["rate"] == INPUT_RATE
    assert torch.equal(seen["warm"], warm)
    assert len(seen["turns"]) == 2
    assert all(torch.equal(a, b) for a, b in zip(seen["turns"], turns, strict=True))
