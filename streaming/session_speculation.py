"""The session's side of speculative start (streaming/speculation.py has the engine's): a pause in the user's
speech hands the engine the turn so far; the turn's commit confirms it with the same clip. Mixed into
streaming.session.Session, whose state it uses."""

from __future__ import annotations

import time

from models.defaults import INPUT_RATE, SPECULATION_PAD_MS
from streaming.session_types import AudioCommitted, ConvItem, Part, Response
from streaming.vad import SpeechPaused

__all__ = ["MIN_COMMIT_MS", "SpeculativeTurns"]

MIN_COMMIT_MS = 100  # as OpenAI: a committed buffer holds at least 100 ms of audio


class SpeculativeTurns:
    @property
    def speculative(self) -> bool:
        """Whether turns start speculatively: the session's choice, else the server's default."""
        choice = self.config.speculative_start
        if choice is not None:
            return choice
        return getattr(getattr(self.engine, "config", None), "speculative_start", False)  # a stand-in may have none

    def _turn_end(self, stop_ms: int, speech_end_ms: int) -> int:
        """Where a turn's committed audio ends: speculating, the speculation point (the speculated clip is the
        committed one); else where the detector stopped it."""
        return min(stop_ms, speech_end_ms + SPECULATION_PAD_MS) if self.speculative else stop_ms

    def _speculate(self, ev: SpeechPaused) -> None:
        """Silence began within a turn, so the engine prepares the answer to the turn so far, held until the commit."""
        td = self.config.turn_detection
        if (self._speech is None or not self.speculative or not td.create_response or self.config.kind != "realtime"
                or self.response is not None or self._next_response is not None):
            return
        item_id, start_ms, _ = self._speech
        start = max(start_ms - td.vad.prefix_padding_ms, self._buffer_start_ms)
        end = self._turn_end(ev.audio_end_ms + self._vad_origin_ms, ev.speech_end_ms + self._vad_origin_ms)
        a, b = (max(0, round((ms - self._buffer_start_ms) * INPUT_RATE / 1000)) for ms in (start, end))
        clip = self._buffer.view()[a:b].copy()
        if len(clip) < INPUT_RATE * MIN_COMMIT_MS // 1000:
            return
        r, request = self._prepare_response()
        self.handle.speculate(request, item_id, clip)
        self._spec = (item_id, start, end, r, 1000 * len(clip) // INPUT_RATE)

    def _confirm(self, item_id: str, r: Response, audio_ms: int, end_ms: int, speech_end: float) -> None:
        """The turn ended as speculated: it is committed, and its response goes out as prepared."""
        if self._overflowed:  # as in _commit_range: after refused audio, what the buffer still holds goes too
            self._buffer.clear()
            self._buffer_start_ms = round(self._written_ms)
            self._overflowed = False
        else:
            self._buffer.drop(max(0, round((end_ms - self._buffer_start_ms) * INPUT_RATE / 1000)))
            self._buffer_start_ms = end_ms  # the clip, and the rest of the silence
        item = ConvItem(item_id, "user", [Part("input_audio", transcript=None, audio_ms=audio_ms)])
        previous = self.previous_item_id()
        self.handle.confirm(item, r.item)
        self.emit(AudioCommitted(item, previous))
        if self.config.transcribe_input:
            self._transcribe(item)
        r.speech_end, r.committed = speech_end, time.perf_counter()
        r.started = r.committed
        self._begin(r)

