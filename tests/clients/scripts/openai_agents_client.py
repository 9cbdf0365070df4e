"""openai-agents' RealtimeRunner, unmodified (default model settings: semantic_vad, transcription, tools),
against lfm-audio: argv = ws URL (ws://host:port/v1/realtime), API key, a speech WAV (24 kHz). Prints JSON."""

from __future__ import annotations

import asyncio
import sys

from agents import function_tool
from agents.realtime import RealtimeAgent, RealtimeRunner
from agents.realtime.model_inputs import RealtimeModelSendRawMessage
from common import TURN_SILENCE_MS, read_pcm16, report, silence


@function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"It is sunny in {city}."


async def main(url: str, key: str, wav: str) -> None:
    speech = read_pcm16(wav)
    agent = RealtimeAgent(name="Assistant", instructions="You are brief.", tools=[get_weather])
    session = await RealtimeRunner(agent).run(model_config={"url": url + "?model=lfm-audio", "api_key": key})
    raw: asyncio.Queue = asyncio.Queue()
    found: dict = {"errors": [], "truncated": False}

    async def pump() -> None:
        async for ev in session:
            if ev.type == "raw_model_event" and ev.data.type == "raw_server_event":
                data = ev.data.data
                if data.get("type") == "error":
                    found["errors"].append(data["error"]["code"])
                if data.get("type") == "conversation.item.truncated":
                    found["truncated"] = True
                await raw.put(data)

    async def until(kind: str, timeout: float = 90) -> dict:
        async def read() -> dict:
            while True:
                data = await raw.get()
                if data.get("type") == kind:
                    return data
        return await asyncio.wait_for(read(), timeout)

    async with session:
        task = asyncio.create_task(pump())
        updated = await until("session.updated")
        td = updated["session"]["audio"]["input"]["turn_detection"]
        found["session"] = {"turn_detection": td["type"], "tools": [t["name"] for t in updated["session"]["tools"]]}
        # a spoken turn
        await session.send_audio(speech + silence(TURN_SILENCE_MS))
        found["spoken"] = (await until("response.done"))["response"]["status"]
        # a text turn
        await session.send_message("Hello there")
        found["text"] = (await until("response.done"))["response"]["status"]
        # response.create with instructions and metadata
        await session.model.send_event(RealtimeModelSendRawMessage(message={
            "type": "response.create",
            "other_data": {"response": {"instructions": "Greet.", "metadata": {"tag": "agents"}}}}))
        created = await until("response.created")
        done = await until("response.done")
        found["metadata"] = [created["response"]["metadata"], done["response"]["metadata"]]
        # barge-in: speech during a response
        await session.send_message("Tell me a story")
        await until("response.created")
        await session.send_audio(speech + silence(TURN_SILENCE_MS))
        cut = await until("response.done")
        found["barge_in"] = {"status": cut["response"]["status"],
                             "reason": (cut["response"].get("status_details") or {}).get("reason")}
        await until("response.done")  # the answer to the barge-in speech
        task.cancel()
    report(found)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
