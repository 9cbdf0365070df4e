"""POST /v1/realtime/calls: the OpenAI Realtime session over WebRTC, as OpenAI's flow.

SDP offer in (`application/sdp`, or multipart with an `sdp` part and a `session` JSON part), SDP answer out.
Events travel on the client's `oai-events` data channel, audio is Opus both ways. ICE is not trickled: the
answer carries every candidate. Only the configured ICE servers are used (none by default: no STUN/TURN server
is ever contacted).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Annotated

import aioice.ice
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.exceptions import InvalidStateError
from aiortc.sdp import SessionDescription
from fastapi import APIRouter, Header, HTTPException, Request, Response
from starlette.datastructures import UploadFile

from server.connection import Connection
from server.deps import State
from server.errors import ApiError
from server.outbox import Outbox
from server.realtime import CLOSE
from server.settings import Settings
from server.webrtc_tracks import SpeechTrack, read_audio
from streaming.audio import OPUS_PCM

__all__ = ["Call", "router", "use_host_addresses"]

router = APIRouter()
log = logging.getLogger("lfm_audio.webrtc")
CHANNEL = "oai-events"
MAX_OFFER_BYTES = 100_000
OPUS = [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.mimeType.lower() == "audio/opus"]


class BadOffer(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(400, "invalid_offer", message)


class Call:
    """One peer connection around one `Connection`: wires the tracks, the event channel and the peer's state,
    and closes everything once (the session's slot first)."""

    def __init__(self, call_id: str, conn: Connection, pc: RTCPeerConnection, track: SpeechTrack,
                 outbox: Outbox, peer_timeout_s: float) -> None:
        self.id, self.conn, self.pc, self.track, self.outbox = call_id, conn, pc, track, outbox
        self.peer_timeout_s = peer_timeout_s
        self.heard_at: float | None = None  # monotonic time of the peer's last audio frame
        self.channel = None
        self.reader: asyncio.Task | None = None
        self.tasks: set[asyncio.Task] = set()
        self.closed = False
        conn.close_hook = self.close
        pc.on("track", self._on_track)
        pc.on("datachannel", self._on_channel)
        pc.on("connectionstatechange", self._on_state)

    def info(self, msg: str, *args: object) -> None:
        log.info("%s " + msg, self.id, *args)

    def spawn(self, coro) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def _on_track(self, track) -> None:
        if track.kind == "audio" and self.reader is None:
            self.reader = self.spawn(read_audio(track, self._append))

    def _append(self, pcm16: bytes) -> None:
        self.heard_at = time.monotonic()
        if not self.closed and self.conn.session is not None:
            self.conn.session.append_audio(pcm16)

    def _on_channel(self, channel) -> None:
        if channel.label != CHANNEL or self.channel is not None:
            self.info("ignoring data channel %r", channel.label)
            return
        self.channel = channel
        channel.on("message", self._on_message)
        channel.on("close", lambda: self.spawn(self.close("data channel closed")))
        self.spawn(self._write())  # what was sent before (session.created) goes out now

    def _on_message(self, message: str | bytes) -> None:
        if not self.closed:
            self.conn.adapter.handle_text(message)

    async def _write(self) -> None:
        while True:
            event = await self.outbox.get()
            if event is CLOSE:  # the session failed: close once what came before it (the error) is out
                for _ in range(50):
                    if not self.channel.bufferedAmount:
                        break
                    await asyncio.sleep(0.02)
                await self.close("session failed")
                return
            try:
                self.channel.send(json.dumps(event))
            except InvalidStateError:  # the channel closed under us; its close event ends the call
                return

    async def _on_state(self) -> None:
        state = self.pc.connectionState
        self.info("connection %s", state)
        if state in ("failed", "closed"):
            await self.close(f"connection {state}")

    async def watch(self) -> None:
        """Gives the slot back when the peer is gone without saying so: the call is not connected (ICE, DTLS
        and the event channel) within the timeout, or its audio stops for that long. A browser's track sends
        frames (silence when muted) for as long as it is live, so only a vanished or stalled peer goes quiet;
        a peer that never sent audio (events only) is not timed out here (ICE consent expiry still ends it)."""
        await asyncio.sleep(self.peer_timeout_s)
        if self.pc.connectionState != "connected" or self.channel is None:
            await self.close("never connected")
            return
        while not self.closed:
            quiet = 0.0 if self.heard_at is None else time.monotonic() - self.heard_at
            if quiet >= self.peer_timeout_s:
                await self.close("peer stopped sending audio")
                return
            await asyncio.sleep(self.peer_timeout_s - quiet if self.heard_at is not None else self.peer_timeout_s / 4)

    async def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.info("closing: %s", reason)
        self.conn.finish(call=self.id, reason=reason)  # frees the engine slot at once
        self.track.stop()
        for task in list(self.tasks):
            if task is not asyncio.current_task():
                task.cancel()
        try:
            await self.pc.close()
        except Exception as e:  # aiortc's own state after an odd offer: the slot is already free
            log.warning("%s closing the peer connection failed: %s: %s", self.id, type(e).__name__, e)


async def _offer(request: Request) -> tuple[str, dict | None]:
    """The SDP offer and the optional session config, from either body OpenAI accepts."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/sdp":
        body = await request.body()
        if len(body) > MAX_OFFER_BYTES:
            raise BadOffer(f"the offer is larger than {MAX_OFFER_BYTES} bytes")
        return body.decode("utf-8", "replace"), None
    if kind != "multipart/form-data":
        raise BadOffer("send the SDP offer as application/sdp, or as multipart/form-data with an `sdp` part and "
                       "an optional `session` JSON part")
    try:
        form = await request.form(max_files=2, max_fields=4, max_part_size=MAX_OFFER_BYTES)
    except HTTPException as e:  # starlette's multipart errors
        raise BadOffer(f"bad multipart body: {e.detail}") from None
    parts = {}
    for name in ("sdp", "session"):
        value = form.get(name)
        parts[name] = (await value.read()).decode("utf-8", "replace") if isinstance(value, UploadFile) else value
    if not parts["sdp"]:
        raise BadOffer("the multipart body has no `sdp` part")
    session = None
    if parts["session"]:
        try:
            session = json.loads(parts["session"])
        except json.JSONDecodeError as e:
            raise BadOffer(f"the `session` part is not valid JSON: {e}") from None
        if not isinstance(session, dict):
            raise BadOffer("the `session` part must be a JSON object")
    return parts["sdp"], session


def _check_offer(sdp: str) -> None:
    """What aiortc accepts in an offer but then fails on: a BUNDLE group naming a section the offer does not have
    (aiortc moves the bundled sections onto the first one's transport, leaving them none: its connect task and
    close() fail), and a media section with no direction (creating the answer fails)."""
    offer = SessionDescription.parse(sdp)
    for media in offer.media:
        if media.kind != "application" and media.direction is None:
            raise BadOffer(f"the offer's {media.kind} section has no direction (a=sendrecv, a=sendonly, "
                           "a=recvonly or a=inactive)")
    mids = {media.rtp.muxId for media in offer.media}
    for group in offer.group:
        if group.semantic == "BUNDLE" and not set(group.items) <= mids:
            raise BadOffer(f"the offer's BUNDLE group names media sections it does not have: "
                           f"{sorted(set(group.items) - mids)}")


def use_host_addresses(addresses: Sequence[str]) -> Callable[[], None]:
    """Host candidates from these addresses only; returns what undoes it. aioice gathers from every interface
    but loopback and has no per-connection option, so this replaces its lookup for the whole process: the app
    does it once at start-up (one server per process)."""
    original = aioice.ice.get_host_addresses
    if not addresses:
        return lambda: None
    chosen = list(addresses)

    def host_addresses(use_ipv4: bool = True, use_ipv6: bool = True) -> list[str]:
        return [a for a in chosen if (use_ipv6 if ":" in a else use_ipv4)]

    aioice.ice.get_host_addresses = host_addresses

    def undo() -> None:
        aioice.ice.get_host_addresses = original

    return undo


def _peer(settings: Settings) -> RTCPeerConnection:
    # Always an explicit list: given None, aiortc falls back to a public Google STUN server.
    servers = [RTCIceServer(**server) for server in settings.ice_servers]
    return RTCPeerConnection(RTCConfiguration(iceServers=servers))


@router.post("/v1/realtime/calls", status_code=201, response_class=Response)
async def calls(request: Request, state: State, authorization: Annotated[str | None, Header()] = None) -> Response:
    call_id = f"rtc_{secrets.token_hex(12)}"
    outbox = Outbox()
    conn = Connection(state, "webrtc", outbox.put, SpeechTrack, media_input=OPUS_PCM)
    track: SpeechTrack = conn.adapter.audio_out
    secret_session = conn.admit(authorization, [])  # before anything else: refused clients cost nothing
    sdp, update = await _offer(request)  # raises BadOffer

    pc = _peer(state.settings)
    transceiver = pc.addTransceiver(track, direction="sendrecv")
    transceiver.setCodecPreferences(OPUS)
    call = Call(call_id, conn, pc, track, outbox, state.settings.webrtc_peer_timeout_s)
    try:
        _check_offer(sdp)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        if transceiver.mid is None:
            raise BadOffer("the offer has no audio m-line")
        if pc.sctp is None:
            raise BadOffer(f"the offer has no data channel: create {CHANNEL!r} before the offer")
    except BadOffer:
        await call.close("bad offer")
        raise
    except Exception as e:  # aiortc raises many kinds on a malformed or unusable offer
        await call.close("bad offer")
        raise BadOffer(f"the offer was refused ({type(e).__name__}: {e}); its audio must offer Opus") from None
    try:
        conn.open(secret_session, update)
    except ApiError:
        await call.close("refused")
        raise
    try:
        answer = await pc.createAnswer()
    except Exception as e:  # what the offer asked for cannot be answered
        await call.close("bad offer")
        raise BadOffer(f"the offer could not be answered ({type(e).__name__}: {e})") from None
    try:
        await pc.setLocalDescription(answer)  # gathers every candidate first
    except BaseException:
        await call.close("answer failed")
        raise
    call.spawn(call.watch())
    call.info("answered for session %s", conn.adapter.session_id)
    return Response(pc.localDescription.sdp, 201, media_type="application/sdp",
                    headers={"Location": f"/v1/realtime/calls/{call_id}"})
