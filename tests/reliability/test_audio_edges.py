"""Audio that is odd but not malformed, through a real server (`lfm-audio serve`, the tiny checkpoint): the real
decoder, resampler, turn detection (webrtcvad), encoder and model see it, as they would from a client. Each
case ends with the same session completing a turn.

Empty appends, odd byte counts, full-scale clipping, minutes of silence sent faster than real time, a DC
offset, a 10-minute monologue against the input buffer limit (MAX_INPUT_BUFFER_S), and audio in another format
than the one declared: a file header where raw samples belong is refused; the rest (pcm16 as G.711 and back,
another rate) cannot be told from the bytes and is heard as noise (docs/reliability.md)."""

from __future__ import annotations

import base64
import itertools
import time

import numpy as np
import pytest

from models.defaults import MAX_INPUT_BUFFER_S
from streaming.audio import AudioFormat, OutputEncoder, float_to_pcm16
from tests.reliability.test_fuzz_live import Live, _clean_log
from tests.server.test_fuzz import _completes_a_turn

WIRE_RATE = 24_000  # audio/pcm's rate
G711_RATE = 8_000  # audio/pcmu's
VAD = {"type": "server_vad", "silence_duration_ms": 500, "prefix_padding_ms": 300}
MS_SLACK = 5  # committed audio_ms vs what was sent: whole ms, and the resampler's few held-back samples


@pytest.fixture
def server(live_server):
    return live_server


@pytest.fixture(scope="module")
def speech(say):
    """Real speech (espeak-ng) at the wire's rate."""
    return say("and then I went on talking about the weather and the news without a pause", WIRE_RATE)


def _pcm16(x: np.ndarray) -> bytes:
    return float_to_pcm16(x).tobytes()


def _append(rt: Live, data: bytes, chunk: int = 9600, event_id: str | None = None) -> None:
    for i in range(0, max(len(data), 1), chunk):
        event = {"type": "input_audio_buffer.append", "audio": base64.b64encode(data[i:i + chunk]).decode()}
        rt.send({**event, "event_id": event_id} if event_id else event)


def _session(server, turn_detection=None, fmt: str = "audio/pcm") -> Live:
    """Input transcription on: its `usage.seconds` says how much audio each committed item holds."""
    rt = Live(server)
    rt.send({"type": "session.update", "session": {"type": "realtime", "max_output_tokens": 8, "audio": {
        "input": {"turn_detection": turn_detection, "format": {"type": fmt},
                  "transcription": {"model": "lfm-audio"}}}}})
    _until(rt, "session.updated")
    return rt


def _until(rt: Live, kind: str, timeout: float = 60) -> dict:
    while True:
        event = rt.receive(timeout)
        if event["type"] == kind:
            return event


def _commit_and_answer(rt: Live) -> tuple[dict, list[dict]]:
    """Commit, answer; returns the committed item and the errors seen since the session started."""
    rt.send({"type": "input_audio_buffer.commit", "event_id": "commit"})
    rt.send({"type": "response.create", "event_id": "answer"})
    added = _until(rt, "conversation.item.added")
    done = _until(rt, "response.done")
    assert done["response"]["status"] in ("completed", "incomplete"), done
    return added["item"], [e["error"] for e in rt.events if e["type"] == "error"]


def _heard_ms(rt: Live, item_id: str) -> float:
    """The committed item's audio, in ms (from its transcription's usage)."""
    prefix = "conversation.item.input_audio_transcription."
    coming = (rt.receive(120) for _ in itertools.count())
    for event in itertools.chain(list(rt.events), coming):  # what came, then what comes
        if event["type"].startswith(prefix) and event["item_id"] == item_id:
            assert event["type"] != prefix + "failed", event["error"]
            if event["type"] == prefix + "completed":
                return 1000 * event["usage"]["seconds"]
    raise AssertionError("unreachable")


def _finish(rt: Live) -> None:
    _completes_a_turn(rt)
    rt.close()


@pytest.mark.slow
def test_empty_appends_are_nothing_and_odd_byte_counts_lose_no_sample(server):
    rt = _session(server)
    for _ in range(5):
        rt.send({"type": "input_audio_buffer.append", "audio": ""})
    rt.send({"type": "input_audio_buffer.commit", "event_id": "empty"})
    empty = _until(rt, "error")["error"]
    assert empty["code"] == "input_audio_buffer_commit_empty" and empty["event_id"] == "empty"
    one_second = _pcm16(0.3 * np.sin(2 * np.pi * 220 * np.arange(WIRE_RATE) / WIRE_RATE))
    sizes, at = [1, 3, 4801, 7, 1, 2999], 0  # odd pieces: a sample split across appends is carried
    while at < len(one_second):
        n = sizes[len(rt.events) % len(sizes)]
        _append(rt, one_second[at:at + n], chunk=n)
        at += n
    rt.send({"type": "input_audio_buffer.commit", "event_id": "odd"})
    committed = _until(rt, "input_audio_buffer.committed")
    assert abs(_heard_ms(rt, committed["item_id"]) - 1000) <= MS_SLACK
    assert [e["error"]["event_id"] for e in rt.events if e["type"] == "error"] == ["empty"]
    _finish(rt)


