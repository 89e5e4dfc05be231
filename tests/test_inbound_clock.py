"""InboundClock: a call's inbound audio on wall-clock time (pure, times as numbers)."""

from __future__ import annotations

import pytest

from voicebot_pbx.speech.inbound_clock import InboundClock


def stream(clock: InboundClock, start_s: float, frames: int) -> float:
    """Frames every 20 ms from ``start_s``; returns the last arrival time."""
    at_s = start_s
    for i in range(frames):
        at_s = start_s + 0.02 * (i + 1)
        clock.on_frame(at_s, 0.02)
    return at_s


def test_nothing_is_missing_before_the_first_frame() -> None:
    clock = InboundClock()
    assert clock.due_in_s(100.0) is None and clock.missing_s(100.0) == 0.0


def test_frames_on_time_leave_nothing_to_fill() -> None:
    clock = InboundClock()
    last = stream(clock, 10.0, 50)
    assert clock.missing_s(last + 0.019) == 0.0
    assert clock.missing_s(last + 0.02 + 0.03 - 0.001) == 0.0  # within the jitter allowance
    assert clock.filled_s == 0.0


def test_a_silent_gap_is_filled_in_whole_frames_on_wall_time() -> None:
    clock = InboundClock()
    last = stream(clock, 10.0, 10)
    due = clock.due_in_s(last)
    assert due == pytest.approx(0.03 + 0.02)
    assert clock.missing_s(last + due) == pytest.approx(0.02)
    # 500 ms later: all of it but the jitter allowance, in whole frames.
    assert clock.missing_s(last + 0.5) == pytest.approx(0.5 - 0.03 - 0.02, abs=0.02)
    assert clock.stream_s == pytest.approx(0.2 + clock.filled_s)
    assert clock.filled_s == pytest.approx(0.46, abs=0.02)


def test_frames_resuming_after_a_filled_gap_restart_the_clock_from_their_arrival() -> None:
    clock = InboundClock()
    last = stream(clock, 10.0, 10)
    clock.missing_s(last + 1.0)
    # The caller speaks again 2 s after the last frame: no silence is owed for the time
    # already filled, and the next fill waits for a new gap.
    resumed = stream(clock, last + 2.0, 5)
    filled = clock.filled_s
    assert clock.missing_s(resumed + 0.04) == 0.0
    assert clock.missing_s(resumed + 0.2) > 0.0 and clock.filled_s > filled


def test_a_burst_after_a_gap_is_appended_and_never_moves_the_stream_back() -> None:
    clock = InboundClock()
    last = stream(clock, 10.0, 10)
    filled = clock.missing_s(last + 0.15)  # 150 ms stall: all but the jitter allowance
    assert filled == pytest.approx(0.12)
    for _ in range(7):  # the held frames arrive at once
        clock.on_frame(last + 0.15, 0.02)
    assert clock.stream_s == pytest.approx(0.2 + 0.12 + 0.14)
    # The stream is ahead of the wall now: the next fill needs that much more gap.
    assert clock.missing_s(last + 0.25) == 0.0


def test_a_slow_sender_is_followed_not_filled() -> None:
    clock = InboundClock()
    at_s = 10.0
    for _ in range(3000):  # 60 s of frames each 0.1 ms late: 0.3 s of drift in all
        at_s += 0.0201
        clock.on_frame(at_s, 0.02)
        assert clock.missing_s(at_s + 0.0199) == 0.0
    assert clock.filled_s == 0.0
