"""pipecat's OpenAIRealtimeLLMService(base_url=...), unmodified, with its default settings (server VAD), in a
pipeline of its own (context aggregators, the service, a sink that records what reaches it): argv = realtime
WebSocket URL (ws://host:port/v1/realtime), API key, a speech WAV (24 kHz). pipecat treats every error event but
the cancel / active-response ones as fatal, so any error that reaches it is a failure. Prints JSON."""

from __future__ import annotations

import asyncio
import sys
import time

from common import RATE, chunks, read_pcm16, report, silence
from pipecat.frames.frames import (
    ErrorFrame,
    InputAudioRawFrame,
    LLMFullResponseEndFrame,
    LLMMessagesAppendFrame,
    LLMRunFrame,
    LLMTextFrame,
    TTSAudioRawFrame,
    TTSTextFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import LLMContextAggregatorPair
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.openai.realtime.llm import OpenAIRealtimeLLMService
from pipecat.workers.runner import WorkerRunner

SILENCE_AFTER_MS = 1200  # past server VAD's default 500 ms of silence, with room for a loaded machine


class Injector(FrameProcessor):
    """Between the user aggregator and the service: where a frame reaches the service itself. The user
    aggregator takes an LLMMessagesAppendFrame into the context and pushes the context on downstream, which the
    realtime service does not answer (it answers a context only from upstream): the service's own text path
    (a message item, then response.create, once the assistant aggregator asks) starts from a frame that reaches it."""

    async def process_frame(self, frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)


class Recorder(FrameProcessor):
    """The pipeline's end: what each response brought (audio seconds, transcript / text), one entry per
    LLMFullResponseEndFrame."""

    def __init__(self) -> None:
        super().__init__()
        self.current = {"audio_s": 0.0, "transcript": "", "text": ""}
        self.responses: asyncio.Queue = asyncio.Queue()
        self.first_audio = asyncio.Event()

    async def process_frame(self, frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TTSAudioRawFrame):
            self.current["audio_s"] += len(frame.audio) / 2 / frame.sample_rate
            self.first_audio.set()
        elif isinstance(frame, TTSTextFrame):
            self.current["transcript"] += frame.text
        elif isinstance(frame, LLMTextFrame) and getattr(frame, "append_to_context", True):
            self.current["text"] += frame.text
        elif isinstance(frame, LLMFullResponseEndFrame):
            if self.current["audio_s"] or self.current["transcript"] or self.current["text"]:
                self.responses.put_nowait({k: round(v, 2) if isinstance(v, float) else v
                                           for k, v in self.current.items()})
            self.current = {"audio_s": 0.0, "transcript": "", "text": ""}
            self.first_audio.clear()
        await self.push_frame(frame, direction)


async def main(url: str, key: str, wav: str) -> None:
    speech = read_pcm16(wav)
    found: dict = {"errors": []}
    llm = OpenAIRealtimeLLMService(api_key=key, base_url=url, settings=OpenAIRealtimeLLMService.Settings(
        system_instruction="You are a helpful voice assistant. Greet the user."))
    sent: list[dict] = []  # the client events pipecat sent, by type (recorded, not changed)
    send = llm.send_client_event

    async def record_send(event):
        sent.append(event.model_dump(exclude_none=True))
        await send(event)
    llm.send_client_event = record_send
    aggregators = LLMContextAggregatorPair(LLMContext())
    recorder, injector = Recorder(), Injector()
    worker = PipelineWorker(Pipeline([aggregators.user(), injector, llm, recorder, aggregators.assistant()]),
                            params=PipelineParams(audio_in_sample_rate=RATE, audio_out_sample_rate=RATE),
                            idle_timeout_secs=None)

    @worker.event_handler("on_pipeline_error")
    async def on_error(_worker, frame: ErrorFrame) -> None:
        found["errors"].append(frame.error)

    async def speak(pcm: bytes) -> None:
        await worker.queue_frames(InputAudioRawFrame(audio=c, sample_rate=RATE, num_channels=1)
                                  for c in chunks(pcm, 20))

    async def next_response(timeout: float = 90) -> dict:
        return await asyncio.wait_for(recorder.responses.get(), timeout)

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    running = asyncio.create_task(runner.run())
    try:
        # 1. the first run: session.update with the instructions, then response.create
        t0 = time.monotonic()
        await worker.queue_frames([LLMRunFrame()])
        found["first"] = await next_response()
        found["first"]["seconds"] = round(time.monotonic() - t0, 2)
        # 2. a spoken turn: server VAD ends it and answers, audio with its transcript
        await speak(speech + silence(SILENCE_AFTER_MS))
        found["spoken"] = await next_response()
        # 3. a text turn: an appended message the service answers
        await injector.push_frame(LLMMessagesAppendFrame(
            messages=[{"role": "user", "content": "Say hello in one sentence."}], run_llm=True))
        found["text"] = await next_response()
        # 4. barge-in: the user speaks over a reply; pipecat truncates the audio it had
        await injector.push_frame(LLMMessagesAppendFrame(
            messages=[{"role": "user", "content": "Tell a long story."}], run_llm=True))
        await asyncio.wait_for(recorder.first_audio.wait(), 60)
        await speak(speech + silence(SILENCE_AFTER_MS))
        found["interrupted"] = await next_response()
        found["after_barge_in"] = await next_response()
        await asyncio.sleep(0.5)  # the server's answer to the truncate, if it had one, arrives
    finally:
        found["sent"] = sorted({e["type"] for e in sent})
        updates = [e["session"] for e in sent if e["type"] == "session.update"]
        found["instructions"] = updates[-1].get("instructions") if updates else None
        found["truncates"] = [e for e in sent if e["type"] == "conversation.item.truncate"]
        await runner.cancel()
        await running
    report(found)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
