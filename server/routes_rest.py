"""OpenAI-shaped REST endpoints: models, text to speech, transcription, client secrets."""

from __future__ import annotations

import asyncio
import io
import struct
import time
import wave
from collections.abc import AsyncIterator
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, File, Form, Header, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, Field

from models.defaults import (
    ASR_PROMPT,
    DEFAULT_VOICE,
    INPUT_RATE,
    MAX_TTL_S,
    MIN_TTL_S,
    OUTPUT_RATE,
    RESPONSE_TOKENS,
    TTS_AUDIO_SAMPLING,
    TTS_VOICES,
)
from server import validation
from server.app import AppState
from server.deps import Authorized, State
from server.errors import ApiError
from server.realtime import ProtocolError, apply_session_update
from streaming import messages as m
from streaming.audio import float_to_pcm16, read_wav, resample
from streaming.session import SessionConfig

__all__ = ["router"]

router = APIRouter(dependencies=[Authorized])  # every route here: the API key first

# OpenAI's voice names onto the model's four TTS voices.
VOICES = {**{v: v for v in TTS_VOICES},
          "alloy": "us_female", "coral": "us_female", "nova": "us_female", "shimmer": "us_female",
          "marin": "us_female", "sage": "uk_female", "ash": "us_male", "echo": "us_male", "onyx": "us_male",
          "verse": "us_male", "cedar": "us_male", "ballad": "us_male", "fable": "uk_male"}


def _invalid(param: str, message: str, code: str = "invalid_value") -> ApiError:
    return ApiError(400, code, message, param=param)


async def _one_shot(state: AppState, system: str, user_text: str | None, user_audio: np.ndarray | None,
                    req: m.ResponseRequest) -> AsyncIterator[m.Event]:
    """Open an engine session, ask one question, yield its events until the response is done."""
    if state.engine is None or not state.engine.ready or not state.accepting:
        raise ApiError(503, "server_unavailable", "the server is not ready")
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    try:
        session = state.engine.open(lambda e: loop.call_soon_threadsafe(events.put_nowait, e))
    except m.EngineFull as e:
        state.metrics.rejected("full")
        raise ApiError(503, "server_full", str(e)) from None
    state.metrics.session_started("http")
    opened = time.monotonic()
    try:
        session.add_item("sys", "system", text=system)
        session.add_item("user", "user", text=user_text, audio=user_audio)
        session.respond(req)
        while True:
            event = await events.get()
            yield event
            if isinstance(event, m.ResponseDone | m.SessionFailed):
                return
    finally:
        session.close()
        state.metrics.session_ended("http", time.monotonic() - opened)


@router.get("/v1/models")
async def models(state: State) -> dict:
    return {"object": "list", "data": [{"id": state.model_name, "object": "model", "created": int(state.started),
                                        "owned_by": "lfm-audio", "random_weights": state.random_weights}]}


class SpeechRequest(BaseModel):
    model: str | None = None
    input: str = Field(min_length=1, max_length=4096)
    voice: str = DEFAULT_VOICE
    response_format: Literal["wav", "pcm", "mp3", "opus", "aac", "flac"] = "wav"
    speed: float = 1.0
    instructions: str | None = None
    stream_format: Literal["audio", "sse"] = "audio"


def _wav_header(rate: int) -> bytes:
    # A streaming WAV: the sizes are unknown up front, so they are set to the maximum (players read to EOF).
    fmt = struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
    return b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVEfmt " + fmt + b"data" + struct.pack("<I", 0xFFFFFFFF)


