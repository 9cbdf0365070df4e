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
from fastapi import APIRouter, File, Form, Header, HTTPException, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, Field

from models.defaults import ASR_PROMPT, TTS_AUDIO_SAMPLING, TTS_VOICES
from server.realtime import ProtocolError, apply_session_update
from streaming import messages as m
from streaming.audio import float_to_pcm16, read_wav, resample
from streaming.session import SessionConfig

__all__ = ["router"]

router = APIRouter()
AuthHeader = Annotated[str | None, Header()]

# OpenAI's voice names onto the model's four TTS voices.
VOICES = {**{v: v for v in TTS_VOICES},
          "alloy": "us_female", "coral": "us_female", "nova": "us_female", "shimmer": "us_female",
          "marin": "us_female", "sage": "uk_female", "ash": "us_male", "echo": "us_male", "onyx": "us_male",
          "verse": "us_male", "cedar": "us_male", "ballad": "us_male", "fable": "uk_male"}


def _state(request: Request):
    return request.app.state.lfm


def _authorize(request: Request, authorization: str | None) -> None:
    result = _state(request).auth.authenticate(authorization, [])
    if not result.ok:
        _state(request).metrics.rejected("auth")
        raise HTTPException(401, detail={"error": {"type": "invalid_request_error", "code": "invalid_api_key",
                                                   "message": f"authentication failed: {result.reason}"}})


async def _one_shot(request: Request, system: str, user_text: str | None, user_audio: np.ndarray | None,
                    req: m.ResponseRequest) -> AsyncIterator[m.Event]:
    """Open an engine session, ask one question, yield its events until the response is done."""
    state = _state(request)
    if state.engine is None or not state.engine.ready or not state.accepting:
        raise HTTPException(503, detail={"error": {"type": "server_error", "code": "server_unavailable",
                                                   "message": "the server is not ready"}})
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    try:
        session = state.engine.open(lambda e: loop.call_soon_threadsafe(events.put_nowait, e))
    except m.EngineFull as e:
        state.metrics.rejected("full")
        raise HTTPException(503, detail={"error": {"type": "server_error", "code": "server_full", "message": str(e)}},
                            headers={"Retry-After": "1"}) from None
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
async def models(request: Request, authorization: AuthHeader = None) -> dict:
    _authorize(request, authorization)
    state = _state(request)
    return {"object": "list", "data": [{"id": state.model_name, "object": "model", "created": int(state.started),
                                        "owned_by": "lfm-audio", "random_weights": state.random_weights}]}


class SpeechRequest(BaseModel):
    model: str | None = None
    input: str = Field(min_length=1, max_length=4096)
    voice: str = "alloy"
    response_format: Literal["wav", "pcm", "mp3", "opus", "aac", "flac"] = "wav"
    speed: float = 1.0
    instructions: str | None = None
    stream_format: Literal["audio", "sse"] = "audio"


def _wav_header(rate: int) -> bytes:
    # A streaming WAV: the sizes are unknown up front, so they are set to the maximum (players read to EOF).
    fmt = struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
    return b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVEfmt " + fmt + b"data" + struct.pack("<I", 0xFFFFFFFF)


