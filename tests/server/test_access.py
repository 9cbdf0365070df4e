"""Who gets in, and the REST endpoints, in this process on the scripted engine: refusals before a slot is taken,
client secrets (once, until they expire, what session they carry), a full or closing server, OpenAI's error body
everywhere, and what the REST routes return. The official SDK runs over the TestClient where it applies."""

from __future__ import annotations

import io
import time
import wave

import numpy as np
import openai
import pytest
from starlette.websockets import WebSocketDisconnect

from server.auth import Auth
from streaming.audio import float_to_pcm16, write_wav
from tests.server.fake_engine import AUTH, FRAMES, KEY, SAID, Realtime, realtime, served
from tests.streaming.fakes import reply_pcm

SPOKEN = float_to_pcm16(reply_pcm(FRAMES)).tobytes()  # what a scripted response plays, as 16-bit PCM
WAV_HEADER = 44


class Clock:
    def __init__(self) -> None:
        self.now = float(int(time.time()))  # whole seconds: a secret expires at a whole second

    def __call__(self) -> float:
        return self.now


def _sdk(srv, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url="http://testserver/v1", http_client=srv.client)


def _wav(tmp_path, clip: np.ndarray, rate: int = 16000) -> bytes:
    write_wav(tmp_path / "clip.wav", clip, rate)
    return (tmp_path / "clip.wav").read_bytes()


def _first(srv, headers: dict | None = None, subprotocols: list[str] | None = None) -> tuple[dict, int | None]:
    """Connect raw: (the first event, the close code, or None if the connection stays open)."""
    with srv.client.websocket_connect("/v1/realtime", headers=headers or {}, subprotocols=subprotocols) as ws:
        rt = Realtime(ws)
        first = rt.receive()
        try:
            rt.receive(timeout=0.3)  # an open session sends nothing more on its own
        except WebSocketDisconnect as e:
            return first, e.code
        except TimeoutError:
            return first, None
    return first, None


def _body(code: str, message: str, param: str | None = None, type_: str = "invalid_request_error") -> dict:
    return {"error": {"type": type_, "code": code, "message": message, "param": param, "event_id": None}}


def test_refused_before_a_slot_is_taken(tiny):
    with served(tiny) as srv:
        for headers, protocols, why in [(None, None, "missing credentials"),
                                        ({"Authorization": "Bearer wrong"}, None, "invalid api key"),
                                        (None, ["realtime", "openai-insecure-api-key.wrong"], "invalid api key"),
                                        ({"Authorization": "Bearer ek_forged.secret"}, None, "invalid client secret")]:
            event, code = _first(srv, headers, protocols)
            assert event["type"] == "error" and event["error"] == {
                "type": "invalid_request_error", "code": "invalid_api_key", "param": None, "event_id": None,
                "message": f"authentication failed: {why}"}, event
            assert code == 1008
            assert srv.slots_used() == 0
        assert srv.metric("lfm_audio_rejected_sessions_total", reason="auth") == 4
        assert srv.metric("lfm_audio_sessions_total", transport="websocket") == 0


def test_api_key_and_single_use_client_secret(tiny):
    with served(tiny) as srv:
        event, code = _first(srv, AUTH)
        assert event["type"] == "session.created" and code is None

        secret = _sdk(srv).realtime.client_secrets.create(
            session={"type": "realtime", "instructions": "Speak like a pirate."})
        assert secret.value.startswith("ek_") and secret.expires_at > time.time()
        assert secret.session.instructions == "Speak like a pirate."
        with realtime(srv.client, {}, ["realtime", f"openai-insecure-api-key.{secret.value}"]) as rt:
            assert rt.ws.accepted_subprotocol == "realtime"
            assert rt.events[0]["session"]["instructions"] == "Speak like a pirate."  # the secret's session
        event, code = _first(srv, subprotocols=["realtime", f"openai-insecure-api-key.{secret.value}"])
        assert event["error"]["code"] == "invalid_api_key" and "already used" in event["error"]["message"]
        assert code == 1008
        with pytest.raises(openai.AuthenticationError):  # a client secret cannot mint more secrets
            _sdk(srv, secret.value).realtime.client_secrets.create()


def test_expired_client_secret_is_refused(tiny):
    with served(tiny) as srv:
        clock = Clock()
        srv.state.auth = Auth(srv.state.settings, clock=clock)
        secret = _sdk(srv).realtime.client_secrets.create(expires_after={"anchor": "created_at", "seconds": 10})
        fresh = _sdk(srv).realtime.client_secrets.create(expires_after={"anchor": "created_at", "seconds": 10})
        clock.now += 9.5
        assert _first(srv, {"Authorization": f"Bearer {fresh.value}"})[0]["type"] == "session.created"
        clock.now += 0.5
        event, code = _first(srv, {"Authorization": f"Bearer {secret.value}"})
        assert event["error"]["code"] == "invalid_api_key" and "expired" in event["error"]["message"]
        assert code == 1008 and srv.slots_used() == 0


def test_a_transcription_session_from_a_client_secret(tiny, say):
    with served(tiny) as srv:
        secret = _sdk(srv).realtime.client_secrets.create(session={"type": "transcription"})
        with realtime(srv.client, {"Authorization": f"Bearer {secret.value}"}) as rt:
            session = rt.events[0]["session"]
            rt.send({"type": "response.create", "event_id": "r"})
            refused = rt.until("error")["error"]
            rt.append(np.concatenate([say("Only words, please.", 24000), np.zeros(24_000, np.float32)]))
            completed = rt.until("conversation.item.input_audio_transcription.completed")
    assert session["type"] == "transcription" and session["object"] == "realtime.transcription_session"
    assert (refused["code"], refused["event_id"]) == ("invalid_request", "r")
    assert completed["transcript"] == SAID
    assert "response.created" not in rt.types()


