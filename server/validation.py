"""Checks on what a Realtime client sends, made where the value comes in, so that a bad value is an `error`
event naming its param and never an exception later (in a handler, or on the engine thread at the next
response). Pure functions: each returns what it found; the adapter (server.realtime) turns that into events.

The SDK's models (validated before any handler runs) check the GA fields' types; they let through what they
do not know (our `lfm_audio` extension), and numbers no model can use (2^70, 1e400 = inf, NaN).
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from models.conversation import Conversation, Item, Segment
from models.defaults import INPUT_RATE
from models.generation import Modality
from streaming.session import MIN_COMMIT_MS

__all__ = ["MAX_DEPTH", "SEED_RANGE", "Problem", "byte_size", "clip_problem", "container_problem",
           "instructions_problem", "raw_event_id", "references_as_messages", "session_update", "too_deep"]

MAX_DEPTH = 32  # JSON nesting: the deepest event the protocol defines is under 10 levels
SEED_RANGE = (0, 2 ** 64 - 1)  # what torch.Generator.manual_seed accepts
_EVENT_ID = re.compile(r'(?<!\\)"event_id"\s*:\s*"((?:[^"\\]|\\.){1,256})"')
_EDGE = 1024  # an oversized event is not parsed: its event_id is looked for in its first and last characters


class Problem(NamedTuple):
    """An `error` event's code, message and param (the arguments of server.realtime.ProtocolError)."""

    code: str
    message: str
    param: str | None


# ---- the frame
def byte_size(raw: str | bytes, limit: int) -> int:
    """The frame's size in UTF-8 bytes, counted exactly only when it could be over `limit` (a character is
    at most 4 bytes)."""
    if isinstance(raw, bytes) or len(raw) * 4 <= limit:
        return len(raw)
    return len(raw.encode("utf-8", "surrogatepass"))


def raw_event_id(raw: str | bytes) -> str | None:
    """The event_id of a frame too large to parse, where clients put it (first or last), if it is there."""
    text = raw if isinstance(raw, str) else raw.decode("utf-8", "replace")
    match = _EVENT_ID.search(text[:_EDGE]) or _EVENT_ID.search(text[-_EDGE:])
    return match.group(1) if match else None


def too_deep(value: object, limit: int = MAX_DEPTH) -> bool:
    """Whether parsed JSON nests deeper than `limit`; iterative, and it stops at the first branch too deep."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


# ---- session.update
def _real(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and (isinstance(v, int) or math.isfinite(v))


def _int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _object(v: object) -> bool:
    return v is None or isinstance(v, dict)


_SESSION_FIELDS: list[tuple[str, Callable[[object], bool], str]] = [  # parents before their children
    ("instructions", lambda v: v is None or isinstance(v, str), "a string"),
    ("output_modalities", lambda v: v is None or (isinstance(v, list) and all(isinstance(m, str) for m in v)),
     "a list of strings"),
    ("audio", _object, "an object"),
    ("audio.input", _object, "an object"),
    ("audio.output", _object, "an object"),
    ("audio.input.format", _object, "an object"),
    ("audio.output.format", _object, "an object"),
    ("audio.input.transcription", _object, "an object or null"),
    ("audio.input.turn_detection", _object, "an object or null"),
    ("audio.input.turn_detection.type", lambda v: isinstance(v, str), "a string"),
    ("audio.input.turn_detection.threshold", _real, "a number"),
    ("audio.input.turn_detection.prefix_padding_ms", lambda v: _int(v) and v >= 0, "a non-negative integer"),
    ("audio.input.turn_detection.silence_duration_ms", lambda v: _int(v) and v >= 0, "a non-negative integer"),
    ("audio.input.turn_detection.create_response", lambda v: isinstance(v, bool), "a boolean"),
    ("audio.input.turn_detection.interrupt_response", lambda v: isinstance(v, bool), "a boolean"),
    ("audio.input.turn_detection.eagerness", lambda v: isinstance(v, str), "a string"),
    ("lfm_audio", _object, "an object"),
    ("lfm_audio.audio_temperature", lambda v: v is None or _real(v), "a number"),
    ("lfm_audio.text_temperature", lambda v: v is None or _real(v), "a number"),
    ("lfm_audio.audio_top_k", lambda v: v is None or _int(v), "an integer"),
    ("lfm_audio.seed", lambda v: v is None or (_int(v) and SEED_RANGE[0] <= v <= SEED_RANGE[1]),
     f"null or an integer in [{SEED_RANGE[0]}, 2^64 - 1]"),
]


def session_update(update: object, instructions_fit: Callable[[str], Problem | None] | None = None,
                   ) -> tuple[dict, list[Problem]]:
    """A `session` object without the fields whose type or range no code could use, and a Problem for each
    field left out (the rest of the update still applies). `instructions_fit` checks the instructions
    against the context (instructions_problem)."""
    if not isinstance(update, dict):
        return {}, [] if update is None else [Problem("invalid_value", "session must be an object", "session")]
    clean, problems = copy.deepcopy(update), []
    for path, ok, what in _SESSION_FIELDS:
        *parents, key = path.split(".")
        node = clean
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or key not in node:
            continue
        if not ok(node[key]):
            problems.append(Problem("invalid_value", f"session.{path} must be {what}", f"session.{path}"))
            del node[key]
    if instructions_fit is not None and isinstance(clean.get("instructions"), str):
        problem = instructions_fit(clean["instructions"])
        if problem is not None:
            problems.append(problem)
            del clean["instructions"]
    return clean, problems


def instructions_problem(text: str, tokenizer, max_context: int) -> Problem | None:
    """Instructions that leave no room in the context for an answer (the oldest turns are dropped to make
    room, never the instructions): refused on the update, not failed at the next response's prefill."""
    conv = Conversation(tokenizer)
    conv.add(Item("instructions", "system", segments=[Segment(Modality.TEXT, tokenizer.encode(text))]))
    conv.add(Item("answer", "assistant", closed=False))
    needed = conv.length()
    if needed < max_context:
        return None
    return Problem("invalid_value", f"the instructions take {needed} of the context's {max_context} positions and "
                   "leave no room for an answer", "session.instructions")


