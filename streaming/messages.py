"""The typed messages that cross the engine's boundary: commands in, events out, statistics.

Plain data (NumPy arrays and Python values, never device tensors), so that whoever receives them, on
whatever thread, needs nothing from the model. Commands are applied by the engine thread in the order
they were sent, and dispatched on their type.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from models.defaults import CHAT_AUDIO_SAMPLING, RESPONSE_TOKENS, TEXT_SAMPLING

if TYPE_CHECKING:
    from models.conversation import Item

__all__ = [
    "AudioDelta", "Cancel", "Close", "Command", "Confirm", "Drop", "EngineFull", "EngineStats", "Event", "ItemAdded",
    "ItemCreated", "Mode", "Open", "Respond", "ResponseDone", "ResponseRequest", "SessionFailed", "Speculate", "Status",
    "TextDelta", "Timings", "ToolCalls", "Transcribe", "Usage",
]


class EngineFull(RuntimeError):
    """Every slot is taken: the session is refused (nothing queues real-time audio)."""


class Mode(enum.Enum):
    CHAT = "chat"  # interleaved text and speech
    ASR = "asr"  # sequential: transcript text
    TTS = "tts"  # sequential: speech

    @property
    def interleaved(self) -> bool:
        return self is Mode.CHAT


class Status(enum.Enum):  # OpenAI Realtime response statuses
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    INCOMPLETE = "incomplete"
    FAILED = "failed"


@dataclass(frozen=True)
class ResponseRequest:
    response_id: str
    item_id: str  # the assistant item the response becomes
    mode: Mode = Mode.CHAT
    max_tokens: int = RESPONSE_TOKENS  # text tokens and audio frames together
    audio: bool = True  # decode speech (False: text only, frames still generated and kept)
    text_temperature: float = TEXT_SAMPLING.temperature
    text_top_k: int = TEXT_SAMPLING.top_k
    audio_temperature: float = CHAT_AUDIO_SAMPLING.temperature
    audio_top_k: int = CHAT_AUDIO_SAMPLING.top_k
    seed: int | None = None


@dataclass
class Usage:
    input_positions: int = 0  # positions prefilled for this response (new since the last one)
    cached_positions: int = 0  # positions reused from the session's state
    output_text_tokens: int = 0
    output_audio_frames: int = 0


@dataclass
class Timings:
    """perf_counter() stamps taken on the engine thread."""

    requested: float = 0.0
    prefill_done: float | None = None
    first_text: float | None = None
    first_audio: float | None = None
    done: float | None = None


# ---- commands (session -> engine). Edits of the conversation itself are applied by the caller (streaming/
# handle.py); these tell the engine what it has to do about them.
@dataclass(frozen=True)
class Open:
    session: int
    sink: Callable[[Event], None]
    handle: object  # its streaming.handle.EngineSession (not imported: that module imports this one)


@dataclass(frozen=True)
class ItemCreated:
    session: int
    item: Item  # already in the conversation
    audio: np.ndarray | None  # a user clip (16 kHz float32) to encode into it, in turn


@dataclass(frozen=True)
class Respond:
    session: int
    request: ResponseRequest
    item: Item  # the open assistant item, already in the conversation


@dataclass(frozen=True)
class Transcribe:
    session: int
    item_id: str
    response_id: str


@dataclass(frozen=True)
class Cancel:
    session: int
    reason: str


@dataclass(frozen=True)
class Close:
    session: int


@dataclass(frozen=True)
class Speculate:
    """Silence began: prepare a response to the turn so far, ahead of its commit (streaming/speculation.py). The
    user item `user_item_id` (empty, its clip to encode is `audio`) and the open assistant item `request.item_id`
    are in the conversation already, seen by no client; nothing of the work reaches the session before Confirm."""

    session: int
    request: ResponseRequest
    user_item_id: str
    audio: np.ndarray  # 16 kHz float32: exactly the clip the turn commits if it ends here


@dataclass(frozen=True)
class Confirm:
    """The turn was committed as speculated: what was held goes out now and the response carries on."""

    session: int
    response_id: str


@dataclass(frozen=True)
class Drop:
    """Speech resumed (or the session does something else): the speculative work is undone."""

    session: int
    response_id: str


Command = Open | ItemCreated | Respond | Transcribe | Cancel | Close | Speculate | Confirm | Drop


# ---- events (engine -> session)
@dataclass(frozen=True)
class ItemAdded:
    item_id: str
    positions: int  # input positions the item takes (after encoding audio)


@dataclass(frozen=True)
class TextDelta:
    response_id: str
    text: str


@dataclass(frozen=True)
class AudioDelta:
    response_id: str
    pcm: np.ndarray  # float32, 24 kHz mono
    frame: int  # index of the first 80 ms frame this chunk belongs to


@dataclass(frozen=True)
class ResponseDone:
    response_id: str
    item_id: str
    status: Status
    reason: str | None  # e.g. "max_output_tokens", "turn_detected", "client_cancelled", an error
    usage: Usage
    timings: Timings
    text: str  # the whole transcript
    items: tuple = ()  # every generated item in order: token ids (int) and frames (8-tuples of codes)


@dataclass(frozen=True)
class ToolCalls:
    response_id: str
    text: str  # what the model wrote between <|tool_call_start|> and <|tool_call_end|>


@dataclass(frozen=True)
class SessionFailed:
    message: str


Event = ItemAdded | TextDelta | AudioDelta | ResponseDone | ToolCalls | SessionFailed


@dataclass
class EngineStats:
    """Counters and recent samples; the server turns them into Prometheus metrics."""

    slots_total: int = 0
    slots_used: int = 0
    steps: int = 0
    step_seconds: list[float] = field(default_factory=list)  # decode steps since the last drain
    batch_sizes: list[int] = field(default_factory=list)
    prefill_seconds: list[float] = field(default_factory=list)
    prefill_positions: int = 0
    queue_depth: int = 0  # slots waiting for prefill
    skipped_rows: int = 0  # rows that waited a step because they were far ahead of real time
    sessions_failed: int = 0
    speculative_starts: int = 0  # speculations the engine began working on
    speculative_hits: int = 0  # ... whose turn was then committed as speculated
    speculative_drops: int = 0  # ... undone because speech resumed
    speculative_saved_seconds: list[float] = field(default_factory=list)  # per hit: work done before the commit
    alive: bool = False
    last_heartbeat: float = 0.0
