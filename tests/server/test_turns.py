"""Turns in this process, on the scripted engine: bad input, server VAD and push-to-talk turns, cancel and
barge-in, truncation, input transcription, G.711, a failing engine. Turn detection runs on the audio's samples,
not the clock, so real speech (espeak-ng) drives it here as it does over a network."""

from __future__ import annotations

import numpy as np
import pytest
from starlette.websockets import WebSocketDisconnect

from streaming.audio import AudioFormat, OutputEncoder
from tests.server.fake_engine import FRAMES, SAID, realtime, reply, served
from tests.streaming.fakes import FakeRunner, frame_pcm, tail_pcm

VAD = {"type": "server_vad", "silence_duration_ms": 300, "prefix_padding_ms": 200}


def silence(ms: int) -> np.ndarray:
    return np.zeros(24 * ms, np.float32)


def _endless(tiny) -> FakeRunner:
    """Speech that never ends: each response lasts until it is cancelled or reaches its token limit."""
    return FakeRunner(reply=reply(tiny, frames=None), step_s=0.002, keep_plans=False)


def test_bad_input_gets_an_error_each_and_the_session_goes_on(tiny):
    bad = [
        ("{not json", None),
        ({"type": "no.such.event", "event_id": "e1"}, "e1"),
        ({"type": "input_audio_buffer.append", "audio": "%%%not base64%%%", "event_id": "e2"}, "e2"),
        ({"type": "conversation.item.truncate", "item_id": "x", "content_index": "zero", "audio_end_ms": 5,
          "event_id": "e3"}, "e3"),
        ({"type": "input_audio_buffer.append", "audio": "A" * 1_100_000, "event_id": "e4"}, "e4"),
        ({"type": "session.update", "session": {"type": "realtime", "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": 16000}}}}, "event_id": "e5"}, "e5"),
        ({"type": "input_audio_buffer.commit", "event_id": "e6"}, "e6"),
        ({"type": "response.cancel", "event_id": "e7"}, "e7"),
        ({"type": "conversation.item.delete", "item_id": "nope", "event_id": "e8"}, "e8"),
        ({"type": "session.update", "session": {"type": "realtime", "audio": {"input": {
            "turn_detection": {"type": "magic_vad"}}}}, "event_id": "e9"}, "e9"),
        ([1, 2], None),
        ({"type": "conversation.item.truncate", "item_id": "nope", "content_index": 0, "audio_end_ms": 5,
          "event_id": "e11"}, "e11"),
    ]
    with served(tiny) as srv, realtime(srv.client) as rt:
        rt.update(audio={"input": {"turn_detection": None}})
        for event, event_id in bad:
            rt.send(event if not isinstance(event, list) else str(event))
            error = rt.until("error")
            assert error["error"]["event_id"] == event_id, (event, error)
            assert error["error"]["message"] and error["error"]["type"] == "invalid_request_error"
        done = rt.say("hello", max_output_tokens=20)
        assert srv.slots_used() == 1  # still the same session
    codes = [e["error"]["code"] for e in rt.of("error")]
    assert codes == ["invalid_json", "invalid_event_type", "invalid_value", "invalid_value", "event_too_large",
                     "invalid_value", "input_audio_buffer_commit_empty", "response_cancel_not_active",
                     "item_not_found", "invalid_value", "invalid_event", "item_not_found"]
    params = {e["error"]["event_id"]: e["error"]["param"] for e in rt.of("error")}
    assert params["e5"].startswith("session.audio.input.format") and params["e3"] == "content_index"
    assert params["e9"] == "session.audio.input.turn_detection.type" and params["e11"] == "item_id"
    assert done["response"]["status"] == "incomplete" and done["response"]["usage"]["output_tokens"] == 20


