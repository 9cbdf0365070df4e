"""Checkpoint loading is strict and names what is wrong; dtypes; the CLI end to end on a tiny checkpoint."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from models.checkpoint import CheckpointError, load_checkpoint, resolve
from models.config import ConfigError
from streaming.audio import read_wav, write_wav


@pytest.fixture
def copy(tiny_dir, tmp_path):
    target = tmp_path / "ckpt"
    shutil.copytree(tiny_dir, target)
    return target


def _rewrite(path, edit) -> None:
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path)


def test_loads_bf16_weights_into_the_chosen_dtype(tiny_dir):
    on_disk = load_file(tiny_dir / "model.safetensors")
    assert on_disk["lfm.embed_tokens.weight"].dtype == torch.bfloat16
    ckpt = load_checkpoint(tiny_dir)
    assert ckpt.model.dtype == torch.float32 and ckpt.random["size"] == "tiny"
    assert torch.equal(ckpt.model.lfm.embed_tokens.weight, on_disk["lfm.embed_tokens.weight"].float())
    assert ckpt.mimi is not None and ckpt.detokenizer is not None
    assert load_checkpoint(tiny_dir, dtype=torch.bfloat16).model.dtype == torch.bfloat16


@pytest.mark.parametrize("case", ["missing", "misshaped", "unexpected"])
def test_a_wrong_tensor_is_an_error_that_names_it(copy, case):
    name = "lfm.layers.1.self_attn.k_layernorm.weight"

    def edit(t):
        if case == "missing":
            del t[name]
        elif case == "misshaped":
            t[name] = torch.ones(3, dtype=torch.bfloat16)
        else:
            t["lfm.layers.1.extra.weight"] = torch.ones(3)

    _rewrite(copy / "model.safetensors", edit)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(copy)
    assert (name if case != "unexpected" else "lfm.layers.1.extra.weight") in str(e.value)


def test_decoder_files_are_checked_too(copy):
    _rewrite(copy / "audio_detokenizer" / "model.safetensors", lambda t: t.pop("lin.bias"))
    with pytest.raises(CheckpointError, match=r"lin\.bias"):
        load_checkpoint(copy)


def test_unknown_config_key_is_an_error(copy):
    cfg = json.loads((copy / "config.json").read_text())
    cfg["encoder"]["surprise"] = 1
    (copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="surprise"):
        load_checkpoint(copy)


def test_resolve_local_directories_and_refuses_missing_paths(tiny_dir, tmp_path):
    assert resolve(tiny_dir) == tiny_dir
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        resolve(tmp_path / "nope")


def _cli(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "server.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


@pytest.mark.slow
def test_cli_make_checkpoint_and_generate(tmp_path, say):
    ckpt = tmp_path / "tiny"
    made = _cli("make-checkpoint", str(ckpt), "--size", "tiny", "--seed", "3", "--detokenizer", "mimi", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert not (ckpt / "audio_detokenizer").exists() and (ckpt / "mimi_config.json").is_file()
    wav = tmp_path / "q.wav"
    write_wav(wav, say("Hello, how are you?"), 16000)
    out = tmp_path / "a.wav"
    run = _cli("generate", "--model", str(ckpt), "--mode", "chat", "--audio", str(wav), "--turns", "2",
               "--max-new-tokens", "30", "--seed", "1", "--out", str(out), cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "[turn 1]" in run.stdout and "[turn 2]" in run.stdout
    assert "random weights" in run.stderr
    audio, rate = read_wav(out)
    assert rate == 24000 and len(audio) > 0 and len(audio) % 1920 == 0
    asr = _cli("generate", "--model", str(ckpt), "--mode", "asr", "--text", "not audio", cwd=tmp_path)
    assert asr.returncode == 2 and "--audio" in asr.stderr
