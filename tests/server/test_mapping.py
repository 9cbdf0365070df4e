"""The Realtime mapping in this process, on the scripted engine (tests/server/fake_engine.py): which events a
turn makes, in which order, with what in them; session.update; the conversation's items. Every server event
is validated against the SDK's RealtimeServerEvent."""

from __future__ import annotations

import base64
import itertools

import numpy as np

from models.defaults import CHAT_PROMPT
from streaming.audio import float_to_pcm16
from tests.server.fake_engine import FRAMES, SAID, realtime, served
from tests.streaming.fakes import reply_pcm

RESPONSE_EVENTS = ["response.created", "response.output_item.added", "conversation.item.added",
                   "response.content_part.added", "response.output_audio.done",
                   "response.output_audio_transcript.done", "response.content_part.done",
                   "response.output_item.done", "conversation.item.done", "response.done"]
DELTAS = {"response.output_audio_transcript.delta": "text", "response.output_audio.delta": "audio"}


def _user(text: str, item_id: str | None = None, **extra) -> dict:
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    return {"type": "conversation.item.create", "item": {**item, **({"id": item_id} if item_id else {})}, **extra}


def _conversation_ids(srv) -> list[str]:
    (conn,) = srv.state.sessions
    with conn.session.handle.lock:
        return [it.id for it in conn.session.handle.conversation.items]


def test_session_created_describes_the_defaults(tiny):
    with served(tiny) as srv, realtime(srv.client) as rt:
        session = rt.events[0]["session"]
    assert session["type"] == "realtime" and session["object"] == "realtime.session" and session["model"] == "tiny"
    assert session["id"].startswith("sess_") and session["instructions"] == CHAT_PROMPT
    assert session["output_modalities"] == ["audio"]
    audio_in = session["audio"]["input"]
    assert audio_in["format"] == {"type": "audio/pcm", "rate": 24000} and audio_in["transcription"] is None
    assert audio_in["turn_detection"]["type"] == "server_vad" and audio_in["turn_detection"]["create_response"]
    assert session["audio"]["output"] == {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy",
                                          "speed": 1.0}


def test_a_spoken_response_makes_every_event_in_order(tiny):
    with served(tiny) as srv, realtime(srv.client) as rt:
        rt.send(_user("Hi", "u1"))
        added = rt.until("conversation.item.added")
        item_done = rt.until("conversation.item.done")
        rt.send({"type": "response.create"})
        done = rt.until("response.done")
        second = rt.say("And again?")
    assert added["item"] == {"id": "u1", "object": "realtime.item", "type": "message", "role": "user",
                             "status": "completed", "content": [{"type": "input_text", "text": "Hi"}]}
    assert added["previous_item_id"] is None and item_done["item"] == added["item"]
    events = rt.events[rt.events.index(item_done) + 1: rt.events.index(done) + 1]
    types = [e["type"] for e in events]
    assert [t for t in types if t not in DELTAS] == RESPONSE_EVENTS
    # The script's layout, interleaved: 6 text tokens, 12 frames, 6 tokens, 12 frames, the rest of the text;
    # then the speech stream's tail, flushed at the end.
    runs = [(DELTAS[t], len(list(g))) for t, g in itertools.groupby(types) if t in DELTAS]
    assert runs == [("text", 6), ("audio", 12), ("text", 6), ("audio", 12), ("text", len(SAID) - 12), ("audio", 1)]
    assert types.index("response.content_part.added") < types.index("response.output_audio_transcript.delta")
    assert types.index("response.output_audio.done") > max(i for i, t in enumerate(types) if t in DELTAS)

    r = done["response"]
    item = r["output"][0]
    where = {"response_id": r["id"], "item_id": item["id"], "output_index": 0, "content_index": 0}
    for e in events:
        if e["type"] in (*DELTAS, "response.output_audio.done", "response.output_audio_transcript.done",
                         "response.content_part.added", "response.content_part.done"):
            assert {k: e[k] for k in where} == where, e
    created = events[0]["response"]
    assert created["id"] == r["id"] and created["status"] == "in_progress" and created["output"] == []
    assert events[1]["item"] == {**item, "status": "in_progress", "content": []}
    assert events[2]["previous_item_id"] == "u1" and events[2]["item"]["id"] == item["id"]
    assert events[3]["part"] == {"type": "audio", "transcript": ""}
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_audio_transcript.delta") == SAID
    assert rt.of("response.output_audio_transcript.done")[0]["transcript"] == SAID
    assert rt.of("response.content_part.done")[0]["part"] == {"type": "audio", "transcript": SAID}
    assert item == {"id": item["id"], "object": "realtime.item", "type": "message", "role": "assistant",
                    "status": "completed", "content": [{"type": "output_audio", "transcript": SAID}]}
    assert rt.of("response.output_item.done")[0]["item"] == item
    assert r["status"] == "completed" and "status_details" not in r and r["output_modalities"] == ["audio"]
    usage = r["usage"]
    assert usage["output_token_details"] == {"text_tokens": len(SAID), "audio_tokens": FRAMES}
    assert usage["output_tokens"] == len(SAID) + FRAMES
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert usage["input_token_details"]["cached_tokens"] == 0
    assert rt.audio(r["id"]) == float_to_pcm16(reply_pcm(FRAMES)).tobytes()  # every sample, in order
    # the second turn starts from the first one's state
    assert second["response"]["usage"]["input_token_details"]["cached_tokens"] >= usage["input_tokens"]