@router.post("/v1/audio/speech", response_model=None)
async def speech(body: SpeechRequest, state: State) -> StreamingResponse:
    """Text to speech (the model's sequential TTS mode), streamed as it is generated: WAV or raw PCM
    (24 kHz, 16-bit, mono)."""
    if body.response_format not in ("wav", "pcm"):
        raise _invalid("response_format", "response_format must be wav or pcm", "unsupported_format")
    if body.stream_format != "audio":
        raise _invalid("stream_format", "stream_format must be audio", "unsupported_format")
    voice = VOICES.get(body.voice)
    if voice is None:
        raise _invalid("voice", f"unknown voice {body.voice!r}; one of {sorted(VOICES)}")
    # Room for about a third of a second of speech per character: a real model ends well before (end of
    # audio), and a random one cannot run for minutes.
    limit = min(state.settings.max_response_tokens, 64 + 4 * len(body.input))
    req = m.ResponseRequest("speech", "speech_item", m.Mode.TTS, max_tokens=limit,
                            audio_temperature=TTS_AUDIO_SAMPLING.temperature, audio_top_k=TTS_AUDIO_SAMPLING.top_k)
    events = _one_shot(state, TTS_VOICES[voice], body.input, None, req)
    first = await anext(events)  # errors (full, not ready) surface as HTTP statuses before streaming starts

    async def body_stream() -> AsyncIterator[bytes]:
        if body.response_format == "wav":
            yield _wav_header(OUTPUT_RATE)
        event = first
        while True:
            if isinstance(event, m.AudioDelta):
                yield float_to_pcm16(event.pcm).tobytes()
            if isinstance(event, m.ResponseDone | m.SessionFailed):
                return
            event = await anext(events)

    media = "audio/wav" if body.response_format == "wav" else "audio/pcm"
    return StreamingResponse(body_stream(), media_type=media)


@router.post("/v1/audio/transcriptions", response_model=None)
async def transcriptions(
    state: State,
    file: Annotated[UploadFile, File()],
    model: Annotated[str, Form()] = "lfm-audio",
    response_format: Annotated[str, Form()] = "json",
) -> JSONResponse | PlainTextResponse:
    """Speech to text (the model's ASR mode). The upload is a PCM WAV file."""
    if response_format not in ("json", "text"):
        raise _invalid("response_format", "use json or text", "unsupported_format")
    data = await file.read()
    try:
        audio = _read_wav(data)
    except (wave.Error, EOFError, ValueError) as e:
        raise _invalid("file", f"expected a PCM WAV file: {e}", "invalid_file") from None
    # An upload may be long: a response's limit, not the (shorter) one of a Realtime input transcription.
    req = m.ResponseRequest("asr", "asr_item", m.Mode.ASR, max_tokens=RESPONSE_TOKENS, audio=False,
                            audio_temperature=0.0)
    text, failed = "", None
    async for event in _one_shot(state, ASR_PROMPT, None, audio, req):
        if isinstance(event, m.ResponseDone):
            text = event.text
        elif isinstance(event, m.SessionFailed):
            failed = event.message
    if failed:
        raise ApiError(500, "failed", failed)
    text = text.strip()
    if response_format == "text":
        return PlainTextResponse(text)
    return JSONResponse({"text": text, "usage": {"type": "duration", "seconds": round(len(audio) / INPUT_RATE, 3)}})


def _read_wav(data: bytes) -> np.ndarray:
    audio, rate = read_wav(io.BytesIO(data))
    if len(audio) == 0:
        raise ValueError("the file has no audio")
    return resample(audio, rate, INPUT_RATE)


class ClientSecretRequest(BaseModel):
    expires_after: dict | None = None
    session: dict | None = None


@router.post("/v1/realtime/client_secrets")
async def client_secrets(body: ClientSecretRequest, state: State,
                         authorization: Annotated[str | None, Header()] = None) -> dict:
    """Mint a short-lived, single-session secret (`ek_...`) that a browser can use instead of an API key."""
    if body.session is not None:
        try:
            session, problems = validation.session_update(body.session)
            if problems:
                raise ProtocolError(*problems[0])
            apply_session_update(SessionConfig(), session)
        except ProtocolError as e:
            raise _invalid(e.param, e.message, e.code) from None
    ttl = (body.expires_after or {}).get("seconds")
    if ttl is not None and not (isinstance(ttl, int) and MIN_TTL_S <= ttl <= MAX_TTL_S):
        raise _invalid("expires_after.seconds", f"{MIN_TTL_S} to {MAX_TTL_S}")
    who = state.auth.authenticate(authorization).who
    if who is not None:  # a secret is a session to be: it counts against the key's rate of new sessions
        state.limits.acquire(who, hold=False)
    return state.auth.mint(body.session, ttl)
