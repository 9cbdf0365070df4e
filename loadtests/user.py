"""One simulated user: a session, then turns of real speech; each reply is played back in simulated real time and
the user speaks again once it has played out (or over it, for a barge-in turn)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from loadtests.clips import Clip
from loadtests.links import Rejected, WebSocketLink
from loadtests.player import Player
from loadtests.scenario import WIRE_RATE, Scenario
from loadtests.turns import Turn

__all__ = ["User", "UserResult"]


@dataclass
class UserResult:
    index: int
    push_to_talk: bool
    rejected: str | None = None  # the refusal's code
    errors: list[str] = field(default_factory=list)  # server `error` events, timeouts, lost connections
    unexpected: int = 0  # events that belonged to no turn (a VAD event with nobody speaking, ...)
    mic_late_max_s: float = 0.0  # the client's own lag: large values mean the load generator is the bottleneck
    turns: list[Turn] = field(default_factory=list)


class _TurnFailed(Exception):
    pass


class User:
    def __init__(self, index: int, scenario: Scenario, clip: Clip, url: str, *, push_to_talk: bool,
                 barge_in: list[bool], on_turn_done: Callable[[Turn], None] = lambda t: None,
                 stop_at: float | None = None) -> None:
        self.s = scenario
        self.clip = clip
        self.url = url
        self.barge_in = barge_in  # per turn index
        self.on_turn_done = on_turn_done
        self.stop_at = stop_at  # monotonic time after which no turn starts (the run's duration)
        self.result = UserResult(index, push_to_talk)
        self.speaking: Turn | None = None  # whose speech is in the input buffer (VAD events go here)
        self.awaiting: Turn | None = None  # committed, response not created yet
        self.responses: dict[str, Turn] = {}
        self._sending: set[asyncio.Task] = set()

    def _link(self):
        always_on = not self.result.push_to_talk
        if self.s.transport == "webrtc":
            from loadtests.webrtc import WebRTCLink  # aiortc only when asked for

            return WebRTCLink(self.url, always_on, self._on_event, self._on_audio)
        return WebSocketLink(self.url + "/realtime", self.s.chunk_ms, always_on, self._on_event)

    def _session(self) -> dict:
        vad = None if self.result.push_to_talk else {
            "type": "server_vad", "silence_duration_ms": self.s.silence_ms, "create_response": True,
            "interrupt_response": True}
        if vad is not None and self.s.turn_detection == "semantic_vad":
            vad = {"type": "semantic_vad", "eagerness": self.s.eagerness, "create_response": True,
                   "interrupt_response": True}
        ext = {} if self.s.speculative_start is None else {"lfm_audio": {"speculative_start": self.s.speculative_start}}
        return {"type": "realtime", "max_output_tokens": self.s.max_output_tokens, **ext,
                "audio": {"input": {"format": {"type": "audio/pcm", "rate": WIRE_RATE}, "turn_detection": vad},
                          "output": {"format": {"type": "audio/pcm", "rate": WIRE_RATE}}},
                **self.s.extra}

    async def run(self) -> UserResult:
        r = self.result
        self.link = link = self._link()
        try:
            await link.open(self.s.turn_timeout_s)
        except Rejected as e:
            r.rejected = e.code
            return r
        except (OSError, TimeoutError) as e:
            r.errors.append(f"connect: {type(e).__name__}: {e}")
            return r
        try:
            self._updated = asyncio.Event()
            await link.send({"type": "session.update", "session": self._session()})
            await self._wait(self._updated, "session.updated")
            link.mic.start()
            for i in range(self.s.turns):
                if self.stop_at is not None and time.monotonic() >= self.stop_at:
                    break
                await self._turn(i)
            for turn in r.turns:  # every reply done, the last one played out, as a listener would
                await self._wait(turn.got_done, "response.done", of=turn)
            if r.turns:
                await self._until(r.turns[-1].player.done_at())
        except _TurnFailed:
            pass
        finally:
            r.mic_late_max_s = link.mic.late_max_s
            with contextlib.suppress(Exception):
                await link.close()
        return r

    async def _turn(self, i: int) -> None:
        r = self.result
        prev = r.turns[-1] if r.turns else None
        barge = prev is not None and self.barge_in[i]
        if barge:  # speak once the reply has played barge_in_after_s (or sooner, if it is shorter)
            await self._wait(prev.got_done, "the first audio", lambda: prev.first_audio is not None, of=prev)
            if prev.player.start is None:  # a reply without audio: nothing to speak over
                barge = False
            else:
                await self._until(min(prev.player.start + self.s.barge_in_after_s, self._playback_end(prev)))
        if prev is not None and not barge:
            await self._wait(prev.got_done, "response.done", of=prev)
            await self._until(prev.player.done_at())
            await asyncio.sleep(self.s.pause_s)
        turn = Turn(r.index, i, r.push_to_talk, barge, player=Player(self.link.jitter_s))
        r.turns.append(turn)
        self.speaking = turn
        began, ended = self.link.mic.say(self.clip.pcm)
        if r.push_to_talk and prev is not None:
            self._cut(prev, time.monotonic(), cancel=True)  # the user pressed the button: stop the reply
        turn.speech_begin = await self._wait_future(began, "the mic", turn)
        turn.speech_end = await self._wait_future(ended, "the mic", turn)
        if r.push_to_talk:
            await self.link.send({"type": "input_audio_buffer.commit"})
            await self.link.send({"type": "response.create"})
        await self._wait(turn.got_committed, "input_audio_buffer.committed", of=turn)

    def _playback_end(self, t: Turn) -> float:
        end = t.player.done_at()
        return end if end is not None and t.got_done.is_set() else float("inf")

    # --- events -------------------------------------------------------------------------------------------------

    def _on_event(self, now: float, e: dict) -> None:
        kind = e.get("type", "")
        handler = getattr(self, "_ev_" + kind.replace(".", "_"), None)
        if handler is not None:
            handler(now, e)

    def _ev_session_updated(self, now: float, e: dict) -> None:
        self._updated.set()

    def _ev_error(self, now: float, e: dict) -> None:
        err = e.get("error") or {}
        self.result.errors.append(f"server error {err.get('code')}: {err.get('message')}")

    def _ev_input_audio_buffer_speech_started(self, now: float, e: dict) -> None:
        t = self.speaking
        if t is None or t.speech_started is not None:
            self.result.unexpected += 1
            return
        t.speech_started = now
        if len(self.result.turns) > 1:  # a client stops playing the moment the user is heard
            self._cut(self.result.turns[-2], now, cancel=False)

    def _ev_input_audio_buffer_speech_stopped(self, now: float, e: dict) -> None:
        t = self.speaking
        if t is None or t.speech_stopped is not None:
            self.result.unexpected += 1
            return
        t.speech_stopped = now

    def _ev_input_audio_buffer_committed(self, now: float, e: dict) -> None:
        t = self.speaking
        if t is None or t.committed is not None:
            self.result.unexpected += 1
            return
        t.committed = now
        t.got_committed.set()
        self.speaking, self.awaiting = None, t

    def _ev_response_created(self, now: float, e: dict) -> None:
        t = self.awaiting
        if t is None:
            self.result.unexpected += 1
            return
        t.response_created = now
        t.response_id = (e.get("response") or {}).get("id")
        self.responses[t.response_id] = t
        self.awaiting = None

    def _ev_response_output_item_added(self, now: float, e: dict) -> None:
        t = self.responses.get(e.get("response_id"))
        if t is not None:
            t.item_id = (e.get("item") or {}).get("id")

    def _ev_response_output_audio_delta(self, now: float, e: dict) -> None:
        t = self.responses.get(e.get("response_id"))
        if t is None:
            self.result.unexpected += 1
            return
        seconds = len(base64.b64decode(e.get("delta", ""))) / 2 / WIRE_RATE
        self._audio(t, now, seconds)

    def _on_audio(self, now: float, seconds: float) -> None:
        """Reply audio outside the events (WebRTC): it belongs to the newest reply."""
        for t in reversed(self.result.turns):
            if t.response_id is not None:
                self._audio(t, now, seconds)
                return

    def _audio(self, t: Turn, now: float, seconds: float) -> None:
        if t.first_audio is None:
            t.first_audio = now
        t.player.feed(now, seconds)

    def _ev_response_output_audio_transcript_delta(self, now: float, e: dict) -> None:
        t = self.responses.get(e.get("response_id"))
        if t is not None and t.first_text is None:
            t.first_text = now

    _ev_response_output_text_delta = _ev_response_output_audio_transcript_delta

    def _ev_response_done(self, now: float, e: dict) -> None:
        response = e.get("response") or {}
        t = self.responses.get(response.get("id"))
        if t is None:
            self.result.unexpected += 1
            return
        t.response_done = now
        t.status = response.get("status")
        t.reason = (response.get("status_details") or {}).get("reason")
        if t.status == "failed":
            t.error = f"response failed: {response.get('status_details')}"
        t.got_done.set()
        self.on_turn_done(t)

    # --- barge-in -----------------------------------------------------------------------------------------------

    def _cut(self, prev: Turn, now: float, *, cancel: bool) -> None:
        """Stop playing `prev`'s reply (if it is still playing) and tell the server what was heard."""
        end = prev.player.done_at()
        if prev.interrupted or prev.player.start is None or (prev.got_done.is_set() and end is not None
                                                              and end <= now):
            return
        prev.interrupted = True
        prev.cut_at = now
        prev.played_s = prev.player.stop(now)
        if cancel and not prev.got_done.is_set():
            self._send_soon({"type": "response.cancel"})
        if prev.item_id is not None:
            self._send_soon({"type": "conversation.item.truncate", "item_id": prev.item_id, "content_index": 0,
                             "audio_end_ms": int(prev.played_s * 1000)})

    def _send_soon(self, event: dict) -> None:
        """Send from an event handler (which cannot await); the task is kept until it is done."""
        task = asyncio.create_task(self.link.send(event))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    # --- bounded waits ------------------------------------------------------------------------------------------

    async def _wait(self, event: asyncio.Event, what: str, ready: Callable[[], bool] | None = None,
                    of: Turn | None = None) -> None:
        """Until `event` is set (or `ready()` holds), at most turn_timeout_s; a lost connection ends it early."""
        deadline = time.monotonic() + self.s.turn_timeout_s
        while not (event.is_set() or (ready is not None and ready())):
            if self.link.closed.is_set():
                self._fail(of, f"waiting for {what}: {self.link.close_reason or 'closed'}")
            left = deadline - time.monotonic()
            if left <= 0:
                self._fail(of, f"timed out after {self.s.turn_timeout_s:.0f} s waiting for {what}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), min(left, 0.05 if ready is not None else 0.5))

    async def _wait_future(self, future: asyncio.Future, what: str, of: Turn) -> float:
        try:
            return await asyncio.wait_for(future, self.s.clip_s + self.s.turn_timeout_s)
        except TimeoutError:
            self._fail(of, f"timed out waiting for {what}")

    async def _until(self, when: float | None) -> None:
        if when is not None and when != float("inf"):
            await asyncio.sleep(max(0.0, when - time.monotonic()))

    def _fail(self, of: Turn | None, why: str):
        if of is not None and of.error is None:
            of.error = why
        self.result.errors.append(why)
        raise _TurnFailed(why)