def test_spoken_turn_with_server_vad(tiny, say):
    speech = say("Hello there. What is the weather like today?", 24000)
    with served(tiny) as srv, realtime(srv.client) as rt:
        rt.update(audio={"input": {"turn_detection": VAD}})
        rt.append(np.concatenate([silence(200), speech, silence(1000)]))
        done = rt.until("response.done")
    types = rt.types()
    order = ["input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
             "input_audio_buffer.committed", "conversation.item.added", "conversation.item.done",
             "response.created", "response.output_item.added", "response.content_part.added",
             "response.output_audio.delta", "response.output_audio.done", "response.output_audio_transcript.done",
             "response.content_part.done", "response.output_item.done", "response.done"]
    positions = [types.index(t) for t in order]
    assert positions == sorted(positions), types
    started, stopped, committed = (rt.of(t)[0] for t in order[:3])
    speech_ms = 1000 * len(speech) / 24000
    assert 100 <= started["audio_start_ms"] <= 400  # the speech starts at 200 ms; the detector's frames are 30 ms
    assert speech_ms * 0.8 < stopped["audio_end_ms"] - started["audio_start_ms"] < speech_ms + 1000
    assert started["item_id"] == stopped["item_id"] == committed["item_id"]
    user = rt.of("conversation.item.added")[0]["item"]
    assert user["id"] == committed["item_id"] and user["content"] == [{"type": "input_audio", "transcript": None}]
    assert done["response"]["status"] == "completed"
    assert done["response"]["usage"]["output_token_details"]["audio_tokens"] == FRAMES
    assert rt.of("conversation.item.added")[1]["previous_item_id"] == committed["item_id"]


def test_push_to_talk_and_text_turns(tiny, say):
    with served(tiny) as srv, realtime(srv.client) as rt:
        rt.update(max_output_tokens=30, audio={"input": {"turn_detection": None}})
        rt.append(say("Push to talk works too.", 24000))
        rt.send({"type": "input_audio_buffer.commit"})
        committed = rt.until("input_audio_buffer.committed")
        rt.send({"type": "response.create"})
        first = rt.until("response.done")
        assert "input_audio_buffer.speech_started" not in rt.types()  # manual turns: no VAD
        rt.append(silence(500))
        rt.send({"type": "input_audio_buffer.clear"})
        rt.until("input_audio_buffer.cleared")
        rt.send({"type": "input_audio_buffer.commit", "event_id": "empty"})
        empty = rt.until("error")
        second = rt.say("And in text?", output_modalities=["text"])
    added = [e for e in rt.of("conversation.item.added") if e["item"]["role"] == "user"][-1]
    assert committed["previous_item_id"] is None
    assert added["previous_item_id"] == first["response"]["output"][0]["id"]
    assert committed["item_id"] != added["item"]["id"]
    assert (empty["error"]["code"], empty["error"]["event_id"]) == ("input_audio_buffer_commit_empty", "empty")
    assert second["response"]["output_modalities"] == ["text"]
    types = rt.types()
    last = len(types) - 1 - types[::-1].index("response.created")
    assert "response.output_text.delta" in types[last:] and "response.output_audio.delta" not in types[last:]
    # the second turn reused the first one's cached state
    assert second["response"]["usage"]["input_token_details"]["cached_tokens"] > 0


