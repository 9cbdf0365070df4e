"""Prometheus metrics: the only module that imports prometheus_client.

The engine hands over plain `EngineStats`; sessions and routes call the methods below. Labels are small fixed
sets (transport, since, error type, refusal reason): never a session id.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from streaming.messages import EngineStats

__all__ = ["BUILD_LABELS", "TRANSPORTS", "Metrics"]

TRANSPORTS = ("websocket", "webrtc", "http")
REJECT_REASONS = ("auth", "full", "not_ready", "limit")  # what the routes pass to rejected()
ERROR_KINDS = ("session",)  # what the routes pass to error()
BUILD_LABELS = ("version", "model", "decoder", "device")
# The codes of the error events the server sends (server/realtime.py, streaming/session.py): series from the start
ERROR_CODES = ("invalid_json", "invalid_event", "invalid_event_type", "invalid_value", "event_too_large",
               "input_audio_buffer_overflow", "input_audio_buffer_commit_empty",
               "conversation_already_has_active_response", "response_cancel_not_active",
               "item_create_duplicate_item_id",
               "item_not_found", "invalid_request", "server_error")

# Buckets fit to each range. A model frame is 80 ms: a decode step must stay well under it.
LATENCY_BUCKETS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.1, 0.15, 0.25, 0.5, 1.0)
PREFILL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SESSION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
SAVED_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5)  # a turn's whole first-audio path
LOOP_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
RTF_BUCKETS = (0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0)  # above 1: slower than real time


class _Exposed:
    """The registry without the `_created` timestamps prometheus_client adds to counters and histograms: in the
    text format they become extra gauges (lfm_audio_sessions_created, ...) that double the series and mean nothing
    on a dashboard. Filtered here rather than with the library's process-wide switch."""

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry

    def collect(self):
        for family in self.registry.collect():  # fresh objects on every call: safe to edit
            family.samples = [s for s in family.samples if s.name != family.name + "_created"]
            yield family


