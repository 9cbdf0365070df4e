"""What the live fuzzer (tests/reliability/test_fuzz_live.py) found, each pinned here in process on the
scripted engine."""

from __future__ import annotations

import logging
import sys

from server import log_filters
from tests.server.fake_engine import realtime, reply, served
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
