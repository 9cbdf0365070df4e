"""What the live fuzzers found (tests/reliability/test_fuzz_live.py over WebSockets, test_openapi_fuzz.py with
schemathesis over REST), each pinned here in process on the scripted engine."""

from __future__ import annotations

import base64
import logging
import sys

import numpy as np

from server import log_filters
from tests.server.fake_engine import AUTH, realtime, reply, served
from tests.streaming.fakes import FakeRunner


def _endless(tiny) -> FakeRunner:
    """Speech that never ends: a response lasts until it is cancelled."""
    return FakeRunner(reply=reply(tiny, frames=None), step_s=0.002, keep_plans=False)


def test_the_item_of_a_running_response_deleted_is_not_done_after_it(tiny):
    """Deleting the item being generated takes it out of the conversation; its response runs on to its end
    (its events still name the item) but no longer says `conversation.item.done` for the item the client was
    told is deleted."""
    with served(tiny, _endless(tiny)) as srv, realtime(srv.client) as rt:
        rt.update(max_output_tokens=100, audio={"input": {"turn_detection": None}})
        rt.send({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "talk"}]}})
        rt.send({"type": "response.create"})
        item = rt.until("response.output_item.added")["item"]["id"]
        rt.until("response.output_audio.delta")
        rt.send({"type": "conversation.item.delete", "item_id": item})
        rt.until("conversation.item.deleted", item_id=item)
        after = len(rt.events)
        done = rt.until("response.done")
        done_again = [e for e in rt.events[after:] if e["type"] == "conversation.item.done"]
        rt.send({"type": "conversation.item.retrieve", "item_id": item, "event_id": "gone"})
        gone = rt.until("error")["error"]
    assert done["response"]["output"][0]["id"] == item
    assert done_again == []
    assert (gone["code"], gone["event_id"]) == ("item_not_found", "gone")


def test_a_text_frame_that_is_not_utf8_is_logged_as_the_clients_fault():
    """uvicorn logs it at ERROR with a traceback; the filter makes it one INFO line (the close code stays 1007)."""
    try:
        b"\xff".decode()
    except UnicodeDecodeError:
        record = logging.LogRecord("uvicorn.error", logging.ERROR, __file__, 1,
                                   "Invalid UTF-8 sequence received from client.", (), exc_info=True)
        record.exc_info = sys.exc_info()
    other = logging.LogRecord("uvicorn.error", logging.ERROR, __file__, 1, "Exception in ASGI application\n", (), None)
    keep = log_filters.ClientFaults()
    assert keep.filter(record) and keep.filter(other)
    assert (record.levelno, record.exc_info, record.getMessage()) == (
        logging.INFO, None, "a client sent a text frame that is not UTF-8: closed with 1007")
    assert other.levelno == logging.ERROR  # a server error stays one


def test_the_frameworks_own_http_errors_come_in_the_error_body(tiny):
    """A body that does not parse, an unknown path, a method the path does not take: Starlette and FastAPI
    answered `{"detail": ...}` (or plain text); every error now has the body of server/errors.py."""
    with served(tiny) as srv:
        unparsable = srv.client.post("/v1/audio/speech", content=b"\xff{", headers={
            **AUTH, "Content-Type": "application/json"})
        unknown = srv.client.get("/v1/no-such-thing", headers=AUTH)
        method = srv.client.delete("/v1/models", headers=AUTH)
    for reply_, status, code in ((unparsable, 400, "invalid_request"), (unknown, 404, "not_found"),
                                 (method, 405, "method_not_allowed")):
        error = reply_.json()["error"]
        assert (reply_.status_code, error["code"]) == (status, code), reply_.text
        assert set(error) == {"type", "code", "message", "param", "event_id"}
    assert "GET" in method.headers["allow"]  # the header Starlette set stays


def test_a_full_input_buffer_says_so_once_and_the_speakers_turn_still_ends(tiny, say):
    """Server VAD, speech longer than the buffer holds: one overflow error (not one per append), and the turn
    ends when the speaker stops (the refused audio still reaches turn detection): before, no end was heard
    and the session stayed in its turn until the client committed or cleared."""
    speech = np.tile(say("and then I went on talking without a pause", 24_000), 2)  # ~5 s
    with served(tiny, max_input_buffer_s=1.0) as srv, realtime(srv.client) as rt:
        rt.update(audio={"input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": 300}}})
        rt.append(np.concatenate([speech, np.zeros(24_000, np.float32)]), chunk_ms=100)
        stopped = rt.until("input_audio_buffer.speech_stopped")
        rt.until("input_audio_buffer.committed")
        rt.until("response.done")
    errors = [e["error"]["code"] for e in rt.events if e["type"] == "error"]
    assert errors == ["input_audio_buffer_overflow"]
    assert stopped["audio_end_ms"] > 1000 * len(speech) / 24_000 - 500  # where the speech ended, past the buffer


def test_a_file_header_where_raw_samples_belong_is_refused(tiny):
    with served(tiny) as srv, realtime(srv.client) as rt:
        for n, head in enumerate([b"RIFF\x24\x00\x00\x00WAVEfmt ", b"OggS\x00\x02", b"fLaC", b"ID3\x04"]):
            rt.send({"type": "input_audio_buffer.append", "event_id": f"file{n}",
                     "audio": base64.b64encode(head + bytes(960)).decode()})
            error = rt.until("error")["error"]
            assert (error["code"], error["param"], error["event_id"]) == ("invalid_value", "audio", f"file{n}")
        rt.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"RIFF" + bytes(960)).decode()})
        rt.send({"type": "input_audio_buffer.commit", "event_id": "raw"})  # "RIFF" without WAVE: samples
        error = rt.until("error")["error"]
    assert error["event_id"] == "raw" and error["code"] == "input_audio_buffer_commit_empty"  # 20 ms: heard
