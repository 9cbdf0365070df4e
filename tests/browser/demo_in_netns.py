"""The browser demo in a real Chromium (Debian's, driven by Playwright) against a real server, with a fake
microphone that plays espeak-ng speech from a WAV file.

Not collected on its own (the name does not match test_*.py): test_demo.py runs this file under `unshare -n`, in a
network namespace with only `lo`, so that every ICE candidate and packet stays on 127.0.0.1.

The page exposes `window.lfmDemo` (state, counters, measured RMS values, per-turn latencies, barge-in records);
the assertions read it rather than pixels.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from streaming.audio import write_wav
from tests.server.harness import ROOT, ServerProcess

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "tests" / "artifacts"
LOOPBACK = ["--webrtc-host-addresses", "127.0.0.1"]  # aioice skips loopback addresses unless told
KEY = "sk-browser-test"
# Chromium flags that worked (shared/docs/browser-and-webrtc-testing.md). No --disable-features: it would
# replace Playwright's own list.
ARGS = ["--disable-gpu", "--disable-quic", "--autoplay-policy=no-user-gesture-required",
        "--allow-loopback-in-peer-connection"]  # 127.0.0.1 ICE candidates: all there is in a lo-only namespace
FAKE_MIC = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]
# A turn: short speech, a response long enough (80 ms per audio token) that the next loop of the WAV
# (speech again after the silence) speaks over it: that is the barge-in.
SILENCE_MS = 300  # server VAD: the silence that ends a turn
QUERY = f"mode=vad&vad_silence_ms={SILENCE_MS}&max_tokens=70&seed=1"
# The least the turn detector waits after the speech, minus what the page's estimate of the speech's end may be off
# by (the mic meter reads up to 23 ms late, webrtcvad's 30 ms frames judge the end by their own measure): 100 ms.
LEAST_WAIT_MS = {"server_vad": SILENCE_MS - 100, "semantic_vad": 200 - 100}  # semantic: the model first asks at 200
LOUD = 0.01  # RMS: clearly audible (the fake mic reads about 0.1, the random model's speech more)
SILENT = 1e-3


@pytest.fixture(scope="module", autouse=True)
def _lo_only():
    names = [name for _, name in socket.if_nameindex()]
    if names != ["lo"]:
        pytest.fail(f"run through test_demo.py: this file needs a network namespace with only lo, not {names}")


@pytest.fixture(scope="module")
def speech_wav(say, tmp_path_factory) -> Path:
    """48 kHz 16-bit mono (24-bit plays as silence, with no error): 0.4 s silence, speech, 2.6 s silence.
    Chromium loops the file."""
    rate = 48_000
    speech = say("Hello there, can you hear me?", rate)
    x = np.concatenate([np.zeros(int(0.4 * rate), np.float32), 0.8 * speech / np.abs(speech).max(),
                        np.zeros(int(2.6 * rate), np.float32)])
    path = tmp_path_factory.mktemp("mic") / "speech.wav"
    write_wav(path, x, rate)
    return path


@pytest.fixture(scope="module")
def playwright():
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is not installed: apt-get install -y --no-install-recommends chromium "
                    "fonts-dejavu-core")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright, speech_wav):
    b = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                   args=[*ARGS, *FAKE_MIC, f"--use-file-for-fake-audio-capture={speech_wav}"])
    yield b
    b.close()


@pytest.fixture(scope="module")
def server(tiny_dir, tmp_path_factory):
    with ServerProcess(tiny_dir, tmp_path_factory.mktemp("srv"), args=LOOPBACK) as srv:
        yield srv


class Page:
    """A fresh browser context and page, with the page's errors collected."""

    def __init__(self, browser) -> None:
        self.context = browser.new_context(viewport={"width": 1180, "height": 860})
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.page.on("console", lambda m: self.errors.append(f"console.{m.type}: {m.text}")
                     if m.type == "error" else None)

    def demo(self, expr: str = "lfmDemo"):
        return self.page.evaluate(f"JSON.parse(JSON.stringify({expr}))")

    def wait(self, condition: str, timeout_s: float, what: str) -> None:
        try:
            # Polled from here: wait_for_function compiles its string in the page, which the page's CSP forbids
            # (no 'unsafe-eval'), as it should; evaluate is not subject to it.
            deadline = time.monotonic() + timeout_s
            while not self.page.evaluate(f"!!({condition})"):
                if time.monotonic() > deadline:
                    raise TimeoutError(condition)
                self.page.wait_for_timeout(50)
        except Exception as e:
            state = self.demo("{state: lfmDemo.state, error: lfmDemo.error, counters: lfmDemo.counters, "
                              "rms: lfmDemo.rms, turns: lfmDemo.turns.map(t => ({...t, row: null})), "
                              "bargeIns: lfmDemo.bargeIns, errors: lfmDemo.errors}")
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}: {condition}\n"
                                 f"page: {json.dumps(state, indent=1)[:6000]}\nbrowser errors: {self.errors}") from e

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def tab(browser):
    t = Page(browser)
    yield t
    t.close()