@router.post("/v1/audio/speech", response_model=None)
async def speech(body: SpeechRequest, request: Request, authorization: AuthHeader = None) -> StreamingResponse:
    """Text to speech (the model's sequential TTS mode), streamed as it is generated: WAV or raw PCM
    (24 kHz, 16-bit, mono)."""
    _authorize(request, authorization)
    if body.response_format not in ("wav", "pcm"):
        raise HTTPException(400, detail={"error": {"type": "invalid_request_error", "code": "unsupported_format",
                                                   "param": "response_format",
                                                   "message": "response_format must be wav or pcm"}})
    if body.stream_format != "audio":
        raise HTTPException(400, detail={"error": {"type": "invalid_request_error", "code": "unsupported_format",
                                                   "param": "stream_format", "message": "stream_format must be audio"}})
    voice = VOICES.get(body.voice)
    if voice is None:
        raise HTTPException(400, detail={"error": {"type": "invalid_request_error", "code": "invalid_value",
                                                   "param": "voice", "message": f"unknown voice {body.voice!r}; "
                                                   f"one of {sorted(VOICES)}"}})
    # Room for about a third of a second of speech per character: a real model ends well before (end of
    # audio), and a random one cannot run for minutes.
    limit = min(_state(request).settings.max_response_tokens, 64 + 4 * len(body.input))
    req = m.ResponseRequest("speech", "speech_item", m.Mode.TTS, max_tokens=limit,
                            audio_temperature=TTS_AUDIO_SAMPLING.temperature, audio_top_k=TTS_AUDIO_SAMPLING.top_k)
    events = _one_shot(request, TTS_VOICES[voice], body.input, None, req)
    first = await anext(events)  # errors (full, not ready) surface as HTTP statuses before streaming starts

    async def body_stream() -> AsyncIterator[bytes]:
        if body.response_format == "wav":
            yield _wav_header(24000)
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
    request: Request,
    file: Annotated[UploadFile, File()],
    authorization: AuthHeader = None,
    model: Annotated[str, Form()] = "lfm-audio",
    response_format: Annotated[str, Form()] = "json",
) -> JSONResponse | PlainTextResponse:
    """Speech to text (the model's ASR mode). The upload is a PCM WAV file."""
    _authorize(request, authorization)
    if response_format not in ("json", "text"):
        raise HTTPException(400, detail={"error": {"type": "invalid_request_error", "code": "unsupported_format",
                                                   "param": "response_format", "message": "use json or text"}})
    data = await file.read()
    try:
        audio = _read_wav(data)
    except (wave.Error, EOFError, ValueError) as e:
        raise HTTPException(400, detail={"error": {"type": "invalid_request_error", "code": "invalid_file",
                                                   "param": "file", "message": f"expected a PCM WAV file: {e}"}}
                            ) from None
    req = m.ResponseRequest("asr", "asr_item", m.Mode.ASR, max_tokens=1024, audio=False, audio_temperature=0.0)
    text, failed = "", None
    async for event in _one_shot(request, ASR_PROMPT, None, audio, req):
        if isinstance(event, m.ResponseDone):
            text = event.text
        elif isinstance(event, m.SessionFailed):
            failed = event.message
    if failed:
        raise HTTPException(500, detail={"error": {"type": "server_error", "code": "failed", "message": failed}})
    text = text.strip()
    if response_format == "text":
        return PlainTextResponse(text)
    return JSONResponse({"text": text, "usage": {"type": "duration", "seconds": round(len(audio) / 16000, 3)}})


def _read_wav(data: bytes) -> np.ndarray:
    audio, rate = read_wav(io.BytesIO(data))
    if len(audio) == 0:
        raise ValueError("the file has no audio")
    return resample(audio, rate, 16000)


class ClientSecretRequest(BaseModel):
    expires_after: dict | None = None
    session: dict | None = None


@router.post("/v1/realtime/client_secrets")
async def client_secrets(body: ClientSecretRequest, request: Request,
                         authorization: AuthHeader = None) -> dict:
    """Mint a short-lived, single-session secret (`ek_...`) that a browser can use instead of an API key."""
    _authorize(request, authorization)
    state = _state(request)
    if body.session is not None:
        try:
            apply_session_update(SessionConfig(), body.session)
        except ProtocolError as e:
            raise HTTPException(400, detail={"error": {"type": "invalid_request_error", "code": e.code,
                                                       "param": e.param, "message": e.message}}) from None
    ttl = (body.expires_after or {}).get("seconds")
    if ttl is not None and not (isinstance(ttl, int) and 10 <= ttl <= 7200):
        raise HTTPException(400, detail={"error": {"type": "invalid_request_error", "code": "invalid_value",
                                                   "param": "expires_after.seconds", "message": "10 to 7200"}})
    return state.auth.mint(body.session, ttl)
