"""LiveKit agents' AgentSession with the OpenAI RealtimeModel (livekit-plugins-openai), unmodified, with its
defaults, and an Agent that greets first (on_enter -> generate_reply(instructions=...)). No LiveKit server: the
session's own audio input and output are the test's (voice.io AudioInput / AudioOutput subclasses). argv = base
URL (http://host:port), API key, a speech WAV (24 kHz). Prints JSON."""

from __future__ import annotations

import asyncio
import sys
import time

import aiohttp
from common import RATE, chunks, read_pcm16, report, silence
from livekit import rtc
from livekit.agents import Agent, AgentSession
from livekit.agents.voice.io import AudioInput, AudioOutput, AudioOutputCapabilities
from livekit.plugins.openai.realtime import RealtimeModel

FRAME_S = 0.02  # one microphone frame


class QueueInput(AudioInput):
    """The microphone: the frames the test puts in, else silence, at real time (as a live microphone sends)."""

    def __init__(self) -> None:
        super().__init__(label="test-microphone")
        self.frames: asyncio.Queue[rtc.AudioFrame] = asyncio.Queue()
        self.quiet = rtc.AudioFrame(silence(int(FRAME_S * 1000)), RATE, 1, int(RATE * FRAME_S))

    async def __anext__(self) -> rtc.AudioFrame:
        await asyncio.sleep(FRAME_S)
        try:
            return self.frames.get_nowait()
        except asyncio.QueueEmpty:
            return self.quiet


class RecordingOutput(AudioOutput):
    """The speaker: records each segment's audio and when its first frame arrived; plays out instantly."""

    def __init__(self) -> None:
        super().__init__(label="test-speaker", capabilities=AudioOutputCapabilities(pause=False), sample_rate=RATE)
        self.segments: list[dict] = []
        self.segment: dict | None = None
        self.finished: asyncio.Queue[dict] = asyncio.Queue()

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await super().capture_frame(frame)
        if self.segment is None:
            self.segment = {"first_frame_at": time.monotonic(), "audio_s": 0.0}
            self.segments.append(self.segment)
            self.on_playback_started(created_at=time.time())
        self.segment["audio_s"] += frame.samples_per_channel / frame.sample_rate

    def _finish(self, interrupted: bool) -> None:
        if self.segment is None:
            return
        done, self.segment = self.segment, None
        self.on_playback_finished(playback_position=done["audio_s"], interrupted=interrupted)
        self.finished.put_nowait(done)

    def flush(self) -> None:
        super().flush()
        self._finish(interrupted=False)

    def clear_buffer(self) -> None:
        self._finish(interrupted=True)


class Greeter(Agent):
    def __init__(self) -> None:
        super().__init__(instructions="You are a helpful voice assistant.")

    async def on_enter(self) -> None:
        self.session.generate_reply(instructions="Greet the user.")


async def until(condition, poll_s: float = 0.05) -> None:
    while not condition():
        await asyncio.sleep(poll_s)


async def main(base: str, key: str, wav: str) -> None:
    speech = read_pcm16(wav)
    found: dict = {"errors": []}
    async with aiohttp.ClientSession() as http:
        session = AgentSession(llm=RealtimeModel(base_url=base + "/v1", api_key=key, http_session=http))
        microphone, speaker = QueueInput(), RecordingOutput()
        session.input.audio, session.output.audio = microphone, speaker
        session.on("error", lambda ev: found["errors"].append(str(ev.error)))
        states: list[str] = []
        session.on("agent_state_changed", lambda ev: states.append(ev.new_state))
        finals: list[str] = []
        session.on("user_input_transcribed", lambda ev: ev.is_final and finals.append(ev.transcript))
        added: list[str] = []  # the history as it grows: roles (a reply with no text adds no message)
        session.on("conversation_item_added", lambda ev: added.append(getattr(ev.item, "role", ev.item.type)))
        t0 = time.monotonic()
        await session.start(Greeter())
        # 1. the greeting: its audio starts without waiting for the user (and without generate_reply's 10 s timeout)
        greeting = await asyncio.wait_for(speaker.finished.get(), 60)
        found["greeting"] = {"first_audio_s": round(greeting["first_frame_at"] - t0, 2),
                             "audio_s": round(greeting["audio_s"], 2)}
        # 2. a spoken turn after it: the realtime model's turn detection ends it, the agent answers
        for c in chunks(speech, int(FRAME_S * 1000)):  # the microphone's silence follows
            microphone.frames.put_nowait(rtc.AudioFrame(c, RATE, 1, len(c) // 2))
        t1 = time.monotonic()
        reply = await asyncio.wait_for(speaker.finished.get(), 90)
        found["spoken"] = {"first_audio_s": round(reply["first_frame_at"] - t1, 2),
                           "audio_s": round(reply["audio_s"], 2)}
        # the user's message joins the history with its final transcript, which may come after the reply
        await asyncio.wait_for(until(lambda: "user" in added), 30)
        found.update(states=states, history=added, final_transcripts=len(finals))
        await session.aclose()
    report(found)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