def server_errors(tab: Page) -> list[dict]:
    """Error events the server sent (a cancel that crossed the response's end is harmless, and so is a refusal of
    semantic_vad that the page turned into its server VAD fallback)."""
    errors, fallback = tab.demo("lfmDemo.errors"), tab.demo("lfmDemo.turnFallback")
    return [e for e in errors if e["kind"] == "server" and e["code"] != "response_cancel_not_active"
            and not (fallback is not None and e["message"] == fallback)]


def turns(tab: Page) -> list[dict]:
    return tab.demo("lfmDemo.turns.map(t => ({...t, row: null}))")


def choose_semantic_vad(tab: Page, eagerness: str) -> None:
    """In the page's own controls, as a user would; saved like the other settings."""
    tab.page.check("input[name=mode][value=semantic]")
    tab.page.click("#settings summary")
    tab.page.select_option("select[name=eagerness]", eagerness)
    tab.page.click("#settings summary")
    saved = json.loads(tab.page.evaluate("localStorage.getItem('lfm-audio-demo')"))
    assert (saved["mode"], saved["eagerness"]) == ("semantic", eagerness), saved


def turn_detection_in_force(tab: Page, mode: str) -> str:
    """What the server reports in session.updated, and what the page shows of it. semantic_vad: taken, or refused
    (a server without it) and the page falls back to server VAD and says so."""
    if mode == "semantic":
        tab.wait("lfmDemo.turnDetection?.type === 'semantic_vad' || (lfmDemo.turnFallback !== null && "
                 f"lfmDemo.turnDetection?.silence_duration_ms === {SILENCE_MS})", 10, "semantic VAD or the fallback")
    else:
        tab.wait(f"lfmDemo.turnDetection?.silence_duration_ms === {SILENCE_MS}", 10, "server VAD in force")
    td, fallback = tab.demo("lfmDemo.turnDetection"), tab.demo("lfmDemo.turnFallback")
    shown = tab.page.inner_text("#turn-mode")
    if td["type"] == "semantic_vad":
        assert fallback is None and shown == f"In force: semantic VAD, eagerness {td['eagerness']}", (td, shown)
    else:
        assert td["type"] == "server_vad" and shown == f"In force: server VAD, {SILENCE_MS} ms of silence", shown
        assert tab.page.is_visible("#turn-fallback") == (fallback is not None)
        if fallback is not None:
            assert "semantic_vad" in fallback and "refused semantic VAD" in tab.page.inner_text("#turn-fallback")
    return td["type"]


