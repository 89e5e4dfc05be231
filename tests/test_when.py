"""Parsing spoken days and times (rasa_project/actions/when.py), and that it reads back
everything rasa_project/actions/wording.py says."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "rasa_project"))

from actions.when import parse_day, parse_time, part_of_day  # noqa: E402
from actions.wording import say_date, say_slot, say_time  # noqa: E402

MONDAY = dt.date(2026, 11, 30)
WEDNESDAY_YEAR_END = dt.date(2026, 12, 30)
FRIDAY = dt.date(2026, 12, 4)


@pytest.mark.parametrize(
    ("text", "today", "expected"),
    [
        # Relative words.
        ("today", MONDAY, dt.date(2026, 11, 30)),
        ("Tonight", MONDAY, dt.date(2026, 11, 30)),
        ("this afternoon", MONDAY, dt.date(2026, 11, 30)),
        ("tomorrow", MONDAY, dt.date(2026, 12, 1)),
        ("Tomorrow morning please", MONDAY, dt.date(2026, 12, 1)),
        ("the day after tomorrow", MONDAY, dt.date(2026, 12, 2)),
        # Weekdays: the next one strictly after today.
        ("friday", MONDAY, dt.date(2026, 12, 4)),
        ("Friday.", MONDAY, dt.date(2026, 12, 4)),
        ("next friday", MONDAY, dt.date(2026, 12, 4)),
        ("this saturday", MONDAY, dt.date(2026, 12, 5)),
        ("monday", MONDAY, dt.date(2026, 12, 7)),
        ("friday", FRIDAY, dt.date(2026, 12, 11)),
        ("today", FRIDAY, dt.date(2026, 12, 4)),
        ("friday week", MONDAY, dt.date(2026, 12, 11)),
        ("a week on friday", MONDAY, dt.date(2026, 12, 11)),
        ("friday next week", MONDAY, dt.date(2026, 12, 11)),
        ("tuesday next week", FRIDAY, dt.date(2026, 12, 8)),
        ("may i have friday", MONDAY, dt.date(2026, 12, 4)),
        # Day of the month only: the next one on or after today.
        ("the 7th", MONDAY, dt.date(2026, 12, 7)),
        ("the seventh", MONDAY, dt.date(2026, 12, 7)),
        ("on the twenty first", MONDAY, dt.date(2026, 12, 21)),
        ("7th", MONDAY, dt.date(2026, 12, 7)),
        ("the 30th", MONDAY, dt.date(2026, 11, 30)),
        ("the 31st", MONDAY, dt.date(2026, 12, 31)),
        ("monday the seventh", MONDAY, dt.date(2026, 12, 7)),
        ("tuesday the eighth", MONDAY, dt.date(2026, 12, 8)),
        # 7 December 2026 is a Monday; the next Thursday the 7th is in January.
        ("thursday the seventh", MONDAY, dt.date(2027, 1, 7)),
        # Day and month.
        ("7th of december", MONDAY, dt.date(2026, 12, 7)),
        ("December 7", MONDAY, dt.date(2026, 12, 7)),
        ("december the 7th", MONDAY, dt.date(2026, 12, 7)),
        ("7 december", MONDAY, dt.date(2026, 12, 7)),
        ("the seventh of December", MONDAY, dt.date(2026, 12, 7)),
        ("the twenty-first of december", MONDAY, dt.date(2026, 12, 21)),
        ("december twenty first", MONDAY, dt.date(2026, 12, 21)),
        ("december twenty seven", MONDAY, dt.date(2026, 12, 27)),
        ("3rd of november", MONDAY, dt.date(2027, 11, 3)),
        ("friday the fourth of december", MONDAY, dt.date(2026, 12, 4)),
        ("7th dec", MONDAY, dt.date(2026, 12, 7)),
        # With a year.
        ("the seventh of december twenty twenty seven", MONDAY, dt.date(2027, 12, 7)),
        ("7th december 2027", MONDAY, dt.date(2027, 12, 7)),
        ("december 7 2027", MONDAY, dt.date(2027, 12, 7)),
        ("the fifth of january two thousand and twenty seven", MONDAY, dt.date(2027, 1, 5)),
        # Numeric: ISO, and UK day-first slashes.
        ("2026-12-07", MONDAY, dt.date(2026, 12, 7)),
        ("7/12", MONDAY, dt.date(2026, 12, 7)),
        ("07/12/2027", MONDAY, dt.date(2027, 12, 7)),
        ("7/12/27", MONDAY, dt.date(2027, 12, 7)),
        ("1/11", MONDAY, dt.date(2027, 11, 1)),
        # Year rollover.
        ("friday", WEDNESDAY_YEAR_END, dt.date(2027, 1, 1)),
        ("thursday", WEDNESDAY_YEAR_END, dt.date(2026, 12, 31)),
        ("wednesday", WEDNESDAY_YEAR_END, dt.date(2027, 1, 6)),
        ("3rd of january", WEDNESDAY_YEAR_END, dt.date(2027, 1, 3)),
        ("the 2nd", WEDNESDAY_YEAR_END, dt.date(2027, 1, 2)),
        ("1/1", WEDNESDAY_YEAR_END, dt.date(2027, 1, 1)),
        ("day after tomorrow", WEDNESDAY_YEAR_END, dt.date(2027, 1, 1)),
        ("30th of december", WEDNESDAY_YEAR_END, dt.date(2026, 12, 30)),
        ("29th of december", WEDNESDAY_YEAR_END, dt.date(2027, 12, 29)),
        # Leap days.
        ("29th of february", dt.date(2027, 3, 1), dt.date(2028, 2, 29)),
        ("29/2", dt.date(2027, 3, 1), dt.date(2028, 2, 29)),
        ("29/2/2028", dt.date(2027, 3, 1), dt.date(2028, 2, 29)),
        ("the 29th", dt.date(2028, 2, 1), dt.date(2028, 2, 29)),
        ("the 29th", dt.date(2027, 2, 1), dt.date(2027, 3, 29)),
        # Nothing, vague or impossible.
        ("", MONDAY, None),
        ("whenever suits", MONDAY, None),
        ("next week", MONDAY, None),
        ("in december", MONDAY, None),
        ("the first available", MONDAY, None),
        ("29/2/2027", MONDAY, None),
        ("31st of february", MONDAY, None),
        ("2027-02-30", MONDAY, None),
        ("7/13", MONDAY, None),
    ],
)
def test_parse_day(text: str, today: dt.date, expected: dt.date | None) -> None:
    assert parse_day(text, today) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Digits.
        ("10:30", dt.time(10, 30)),
        ("10.30", dt.time(10, 30)),
        ("10 30", dt.time(10, 30)),
        ("10.30am", dt.time(10, 30)),
        ("10:30 a.m.", dt.time(10, 30)),
        ("10 am", dt.time(10)),
        ("10AM", dt.time(10)),
        ("2pm", dt.time(14)),
        ("2 p.m.", dt.time(14)),
        ("2:15 pm", dt.time(14, 15)),
        ("3", dt.time(15)),
        ("14:30", dt.time(14, 30)),
        ("14:30 pm", dt.time(14, 30)),
        ("08:00", dt.time(8)),
        ("02:00", dt.time(2)),
        ("00:15", dt.time(0, 15)),
        ("12:00", dt.time(12)),
        ("00:00", dt.time(0)),
        # Words.
        ("half past ten", dt.time(10, 30)),
        ("ten thirty", dt.time(10, 30)),
        ("Ten-thirty", dt.time(10, 30)),
        ("two in the afternoon", dt.time(14)),
        ("two pm", dt.time(14)),
        ("quarter to three", dt.time(14, 45)),
        ("quarter past two", dt.time(14, 15)),
        ("a quarter past nine", dt.time(9, 15)),
        ("ten past nine", dt.time(9, 10)),
        ("twenty-five past four", dt.time(16, 25)),
        ("25 to 4", dt.time(15, 35)),
        ("ten minutes past eleven", dt.time(11, 10)),
        ("nine oh seven", dt.time(9, 7)),
        ("two forty five", dt.time(14, 45)),
        ("two forty-five", dt.time(14, 45)),
        ("half two", dt.time(14, 30)),
        ("half ten", dt.time(10, 30)),
        ("noon", dt.time(12)),
        ("midday", dt.time(12)),
        ("twelve noon", dt.time(12)),
        ("midnight", dt.time(0)),
        ("half past midnight", dt.time(0, 30)),
        ("eight o'clock", dt.time(8)),
        ("8 o'clock", dt.time(8)),
        ("eight o’clock", dt.time(8)),
        # Bare hours below eight are in the afternoon; twelve is midday.
        ("two", dt.time(14)),
        ("half past three", dt.time(15, 30)),
        ("eight", dt.time(8)),
        ("seven", dt.time(19)),
        ("twelve", dt.time(12)),
        ("half past twelve", dt.time(12, 30)),
        ("quarter to twelve", dt.time(11, 45)),
        ("quarter to one", dt.time(12, 45)),
        ("quarter to eight", dt.time(7, 45)),
        # An explicit part of day wins.
        ("seven in the morning", dt.time(7)),
        ("seven am", dt.time(7)),
        ("eight in the evening", dt.time(20)),
        ("ten in the evening", dt.time(22)),
        ("six this evening", dt.time(18)),
        ("eleven tonight", dt.time(23)),
        ("half past twelve at night", dt.time(0, 30)),
        ("quarter to six in the afternoon", dt.time(17, 45)),
        ("quarter to twelve in the morning", dt.time(11, 45)),
        # Within a longer utterance: the time after "at" wins.
        ("tomorrow at 10", dt.time(10)),
        ("friday the 7th at 3", dt.time(15)),
        ("i am free at two", dt.time(14)),
        # Nothing, vague or impossible.
        ("", None),
        ("morning", None),
        ("any time in the afternoon", None),
        ("whenever suits", None),
        ("half past", None),
        ("quarter to", None),
        ("25:00", None),
        ("24:00", None),
        ("10:75", None),
        ("10:60", None),
        ("14:30 am", None),
        ("00:30 pm", None),
        ("2pm in the morning", None),
    ],
)
def test_parse_time(text: str, expected: dt.time | None) -> None:
    assert parse_time(text) == expected


@pytest.mark.parametrize(
    ("text", "default_pm_below", "expected"),
    [
        ("seven", 7, dt.time(7)),
        ("six", 7, dt.time(18)),
        ("two", 0, dt.time(2)),
        ("twelve", 0, dt.time(12)),
        ("nine", 10, dt.time(21)),
        ("nine am", 10, dt.time(9)),
    ],
)
def test_parse_time_default_pm_below(text: str, default_pm_below: int, expected: dt.time) -> None:
    assert parse_time(text, default_pm_below=default_pm_below) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("in the morning", "morning"),
        ("any time in the afternoon", "afternoon"),
        ("Mornings are best", "morning"),
        ("evening please", "evening"),
        ("tonight", "evening"),
        ("tomorrow afternoon", "afternoon"),
        ("friday", None),
        ("2pm", None),
        ("", None),
        ("morning or afternoon", None),
    ],
)
def test_part_of_day(text: str, expected: str | None) -> None:
    assert part_of_day(text) == expected


# ------------------------------------------------------------- wording <-> when round trips


def test_every_minute_round_trips() -> None:
    """Everything say_time says, parse_time reads back: 1440 minutes, no exceptions."""
    start = dt.datetime(2026, 1, 1)
    for minute in range(24 * 60):
        t = (start + dt.timedelta(minutes=minute)).time()
        spoken = say_time(t)
        assert parse_time(spoken) == t, spoken


@pytest.mark.parametrize(
    "today",
    [
        MONDAY,
        WEDNESDAY_YEAR_END,
        FRIDAY,
        dt.date(2026, 1, 1),
        dt.date(2027, 3, 1),
        dt.date(2028, 2, 28),
        dt.date(2028, 2, 29),
    ],
)
def test_every_day_round_trips(today: dt.date) -> None:
    """Everything say_date says about the next 400 days, parse_day reads back (with or
    without the year)."""
    for ahead in range(1, 401):
        d = today + dt.timedelta(days=ahead)
        spoken = say_date(d, today)
        assert parse_day(spoken, today) == d, spoken


def test_slots_round_trip() -> None:
    """A whole slot ("Friday the fourth of December at half past ten in the morning") reads
    back as both its day and its time."""
    today = MONDAY
    start = dt.datetime(2026, 11, 30, 0, 0)
    for step in range(0, 400 * 24 * 60, 997):  # every 997 minutes for 400 days
        slot = start + dt.timedelta(minutes=step)
        spoken = say_slot(slot, today)
        assert parse_day(spoken, today) == slot.date(), spoken
        assert parse_time(spoken) == slot.time(), spoken
