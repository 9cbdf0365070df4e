"""LiveKit agents' OpenAI RealtimeModel (livekit-plugins-openai), unmodified, with its defaults (semantic_vad,
"inf" tokens, transcription), driven through its RealtimeSession: argv = base URL (http://host:port), API key,
a speech WAV (24 kHz). generate_reply() must resolve (it waits for its metadata echoed in response.created).
Prints JSON."""

from __future__ import annotations

import asyncio
import sys
import time

import aiohttp
from common import RATE, TURN_SILENCE_MS, chunks, read_pcm16, report, silence
from livekit import rtc
from livekit.plugins.openai.realtime import RealtimeModel


def frames(pcm: bytes):
    for c in chunks(pcm, 20):
        yield rtc.AudioFrame(c, RATE, 1, len(c) // 2)


async def drain(gen) -> dict:
    """A generation's messages, read to the end: audio seconds and text."""
    audio, text = 0.0, ""
    async for msg in gen.message_stream:
        async def read_text(msg=msg) -> str:
            return "".join([t async for t in msg.text_stream])
        text_task = asyncio.create_task(read_text())
        async for frame in msg.audio_stream:
            audio += frame.samples_per_channel / frame.sample_rate
        text += await text_task
    return {"audio_s": round(audio, 2), "user_initiated": gen.user_initiated}


async def main(base: str, key: str, wav: str) -> None:
    speech = read_pcm16(wav)
    found: dict = {"errors": [], "server_errors": []}
    async with aiohttp.ClientSession() as http:
        model = RealtimeModel(base_url=base + "/v1", api_key=key, http_session=http)
        sess = model.session()
        generations: asyncio.Queue = asyncio.Queue()
        events: dict[str, list] = {}
        sess.on("generation_created", generations.put_nowait)
        sess.on("error", lambda e: found["errors"].append(str(e.error)))

        def server_event(ev: dict) -> None:
            events.setdefault(ev["type"], []).append(ev)
            if ev["type"] == "error":
                found["server_errors"].append(ev["error"]["code"])
        sess.on("openai_server_event_received", server_event)
        # 1. generate_reply with instructions (a greeting): resolves on response.created with its metadata
        t0 = time.monotonic()
        gen = await asyncio.wait_for(sess.generate_reply(instructions="Greet the user."), 30)
        found["generate_reply_s"] = round(time.monotonic() - t0, 2)
        found["greeting"] = await drain(gen)
        await generations.get()
        updated = events["session.updated"][-1]["session"]
        found["session"] = {"turn_detection": updated["audio"]["input"]["turn_detection"]["type"],
                            "max_output_tokens": updated["max_output_tokens"],
                            "voice": updated["audio"]["output"]["voice"]}
        # 2. a spoken turn: semantic_vad (the end-of-turn model) ends the turn
        for f in frames(speech + silence(TURN_SILENCE_MS)):
            sess.push_audio(f)
        gen = await asyncio.wait_for(generations.get(), 90)
        found["spoken"] = await drain(gen)
        # 3. barge-in: speech while a reply is generated; LiveKit truncates what it played
        reply = asyncio.ensure_future(sess.generate_reply(instructions="Tell a long story."))
        gen = await asyncio.wait_for(reply, 30)
        await generations.get()
        msg = await anext(aiter(gen.message_stream))
        audio = msg.audio_stream.__aiter__()
        first = await anext(audio)  # the reply is speaking: now the user talks over it
        for f in frames(speech + silence(TURN_SILENCE_MS)):
            sess.push_audio(f)
        heard = {"audio_s": first.samples_per_channel / first.sample_rate}
        async for frame in audio:
            heard["audio_s"] += frame.samples_per_channel / frame.sample_rate
        item_id = events["response.done"][-1]["response"]["output"][0]["id"]
        # as if half of what arrived was played when the user spoke
        sess.truncate(message_id=item_id, modalities=["audio"], audio_end_ms=int(500 * heard["audio_s"]),
                      audio_transcript="")
        await asyncio.wait_for(generations.get(), 90)  # the answer to the barge-in speech
        await asyncio.sleep(0.5)
        dones = [e["response"] for e in events["response.done"]]
        found["statuses"] = [(d["status"], (d.get("status_details") or {}).get("reason")) for d in dones]
        found["truncated"] = len(events.get("conversation.item.truncated", []))
        await sess.aclose()
    report(found)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
