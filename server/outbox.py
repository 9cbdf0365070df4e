"""The outgoing events of one connection, for both transports (WebSocket frames, WebRTC's data channel)."""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["OUTBOX_LIMIT", "Outbox"]

OUTBOX_LIMIT = 4096  # events; beyond it the oldest audio deltas are dropped (a client that stopped reading)


class Outbox:
    """A bounded, non-blocking queue of outgoing events. The event loop never waits on a slow client: when
    full, the oldest audio delta goes (and is counted), never a control event."""

    def __init__(self, limit: int = OUTBOX_LIMIT) -> None:
        self.items: deque[dict] = deque()
        self.limit = limit
        self.ready = asyncio.Event()
        self.dropped = 0

    def put(self, event: dict) -> None:
        self.items.append(event)
        if len(self.items) > self.limit:
            for i, e in enumerate(self.items):
                if e.get("type") == "response.output_audio.delta":
                    del self.items[i]
                    self.dropped += 1
                    break
        self.ready.set()

    async def get(self) -> dict:
        while not self.items:
            self.ready.clear()
            await self.ready.wait()
        return self.items.popleft()