def test_a_full_server_and_a_closing_one_say_try_later(tiny):
    with served(tiny, max_sessions=1) as srv, realtime(srv.client):
        event, code = _first(srv, AUTH)
        assert code == 1013 and event["error"]["code"] == "server_full"
        r = srv.client.post("/v1/audio/speech", headers=AUTH, json={"input": "no room"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json() == _body("server_full", "all 1 sessions are in use", type_="server_error")
        assert srv.metric("lfm_audio_rejected_sessions_total", reason="full") == 2
        srv.state.accepting = False  # as during shutdown
        event, code = _first(srv, AUTH)
        assert code == 1013 and event["error"]["code"] == "server_unavailable"
        r = srv.client.post("/v1/audio/speech", headers=AUTH, json={"input": "closing"})
        assert r.status_code == 503 and r.json() == _body("server_unavailable", "the server is not ready",
                                                          type_="server_error")
        assert srv.client.get("/readyz").status_code == 503
        srv.state.accepting = True


def test_rest_errors_carry_one_error_body(tiny, tmp_path):
    wav = _wav(tmp_path, np.zeros(1600, np.float32))
    with served(tiny) as srv:
        c = srv.client
        assert c.get("/v1/models").json() == _body("invalid_api_key", "authentication failed: missing credentials")
        r = c.get("/v1/models", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and r.json() == _body("invalid_api_key", "authentication failed: invalid api key")
        for body, param, code in [({"input": "x", "response_format": "mp3"}, "response_format", "unsupported_format"),
                                  ({"input": "x", "stream_format": "sse"}, "stream_format", "unsupported_format"),
                                  ({"input": "x", "voice": "nobody"}, "voice", "invalid_value")]:
            r = c.post("/v1/audio/speech", headers=AUTH, json=body)
            assert r.status_code == 400 and r.json()["error"]["code"] == code and r.json()["error"]["param"] == param
            assert r.json()["error"]["type"] == "invalid_request_error" and r.json()["error"]["event_id"] is None
        r = c.post("/v1/audio/speech", headers=AUTH, json={"input": "x", "response_format": "mp3"})
        assert r.json() == _body("unsupported_format", "response_format must be wav or pcm", "response_format")
        r = c.post("/v1/audio/speech", headers=AUTH, json={"input": ""})  # fails the body's own validation
        assert r.status_code == 400 and r.json()["error"]["param"] == "input", r.json()
        assert r.json()["error"]["code"] == "invalid_value" and "detail" not in r.json()
        r = c.post("/v1/audio/transcriptions", headers=AUTH, files={"file": ("a.wav", b"not a wav file")})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_file" and \
            r.json()["error"]["param"] == "file"
        r = c.post("/v1/audio/transcriptions", headers=AUTH, files={"file": ("a.wav", wav)},
                   data={"response_format": "srt"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "response_format"
        r = c.post("/v1/realtime/client_secrets", headers=AUTH, json={"expires_after": {"seconds": 5}})
        assert r.status_code == 400 and r.json() == _body("invalid_value", "10 to 7200", "expires_after.seconds")
        r = c.post("/v1/realtime/client_secrets", headers=AUTH, json={"session": {"type": "chat"}})
        assert r.status_code == 400 and r.json()["error"]["param"] == "session.type"
        with pytest.raises(openai.BadRequestError):
            _sdk(srv).audio.speech.create(model="lfm-audio", voice="alloy", input="x", response_format="mp3")
        assert srv.metric("lfm_audio_rejected_sessions_total", reason="auth") == 2
        assert srv.slots_used() == 0


def test_rest_endpoints_return_what_the_engine_said(tiny, say, tmp_path):
    with served(tiny) as srv:
        sdk = _sdk(srv)
        assert [(m.id, m.owned_by) for m in sdk.models.list().data] == [("tiny", "lfm-audio")]
        data = sdk.audio.speech.create(model="lfm-audio", voice="alloy", input="Hello there!",
                                       response_format="wav").read()
        with wave.open(io.BytesIO(data[:WAV_HEADER])) as w:
            assert (w.getframerate(), w.getsampwidth(), w.getnchannels()) == (24000, 2, 1)
        assert data[WAV_HEADER:] == SPOKEN
        with sdk.audio.speech.with_streaming_response.create(model="lfm-audio", voice="sage", input="Streaming.",
                                                             response_format="pcm") as response:
            assert response.headers["content-type"] == "audio/pcm"
            assert b"".join(response.iter_bytes()) == SPOKEN
        clip = say("What time is it?", 16000)
        wav = _wav(tmp_path, clip)
        text = sdk.audio.transcriptions.create(model="lfm-audio", file=("q.wav", wav))
        assert text.text == SAID
        r = srv.client.post("/v1/audio/transcriptions", headers=AUTH, files={"file": ("q.wav", wav)})
        assert r.json() == {"text": SAID, "usage": {"type": "duration", "seconds": round(len(clip) / 16000, 3)}}
        r = srv.client.post("/v1/audio/transcriptions", headers=AUTH, files={"file": ("q.wav", wav)},
                            data={"response_format": "text"})
        assert r.text == SAID and r.headers["content-type"].startswith("text/plain")
        assert srv.slots_used() == 0  # each request's session is closed
        assert srv.metric("lfm_audio_sessions_total", transport="http") == 5
        assert srv.metric("lfm_audio_sessions_active", transport="http") == 0
