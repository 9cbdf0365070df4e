"""openai-python's Realtime client, unmodified, against lfm-audio: argv = base URL (http[s]://host:port),
API key, a speech WAV (24 kHz). Default session settings (server VAD); prints its findings as JSON."""

from __future__ import annotations

import asyncio
import base64
import sys
import time

from common import chunks, read_pcm16, report, silence
from openai import AsyncOpenAI


async def main(base: str, key: str, wav: str) -> None:
    speech = read_pcm16(wav)
    ws_base = base.replace("http", "ws", 1)
    client = AsyncOpenAI(api_key=key, base_url=base + "/v1", websocket_base_url=ws_base + "/v1")
    found: dict = {"errors": []}
    heard: dict[str, float] = {}  # item id -> ms of speech received
    async with client.realtime.connect(model="lfm-audio") as conn:
        events = conn.__aiter__()

        async def until(kind: str, timeout: float = 90):
            async def read():
                async for ev in events:
                    if ev.type == "error":
                        found["errors"].append(ev.error.code)
                    if ev.type == "response.output_audio.delta":
                        heard[ev.item_id] = heard.get(ev.item_id, 0) + len(base64.b64decode(ev.delta)) / 48
                    if ev.type == kind:
                        return ev
            return await asyncio.wait_for(read(), timeout)

        async def send_audio(pcm: bytes) -> None:
            for c in chunks(pcm):
                await conn.input_audio_buffer.append(audio=base64.b64encode(c).decode())

        created = await until("session.created")
        found["turn_detection"] = created.session.audio.input.turn_detection.type
        # 1. a spoken turn: server VAD commits it and answers
        t0 = time.monotonic()
        await send_audio(speech + silence(1200))
        stopped = await until("input_audio_buffer.speech_stopped")
        done = await until("response.done")
        found["spoken"] = {"status": done.response.status, "seconds": round(time.monotonic() - t0, 2)}
        # 2. response.create with instructions and metadata, echoed back
        await conn.response.create(response={"instructions": "Greet the user.", "metadata": {"tag": "greet"},
                                             "max_output_tokens": 30})
        created = await until("response.created")
        done = await until("response.done")
        found["instructions"] = {"created_metadata": created.response.metadata,
                                 "done_metadata": done.response.metadata, "status": done.response.status}
        # 3. a text turn
        await conn.conversation.item.create(item={"type": "message", "role": "user",
                                                  "content": [{"type": "input_text", "text": "Hello there"}]})
        await conn.response.create(response={"output_modalities": ["text"], "max_output_tokens": 20})
        done = await until("response.done")
        found["text"] = {"status": done.response.status, "modalities": done.response.output_modalities}
        # 3b. out of band, its context the spoken turn alone (an item reference) and a message given inline
        await conn.response.create(response={"conversation": "none", "max_output_tokens": 10, "input": [
            {"type": "item_reference", "id": stopped.item_id},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Summarise that."}]}]})
        done = await until("response.done")
        found["out_of_band"] = {"status": done.response.status, "conversation_id": done.response.conversation_id}
        # 4. barge-in: speech during a response cancels it; the client truncates what it played
        await conn.response.create()
        created = await until("response.created")
        await send_audio(speech + silence(800))
        started = await until("input_audio_buffer.speech_started")
        done = await until("response.done")
        item = done.response.output[0]
        played = int(heard.get(item.id, 0) // 2)  # as if the user heard half of what arrived
        await conn.conversation.item.truncate(item_id=item.id, content_index=0, audio_end_ms=played)
        truncated = await until("conversation.item.truncated")
        await until("response.done")  # server VAD answers the barge-in speech
        found["barge_in"] = {"status": done.response.status,
                             "reason": done.response.status_details.reason if done.response.status_details else None,
                             "speech_started": started.audio_start_ms is not None,
                             "truncated": truncated.item_id == item.id, "played_ms": played}
        # 5. a cancel with nothing active: OpenAI's code and text
        await conn.response.cancel()
        err = await until("error")
        found["cancel_error"] = {"code": err.error.code, "message": err.error.message}
    report(found)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