class Metrics:
    def __init__(self, build: dict[str, str]):
        unknown = set(build) - set(BUILD_LABELS)
        if unknown:
            raise ValueError(f"unknown build labels {sorted(unknown)}: use {', '.join(BUILD_LABELS)}")
        self.registry = r = CollectorRegistry()  # our own: tests and several apps in one process stay apart
        p = "lfm_audio_"
        ProcessCollector(namespace="lfm_audio", registry=r)  # lfm_audio_process_*: memory, CPU, fds of the server
        self.sessions_active = Gauge(p + "sessions_active", "Sessions open now", ["transport"], registry=r)
        self.sessions = Counter(p + "sessions_total", "Sessions opened", ["transport"], registry=r)
        self.session_duration = Histogram(p + "session_duration_seconds", "Session lifetime", ["transport"],
                                          buckets=SESSION_BUCKETS, registry=r)
        self.ttfa = Histogram(p + "time_to_first_audio_seconds",
                              "From the end of the user's speech (VAD, includes the silence wait) or from the "
                              "commit, to the first audio sent", ["since"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram(p + "time_to_first_text_seconds", "From the commit to the first text sent",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.rtf = Histogram(p + "real_time_factor_ratio", "Generation time over audio duration, per response",
                             buckets=RTF_BUCKETS, registry=r)
        self.loop_lag = Histogram(p + "event_loop_lag_seconds", "How late the server's event loop wakes up (a "
                                  "blocked loop delays every client)", buckets=LOOP_BUCKETS, registry=r)
        self.prefill = Histogram(p + "prefill_duration_seconds", "One engine prefill chunk",
                                 buckets=PREFILL_BUCKETS, registry=r)
        self.step = Histogram(p + "decode_step_duration_seconds", "One batched decode step",
                              buckets=STEP_BUCKETS, registry=r)
        self.batch = Histogram(p + "decode_batch_size", "Sessions in one decode step", buckets=BATCH_BUCKETS,
                               registry=r)
        self.underruns = Counter(p + "underruns_total", "Times a client playing a response in real time from its "
                                 "first audio would have run dry (counted as the audio leaves the server)", registry=r)
        self.gaps = Counter(p + "playback_gap_seconds_total", "Silence those underruns put into the responses' "
                            "playback: the waits for the next audio", registry=r)
        self.interruptions = Counter(p + "interruptions_total", "Responses cut short by user speech (barge-in)",
                                     registry=r)
        self.input_audio = Counter(p + "input_audio_seconds_total", "Audio received from clients", registry=r)
        self.output_audio = Counter(p + "output_audio_seconds_total", "Audio sent to clients", registry=r)
        self.errors = Counter(p + "errors_total", "Errors by type", ["type"], registry=r)
        self.error_events = Counter(p + "error_events_total", "Error events sent to clients, by code (the "
                                    "server's own fixed set)", ["code"], registry=r)
        self.refusals = Counter(p + "rejected_sessions_total", "Sessions refused, by reason", ["reason"], registry=r)
        self.slots_used = Gauge(p + "engine_slots_used", "Engine batch slots in use", registry=r)
        self.slots = Gauge(p + "engine_slots_capacity", "Engine batch slots (max sessions)", registry=r)
        self.ready = Gauge(p + "engine_ready", "1 when the engine is alive and not stuck", registry=r)
        self.queue = Gauge(p + "engine_prefill_queue_depth", "Sessions waiting for prefill", registry=r)
        self.steps = Counter(p + "engine_steps_total", "Decode steps", registry=r)
        self.prefill_positions = Counter(p + "engine_prefill_positions_total", "Positions prefilled", registry=r)
        self.skipped = Counter(p + "engine_skipped_rows_total",
                               "Rows that sat out a step because they were far ahead of real time", registry=r)
        self.failed = Counter(p + "engine_sessions_failed_total", "Sessions failed by an engine error", registry=r)
        self.spec_starts = Counter(p + "speculative_starts_total", "Responses prepared before their turn was "
                                   "committed", registry=r)
        self.spec_hits = Counter(p + "speculative_hits_total", "Speculative starts whose turn was committed as "
                                 "speculated (their held output went out at the commit)", registry=r)
        self.spec_drops = Counter(p + "speculative_drops_total", "Speculative starts undone because speech resumed",
                                  registry=r)
        self.spec_saved = Histogram(p + "speculative_time_saved_seconds", "Per hit: how far ahead of the commit its "
                                    "work got (its first work to its first audio, or to the commit)",
                                    buckets=SAVED_BUCKETS, registry=r)
        Gauge(p + "build_info", "Build and model; always 1", list(BUILD_LABELS), registry=r).labels(
            *(build.get(k, "") for k in BUILD_LABELS)).set(1)
        # Series that exist from the start, so rate() and absent() work before the first event.
        for t in TRANSPORTS:
            self.sessions_active.labels(t)
            self.sessions.labels(t)
            self.session_duration.labels(t)
        for since in ("speech_end", "commit"):
            self.ttfa.labels(since)
        for reason in REJECT_REASONS:  # else increase() cannot see the first rejection
            self.refusals.labels(reason)
        for kind in ERROR_KINDS:
            self.errors.labels(kind)
        for code in ERROR_CODES:
            self.error_events.labels(code)
        # Engine counters are cumulative: remember the last value and add only the increase.
        self._cumulative = {"steps": self.steps, "prefill_positions": self.prefill_positions,
                            "skipped_rows": self.skipped, "sessions_failed": self.failed,
                            "speculative_starts": self.spec_starts, "speculative_hits": self.spec_hits,
                            "speculative_drops": self.spec_drops}
        self._last = dict.fromkeys(self._cumulative, 0)

    def session_started(self, transport: str) -> None:
        self.sessions.labels(transport).inc()
        self.sessions_active.labels(transport).inc()

    def session_ended(self, transport: str, duration_s: float) -> None:
        self.sessions_active.labels(transport).dec()
        self.session_duration.labels(transport).observe(duration_s)

    def rejected(self, reason: str) -> None:
        self.refusals.labels(reason).inc()

    def error(self, kind: str) -> None:
        self.errors.labels(kind).inc()

    def error_event(self, code: str) -> None:
        self.error_events.labels(code).inc()

    def interruption(self) -> None:
        self.interruptions.inc()

    def audio_in(self, seconds: float) -> None:
        if seconds > 0:
            self.input_audio.inc(seconds)

    def audio_out(self, seconds: float) -> None:
        if seconds > 0:
            self.output_audio.inc(seconds)

    def response(self, ttfa_speech_end_s: float | None = None, ttfa_commit_s: float | None = None,
                 ttft_s: float | None = None, rtf: float | None = None, underruns: int = 0,
                 gap_s: float = 0.0) -> None:
        """One finished response; None where the value does not apply (no VAD, no audio, no text)."""
        if underruns > 0:
            self.underruns.inc(underruns)
        if gap_s > 0:
            self.gaps.inc(gap_s)
        if ttfa_speech_end_s is not None:
            self.ttfa.labels("speech_end").observe(ttfa_speech_end_s)
        if ttfa_commit_s is not None:
            self.ttfa.labels("commit").observe(ttfa_commit_s)
        if ttft_s is not None:
            self.ttft.observe(ttft_s)
        if rtf is not None:
            self.rtf.observe(rtf)

    def watch_runner_process(self, pid: int) -> None:
        """lfm_audio_runner_process_*: the model's process (streaming/worker.py) holds the weights."""
        ProcessCollector(namespace="lfm_audio_runner", pid=lambda: pid, registry=self.registry)

    def event_loop_lag(self, seconds: float) -> None:
        self.loop_lag.observe(max(0.0, seconds))

    def update_from(self, stats: EngineStats) -> None:
        """Fold in a drained `Engine.stats()`: lists are new since the last drain, counters cumulative."""
        self.slots.set(stats.slots_total)
        self.slots_used.set(stats.slots_used)
        self.ready.set(1 if stats.alive else 0)
        self.queue.set(stats.queue_depth)
        for s in stats.step_seconds:
            self.step.observe(s)
        for n in stats.batch_sizes:
            self.batch.observe(n)
        for s in stats.prefill_seconds:
            self.prefill.observe(s)
        for s in stats.speculative_saved_seconds:
            self.spec_saved.observe(s)
        for name, counter in self._cumulative.items():
            value = getattr(stats, name)
            # A value below the last one means a new engine: its whole count is new.
            increase = value - self._last[name] if value >= self._last[name] else value
            if increase > 0:
                counter.inc(increase)
            self._last[name] = value

    def render(self) -> tuple[bytes, str]:
        """The exposition body and its content type (text format 0.0.4, which every Prometheus reads)."""
        return generate_latest(_Exposed(self.registry)), CONTENT_TYPE_PLAIN_0_0_4
