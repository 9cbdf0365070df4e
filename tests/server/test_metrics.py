import re
import shutil
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from server.metrics import BUILD_LABELS, Metrics
from streaming.messages import EngineStats

BUILD = {"version": "0.1.0", "model": "tiny", "decoder": "mimi", "device": "cpu"}
NAMES = {
    "lfm_audio_sessions_active", "lfm_audio_sessions", "lfm_audio_session_duration_seconds",
    "lfm_audio_time_to_first_audio_seconds", "lfm_audio_time_to_first_text_seconds", "lfm_audio_real_time_factor_ratio",
    "lfm_audio_prefill_duration_seconds", "lfm_audio_decode_step_duration_seconds", "lfm_audio_decode_batch_size",
    "lfm_audio_underruns", "lfm_audio_interruptions", "lfm_audio_input_audio_seconds",
    "lfm_audio_output_audio_seconds", "lfm_audio_errors", "lfm_audio_rejected_sessions", "lfm_audio_engine_slots_used",
    "lfm_audio_engine_slots_capacity", "lfm_audio_engine_ready", "lfm_audio_engine_prefill_queue_depth",
    "lfm_audio_engine_steps", "lfm_audio_engine_prefill_positions", "lfm_audio_engine_skipped_rows",
    "lfm_audio_engine_sessions_failed", "lfm_audio_build_info", "lfm_audio_event_loop_lag_seconds",
    "lfm_audio_playback_gap_seconds",
    "lfm_audio_error_events", "lfm_audio_speculative_starts", "lfm_audio_speculative_hits",
    "lfm_audio_speculative_drops", "lfm_audio_speculative_time_saved_seconds",
    *(f"lfm_audio_process_{n}" for n in ("cpu_seconds", "open_fds", "max_fds", "resident_memory_bytes",
                                         "virtual_memory_bytes", "start_time_seconds")),
}  # as the parser names families: counters without _total
LABELS = {"transport", "since", "type", "reason", "code", *BUILD_LABELS}  # small fixed sets: never a session id
UNITLESS = {"lfm_audio_decode_batch_size"}  # a count of sessions


@pytest.fixture
def m():
    return Metrics(BUILD)


def families(m: Metrics) -> dict:
    body, _ = m.render()
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def value(m: Metrics, sample: str, **labels) -> float | None:
    for f in families(m).values():
        for s in f.samples:
            if s.name == sample and s.labels == labels:
                return s.value
    return None


def exercised(m: Metrics) -> Metrics:
    m.session_started("websocket")
    m.session_started("webrtc")
    m.session_ended("websocket", 42.0)
    m.rejected("full")
    m.error("engine")
    m.interruption()
    m.audio_in(1.5)
    m.audio_out(2.0)
    m.response(0.9, 0.3, 0.2, 0.7, underruns=1, gap_s=0.04)
    m.update_from(EngineStats(slots_total=8, slots_used=2, steps=5, step_seconds=[0.02], batch_sizes=[2],
                              prefill_seconds=[0.05], prefill_positions=40, queue_depth=1,
                              skipped_rows=2, sessions_failed=1, alive=True))
    return m


def test_render_parses(m):
    body, content_type = exercised(m).render()
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    assert set(families(m)) == NAMES
    assert b"_created" not in body  # prometheus_client's timestamps would show up as extra gauges


def test_names_follow_conventions(m):
    for name, f in families(exercised(m)).items():
        assert re.fullmatch(r"lfm_audio_[a-z][a-z0-9_]*[a-z0-9]", name), name
        assert f.documentation, name
        assert not name.endswith("_total"), name  # only counters carry _total, on their samples
        if f.type == "counter":
            assert f.samples and {s.name for s in f.samples} == {name + "_total"}, name
        if f.type == "histogram":
            assert name.endswith(("_seconds", "_ratio")) or name in UNITLESS, name
        if re.search(r"duration|time_to|latency|(^|_)audio(_|$)", name.removeprefix("lfm_audio_")):
            assert name.endswith("_seconds"), name  # times and amounts of audio: in base units
        for s in f.samples:
            assert set(s.labels) - {"le"} <= LABELS, (name, s.labels)


def test_histogram_buckets_fit_their_range(m):
    for f in m.registry.collect():
        if f.type != "histogram":
            continue
        bounds = [float(s.labels["le"]) for s in f.samples if s.name.endswith("_bucket")]
        finite = sorted({b for b in bounds if b != float("inf")})
        assert 8 <= len(finite) <= 16, f.name  # resolution without a series explosion
    steps = [b for b in m.step._upper_bounds if b != float("inf")]
    assert any(b < 0.08 for b in steps[4:])  # a step must fit in an 80 ms frame: resolve around it
    assert min(m.ttfa.labels("commit")._upper_bounds) <= 0.1 and max(m.ttfa.labels("commit")._upper_bounds[:-1]) >= 5
    assert 1.0 in m.rtf._upper_bounds  # the real-time line


