"""Reading the server's /metrics for the load generator's cross-check."""

import pytest

from loadtests.prom import crosscheck, delta, histogram_quantile, parse

EXPOSITION = """\
# TYPE lfm_audio_time_to_first_audio_seconds histogram
lfm_audio_time_to_first_audio_seconds_bucket{le="0.05",since="commit"} 6.0
lfm_audio_time_to_first_audio_seconds_bucket{le="0.1",since="commit"} 8.0
lfm_audio_time_to_first_audio_seconds_bucket{le="+Inf",since="commit"} 10.0
lfm_audio_time_to_first_audio_seconds_count{since="commit"} 10.0
lfm_audio_time_to_first_audio_seconds_sum{since="commit"} 0.9
lfm_audio_time_to_first_audio_seconds_bucket{le="0.05",since="speech_end"} 0.0
lfm_audio_time_to_first_audio_seconds_bucket{le="+Inf",since="speech_end"} 0.0
lfm_audio_time_to_first_audio_seconds_count{since="speech_end"} 0.0
lfm_audio_time_to_first_audio_seconds_sum{since="speech_end"} 0.0
# TYPE lfm_audio_underruns_total counter
lfm_audio_underruns_total 3.0
# TYPE lfm_audio_playback_gap_seconds_total counter
lfm_audio_playback_gap_seconds_total 0.5
# TYPE lfm_audio_rejected_sessions_total counter
lfm_audio_rejected_sessions_total{reason="full"} 2.0
lfm_audio_rejected_sessions_total{reason="auth"} 5.0
# TYPE lfm_audio_sessions_total counter
lfm_audio_sessions_total{transport="websocket"} 4.0
lfm_audio_sessions_total{transport="webrtc"} 1.0
"""


def test_parse_picks_the_labelled_series():
    m = parse(EXPOSITION)
    assert m["ttfa_commit_s"]["count"] == 10 and m["ttfa_commit_s"]["sum"] == pytest.approx(0.9)
    assert m["ttfa_commit_s"]["buckets"][-1] == (float("inf"), 10.0)
    assert m["ttfa_speech_end_s"]["count"] == 0
    assert m["underruns"] == 3 and m["gap_s"] == 0.5
    assert m["rejections"] == 2  # only reason="full": the load generator never fails auth
    assert m["sessions"] == 5  # summed over transports
    assert m["ttft_s"]["count"] == 0  # absent from the text: empty, not an error


def test_histogram_quantile_interpolates_inside_the_bucket():
    buckets = [(0.05, 6.0), (0.1, 8.0), (float("inf"), 10.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.05 * 5 / 6)
    assert histogram_quantile(0.7, buckets) == pytest.approx(0.05 + 0.05 * 0.5)
    assert histogram_quantile(0.95, buckets) == 0.1  # in +Inf: only the last finite bound is known
    assert histogram_quantile(0.5, [(0.05, 0.0), (float("inf"), 0.0)]) is None


def test_delta_and_crosscheck_rows():
    before = parse(EXPOSITION)
    after = parse(EXPOSITION.replace("lfm_audio_underruns_total 3.0", "lfm_audio_underruns_total 7.0"))
    d = delta(after, before)
    assert d["underruns"] == 4 and d["ttfa_commit_s"]["count"] == 0
    empty = {"count": 0, "mean": None, "p50": None, "p95": None}
    client = {k: empty for k in ("ttfa_speech_end_s", "ttfa_commit_s", "ttft_s", "rtf")}
    rows = crosscheck(d, {**client, "underruns": 4, "gap_s": 0.0, "rejections": 0, "cancelled": 0, "sessions": 0})
    row = next(r for r in rows if r["figure"] == "underruns")
    assert (row["client"], row["server"]) == (4, 4)
    row = next(r for r in rows if r["figure"] == "gap_s")
    assert (row["client"], row["server"]) == (0.0, 0.0)