def spoken_turn_and_barge_in(tab: Page, server: ServerProcess, transport: str, shot: str, mode: str = "vad") -> dict:
    page = tab.page
    page.goto(f"{server.base}/?transport={transport}&{QUERY}")
    page.wait_for_selector("#banner-random:not([hidden])")  # the tiny test checkpoint has random weights
    if mode == "semantic":
        choose_semantic_vad(tab, "high")  # high: the soonest end of turn, 2 s at most
    page.click("#talk")
    tab.wait("lfmDemo.state === 'connected'", 15, "the session")
    assert tab.demo("lfmDemo.transport") == transport
    kind = turn_detection_in_force(tab, mode)
    # A wrong WAV plays as silence without any error: the mic must be heard first.
    tab.wait(f"lfmDemo.rms.micMax > {LOUD}", 5, "the fake microphone's speech")

    # Speech, end of turn (server VAD), a response whose audio really plays in the page.
    tab.wait(f"lfmDemo.turns.some(t => t.outRmsMax > {LOUD} && t.ttfaMs !== null)", 40,
             "a response whose audio plays")
    tab.wait("lfmDemo.transcript().some(e => e.role === 'assistant' && e.text.trim() && e.text !== '…')", 10,
             "the assistant's transcript")
    tab.wait("lfmDemo.turns.some(t => t.rtf !== null) && lfmDemo.rttMs !== null", 15, "RTF and round trip")
    cells = page.locator("#latency tbody tr").first.locator("td").all_inner_texts()
    assert re.fullmatch(r"#\d+", cells[0]) and re.fullmatch(r"\d+ ms", cells[1]), cells
    assert re.fullmatch(r"\d+ ms", cells[2]) and re.fullmatch(r"\d+\.\d\d", cells[3]), cells
    assert re.fullmatch(r"\d+\.\d s", cells[4]), cells
    # The end of speech -> first audio: the turn detector's wait, then the server's answer time (the next cell).
    turn = next(t for t in reversed(turns(tab)) if t["n"] == int(cells[0][1:]))
    speech_ms, answer_ms = turn["speechToAudioMs"], turn["ttfaMs"]
    shown = [int(c.removesuffix(" ms")) for c in cells[1:3]]
    assert abs(shown[0] - speech_ms) <= 0.5 and abs(shown[1] - answer_ms) <= 0.5, (cells, turn)  # rounded ms
    assert LEAST_WAIT_MS[kind] <= speech_ms - answer_ms < 4000, turn  # 4 s: semantic high's 2 s cap, with room
    assert re.search(r"(\d+(\.\d)?|< 1) ms", page.inner_text("#rtt")), page.inner_text("#rtt")
    transcript = tab.demo("lfmDemo.transcript()")
    assert transcript[0]["role"] == "user", transcript
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / shot), full_page=True)

    # The WAV loops: its speech comes back while the assistant still talks. Playback must stop at once.
    tab.wait("lfmDemo.bargeIns.some(b => b.rmsAfter !== null)", 30, "a barge-in")
    barge = tab.demo("lfmDemo.bargeIns.find(b => b.rmsAfter !== null)")
    assert barge["why"] == "speech", barge
    assert barge["rmsBefore"] > LOUD, barge  # it was playing
    assert barge["rmsAfter"] < SILENT, barge  # 100-600 ms later: nothing audible
    assert barge["stopMs"] < 100, barge
    tab.wait("lfmDemo.transcript().some(e => e.interrupted)", 5, "the answer marked as interrupted")
    page.screenshot(path=str(ARTIFACTS / shot.replace(".png", "-barge-in.png")), full_page=True)
    result = {"turns": turns(tab), "barge": barge, "counters": tab.demo("lfmDemo.counters"),
              "rtt": tab.demo("lfmDemo.rttMs"), "sampleRate": tab.demo("lfmDemo.sampleRate")}
    print(f"\n{transport} ({kind}): sample rate {result['sampleRate']}, rtt {result['rtt']:.2f} ms, first turn",
          {k: result["turns"][0][k] for k in ("speechToAudioMs", "ttfaMs", "rtf", "audioMs", "outRmsMax", "status")},
          "barge-in", barge)
    return result