def test_cancel_paths(tiny):
    with served(tiny, _endless(tiny)) as srv, realtime(srv.client) as rt:
        rt.update(max_output_tokens=4000, audio={"input": {"turn_detection": None}})
        rt.send({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "talk"}]}})
        rt.send({"type": "response.create"})
        rt.until("response.output_audio.delta")
        rt.send({"type": "response.create", "event_id": "busy"})
        busy = rt.until("error")
        rt.send({"type": "response.cancel", "event_id": "c1"})
        cancelled = rt.until("response.done")
        rt.send({"type": "response.cancel", "event_id": "c2"})
        nothing = rt.until("error")
        # output_audio_buffer.clear stops a response quietly; a response.create sent while the cancelled one
        # winds down starts right after it
        rt.send({"type": "response.create"})
        rt.until("response.output_audio.delta")
        rt.send({"type": "output_audio_buffer.clear"})
        rt.send({"type": "response.create", "response": {"max_output_tokens": 8}})
        cleared = rt.until("response.done")
        after = rt.until("response.done")
    assert (busy["error"]["code"], busy["error"]["event_id"]) == ("conversation_already_has_active_response", "busy")
    assert (nothing["error"]["code"], nothing["error"]["event_id"]) == ("response_cancel_not_active", "c2")
    for done in (cancelled, cleared):
        r = done["response"]
        assert r["status"] == "cancelled" and r["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
        assert r["output"][0]["status"] == "incomplete"
        assert 0 < r["usage"]["output_tokens"] < 4000
    assert [e["error"]["event_id"] for e in rt.of("error")] == ["busy", "c2"]  # the clear was quiet
    assert after["response"]["status"] == "incomplete" and after["response"]["usage"]["output_tokens"] == 8
    assert after["response"]["id"] not in (cancelled["response"]["id"], cleared["response"]["id"])


def test_barge_in_cancels_and_truncation_cuts_what_was_not_heard(tiny, say):
    with served(tiny, _endless(tiny)) as srv, realtime(srv.client) as rt:
        rt.update(max_output_tokens=400, audio={"input": {"turn_detection": VAD}})
        rt.send({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "a long story"}]}})
        rt.send({"type": "response.create"})
        created = rt.until("response.created")
        for _ in range(5):
            rt.until("response.output_audio.delta")
        rt.append(np.concatenate([silence(300), say("Stop, wait a moment.", 24000), silence(600)]))
        started = rt.until("input_audio_buffer.speech_started")
        cancelled = rt.until("response.done")
        assert cancelled["response"]["id"] == created["response"]["id"]
        item = cancelled["response"]["output"][0]
        rt.send({"type": "conversation.item.truncate", "item_id": item["id"], "content_index": 0,
                 "audio_end_ms": 160})
        truncated = rt.until("conversation.item.truncated")
        rt.send({"type": "conversation.item.retrieve", "item_id": item["id"]})
        retrieved = rt.until("conversation.item.retrieved")
        for n, (target, end) in enumerate([("nope", 0), (started["item_id"], 0), (item["id"], 10 ** 6)]):
            rt.send({"type": "conversation.item.truncate", "item_id": target, "content_index": 0,
                     "audio_end_ms": end, "event_id": f"t{n}"})
            rt.until("error")
        nxt = rt.until("response.done")  # the interruption's own turn
        after = rt.say("hello")
    r = cancelled["response"]
    assert r["status"] == "cancelled" and r["status_details"]["reason"] == "turn_detected"
    assert rt.events.index(started) < rt.events.index(cancelled)
    assert truncated["audio_end_ms"] == 160 and truncated["item_id"] == item["id"]
    # 160 ms are 2 frames: what was said before them, the first 6 text tokens (interleaved layout)
    assert retrieved["item"]["content"][0]["transcript"] == SAID[:6]
    assert len(SAID[:6]) <= len(item["content"][0]["transcript"])
    assert [(e["error"]["code"], e["error"]["param"], e["error"]["event_id"]) for e in rt.of("error")] == [
        ("item_not_found", "item_id", "t0"), ("invalid_value", "item_id", "t1"),
        ("invalid_value", "audio_end_ms", "t2")]
    assert nxt["response"]["id"] != created["response"]["id"]
    assert rt.of("response.created")[1]["response"]["id"] == nxt["response"]["id"]
    assert rt.events.index(cancelled) < rt.events.index(rt.of("response.created")[1])
    # The first response prefilled after the truncation rebuilds the row: the deferred one above, unless its
    # prefill ran before the truncate arrived (it was requested first), and then the one after it.
    cached = [d["response"]["usage"]["input_token_details"]["cached_tokens"] for d in (nxt, after)]
    assert 0 in cached, cached


