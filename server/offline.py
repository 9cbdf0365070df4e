"""One conversation run directly on the model, without the engine: `lfm-audio generate` and the
single-session benchmark."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from models.chat import Chat
from models.checkpoint import Checkpoint
from models.config import EOA
from models.defaults import (
    ASR_PROMPT,
    CHAT_AUDIO_SAMPLING,
    CHAT_PROMPT,
    DEFAULT_VOICE,
    GENERATE_MAX_TOKENS,
    MAX_CONTEXT,
    MODES,
    TEXT_SAMPLING,
    TTS_AUDIO_SAMPLING,
    TTS_VOICES,
)
from models.generation import Finish
from models.lfm2 import BackboneState
from models.sampling import SamplingParams
from models.speech import SpeechDecoder

__all__ = ["MODES", "TurnResult", "default_sampling", "open_chat", "run_turn"]


def default_sampling(mode: str) -> tuple[SamplingParams, SamplingParams]:
    """(text, audio) sampling as the model card recommends: text greedy; audio T=1.0 k=4 for chat,
    T=0.8 k=64 for TTS."""
    audio = TTS_AUDIO_SAMPLING if mode == "tts" else CHAT_AUDIO_SAMPLING
    return TEXT_SAMPLING, audio


@dataclass
class TurnResult:
    text: str
    items: list = field(default_factory=list)
    audio: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # 24 kHz
    finish: Finish | None = None
    seconds: float = 0.0  # generation wall time, prefill included
    first_item_seconds: float | None = None
    first_audio_seconds: float | None = None
    frames: int = 0


def open_chat(ckpt: Checkpoint, mode: str, *, voice: str = DEFAULT_VOICE, capacity: int = MAX_CONTEXT,
              seed: int | None = None, compile: bool = False) -> Chat:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    state = BackboneState.allocate(ckpt.config.lfm, 1, capacity, device=ckpt.model.device, dtype=ckpt.model.dtype)
    chat = Chat(ckpt.model, ckpt.tokenizer, state, seed=seed)
    if compile:
        from models.compiled import CompiledSteps

        chat.compiled = CompiledSteps(ckpt.model, state)
    system = {"chat": CHAT_PROMPT, "asr": ASR_PROMPT}.get(mode) or TTS_VOICES[voice]
    chat.turn("system", text=system)
    return chat


def run_turn(
    chat: Chat,
    speech: SpeechDecoder | None,
    mode: str,
    *,
    audio_16k: np.ndarray | None = None,
    text: str | None = None,
    max_new_tokens: int = GENERATE_MAX_TOKENS,
    sampling: tuple[SamplingParams, SamplingParams] | None = None,
) -> TurnResult:
    text_params, audio_params = sampling or default_sampling(mode)
    t0 = time.perf_counter()
    chat.turn("user", text=text, audio=None if audio_16k is None else torch.from_numpy(audio_16k))
    result = TurnResult(text="")
    ids: list[int] = []
    pcm: list[torch.Tensor] = []
    if speech is not None:
        speech.start([0])
    for item in chat.respond(interleaved=mode == "chat", max_new_tokens=max_new_tokens,
                             text=text_params, audio=audio_params):
        result.items.append(item)
        if result.first_item_seconds is None:
            result.first_item_seconds = time.perf_counter() - t0
        if isinstance(item, int):
            ids.append(item)
        elif item[0] != EOA:
            if speech is not None:
                pcm.extend(speech.step(torch.tensor([item]), [0]))
            result.frames += 1
            if result.first_audio_seconds is None:
                result.first_audio_seconds = time.perf_counter() - t0
    if speech is not None and result.frames:
        pcm.extend(speech.finish([0]))
    result.seconds = time.perf_counter() - t0
    result.finish = chat.finish
    result.text = chat.tokenizer.decode(ids)
    if pcm:
        result.audio = torch.cat(pcm).numpy()
    return result