def test_websocket_turn_and_barge_in(tab, server):
    r = spoken_turn_and_barge_in(tab, server, "websocket", "demo.png", mode="semantic")
    barge, counters = r["barge"], r["counters"]
    # What the user heard was reported, and the server truncated the item to it.
    assert barge["truncatedMs"] is not None and barge["truncatedMs"] > 0, barge
    tab.wait("(lfmDemo.counters.events['conversation.item.truncated'] || 0) >= 1", 5, "conversation.item.truncated")
    assert counters["audioDeltas"] > 0 and counters["audioBytes"] % 2 == 0
    assert counters["sent"]["input_audio_buffer.append"] > 20
    assert not tab.errors, tab.errors
    assert not server_errors(tab), server_errors(tab)


def test_webrtc_turn_and_barge_in(tab, server):
    r = spoken_turn_and_barge_in(tab, server, "webrtc", "demo-webrtc.png")
    barge, counters = r["barge"], r["counters"]
    # Muted in the page at once; and the server dropped what it still had queued: nothing arrives any more.
    assert barge["remoteAfter"] < SILENT, barge
    assert counters["sent"]["output_audio_buffer.clear"] >= 1
    assert counters["audioDeltas"] == 0  # the audio came as a media track, not as events
    assert "input_audio_buffer.append" not in counters["sent"]

    # Another microphone, mid-session (the sender's track is replaced), then mute.
    page = tab.page
    mics = page.locator("select[name=mic] option").all()
    assert len(mics) >= 2, [m.inner_text() for m in mics]  # Chromium's fake devices
    page.evaluate("lfmDemo.resetPeaks()")
    page.click("#settings summary")
    page.select_option("select[name=mic]", index=len(mics) - 1)
    tab.wait(f"lfmDemo.rms.micMax > {LOUD}", 6, "the other microphone")
    assert tab.demo("lfmDemo.state") == "connected"
    page.click("#mute")
    page.wait_for_timeout(200)
    page.evaluate("lfmDemo.resetPeaks()")
    page.wait_for_timeout(600)
    assert tab.demo("lfmDemo.rms.micMax") == 0
    assert page.get_attribute("#talk", "data-state") == "muted"
    assert not tab.errors, tab.errors
    assert not server_errors(tab), server_errors(tab)


def test_random_weights_banner(tab, server):
    tab.page.goto(server.base + "/")
    banner = tab.page.wait_for_selector("#banner-random:not([hidden])")
    text = banner.inner_text()
    assert "no real model loaded: the audio is noise" in text.lower()
    assert "lfm-audio serve --model DIR" in text and "Hub id" in text
    assert httpx.get(server.base + "/readyz").json()["random_weights"] is True
    assert not tab.errors, tab.errors
    assert not server_errors(tab), server_errors(tab)


@pytest.mark.parametrize("transport", ["websocket", "webrtc"])
def test_push_to_talk_with_transcription(tab, server, transport):
    """Hold the button while the (looping) WAV speaks, release: commit + response.create. Pressing again while
    the answer plays interrupts it."""
    page = tab.page
    page.goto(f"{server.base}/?transport={transport}&mode=ptt&max_tokens=70&seed=2&transcribe=1")
    page.click("#talk")
    tab.wait("lfmDemo.state === 'connected'", 15, "the session")
    talk = page.locator("#talk")
    talk.hover()
    page.mouse.down()
    tab.wait(f"lfmDemo.rms.micMax > {LOUD}", 6, "speech while the button is held")  # the WAV loops: it comes
    page.wait_for_timeout(1500)
    page.mouse.up()
    tab.wait(f"lfmDemo.turns.some(t => t.outRmsMax > {LOUD} && t.ttfaMs !== null)", 40, "the answer playing")
    counters = tab.demo("lfmDemo.counters")
    assert counters["sent"]["input_audio_buffer.commit"] == 1 and counters["sent"]["response.create"] == 1
    assert "input_audio_buffer.speech_started" not in counters["events"]  # manual turns: no server VAD
    assert tab.page.inner_text("#turn-mode") == "In force: manual turns (push to talk)"
    first = turns(tab)[0]  # the release ends both the speech and the turn
    assert first["speechToAudioMs"] == first["ttfaMs"] > 0, first

    page.mouse.down()  # talk over the answer
    tab.wait("lfmDemo.bargeIns.some(b => b.rmsAfter !== null)", 5, "the barge-in")
    page.mouse.up()
    barge = tab.demo("lfmDemo.bargeIns[0]")
    assert barge["why"] == "push-to-talk" and barge["rmsBefore"] > LOUD and barge["rmsAfter"] < SILENT, barge
    if transport == "websocket":
        assert barge["truncatedMs"] > 0, barge
    else:
        assert barge["remoteAfter"] < SILENT, barge

    # The user's turn, transcribed by the model in ASR mode (gibberish with random weights, but there).
    tab.wait("(lfmDemo.counters.events['conversation.item.input_audio_transcription.completed'] || 0) >= 1", 20,
             "the input transcription")
    user = tab.demo("lfmDemo.transcript()")[0]
    assert user["role"] == "user" and "transcribing" not in user["text"], user
    assert not tab.errors, tab.errors
    assert not server_errors(tab), server_errors(tab)


