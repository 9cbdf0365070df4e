"""Record the reference's outputs on our tiny random checkpoint (tests/golden/assets/model_tiny.*).

Runs in the reference venv (tools/golden/setup_venv.sh), from the repository root:

    PYTHONPATH=. .cache/golden-venv/bin/python tools/golden/make_model.py

It writes the tiny checkpoint with our own `make-checkpoint` code (seed 0), checks that the reference
model's state dict matches the file exactly (its loader is not strict), then records in fp32:
the mel and encoder output of a 16 kHz clip, backbone text logits after a prefill, the greedy
interleaved sequence of a two-turn chat, and greedy ASR and TTS sequences.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from bench.clips import clip
from models.checkpoint import tensors_digest
from models.random_checkpoint import write_random_checkpoint

ASSETS = Path(__file__).resolve().parents[2] / "tests" / "golden" / "assets"
SEED = 0
TURN_TOKENS = 48


def flatten(items: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Generated items -> (kinds [n]: 1 text / 3 audio, values [n, 8]: token in column 0, or codes)."""
    kinds, values = [], []
    for it in items:
        if it.numel() == 1:
            kinds.append(1)
            values.append([int(it)] + [0] * 7)
        else:
            kinds.append(3)
            values.append([int(v) for v in it])
    return torch.tensor(kinds), torch.tensor(values, dtype=torch.long).reshape(-1, 8)


def main() -> None:
    from liquid_audio import ChatState, LFM2AudioModel, LFM2AudioProcessor

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = write_random_checkpoint(Path(tmp) / "tiny", "tiny", seed=SEED, detokenizer="mimi")
        model = LFM2AudioModel.from_pretrained(ckpt, device="cpu", dtype=torch.float32).eval()
        proc = LFM2AudioProcessor.from_pretrained(ckpt, device="cpu")
        with safe_open(str(ckpt / "model.safetensors"), framework="pt") as f:
            stored = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
        theirs = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        if stored != theirs:
            sys.exit(f"state dict mismatch: missing {set(theirs) - set(stored)}, extra {set(stored) - set(theirs)}")
        digest = tensors_digest(ckpt / "model.safetensors")

        out: dict[str, torch.Tensor] = {}
        wave = clip(1.3, 1)
        wave2 = clip(0.9, 2)
        out["wave"], out["wave2"] = wave, wave2
        mel, _ = proc.audio(wave[None], torch.tensor([wave.shape[0]]))
        out["mel"] = mel[0]
        with torch.no_grad():
            enc, enc_len = model.conformer(mel, torch.tensor([mel.shape[2]]))
            out["audio_embeddings"] = model.audio_adapter(enc.mT[0, : int(enc_len[0])])

        # Backbone text logits after prefilling a chat prompt.
        chat = ChatState(proc, dtype=torch.float32)
        chat.new_turn("system")
        chat.add_text("Respond with interleaved text and audio.")
        chat.end_turn()
        chat.new_turn("user")
        chat.add_audio(wave[None], 16000)
        chat.end_turn()
        chat.new_turn("assistant")
        with torch.no_grad():
            emb = model._prefill(**chat)
            hidden = model.lfm(inputs_embeds=emb).last_hidden_state[0]
            out["prompt_text_ids"] = chat.text[0]
            out["prompt_logits"] = torch.nn.functional.linear(hidden[-4:], model.lfm.embed_tokens.weight)

        # Two-turn interleaved chat, greedy; turn 2 re-prefills everything (the reference way).
        turn1 = list(model.generate_interleaved(**chat, max_new_tokens=TURN_TOKENS))
        kinds, values = flatten(turn1)
        chat.append(text=torch.stack([t for t in turn1 if t.numel() == 1], 1),
                    audio_out=torch.stack([t for t in turn1 if t.numel() == 8], 1),
                    modality_flag=kinds)
        chat.end_turn()
        chat.new_turn("user")
        chat.add_audio(wave2[None], 16000)
        chat.add_text("And now?")
        chat.end_turn()
        chat.new_turn("assistant")
        turn2 = list(model.generate_interleaved(**chat, max_new_tokens=TURN_TOKENS))
        out["chat_turn1_kinds"], out["chat_turn1_values"] = kinds, values
        out["chat_turn2_kinds"], out["chat_turn2_values"] = flatten(turn2)

        # ASR and TTS: sequential, greedy.
        asr = ChatState(proc, dtype=torch.float32)
        asr.new_turn("system")
        asr.add_text("Perform ASR.")
        asr.end_turn()
        asr.new_turn("user")
        asr.add_audio(wave[None], 16000)
        asr.end_turn()
        asr.new_turn("assistant")
        out["asr_kinds"], out["asr_values"] = flatten(list(model.generate_sequential(**asr, max_new_tokens=24)))

        tts = ChatState(proc, dtype=torch.float32)
        tts.new_turn("system")
        tts.add_text("Perform TTS. Use the UK female voice.")
        tts.end_turn()
        tts.new_turn("user")
        tts.add_text("Hello there, how are you?")
        tts.end_turn()
        tts.new_turn("assistant")
        out["tts_kinds"], out["tts_values"] = flatten(list(model.generate_sequential(**tts, max_new_tokens=40)))

    ASSETS.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in out.items()}, str(ASSETS / "model_tiny.safetensors"))
    meta = {"checkpoint": {"size": "tiny", "seed": SEED, "sha256_of_tensors": digest},
            "turn_tokens": TURN_TOKENS, "asr_tokens": 24, "tts_tokens": 40,
            "reference": "liquid-audio 1.3.0, torch " + torch.__version__, "dtype": "float32"}
    (ASSETS / "model_tiny.json").write_text(json.dumps(meta, indent=2) + "\n")
    print("wrote", ASSETS / "model_tiny.safetensors", {k: tuple(v.shape) for k, v in out.items()})


if __name__ == "__main__":
    main()