# ---- conversation items
def clip_problem(pcm: np.ndarray, param: str) -> Problem | None:
    """A user audio item's decoded clip: as for a committed buffer, at least MIN_COMMIT_MS of audio."""
    have_ms = 1000 * len(pcm) / INPUT_RATE
    if have_ms >= MIN_COMMIT_MS:
        return None
    return Problem("invalid_value", f"audio too short: expected at least {MIN_COMMIT_MS} ms, have {have_ms:.0f} ms",
                   param)


_PLACEHOLDER = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": ""}]}


def references_as_messages(data: dict) -> dict:
    """What the SDK's type checks of an event: its ResponseCreateEvent lacks the item references that
    response.input may hold (its request params type has them), so each stands in as a message (indices stay the
    same) and the adapter checks it."""
    response = data.get("response") if data.get("type") == "response.create" else None
    entries = response.get("input") if isinstance(response, dict) else None
    if not isinstance(entries, list) or not any(
            isinstance(e, dict) and e.get("type") == "item_reference" for e in entries):
        return data
    swapped = [_PLACEHOLDER if isinstance(e, dict) and e.get("type") == "item_reference" else e for e in entries]
    return {**data, "response": {**response, "input": swapped}}


# Files sent where raw samples belong: the one format mismatch the bytes give away. (pcm16 sent as G.711, or the
# other way round, or at another rate, cannot be told from the bytes: every byte string is valid in each.)
_CONTAINERS = ((b"RIFF", 8, b"WAVE", "a WAV file"), (b"OggS", 0, b"", "an Ogg file"), (b"fLaC", 0, b"", "a FLAC file"),
               (b"ID3", 0, b"", "an MP3 file"), (b"\x1aE\xdf\xa3", 0, b"", "a WebM/Matroska file"))


def container_problem(raw: bytes, param: str) -> Problem | None:
    """Audio that starts with a file header (WAV, Ogg, FLAC, MP3, WebM) instead of raw samples."""
    for magic, at, second, what in _CONTAINERS:
        if raw.startswith(magic) and raw[at:at + len(second)] == second:
            return Problem("invalid_value", f"the audio is {what}: send raw samples in the session's "
                           "audio.input.format (audio/pcm: 16-bit little-endian mono at 24 kHz; audio/pcmu, "
                           "audio/pcma: G.711 at 8 kHz)", param)
    return None