def test_text_responses_for_the_session_or_one_response(tiny):
    with served(tiny) as srv, realtime(srv.client) as rt:
        spoken_session = rt.say("Text, this once.", output_modalities=["text"])
        rt.update(output_modalities=["text"])
        text_session = rt.say("And now?")
    for done in (spoken_session, text_session):
        r = done["response"]
        assert r["output_modalities"] == ["text"] and r["status"] == "completed"
        assert r["output"][0]["content"] == [{"type": "output_text", "text": SAID}]
        deltas = [e["delta"] for e in rt.of("response.output_text.delta", response_id=r["id"])]
        assert "".join(deltas) == SAID
        assert rt.of("response.output_text.done", response_id=r["id"])[0]["text"] == SAID
        assert rt.of("response.content_part.done", response_id=r["id"])[0]["part"] == {"type": "text", "text": SAID}
    assert not [e for e in rt.events if "audio" in e["type"]]


def test_max_output_tokens_for_the_session_or_one_response(tiny):
    with served(tiny) as srv, realtime(srv.client) as rt:
        rt.update(max_output_tokens=10)
        session_limit = rt.say("Short.")
        response_limit = rt.say("Shorter.", max_output_tokens=4)
        rt.update(max_output_tokens="inf")
        unlimited = rt.say("As long as you like.")
    for done, limit in ((session_limit, 10), (response_limit, 4)):
        r = done["response"]
        assert r["status"] == "incomplete" and r["status_details"] == {"type": "incomplete",
                                                                       "reason": "max_output_tokens"}
        assert r["usage"]["output_tokens"] == limit
        assert r["output"][0]["status"] == "incomplete"
    # 6 text tokens, then 4 frames of speech (and the stream's tail)
    assert len(rt.audio(session_limit["response"]["id"])) == 2 * len(reply_pcm(4))
    assert unlimited["response"]["status"] == "completed"


