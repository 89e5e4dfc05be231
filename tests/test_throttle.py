"""LogThrottle: a flood of bad peers gives a burst of lines, then one line with the count."""

from __future__ import annotations

from voicebot_pbx.pbx.throttle import LogThrottle


def test_burst_then_counted_then_a_new_window() -> None:
    now = [0.0]
    throttle = LogThrottle(interval_s=10.0, burst=3, clock=lambda: now[0])
    assert [throttle.check("bad_input") for _ in range(3)] == [0, 0, 0]
    assert [throttle.check("bad_input") for _ in range(5)] == [None] * 5
    assert throttle.check("read_timeout") == 0  # keys are counted apart
    now[0] = 10.0
    assert throttle.check("bad_input") == 5  # the next line says what was held back
    assert throttle.check("bad_input") == 0
