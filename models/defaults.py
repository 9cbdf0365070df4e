"""Every default of the project in one place: prompts, voices, sampling, token limits, frame length, rates,
sizes and bounds. Settings, the CLI, the REST and Realtime endpoints, the engine and the benchmarks refer
to these names; nothing else writes the numbers again.

Plain values only (no torch), so that any layer may import it: server -> streaming -> models.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ASR_PROMPT",
    "CHAT_AUDIO_SAMPLING",
    "CHAT_PROMPT",
    "CLIENT_SECRET_TTL_S",
    "DECODERS",
    "DEFAULT_VOICE",
    "FRAME_MS",
    "FRAME_S",
    "FRAME_SAMPLES",
    "GENERATE_MAX_TOKENS",
    "INPUT_RATE",
    "MAX_CONTEXT",
    "MAX_INPUT_BUFFER_S",
    "MAX_RESPONSE_TOKENS",
    "MAX_SESSIONS",
    "MAX_TTL_S",
    "MIN_TTL_S",
    "MODES",
    "OUTPUT_RATE",
    "PREFILL_BUDGET",
    "REALTIME_VOICE",
    "RESPONSE_TOKENS",
    "SPECULATION_AHEAD_S",
    "SPECULATION_PAD_MS",
    "SPECULATIVE_START",
    "TEXT_SAMPLING",
    "TRANSCRIPTION_TOKENS",
    "TTS_AUDIO_SAMPLING",
    "TTS_VOICES",
    "WEBRTC_PEER_TIMEOUT_S",
    "WEIGHTS",
    "WIRE_RATE",
    "SamplingParams",
    "frames_in_ms",
]

# ---- prompts and voices (lfm2-audio-model.md 4.1: the system prompts the model was trained with)
CHAT_PROMPT = "Respond with interleaved text and audio."
ASR_PROMPT = "Perform ASR."
TTS_VOICES = {
    "us_male": "Perform TTS. Use the US male voice.",
    "us_female": "Perform TTS. Use the US female voice.",
    "uk_male": "Perform TTS. Use the UK male voice.",
    "uk_female": "Perform TTS. Use the UK female voice.",
}
DEFAULT_VOICE = "us_female"
MODES = ("chat", "asr", "tts")  # interleaved chat, sequential transcription, sequential speech
DECODERS = ("auto", "mimi", "lfm2.5")  # speech detokenizers; auto: LFM2.5's when the checkpoint has it
WEIGHTS = ("dense", "int8", "int4")  # decode-path linear weights (models/quant.py); dense: the model dtype

REALTIME_VOICE = "alloy"  # the Realtime session's `voice` until a client names one (chat speaks in one voice)

@dataclass(frozen=True)
class SamplingParams:
    """One modality's sampling (models/sampling.py draws with it)."""

    temperature: float = 0.0  # <= 0: greedy
    top_k: int = 0  # 0: no limit; 1: greedy

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0 or self.top_k == 1


# ---- sampling, as the model card recommends: text greedy in every mode; audio per mode
TEXT_SAMPLING = SamplingParams(0.0, 0)
CHAT_AUDIO_SAMPLING = SamplingParams(1.0, 4)
TTS_AUDIO_SAMPLING = SamplingParams(0.8, 64)

# ---- token limits (text tokens and audio frames together)
RESPONSE_TOKENS = 1024  # a response's default limit (Realtime max_output_tokens unset)
MAX_RESPONSE_TOKENS = 4096  # the server's cap on any response ("inf" included)
TRANSCRIPTION_TOKENS = 512  # an input transcription (ASR) response
GENERATE_MAX_TOKENS = 512  # a turn of `lfm-audio generate`

# ---- audio: the model hears 16 kHz, speaks 24 kHz in 80 ms frames; OpenAI's pcm16 is 24 kHz
INPUT_RATE = 16_000  # the audio encoder and the VAD
OUTPUT_RATE = 24_000  # the detokenizers' output
WIRE_RATE = 24_000  # OpenAI Realtime's audio/pcm
FRAME_MS = 80
FRAME_S = FRAME_MS / 1000
FRAME_SAMPLES = OUTPUT_RATE * FRAME_MS // 1000  # 1920


def frames_in_ms(ms: float) -> int:
    """How many whole 80 ms frames of speech `ms` milliseconds of playback hold (nearest)."""
    return round(ms / FRAME_MS)


# ---- serving sizes
MAX_SESSIONS = 8  # engine slots
MAX_CONTEXT = 4096  # positions per slot
PREFILL_BUDGET = 256  # prefill positions per engine iteration
MAX_INPUT_BUFFER_S = 60.0  # uncommitted input audio per session
WEBRTC_PEER_TIMEOUT_S = 15.0  # a WebRTC call not connected by then, or whose audio stopped that long, is closed

# ---- speculative start (streaming/speculation.py): the response is prepared while the turn's end is judged
SPECULATIVE_START = True  # the server's default (measured in docs/loadtests/turn-taking.md)
SPECULATION_PAD_MS = 200  # a speculated (and then committed) turn ends this long after its last speech
SPECULATION_AHEAD_S = 0.4  # speech a speculative response may hold before the commit; it waits there

# ---- client secrets: OpenAI's bounds for expires_after.seconds, and our default lifetime
MIN_TTL_S, MAX_TTL_S = 10, 7200
CLIENT_SECRET_TTL_S = 600