def test_input_transcription_and_g711(tiny, say):
    mulaw = AudioFormat("pcmu", 8000)
    with served(tiny) as srv, realtime(srv.client) as rt:
        rt.update(max_output_tokens=10, audio={"input": {"format": {"type": "audio/pcmu"}, "turn_detection": VAD,
                                                         "transcription": {"model": "lfm-audio"}},
                                               "output": {"format": {"type": "audio/pcmu"}}})
        rt.append(np.concatenate([silence(300), say("Transcribe me.", 24000), silence(600)]), fmt=mulaw)
        committed = rt.until("input_audio_buffer.committed")
        completed = rt.seen("conversation.item.input_audio_transcription.completed", item_id=committed["item_id"])
        done = rt.seen("response.done")
    assert completed["transcript"] == SAID
    audio = rt.audio(done["response"]["id"])
    frames = done["response"]["usage"]["output_token_details"]["audio_tokens"]
    assert frames == 4  # 10 tokens: 6 of text, then 4 frames
    assert frames > 0 and abs(len(audio) - frames * 640) <= 640  # 80 ms at 8 kHz, one byte a sample
    encoder = OutputEncoder(mulaw)  # each delta as it is sent, then what the resampler held
    expected = b"".join(encoder.encode(p) for p in [*(frame_pcm(k) for k in range(frames)), tail_pcm()])
    assert audio == expected + encoder.flush()


def test_a_transcription_without_a_spare_slot_fails_alone(tiny, say):
    with served(tiny, max_sessions=1) as srv, realtime(srv.client) as rt:
        rt.update(audio={"input": {"turn_detection": None, "transcription": {"model": "lfm-audio"}}})
        rt.append(say("No room.", 24000))
        rt.send({"type": "input_audio_buffer.commit"})
        committed = rt.until("input_audio_buffer.committed")
        failed = rt.until("conversation.item.input_audio_transcription.failed")
        done = rt.say("still here?")
    assert failed["item_id"] == committed["item_id"]
    assert failed["error"]["message"] == "no free slot for transcription"
    assert done["response"]["status"] == "completed"


def test_an_engine_failure_fails_the_session_and_frees_its_slot(tiny):
    with served(tiny, FakeRunner(reply=reply(tiny), keep_plans=False)) as srv:
        with realtime(srv.client) as rt:
            srv.runner.fail_decode = {0, 1, 2}  # after the warm-up: the next decode step fails
            rt.send({"type": "conversation.item.create", "item": {
                "type": "message", "role": "user", "content": [{"type": "input_text", "text": "fail"}]}})
            rt.send({"type": "response.create"})
            error = rt.until("error")
            with pytest.raises(WebSocketDisconnect) as closed:
                rt.receive()
        assert closed.value.code == 1011
        assert error["error"]["type"] == "server_error" and error["error"]["code"] == "server_error"
        assert "decode step failed" in error["error"]["message"]
        assert srv.slots_used() == 0 and srv.client.get("/readyz").status_code == 200  # the engine goes on
        assert srv.metric("lfm_audio_engine_sessions_failed_total") == 1


def test_the_input_buffer_has_a_limit(tiny):
    with served(tiny, max_input_buffer_s=1.0) as srv, realtime(srv.client) as rt:
        rt.update(audio={"input": {"turn_detection": None}})
        rt.append(silence(800))
        rt.send({"type": "input_audio_buffer.append", "event_id": "over",
                 "audio": "AAAA" * 4000})  # 0.25 s more
        error = rt.until("error")["error"]
        rt.send({"type": "input_audio_buffer.commit"})
        committed = rt.until("input_audio_buffer.committed")
        added = rt.until("conversation.item.added")
    assert (error["code"], error["param"], error["event_id"]) == ("input_audio_buffer_overflow", "audio", "over")
    assert added["item"]["id"] == committed["item_id"]
    assert added["item"]["content"] == [{"type": "input_audio", "transcript": None}]