def connect(tab: Page, server: ServerProcess, transport: str, key: str | None) -> None:
    tab.page.goto(f"{server.base}/?transport={transport}&mode=vad")
    if key is not None:
        tab.page.click("#settings summary")
        tab.page.fill("input[name=key]", key)
    tab.page.click("#talk")
    tab.wait("lfmDemo.state !== 'connecting' && lfmDemo.state !== 'idle'", 15, "the connection attempt")


def error_of(tab: Page) -> dict:
    err = tab.demo("lfmDemo.error")
    assert err is not None
    assert tab.page.is_visible("#banner-error") and tab.page.is_visible("#reconnect")
    assert tab.page.inner_text("#error-text") == err["message"]
    return err


@pytest.mark.parametrize("transport", ["websocket", "webrtc"])
def test_auth_full_and_lost(browser, tiny_dir, tmp_path, transport):
    """A server with an API key and one slot: a wrong key, then a full server, then the server going away."""
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(ServerProcess(tiny_dir, tmp_path, env={"LFM_AUDIO_API_KEYS": KEY},
                                                   args=[*LOOPBACK, "--max-sessions", "1"]))
        tabs = [Page(browser) for _ in range(2)]
        for t in tabs:
            stack.callback(t.close)
        first, second = tabs

        connect(first, server, transport, None if transport == "websocket" else "sk-wrong")
        err = error_of(first)
        assert err["kind"] == "auth" and "Authentication failed" in err["message"], err
        assert first.demo("lfmDemo.state") == "error"

        first.page.fill("input[name=key]", KEY)
        first.page.click("#reconnect")
        first.wait("lfmDemo.state === 'connected'", 15, "the session with the right key")
        assert not first.page.is_visible("#banner-error")

        connect(second, server, transport, KEY)
        err = error_of(second)
        assert err["kind"] == "full" and "server is full" in err["message"], err

        server.__exit__(None, None, None)  # the server goes away under a live session
        first.wait("lfmDemo.state === 'lost'", 15, "the lost connection")
        err = error_of(first)
        assert err["kind"] == "lost" and err["message"].startswith("Connection lost"), err
        assert first.page.inner_text("#reconnect") == "Reconnect"
        if transport == "websocket":
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            first.page.screenshot(path=str(ARTIFACTS / "demo-lost.png"), full_page=True)
        unexpected = [e for t in tabs for e in t.errors if "401" not in e and "503" not in e]
        assert not unexpected, unexpected


def test_microphone_permission_denied(playwright, server):
    """No fake-UI flag and no permission grant: getUserMedia fails with NotAllowedError."""
    b = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                   args=[*ARGS, "--use-fake-device-for-media-stream"])
    try:
        tab = Page(b)
        tab.page.goto(f"{server.base}/?transport=webrtc")
        tab.page.click("#talk")
        tab.wait("lfmDemo.error !== null", 10, "the microphone error")
        err = error_of(tab)
        assert err["kind"] == "mic-denied" and "Microphone access was denied" in err["message"], err
        assert tab.demo("lfmDemo.state") == "error"
        assert not tab.errors, tab.errors
    finally:
        b.close()