@pytest.mark.parametrize("case", ["clipping", "dc_offset"])
def test_clipped_and_offset_audio_are_heard_and_answered(server, case):
    t = np.arange(2 * WIRE_RATE) / WIRE_RATE
    if case == "clipping":  # a full-scale square wave: every sample at +-32767
        wave = np.sign(np.sin(2 * np.pi * 200 * t))
    else:  # speech-free DC: +0.5 full scale with a little noise
        wave = 0.5 + 0.01 * np.random.default_rng(0).standard_normal(len(t))
    rt = _session(server)
    _append(rt, _pcm16(wave.astype(np.float32)))
    item, errors = _commit_and_answer(rt)
    assert errors == [] and item["role"] == "user"
    _finish(rt)


def test_minutes_of_silence_faster_than_real_time_start_no_turn_and_fill_nothing(server, speech):
    rt = _session(server, VAD)
    minutes = 3
    silence = bytes(2 * WIRE_RATE // 10)  # 100 ms
    t0 = time.monotonic()
    for _ in range(minutes * 600):
        rt.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(silence).decode()})
    took = time.monotonic() - t0
    _append(rt, _pcm16(speech) + bytes(2 * WIRE_RATE))  # then a spoken turn, and a second of quiet after it
    started = _until(rt, "input_audio_buffer.speech_started")
    done = _until(rt, "response.done")
    assert done["response"]["status"] in ("completed", "incomplete")
    assert not [e for e in rt.events if e["type"] == "error"]
    assert started["audio_start_ms"] >= minutes * 60_000 - 400  # the speech, not the silence (prefix padding)
    print(f"\n{minutes} min of silence sent in {took:.1f} s ({minutes * 60 / took:.0f}x real time)")
    _finish(rt)


@pytest.mark.slow
def test_a_ten_minute_monologue_hits_the_input_limit_once_and_the_turn_still_ends(server, speech):
    """Server VAD, 10 minutes of speech without a pause, then quiet: one overflow error (not one per append),
    the turn ends when the speaker stops, its item is the first MAX_INPUT_BUFFER_S of the speech, answered."""
    rt = _session(server, VAD)
    minutes = 10
    monologue = np.tile(speech, int(minutes * 60 * WIRE_RATE / len(speech)) + 1)[:minutes * 60 * WIRE_RATE]
    t0 = time.monotonic()
    _append(rt, _pcm16(monologue), chunk=2 * WIRE_RATE, event_id="talk")  # a second an append
    _append(rt, bytes(2 * 2 * WIRE_RATE))  # two seconds of quiet
    stopped = _until(rt, "input_audio_buffer.speech_stopped", 120)
    committed = _until(rt, "input_audio_buffer.committed")
    done = _until(rt, "response.done", 120)
    took = time.monotonic() - t0
    errors = [e["error"] for e in rt.events if e["type"] == "error"]
    assert [e["code"] for e in errors] == ["input_audio_buffer_overflow"] and errors[0]["event_id"] == "talk"
    assert abs(stopped["audio_end_ms"] - minutes * 60_000) < 1000, stopped  # where the speech really ended
    heard = _heard_ms(rt, committed["item_id"])
    assert MAX_INPUT_BUFFER_S * 1000 - 1000 <= heard <= MAX_INPUT_BUFFER_S * 1000, heard
    assert done["response"]["status"] in ("completed", "incomplete")
    print(f"\n{minutes} min monologue: one overflow error, turn ended at {stopped['audio_end_ms']} ms, item "
          f"{heard:.0f} ms, answered, in {took:.1f} s")
    rt.send({"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}}})
    one_more = _pcm16(speech[:WIRE_RATE])  # the buffer takes audio again after the commit
    _append(rt, one_more)
    _, errors = _commit_and_answer(rt)
    assert [e["code"] for e in errors] == ["input_audio_buffer_overflow"]
    _finish(rt)


@pytest.mark.slow
def test_a_file_where_raw_samples_belong_is_refused_and_other_mismatches_are_heard(server, tmp_path):
    import wave

    path = tmp_path / "clip.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(WIRE_RATE)
        w.writeframes(_pcm16(0.3 * np.sin(np.arange(WIRE_RATE) / 5)))
    rt = _session(server)
    rt.send({"type": "input_audio_buffer.append", "event_id": "wav", "audio": base64.b64encode(
        path.read_bytes()).decode()})
    refused = _until(rt, "error")["error"]
    assert (refused["code"], refused["param"], refused["event_id"]) == ("invalid_value", "audio", "wav")
    assert "WAV" in refused["message"]
    # declared pcm16, sent G.711 mu-law: valid pcm16 bytes (at half the duration); heard, not refused
    mulaw = OutputEncoder(AudioFormat.parse({"type": "audio/pcmu"})).encode(0.3 * np.sin(np.arange(WIRE_RATE) / 5))
    _append(rt, mulaw)
    item, errors = _commit_and_answer(rt)
    assert [e["event_id"] for e in errors] == ["wav"]
    assert abs(_heard_ms(rt, item["id"]) - 1000 * len(mulaw) / 2 / WIRE_RATE) <= MS_SLACK
    rt.close()
    rt = _session(server, fmt="audio/pcmu")  # declared G.711, sent pcm16: a byte a sample at 8 kHz, noise
    pcm = _pcm16(0.3 * np.sin(np.arange(WIRE_RATE // 4) / 5))
    _append(rt, pcm)
    item, errors = _commit_and_answer(rt)
    assert errors == [] and abs(_heard_ms(rt, item["id"]) - 1000 * len(pcm) / G711_RATE) <= MS_SLACK
    _finish(rt)
    time.sleep(0.2)
    _clean_log(server)
