"""The load generator's playback clock: what counts as an underrun and how long the gap was."""

import pytest

from loadtests.player import Player


def test_audio_arriving_ahead_of_playback_never_underruns():
    p = Player()
    for k in range(10):  # 80 ms of audio every 40 ms: always ahead
        p.feed(1.0 + 0.04 * k, 0.08)
    assert (p.underruns, p.gap_s) == (0, 0.0)
    assert p.done_at() == pytest.approx(1.8)
    assert p.played_s(1.5) == pytest.approx(0.5)


def test_each_time_the_clock_catches_up_is_one_underrun_with_its_gap():
    p = Player()
    p.feed(0.0, 0.1)
    p.feed(0.25, 0.1)  # ran dry at 0.1: a 0.15 s gap
    p.feed(0.30, 0.1)  # ahead again (playback at 0.30 of 0.35)
    p.feed(0.60, 0.1)  # ran dry at 0.45: a 0.15 s gap
    assert p.underruns == 2
    assert p.gap_s == pytest.approx(0.30)
    assert p.done_at() == pytest.approx(0.70)
    assert p.played_s(0.5) == pytest.approx(0.3)  # gaps are silence, not audio played
    assert p.played_s(10.0) == pytest.approx(0.4)


def test_a_stopped_player_ignores_later_audio():
    p = Player()
    p.feed(0.0, 1.0)
    assert p.stop(0.4) == pytest.approx(0.4)
    p.feed(2.0, 1.0)
    assert (p.underruns, p.received_s, p.done_at()) == (0, 1.0, 0.4)