def test_session_update_changes_what_it_names_and_keeps_the_rest(tiny):
    with served(tiny) as srv, realtime(srv.client) as rt:
        first = rt.update(instructions="Be brief.", audio={"input": {
            "format": {"type": "audio/pcmu"}, "transcription": {"model": "lfm-audio"},
            "turn_detection": {"type": "server_vad", "threshold": 0.7, "silence_duration_ms": 300,
                               "create_response": False}}}, lfm_audio={"seed": 7, "audio_top_k": 4})
        assert _conversation_ids(srv)[0] == "instructions"
        (conn,) = srv.state.sessions
        with conn.session.handle.lock:
            system = conn.session.handle.conversation.items[0]
        assert tiny.tokenizer.decode(list(system.segments[0].data)) == "Be brief."
        second = rt.update(max_output_tokens=33, audio={"output": {"format": {"type": "audio/pcma"}}})
        third = rt.update(audio={"input": {"turn_detection": None, "transcription": None}},
                          unknown_field={"ignored": True})
    s1, s2, s3 = (e["session"] for e in (first, second, third))
    assert s1["instructions"] == "Be brief." and s1["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    td = s1["audio"]["input"]["turn_detection"]
    assert (td["threshold"], td["silence_duration_ms"], td["create_response"]) == (0.7, 300, False)
    assert td["prefix_padding_ms"] == 300 and td["interrupt_response"] is True  # defaults kept
    assert s1["audio"]["input"]["transcription"] == {"model": "tiny"}
    assert s1["lfm_audio"]["seed"] == 7 and s1["lfm_audio"]["audio_top_k"] == 4
    assert s2["max_output_tokens"] == 33 and s2["audio"]["output"]["format"] == {"type": "audio/pcma"}
    assert {k: v for k, v in s2.items() if k not in ("max_output_tokens", "audio")} == \
        {k: v for k, v in s1.items() if k not in ("max_output_tokens", "audio")}
    assert s2["audio"]["input"] == s1["audio"]["input"]
    assert s3["audio"]["input"]["turn_detection"] is None and s3["audio"]["input"]["transcription"] is None
    assert s3["max_output_tokens"] == 33 and s3["instructions"] == "Be brief." and s3["id"] == s1["id"]


def test_refused_session_updates_change_nothing(tiny):
    bad = [
        ({"type": "transcription"}, "session.type"),
        ({"type": "chat"}, "session.type"),
        ({"type": "realtime", "output_modalities": ["audio", "video"]}, "session.output_modalities.1"),  # the SDK's
        ({"type": "realtime", "output_modalities": ["text", "text"]}, "session.output_modalities"),  # the server's
        ({"type": "realtime", "max_output_tokens": 0}, "session.max_output_tokens"),
        ({"type": "realtime", "audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 2}}}},
         "session.audio.input.turn_detection"),
        ({"type": "realtime", "audio": {"output": {"format": {"type": "audio/pcm", "rate": 16000}}}},
         "session.audio.output.format.rate"),
        ({"type": "realtime", "lfm_audio": {"audio_temperature": 9}}, "session.lfm_audio.audio_temperature"),
    ]
    with served(tiny) as srv, realtime(srv.client) as rt:
        before = rt.update()["session"]
        for n, (session, param) in enumerate(bad):
            rt.send({"type": "session.update", "session": session, "event_id": f"u{n}"})
            # An error per field that cannot be honoured, then session.updated with the rest (nothing here); a
            # change of session type is refused whole (its error only).
            errors = []
            while (event := rt.receive())["type"] != "session.updated":
                if event["type"] == "error":
                    errors.append(event["error"])
                    if event["error"]["param"] == "session.type" and n < 2:
                        break
            found = [(e["code"], e["param"], e["event_id"]) for e in errors]
            assert ("invalid_value", param, f"u{n}") in found, found
        after = rt.update()["session"]
    assert after == before


def test_items_are_placed_deleted_and_retrieved(tiny):
    with served(tiny) as srv, realtime(srv.client) as rt:
        for event in (_user("one", "a"), _user("two", "b"), _user("after a", "c", previous_item_id="a")):
            rt.send(event)
            rt.until("conversation.item.done")
        assert _conversation_ids(srv) == ["instructions", "a", "c", "b"]
        rt.send({"type": "conversation.item.retrieve", "item_id": "c"})
        retrieved = rt.until("conversation.item.retrieved")["item"]
        rt.send({"type": "conversation.item.delete", "item_id": "b"})
        deleted = rt.until("conversation.item.deleted")
        refused = []
        for n, event in enumerate([
            {"type": "conversation.item.delete", "item_id": "b"},
            {"type": "conversation.item.retrieve", "item_id": "b"},
            _user("again", "a"),
            _user("an instructions twin", "instructions"),
            _user("lost", "d", previous_item_id="nope"),
            {"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": []}},
            {"type": "conversation.item.create", "item": {"type": "message", "role": "assistant", "content": [
                {"type": "input_audio", "audio": ""}]}},
        ]):
            rt.send({**event, "event_id": f"e{n}"})
            refused.append(rt.until("error")["error"])
        assert _conversation_ids(srv) == ["instructions", "a", "c"]
        rt.send(_user("first of all", "r", previous_item_id="root"))  # the conversation's start
        rooted = rt.until("conversation.item.added")
        assert _conversation_ids(srv) == ["instructions", "r", "a", "c"] and rooted["previous_item_id"] is None
        done = rt.say("last")
    placed = rt.of("conversation.item.added")
    assert [(e["item"]["id"], e["previous_item_id"]) for e in placed[:3]] == [("a", None), ("b", "a"), ("c", "a")]
    assert retrieved["id"] == "c" and retrieved["content"] == [{"type": "input_text", "text": "after a"}]
    assert deleted["item_id"] == "b"
    assert [(e["code"], e["param"], e["event_id"]) for e in refused] == [
        ("item_not_found", "item_id", "e0"), ("item_not_found", "item_id", "e1"),
        ("item_create_duplicate_item_id", "item.id", "e2"), ("item_create_duplicate_item_id", "item.id", "e3"),
        ("item_not_found", "previous_item_id", "e4"),
        ("invalid_value", "item.content", "e5"), ("invalid_value", "item.content.0.type", "e6")]
    assert refused[2]["message"] == "Error adding item: an item with id 'a' already exists."  # OpenAI's text
    user = next(e for e in placed if e["item"]["role"] == "user" and e["item"]["content"][0]["text"] == "last")
    assistant = rt.of("conversation.item.added", previous_item_id=user["item"]["id"])
    assert assistant and assistant[0]["item"]["id"] == done["response"]["output"][0]["id"]


def test_an_audio_item_is_transcribed_when_asked(tiny):
    pcm = float_to_pcm16(0.1 * np.sin(np.arange(12_000) / 5)).tobytes()  # half a second at 24 kHz
    with served(tiny) as srv, realtime(srv.client) as rt:
        rt.update(audio={"input": {"transcription": {"model": "lfm-audio"}}})
        rt.send({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "id": "clip",
                                                              "content": [{"type": "input_audio",
                                                                           "audio": base64.b64encode(pcm).decode()}]}})
        added = rt.until("conversation.item.added")
        completed = rt.until("conversation.item.input_audio_transcription.completed")
        rt.send({"type": "conversation.item.retrieve", "item_id": "clip"})
        retrieved = rt.until("conversation.item.retrieved")
    assert added["item"]["content"] == [{"type": "input_audio", "transcript": None}]
    assert completed["item_id"] == "clip" and completed["transcript"] == SAID
    # The whole clip is decoded (the resampler flushed): its length to the millisecond the server counts in.
    assert completed["usage"]["type"] == "duration" and abs(completed["usage"]["seconds"] - 0.5) <= 0.001
    assert "".join(e["delta"] for e in rt.of("conversation.item.input_audio_transcription.delta")) == SAID
    assert retrieved["item"]["content"] == [{"type": "input_audio", "transcript": SAID}]
