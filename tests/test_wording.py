"""Speakable wording for the Rasa actions (rasa_project/actions/wording.py)."""

from __future__ import annotations

import datetime as dt
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "rasa_project"))

from actions.wording import (  # noqa: E402
    read_back_account,
    say_account_number,
    say_balance,
    say_date,
    say_digits,
    say_duration_until,
    say_fix_estimate,
    say_money,
    say_number,
    say_ordinal,
    say_postcode,
    say_slot,
    say_slots,
    say_time,
    say_year,
)

# Piper must be able to read every word: letters, spaces, hyphens, commas, full stops and
# the apostrophe of "o'clock" only.
SPEAKABLE = re.compile(r"[A-Za-z ,.'-]+")


@pytest.mark.parametrize(
    ("n", "words"),
    [
        (0, "zero"),
        (1, "one"),
        (13, "thirteen"),
        (20, "twenty"),
        (21, "twenty-one"),
        (99, "ninety-nine"),
        (100, "one hundred"),
        (101, "one hundred and one"),
        (110, "one hundred and ten"),
        (999, "nine hundred and ninety-nine"),
        (1000, "one thousand"),
        (1005, "one thousand and five"),
        (1050, "one thousand and fifty"),
        (1100, "one thousand, one hundred"),
        (12345, "twelve thousand, three hundred and forty-five"),
        (100000, "one hundred thousand"),
        (1_000_000, "one million"),
        (1_000_005, "one million and five"),
        (2_005_000, "two million, five thousand"),
        (
            999_999_999,
            "nine hundred and ninety-nine million, nine hundred and ninety-nine thousand, "
            "nine hundred and ninety-nine",
        ),
        (-7, "minus seven"),
    ],
)
def test_say_number(n: int, words: str) -> None:
    assert say_number(n) == words


def test_say_number_out_of_range() -> None:
    with pytest.raises(ValueError):
        say_number(1_000_000_000)


@pytest.mark.parametrize(
    ("n", "words"),
    [
        (1, "first"),
        (2, "second"),
        (3, "third"),
        (4, "fourth"),
        (5, "fifth"),
        (8, "eighth"),
        (9, "ninth"),
        (11, "eleventh"),
        (12, "twelfth"),
        (20, "twentieth"),
        (21, "twenty-first"),
        (22, "twenty-second"),
        (23, "twenty-third"),
        (30, "thirtieth"),
        (31, "thirty-first"),
        (100, "one hundredth"),
        (101, "one hundred and first"),
    ],
)
def test_say_ordinal(n: int, words: str) -> None:
    assert say_ordinal(n) == words


@pytest.mark.parametrize(
    ("year", "words"),
    [
        (2027, "twenty twenty-seven"),
        (2010, "twenty ten"),
        (2000, "two thousand"),
        (2005, "two thousand and five"),
        (1905, "nineteen oh five"),
        (1900, "nineteen hundred"),
    ],
)
def test_say_year(year: int, words: str) -> None:
    assert say_year(year) == words


@pytest.mark.parametrize(
    ("pence", "words"),
    [
        (4215, "forty-two pounds and fifteen pence"),
        (100, "one pound"),
        (200, "two pounds"),
        (5, "five pence"),
        (1, "one penny"),
        (101, "one pound and one penny"),
        (199, "one pound and ninety-nine pence"),
        (0, "zero pounds"),
        (100000, "one thousand pounds"),
        (400000, "four thousand pounds"),
        (
            1234567,
            "twelve thousand, three hundred and forty-five pounds and sixty-seven pence",
        ),
        (-4215, "forty-two pounds and fifteen pence"),
    ],
)
def test_say_money(pence: int, words: str) -> None:
    assert say_money(pence) == words


@pytest.mark.parametrize(
    ("pence", "sentence"),
    [
        (4215, "Your balance is forty-two pounds and fifteen pence."),
        (1, "Your balance is one penny."),
        (-1200, "Your account is in credit by twelve pounds."),
        (-101, "Your account is in credit by one pound and one penny."),
        (0, "Your account is fully paid up, with nothing to pay."),
    ],
)
def test_say_balance(pence: int, sentence: str) -> None:
    assert say_balance(pence) == sentence


TODAY = dt.date(2026, 11, 30)  # a Monday