def test_histograms_move(m):
    assert value(m, "lfm_audio_time_to_first_audio_seconds_count", since="speech_end") == 0
    m.response(ttfa_speech_end_s=0.45, ttfa_commit_s=None, ttft_s=0.12, rtf=0.8)
    assert value(m, "lfm_audio_time_to_first_audio_seconds_count", since="speech_end") == 1
    assert value(m, "lfm_audio_time_to_first_audio_seconds_sum", since="speech_end") == pytest.approx(0.45)
    assert value(m, "lfm_audio_time_to_first_audio_seconds_bucket", since="speech_end", le="0.4") == 0
    assert value(m, "lfm_audio_time_to_first_audio_seconds_bucket", since="speech_end", le="0.5") == 1
    assert value(m, "lfm_audio_time_to_first_audio_seconds_count", since="commit") == 0  # None: not observed
    assert value(m, "lfm_audio_time_to_first_text_seconds_count") == 1
    assert value(m, "lfm_audio_real_time_factor_ratio_bucket", le="0.8") == 1
    assert value(m, "lfm_audio_real_time_factor_ratio_bucket", le="0.7") == 0
    m.update_from(EngineStats(step_seconds=[0.012, 0.03, 0.2], batch_sizes=[3, 3, 8], prefill_seconds=[0.3]))
    assert value(m, "lfm_audio_decode_step_duration_seconds_count") == 3
    assert value(m, "lfm_audio_decode_step_duration_seconds_bucket", le="0.02") == 1
    assert value(m, "lfm_audio_decode_batch_size_bucket", le="4.0") == 2
    assert value(m, "lfm_audio_prefill_duration_seconds_sum") == pytest.approx(0.3)
    m.update_from(EngineStats())  # drained lists: nothing new
    assert value(m, "lfm_audio_decode_step_duration_seconds_count") == 3
    m.session_ended("http", 90.0)
    assert value(m, "lfm_audio_session_duration_seconds_bucket", transport="http", le="60.0") == 0
    assert value(m, "lfm_audio_session_duration_seconds_bucket", transport="http", le="120.0") == 1


CUMULATIVE = {"skipped_rows": "lfm_audio_engine_skipped_rows_total",
              "sessions_failed": "lfm_audio_engine_sessions_failed_total", "steps": "lfm_audio_engine_steps_total",
              "prefill_positions": "lfm_audio_engine_prefill_positions_total"}


def test_update_from_adds_only_the_increase(m):
    def stats(n):
        return EngineStats(**dict.fromkeys(CUMULATIVE, n))

    m.update_from(stats(3))
    m.update_from(stats(3))  # idempotent
    assert {k: value(m, v) for k, v in CUMULATIVE.items()} == dict.fromkeys(CUMULATIVE, 3)
    m.update_from(stats(5))
    assert {k: value(m, v) for k, v in CUMULATIVE.items()} == dict.fromkeys(CUMULATIVE, 5)
    m.update_from(stats(2))  # a new engine counts from zero: all of it is new, and counters never go down
    assert {k: value(m, v) for k, v in CUMULATIVE.items()} == dict.fromkeys(CUMULATIVE, 7)
    m.update_from(stats(4))
    assert value(m, "lfm_audio_engine_steps_total") == 9


def test_underruns_and_gaps_come_from_each_responses_playout(m):
    m.response(ttfa_commit_s=0.1, underruns=2, gap_s=0.25)
    m.response(ttfa_commit_s=0.1)  # played through
    m.response(underruns=1, gap_s=0.05)
    assert value(m, "lfm_audio_underruns_total") == 3
    assert value(m, "lfm_audio_playback_gap_seconds_total") == pytest.approx(0.3)


def test_engine_gauges(m):
    m.update_from(EngineStats(slots_total=8, slots_used=3, queue_depth=2, alive=True))
    assert (value(m, "lfm_audio_engine_slots_capacity"), value(m, "lfm_audio_engine_slots_used")) == (8, 3)
    assert (value(m, "lfm_audio_engine_ready"), value(m, "lfm_audio_engine_prefill_queue_depth")) == (1, 2)
    m.update_from(EngineStats(slots_total=8, slots_used=0, alive=False))
    assert (value(m, "lfm_audio_engine_slots_used"), value(m, "lfm_audio_engine_ready")) == (0, 0)


def test_sessions(m):
    assert value(m, "lfm_audio_sessions_active", transport="webrtc") == 0  # series exist before any session
    m.session_started("webrtc")
    m.session_started("webrtc")
    m.session_started("websocket")
    m.session_ended("webrtc", 3.0)
    assert value(m, "lfm_audio_sessions_active", transport="webrtc") == 1
    assert value(m, "lfm_audio_sessions_total", transport="webrtc") == 2
    assert value(m, "lfm_audio_sessions_active", transport="websocket") == 1
    assert value(m, "lfm_audio_session_duration_seconds_count", transport="webrtc") == 1


def test_counters(m):
    m.rejected("full")
    m.rejected("full")
    m.rejected("auth")
    m.error("protocol")
    m.interruption()
    m.audio_in(1.25)
    m.audio_in(0.75)
    m.audio_in(-1.0)  # ignored: a counter cannot go down
    m.audio_out(3.5)
    assert value(m, "lfm_audio_rejected_sessions_total", reason="full") == 2
    assert value(m, "lfm_audio_rejected_sessions_total", reason="auth") == 1
    assert value(m, "lfm_audio_errors_total", type="protocol") == 1
    assert value(m, "lfm_audio_interruptions_total") == 1
    assert value(m, "lfm_audio_input_audio_seconds_total") == 2.0
    assert value(m, "lfm_audio_output_audio_seconds_total") == 3.5


def test_build_info(m):
    assert value(m, "lfm_audio_build_info", **BUILD) == 1
    with pytest.raises(ValueError, match="unknown build labels"):
        Metrics({**BUILD, "session": "x"})


def test_own_registry():
    a, b = Metrics(BUILD), Metrics(BUILD)  # a shared registry would refuse the second set of names
    a.interruption()
    assert value(a, "lfm_audio_interruptions_total") == 1 and value(b, "lfm_audio_interruptions_total") == 0


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian package: prometheus)")
def test_promtool_check_metrics(m):
    body, _ = exercised(m).render()
    out = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, timeout=30)
    assert out.returncode == 0 and not out.stdout.strip() and not out.stderr.strip(), out.stdout + out.stderr
