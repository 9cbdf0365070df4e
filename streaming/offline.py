"""One conversation driven on the caller's thread: `lfm-audio generate`, the single-session benchmark and
the parity tests. It is the serving engine itself, with one slot and no engine thread
(`Engine.run_until_idle`), so a turn here runs exactly the code a served turn runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from models.checkpoint import Checkpoint
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
from models.sampling import SamplingParams
from streaming.engine import Engine, EngineConfig
from streaming.messages import AudioDelta, Event, Mode, ResponseDone, ResponseRequest, SessionFailed, Status

__all__ = ["MODES", "Chat", "TurnResult", "default_sampling", "open_chat", "reference_items", "run_turn"]

FINISH = {Status.COMPLETED: Finish.STOP, Status.INCOMPLETE: Finish.LENGTH, Status.CANCELLED: Finish.CANCELLED}


def default_sampling(mode: str) -> tuple[SamplingParams, SamplingParams]:
    """(text, audio) sampling as the model card recommends: text greedy; audio per mode."""
    return TEXT_SAMPLING, TTS_AUDIO_SAMPLING if mode == "tts" else CHAT_AUDIO_SAMPLING


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


class Chat:
    """A one-slot engine run on this thread, and one session on it."""

    def __init__(self, ckpt: Checkpoint, *, capacity: int = MAX_CONTEXT, seed: int | None = None,
                 compile: bool = False, decoder: str = "auto") -> None:
        # The whole prefill in one chunk, and only the session's own row: what a single session costs.
        self.engine = Engine(ckpt, EngineConfig(max_sessions=1, max_context=capacity, prefill_budget=capacity,
                                                decoder=decoder, compile=compile, static_batch=False))
        self.seed = seed
        self.events: list[Event] = []
        self.turns = 0
        self._open()

    def _open(self) -> None:
        self.session = self.engine.open(self.events.append)
        self.engine.run_until_idle()

    def restart(self) -> None:
        """An empty conversation on the same slot (its state is reset)."""
        self.session.close()
        self._open()

    def turn(self, role: str, *, text: str | None = None, audio: np.ndarray | None = None) -> str:
        """A closed turn (system or user): audio (16 kHz float32) first, then text. Returns its item id."""
        item_id = f"item_{self.turns}"
        self.turns += 1
        self.session.add_item(item_id, role, text=text, audio=audio)
        self.engine.run_until_idle()
        return item_id

    def rebuild(self) -> None:
        """Forget the slot's state: the next turn prefills the whole history again (the reference's way)."""
        with self.session.lock:
            self.session.conversation.stale = True

    def respond(self, mode: Mode, max_new_tokens: int, text: SamplingParams = TEXT_SAMPLING,
                audio: SamplingParams = CHAT_AUDIO_SAMPLING, *, speak: bool = True) -> ResponseDone:
        """Generate an assistant turn, as the engine does for a served session; its events are in `events`."""
        n = self.turns
        self.turns += 1
        seed = None if self.seed is None else self.seed + n  # each response draws from its own generator
        self.events.clear()
        self.session.respond(ResponseRequest(f"resp_{n}", f"item_{n}", mode, max_tokens=max_new_tokens, audio=speak,
                                             text_temperature=text.temperature, text_top_k=text.top_k,
                                             audio_temperature=audio.temperature, audio_top_k=audio.top_k, seed=seed))
        self.engine.run_until_idle()
        failed = next((e for e in self.events if isinstance(e, SessionFailed)), None)
        if failed is not None:
            raise RuntimeError(failed.message)
        return next(e for e in self.events if isinstance(e, ResponseDone))


def reference_items(done: ResponseDone, mode: Mode, im_end: int) -> list:
    """The items the reference's generate loop yields for a response: its generated items, and in a
    sequential turn the final <|im_end|> too (models/generation.py, Step.emit)."""
    items = list(done.items)
    if not mode.interleaved and done.status == Status.COMPLETED:
        items.append(im_end)
    return items


def open_chat(ckpt: Checkpoint, mode: str, *, voice: str = DEFAULT_VOICE, capacity: int = MAX_CONTEXT,
              seed: int | None = None, compile: bool = False, decoder: str = "auto") -> Chat:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    chat = Chat(ckpt, capacity=capacity, seed=seed, compile=compile, decoder=decoder)
    chat.turn("system", text={"chat": CHAT_PROMPT, "asr": ASR_PROMPT}.get(mode) or TTS_VOICES[voice])
    return chat


def run_turn(
    chat: Chat,
    mode: str,
    *,
    speak: bool = True,
    audio_16k: np.ndarray | None = None,
    text: str | None = None,
    max_new_tokens: int = GENERATE_MAX_TOKENS,
    sampling: tuple[SamplingParams, SamplingParams] | None = None,
) -> TurnResult:
    """A user turn (audio and/or text) and the answer; `speak`: decode the answer's speech (not in ASR)."""
    text_params, audio_params = sampling or default_sampling(mode)
    t0 = time.perf_counter()
    chat.turn("user", text=text, audio=audio_16k)
    done = chat.respond(Mode(mode), max_new_tokens, text_params, audio_params, speak=speak and mode != "asr")
    seconds = time.perf_counter() - t0
    pcm = [e.pcm for e in chat.events if isinstance(e, AudioDelta)]
    firsts = [t for t in (done.timings.first_text, done.timings.first_audio) if t is not None]
    return TurnResult(
        text=done.text, items=reference_items(done, Mode(mode), chat.engine.tokenizer.special.im_end),
        audio=np.concatenate(pcm) if pcm else np.zeros(0, np.float32),
        finish=FINISH.get(done.status), seconds=seconds,
        first_item_seconds=min(firsts) - t0 if firsts else None,
        first_audio_seconds=None if done.timings.first_audio is None else done.timings.first_audio - t0,
        frames=done.usage.output_audio_frames)