@pytest.mark.parametrize(
    ("d", "today", "words"),
    [
        (TODAY, TODAY, "today"),
        (dt.date(2026, 12, 1), TODAY, "tomorrow"),
        (dt.date(2026, 11, 29), TODAY, "yesterday"),
        (dt.date(2026, 12, 4), TODAY, "Friday the fourth of December"),
        (dt.date(2026, 12, 21), TODAY, "Monday the twenty-first of December"),
        (dt.date(2026, 12, 31), TODAY, "Thursday the thirty-first of December"),
        # Next year: the year is said.
        (
            dt.date(2027, 1, 1),
            dt.date(2026, 12, 30),
            "Friday the first of January twenty twenty-seven",
        ),
        # Same year but more than 300 days away.
        (
            dt.date(2026, 12, 1),
            dt.date(2026, 1, 2),
            "Tuesday the first of December twenty twenty-six",
        ),
        (dt.date(2026, 10, 29), dt.date(2026, 1, 2), "Thursday the twenty-ninth of October"),
        # Leap day.
        (dt.date(2028, 2, 29), dt.date(2028, 2, 1), "Tuesday the twenty-ninth of February"),
        # A datetime works as a date.
        (dt.datetime(2026, 12, 4, 9, 30), TODAY, "Friday the fourth of December"),
    ],
)
def test_say_date(d: dt.date, today: dt.date, words: str) -> None:
    assert say_date(d, today) == words


@pytest.mark.parametrize(
    ("hour", "minute", "words"),
    [
        (8, 0, "eight o'clock in the morning"),
        (8, 30, "half past eight in the morning"),
        (10, 30, "half past ten in the morning"),
        (9, 10, "ten past nine in the morning"),
        (9, 20, "twenty past nine in the morning"),
        (9, 25, "twenty-five past nine in the morning"),
        (9, 7, "nine oh seven in the morning"),
        (9, 35, "twenty-five to ten in the morning"),
        (11, 45, "quarter to twelve in the morning"),
        (12, 0, "midday"),
        (12, 30, "half past twelve"),
        (12, 45, "quarter to one"),
        (14, 0, "two o'clock in the afternoon"),
        (14, 15, "quarter past two in the afternoon"),
        (14, 47, "two forty-seven in the afternoon"),
        (17, 45, "quarter to six in the afternoon"),
        (17, 55, "five to six in the afternoon"),
        (18, 0, "six o'clock in the evening"),
        (23, 45, "quarter to twelve in the evening"),
        (0, 0, "midnight"),
        (0, 30, "half past twelve at night"),
        (6, 5, "five past six in the morning"),
    ],
)
def test_say_time(hour: int, minute: int, words: str) -> None:
    assert say_time(dt.time(hour, minute)) == words


def test_say_time_ignores_seconds() -> None:
    assert say_time(dt.time(14, 0, 59)) == "two o'clock in the afternoon"


def test_say_slot() -> None:
    assert (
        say_slot(dt.datetime(2026, 12, 4, 10, 30), TODAY)
        == "Friday the fourth of December at half past ten in the morning"
    )
    assert say_slot(dt.datetime(2026, 12, 1, 14), TODAY) == (
        "tomorrow at two o'clock in the afternoon"
    )
    assert say_slot(dt.datetime(2026, 12, 1, 12), TODAY) == "tomorrow at midday"


@pytest.mark.parametrize(
    ("starts", "words"),
    [
        ([], ""),
        ([dt.datetime(2026, 12, 1, 8)], "tomorrow at eight o'clock in the morning"),
        (
            [dt.datetime(2026, 12, 1, 8), dt.datetime(2026, 12, 1, 8, 30)],
            "tomorrow at eight o'clock in the morning or half past eight in the morning",
        ),
        (
            [
                dt.datetime(2026, 12, 1, 8),
                dt.datetime(2026, 12, 1, 8, 30),
                dt.datetime(2026, 12, 1, 9),
            ],
            "tomorrow at eight o'clock in the morning, half past eight in the morning, "
            "or nine o'clock in the morning",
        ),
        (
            [
                dt.datetime(2026, 12, 1, 8),
                dt.datetime(2026, 12, 4, 14),
                dt.datetime(2026, 12, 4, 15, 30),
            ],
            "tomorrow at eight o'clock in the morning, Friday the fourth of December at two "
            "o'clock in the afternoon, or half past three in the afternoon",
        ),
    ],
)
def test_say_slots(starts: list[dt.datetime], words: str) -> None:
    assert say_slots(starts, TODAY) == words


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("12345678", "1 2 3 4 5 6 7 8"),
        ("5678", "5 6 7 8"),
        ("ab-12 3", "A B 1 2 3"),
        ("", ""),
    ],
)
def test_say_digits(text: str, words: str) -> None:
    assert say_digits(text) == words


