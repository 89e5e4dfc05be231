"""A circuit breaker for one back end: after a run of failures, callers fail fast for a while
instead of each waiting out its own timeout; then one trial call decides whether to close it.

Pure (no I/O, no asyncio): the clock is injected, so tests drive it with a fake one. Not
thread-safe; one event loop uses it.

    closed --N consecutive failures--> open --reset_after_s--> half_open
    half_open --trial succeeds--> closed;  half_open --trial fails--> open (timer restarts)
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["CircuitBreaker"]


class CircuitBreaker:
    def __init__(
        self,
        failures_to_open: int = 3,
        reset_after_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failures_to_open < 1:
            raise ValueError("failures_to_open must be at least 1")
        if reset_after_s < 0:
            raise ValueError("reset_after_s must not be negative")
        self.failures_to_open = failures_to_open
        self.reset_after_s = reset_after_s
        self._clock = clock
        self._failures = 0  # consecutive, while closed
        self._opened_at: float | None = None  # None: closed
        self._trial_at: float | None = None  # when the half-open trial call was let through

    @property
    def state(self) -> str:
        """ "closed", "open" (callers are refused) or "half_open" (one trial call is, or may
        be, under way)."""
        if self._opened_at is None:
            return "closed"
        if self._trial_at is not None or self._clock() - self._opened_at >= self.reset_after_s:
            return "half_open"
        return "open"

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def allow(self) -> bool:
        """Whether a call may go ahead now. While half-open only one trial is let through; if
        its outcome is never recorded (the caller was cancelled), another is let through
        ``reset_after_s`` later, so the breaker cannot stay stuck."""
        if self._opened_at is None:
            return True
        now = self._clock()
        since = self._opened_at if self._trial_at is None else self._trial_at
        if now - since >= self.reset_after_s:
            self._trial_at = now
            return True
        return False

    def record_success(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._trial_at = None

    def record_failure(self) -> None:
        now = self._clock()
        if self._opened_at is not None:
            if self._trial_at is not None:  # the trial failed: open again, timer restarts
                self._opened_at = now
                self._trial_at = None
            # else: a call begun before the breaker opened has failed too; nothing changes
            return
        self._failures += 1
        if self._failures >= self.failures_to_open:
            self._opened_at = now
            self._trial_at = None

    def __repr__(self) -> str:
        return (
            f"CircuitBreaker(state={self.state!r}, failures={self._failures}, "
            f"failures_to_open={self.failures_to_open}, reset_after_s={self.reset_after_s})"
        )
