"""What a session is configured with, the conversation items as its client sees them, and the typed events it
emits for the transport adapters (server/realtime.py turns them into OpenAI Realtime events)."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field

import numpy as np

from models.defaults import CHAT_AUDIO_SAMPLING, CHAT_PROMPT, REALTIME_VOICE, RESPONSE_TOKENS, TEXT_SAMPLING
from streaming import messages as m
from streaming.audio import AudioFormat
from streaming.endpoint import EAGERNESS
from streaming.playout import Playout
from streaming.tools import Tool
from streaming.vad import VadConfig

__all__ = [
    "INF_TOKENS",
    "AudioCommitted",
    "ConvItem",
    "Event",
    "FunctionCall",
    "ItemEvent",
    "Part",
    "Response",
    "ResponseAudio",
    "ResponseDone",
    "ResponseStarted",
    "ResponseText",
    "SessionConfig",
    "SessionError",
    "SpeechEvent",
    "Transcription",
    "TurnDetection",
    "new_id",
]

INF_TOKENS = 1 << 30  # max_output_tokens "inf": no limit but the server's cap


@dataclass(frozen=True)
class TurnDetection:
    """kind: server_vad (silence_duration_ms of silence ends a turn) or semantic_vad (the end-of-turn model decides,
    by eagerness; vad's threshold and prefix_padding_ms still apply). See streaming/endpoint.py."""

    vad: VadConfig = field(default_factory=VadConfig)
    create_response: bool = True
    interrupt_response: bool = True
    kind: str = "server_vad"
    eagerness: str = "auto"  # semantic_vad only

    def __post_init__(self):
        if self.kind not in ("server_vad", "semantic_vad"):
            raise ValueError(f"turn detection type must be server_vad or semantic_vad, got {self.kind!r}")
        if self.eagerness not in EAGERNESS:
            raise ValueError(f"eagerness must be one of {', '.join(EAGERNESS)}, got {self.eagerness!r}")


@dataclass(frozen=True)
class SessionConfig:
    kind: str = "realtime"  # realtime | transcription
    instructions: str = CHAT_PROMPT
    input_format: AudioFormat = field(default_factory=AudioFormat)  # pcm16 at WIRE_RATE
    output_format: AudioFormat = field(default_factory=AudioFormat)
    turn_detection: TurnDetection | None = field(default_factory=TurnDetection)
    transcribe_input: bool = False  # audio.input.transcription set
    output_audio: bool = True  # output_modalities ["audio"] (False: ["text"])
    max_output_tokens: int = RESPONSE_TOKENS  # INF_TOKENS: "inf" (the server's cap)
    voice: str = REALTIME_VOICE  # reported back; chat speaks in the model's one voice
    tools: tuple[Tool, ...] = ()  # function tools, listed in the system turn (streaming/tools.py)
    tool_choice: str | dict = "auto"  # "none" leaves them out; others are not enforced
    audio_temperature: float = CHAT_AUDIO_SAMPLING.temperature
    audio_top_k: int = CHAT_AUDIO_SAMPLING.top_k
    text_temperature: float = TEXT_SAMPLING.temperature
    seed: int | None = None
    speculative_start: bool | None = None  # None: the server's default (streaming/speculation.py)


# ---- conversation items as the client sees them
@dataclass
class Part:
    type: str  # input_audio | input_text | output_audio | output_text
    text: str | None = None  # input_text / output_text
    transcript: str | None = None  # input_audio / output_audio
    audio_ms: int = 0


@dataclass
class ConvItem:
    id: str
    role: str  # message items: system | user | assistant
    content: list[Part] = field(default_factory=list)
    status: str = "completed"
    type: str = "message"  # message | function_call | function_call_output
    call_id: str | None = None  # function_call, function_call_output
    name: str | None = None  # function_call
    arguments: str = ""  # function_call: JSON
    output: str = ""  # function_call_output


@dataclass
class Response:
    id: str
    item: ConvItem
    audio: bool
    status: str = "in_progress"
    reason: str | None = None
    usage: m.Usage = field(default_factory=m.Usage)
    audio_seconds: float = 0.0
    started: float = field(default_factory=time.perf_counter)
    speech_end: float | None = None  # wall time the user's speech ended (server VAD)
    committed: float | None = None
    first_audio: float | None = None
    first_text: float | None = None
    cancel_requested: bool = False
    playout: Playout = field(default_factory=Playout)  # a real-time client's playback: underruns, gaps
    metadata: dict | None = None  # the client's, echoed back
    in_conversation: bool = True  # False: out-of-band (conversation "none"), its items are not kept
    own_instructions: bool = False  # response.create instructions replace the session's for this response
    calls: list[ConvItem] = field(default_factory=list)  # function_call items it made (output 1, 2, ...)


# ---- events for the transport adapters
@dataclass(frozen=True)
class SpeechEvent:
    kind: str  # started | stopped
    audio_ms: int
    item_id: str


@dataclass(frozen=True)
class AudioCommitted:
    item: ConvItem
    previous_item_id: str | None


@dataclass(frozen=True)
class ItemEvent:
    kind: str  # added | deleted | truncated | retrieved | cleared (input buffer)
    item: ConvItem | None
    previous_item_id: str | None = None
    audio_end_ms: int = 0


@dataclass(frozen=True)
class Transcription:
    item_id: str
    delta: str | None = None  # a piece, or None when done
    transcript: str | None = None  # the whole transcript, when done
    error: str | None = None


@dataclass(frozen=True)
class ResponseStarted:
    response: Response


@dataclass(frozen=True)
class ResponseText:
    response: Response
    delta: str


@dataclass(frozen=True)
class ResponseAudio:
    response: Response
    pcm: np.ndarray  # float32 24 kHz


@dataclass(frozen=True)
class ResponseDone:
    response: Response


@dataclass(frozen=True)
class FunctionCall:
    response: Response
    item: ConvItem  # a function_call item, complete


@dataclass(frozen=True)
class SessionError:
    code: str
    message: str
    param: str | None = None
    event_id: str | None = None
    type: str = "invalid_request_error"
    fatal: bool = False


Event = SpeechEvent | AudioCommitted | ItemEvent | Transcription | ResponseStarted | ResponseText | ResponseAudio | \
    ResponseDone | FunctionCall | SessionError


def new_id(prefix: str) -> str:
    """An id as OpenAI's look: a prefix and random hex."""
    return f"{prefix}_{secrets.token_hex(10)}"