@pytest.mark.parametrize(
    ("postcode", "words"),
    [
        ("NW3 2QG", "N W 3, 2 Q G"),
        ("nw32qg", "N W 3, 2 Q G"),
        ("SW1A 1AA", "S W 1 A, 1 A A"),
        ("M1 1AE", "M 1, 1 A E"),
        ("B1", "B 1"),
    ],
)
def test_say_postcode(postcode: str, words: str) -> None:
    assert say_postcode(postcode) == words


NOW = dt.datetime(2026, 11, 30, 15, 10)  # Monday 15:10


@pytest.mark.parametrize(
    ("delta", "words"),
    [
        (dt.timedelta(minutes=-5), "shortly"),
        (dt.timedelta(seconds=30), "in about a minute"),
        (dt.timedelta(minutes=7), "in about seven minutes"),
        (dt.timedelta(minutes=44), "in about forty-five minutes"),
        (dt.timedelta(minutes=47), "in about forty-five minutes"),
        (dt.timedelta(minutes=58), "in about an hour"),
        (dt.timedelta(minutes=95), "in about an hour and a half"),
        (dt.timedelta(hours=2), "in about two hours"),
        (dt.timedelta(hours=2, minutes=20), "in about two and a half hours"),
        (dt.timedelta(days=3, hours=1), "in about three days"),
    ],
)
def test_say_duration_until(delta: dt.timedelta, words: str) -> None:
    assert say_duration_until(NOW + delta, NOW) == words


@pytest.mark.parametrize(
    ("fix", "sentence"),
    [
        (
            dt.datetime(2026, 11, 30, 18, 20),
            "We expect power back by about half past six this evening.",
        ),
        (
            dt.datetime(2026, 11, 30, 18, 30),
            "We expect power back by about half past six this evening.",
        ),
        (
            dt.datetime(2026, 11, 30, 16, 0, 1),
            "We expect power back by about quarter past four this afternoon.",
        ),
        (
            dt.datetime(2026, 11, 30, 22, 40),
            "We expect power back by about quarter to eleven tonight.",
        ),
        (
            dt.datetime(2026, 12, 1, 7, 50),
            "We expect power back by about eight o'clock tomorrow morning.",
        ),
        (dt.datetime(2026, 12, 1, 0, 0), "We expect power back by about midnight tonight."),
        (
            dt.datetime(2026, 12, 1, 1, 20),
            "We expect power back by about half past one tonight.",
        ),
        (dt.datetime(2026, 12, 1, 11, 50), "We expect power back by about midday tomorrow."),
        (
            dt.datetime(2026, 12, 1, 19, 0),
            "We expect power back by about seven o'clock tomorrow evening.",
        ),
        (
            dt.datetime(2026, 12, 2, 14, 0),
            "We expect power back by about two o'clock in the afternoon on Wednesday the "
            "second of December.",
        ),
        (
            dt.datetime(2026, 11, 30, 15, 10),
            "Engineers are working on it and power should be back shortly.",
        ),
        (
            dt.datetime(2026, 11, 30, 9, 0),
            "Engineers are working on it and power should be back shortly.",
        ),
    ],
)
def test_say_fix_estimate(fix: dt.datetime, sentence: str) -> None:
    assert say_fix_estimate(fix, NOW) == sentence


def test_say_fix_estimate_time_zones() -> None:
    london = dt.timezone(dt.timedelta(0))
    paris = dt.timezone(dt.timedelta(hours=1))
    now = dt.datetime(2026, 11, 30, 15, 10, tzinfo=london)
    fix = dt.datetime(2026, 11, 30, 19, 30, tzinfo=paris)  # 18:30 in London
    assert say_fix_estimate(fix, now) == (
        "We expect power back by about half past six this evening."
    )


def test_everything_is_speakable() -> None:
    """No "£", "/", ":" or figures (except where a lone digit is read out)."""
    texts = [say_balance(p) for p in range(-100_000, 100_000, 37)]
    texts += [say_time(dt.time(h, m)) for h in range(24) for m in range(60)]
    texts += [say_date(TODAY + dt.timedelta(days=k), TODAY) for k in range(-5, 800)]
    texts += [say_fix_estimate(NOW + dt.timedelta(minutes=k), NOW) for k in range(-30, 5000, 7)]
    texts += [say_duration_until(NOW + dt.timedelta(minutes=k), NOW) for k in range(-30, 5000, 7)]
    for text in texts:
        assert SPEAKABLE.fullmatch(text), text


def test_an_account_number_is_read_back_in_two_groups() -> None:
    assert say_account_number("55876993") == "5 5 8 7, 6 9 9 3"
    assert say_account_number("123") == "1 2 3"  # too short to group
    assert read_back_account("12345678") == "That's account number 1 2 3 4, 5 6 7 8."
