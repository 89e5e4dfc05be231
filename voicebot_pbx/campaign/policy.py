"""When a campaign may dial whom (pure: times are parameters).

- **Calling window**: a contact is dialled only between ``window`` start and end on the
  ``days`` of the week, in the contact's own time zone (the campaign's when the row has none).
- **Retries**: each outcome has its own list of back-off steps (``busy_retries_s`` ...):
  after the n-th unanswered attempt the next one is due ``steps[n-1]`` seconds later, and
  when the steps run out the contact is *exhausted*. An answered call is done; a call that
  was in flight when the runner stopped is *interrupted* and never redialled automatically
  (it may have reached the person).
- **Caps**: at most ``max_concurrent`` calls at once and ``calls_per_s`` new dials per second
  (``RateGate``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal
from zoneinfo import ZoneInfo

from voicebot_pbx.config import CampaignConfig

Outcome = Literal["answered", "busy", "no_answer", "failed", "machine"]
Status = Literal["pending", "dialling", "done", "exhausted", "dnc", "interrupted"]
OUTCOMES: tuple[Outcome, ...] = ("answered", "busy", "no_answer", "failed", "machine")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True, slots=True)
class Window:
    start: dt.time
    end: dt.time
    days: frozenset[int]  # date.weekday()

    @classmethod
    def from_config(cls, config: CampaignConfig) -> Window:
        start_text, _, end_text = config.window.partition("-")
        return cls(
            dt.time.fromisoformat(start_text.strip()),
            dt.time.fromisoformat(end_text.strip()),
            frozenset(DAYS.index(day) for day in config.days),
        )

    def open_at(self, now: dt.datetime, tz: ZoneInfo) -> bool:
        """Is ``now`` (aware) inside the window in ``tz``?"""
        local = now.astimezone(tz)
        return local.weekday() in self.days and self.start <= local.time() < self.end

    def next_open(self, now: dt.datetime, tz: ZoneInfo) -> dt.datetime:
        """``now`` if the window is open, else when it next opens (aware, in ``tz``)."""
        if self.open_at(now, tz):
            return now
        local = now.astimezone(tz)
        for days_ahead in range(8):
            day = local.date() + dt.timedelta(days=days_ahead)
            if day.weekday() not in self.days:
                continue
            opens = dt.datetime.combine(day, self.start, tzinfo=tz)
            if opens > local:
                return opens
        raise ValueError("the calling window has no day")  # config checks prevent this


def retry_after_s(outcome: Outcome, attempts: int, config: CampaignConfig) -> float | None:
    """Seconds until the next attempt after ``attempts`` attempts that ended in ``outcome``;
    None when the contact is finished (answered, or no retry left)."""
    steps: dict[str, tuple[float, ...]] = {
        "busy": config.busy_retries_s,
        "no_answer": config.no_answer_retries_s,
        "failed": config.failed_retries_s,
        "machine": config.machine_retries_s,
    }
    backoff = steps.get(outcome, ())
    if attempts < 1 or attempts > len(backoff):
        return None
    return backoff[attempts - 1]


class RateGate:
    """At most ``per_s`` starts per second, evenly spaced (no bursts after a pause)."""

    def __init__(self, per_s: float) -> None:
        self._gap_s = 1.0 / per_s
        self._next_s = float("-inf")

    def wait_s(self, now_s: float) -> float:
        """How long to wait before the next start may go (0: now)."""
        return max(0.0, self._next_s - now_s)

    def started(self, now_s: float) -> None:
        self._next_s = max(now_s, self._next_s) + self._gap_s
