"""Log lines about misbehaving peers, rate-limited: a flood of bad connections must not flood
the journal. Pure (the clock is injected)."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable

__all__ = ["LogThrottle"]


class LogThrottle:
    """Per key, the first ``burst`` lines of every ``interval_s`` pass; the rest are counted,
    and the count is handed to the next line that passes (``suppressed=N``)."""

    def __init__(
        self,
        interval_s: float = 10.0,
        burst: int = 20,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval_s = interval_s
        self.burst = burst
        self._clock = clock
        self._windows: dict[Hashable, tuple[float, int, int]] = {}  # start, passed, held

    def check(self, key: Hashable) -> int | None:
        """None: drop this line. Otherwise log it, with the returned number of lines
        dropped since the last one that passed."""
        now = self._clock()
        start, passed, held = self._windows.get(key, (now, 0, 0))
        if now - start >= self.interval_s:
            start, passed = now, 0
        if passed >= self.burst:
            self._windows[key] = (start, passed, held + 1)
            return None
        self._windows[key] = (start, passed + 1, 0)
        if len(self._windows) > 1024:  # keys are reasons, not peers; a bound all the same
            self._windows.pop(next(iter(self._windows)))
        return held
