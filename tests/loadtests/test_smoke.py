"""A short load run against a real server it starts: the report has every field and sane values."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from loadtests.turns import METRICS

ROOT = Path(__file__).resolve().parents[2]
STATS = ("count", "mean", "p50", "p95", "p99", "max")


@pytest.mark.slow
def test_two_users_one_turn(tmp_path):
    out = tmp_path / "report"
    # 20 tokens: about 1.5 s of reply keeps the run short; the ramp is shortened for the same reason.
    cmd = [sys.executable, "-m", "loadtests", "run", "--users", "2", "--turns", "1", "--max-output-tokens", "20",
           "--ramp-s", "0.5", "--turn-timeout-s", "20", "--no-progress", "--out", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    doc = json.loads((out / "report.json").read_text())
    for name in ("report.md", "latency_vs_users.png", "underruns_vs_users.png"):
        assert (out / name).stat().st_size > 0, name
    assert "commit -> audio" in (out / "report.md").read_text()

    run = doc["runs"][0]
    s = run["summary"]
    assert (s["users"], s["sessions"], s["rejections"], s["errors"]) == (2, 2, 0, 0), run["error_messages"]
    assert (s["turns_expected"], s["turns_completed"]) == (2, 2)
    for key in METRICS:
        assert set(STATS) <= set(s[key]), key
    for key in ("vad_delay_s", "ttfa_speech_end_s", "ttfa_commit_s", "rtf"):
        assert s[key]["count"] == 2, key
    assert s["ttft_s"]["count"] <= 2  # the tiny random model may answer 20 tokens with no text at all
    assert s["cancel_s"]["count"] == 0  # no barge-in in this mix
    for turn in run["turns"]:
        t = turn["times"]
        assert t["speech_begin"] < t["speech_started"] < t["speech_end"] < t["speech_stopped"], t
        assert t["committed"] <= t["response_created"] <= t["first_audio"] <= t["response_done"], t
        # The server waits silence_duration_ms (500) of silence before it ends the turn: less is impossible.
        assert turn["vad_delay_s"] >= 0.5, turn
        assert turn["ttfa_speech_end_s"] > turn["ttfa_commit_s"] > 0, turn
        assert turn["ttft_s"] is None or turn["ttft_s"] > 0, turn
        assert turn["audio_s"] > 0 and turn["status"] in ("completed", "incomplete")
        assert turn["underruns"] >= 0 and turn["gap_s"] >= 0
    by_key = {(r["figure"], r["stat"]): r for r in run["crosscheck"]}
    for figure in ("ttfa_commit_s", "ttfa_speech_end_s", "ttft_s"):  # both sides saw the same responses
        row = by_key[figure, "count"]
        assert row["client"] == row["server"] == s[figure]["count"], row
    assert by_key["sessions", "count"]["server"] == 2
    assert by_key["rejections", "count"]["server"] == 0
