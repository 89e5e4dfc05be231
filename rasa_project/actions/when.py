"""Parse appointment days and times from ASR text (Whisper/Vosk) and Rasa entities.

Input is free, lower- or mixed-case UK English: "next friday", "the 7th", "7th of
december", "7/12", "2026-12-07", "half past ten", "10.30am", "two in the afternoon",
"quarter to three", "midday". Everything :mod:`.wording` says (``say_date``,
``say_time``) parses back to the same value here.

Pure functions, standard library only, Python 3.10+.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Sequence
from typing import NamedTuple

from .wording import MONTH_NAMES, ONES, WEEKDAY_NAMES, say_number, say_ordinal

__all__ = ["parse_day", "parse_time", "part_of_day"]


# --------------------------------------------------------------------------- words


def _phrase_table(words_for: Callable[[int], str], numbers: range) -> dict[tuple[str, ...], int]:
    return {tuple(words_for(n).replace("-", " ").split()): n for n in numbers}


_CARDINALS = _phrase_table(say_number, range(0, 100))  # ("forty", "five") -> 45
_ORDINALS = _phrase_table(say_ordinal, range(1, 32))  # ("twenty", "first") -> 21
_NUMBER_WORDS = {word for phrase in _CARDINALS for word in phrase}
_OH = ("oh", "o", "zero", "0")  # "nine oh seven"

_WEEKDAYS = {name.lower(): i for i, name in enumerate(WEEKDAY_NAMES)}
_WEEKDAYS.update({"tues": 1, "weds": 2, "thurs": 3})
_MONTHS = {name.lower(): i for i, name in enumerate(MONTH_NAMES, start=1)}
_MONTHS.update(
    {
        "jan": 1,
        "feb": 2,
        "apr": 4,
        "jun": 6,
        "jul": 7,
        "aug": 8,
        "sep": 9,
        "sept": 9,
        "oct": 10,
        "nov": 11,
        "dec": 12,
    }
)
# "the first available" is not the first of the month.
_NOT_A_DAY_AFTER_FIRST = {"available", "one", "slot", "appointment", "thing", "time", "free"}

_AM_PM = re.compile(r"(?<![a-z])([ap])\.?\s?m\.?(?![a-z])")
_OCLOCK = re.compile(r"o\s*'\s*clock|o\s+clock|oclock")
_DOT_TIME = re.compile(r"(?<![\d.])(\d{1,2})[.:](\d{2})(?![\d.])")
_TOKEN = re.compile(r"\d+:\d+|\d+[a-z]*|[a-z]+")
_DIGIT_DAY = re.compile(r"(\d{1,2})(st|nd|rd|th)?")
_ISO_DATE = re.compile(r"(?<!\d)(\d{4})-(\d{1,2})-(\d{1,2})(?!\d)")
_SLASH_DATE = re.compile(r"(?<![\d/])(\d{1,2})/(\d{1,2})(?:/(\d{4}|\d{2}))?(?![\d/])")


def _tokens(text: str) -> list[str]:
    """Lower-case word/number tokens; "10.30am" -> ["10:30", "am"], "o'clock" ->
    "oclock", "twenty-five" -> ["twenty", "five"]."""
    t = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    t = _OCLOCK.sub(" oclock ", t)
    t = _AM_PM.sub(r" \1m ", t)
    t = _DOT_TIME.sub(r" \1:\2 ", t)
    return _TOKEN.findall(t)


def _phrase_at(
    tokens: Sequence[str], i: int, table: dict[tuple[str, ...], int], low: int, high: int
) -> tuple[int, int] | None:
    """The longest number phrase from ``table`` at ``i`` within low..high: (value, end)."""
    for length in (2, 1):
        value = table.get(tuple(tokens[i : i + length]))
        if value is not None and i + length <= len(tokens) and low <= value <= high:
            return value, i + length
    return None


def _weekday(token: str) -> int | None:
    if token in _WEEKDAYS:
        return _WEEKDAYS[token]
    if token.endswith("s") and token[:-1] in _WEEKDAYS:  # "mondays"
        return _WEEKDAYS[token[:-1]]
    return None


# --------------------------------------------------------------------------- days


class _DayNumber(NamedTuple):
    value: int
    ordinal: bool
    suffixed: bool  # written with digits and st/nd/rd/th
    end: int


def _day_number_at(tokens: Sequence[str], i: int) -> _DayNumber | None:
    """A day of the month at ``i``: "7", "7th", "seventh", "twenty first", "twenty"."""
    if i >= len(tokens):
        return None
    match = _DIGIT_DAY.fullmatch(tokens[i])
    if match:
        value = int(match.group(1))
        if 1 <= value <= 31:
            suffixed = match.group(2) is not None
            return _DayNumber(value, suffixed, suffixed, i + 1)
        return None
    found = _phrase_at(tokens, i, _ORDINALS, 1, 31)
    if found:
        return _DayNumber(found[0], True, False, found[1])
    found = _phrase_at(tokens, i, _CARDINALS, 1, 31)
    if found:
        return _DayNumber(found[0], False, False, found[1])
    return None


def _year_at(tokens: Sequence[str], i: int, today: datetime.date) -> int | None:
    """A year at ``i``: "2027", "twenty twenty seven", "two thousand and five",
    "nineteen oh five"; only years near ``today`` count (else it is probably a time)."""
    if i >= len(tokens):
        return None
    year: int | None = None
    if re.fullmatch(r"\d{4}", tokens[i]):
        year = int(tokens[i])
    elif tokens[i : i + 2] == ["two", "thousand"]:
        year = 2000
        j = i + 2
        if j < len(tokens) and tokens[j] == "and":
            j += 1
        rest = _phrase_at(tokens, j, _CARDINALS, 1, 99)
        if rest:
            year += rest[0]
    else:
        high = _phrase_at(tokens, i, _CARDINALS, 10, 99)
        if high:
            j = high[1]
            if j < len(tokens) and tokens[j] == "hundred":
                year = high[0] * 100
            elif j < len(tokens) and tokens[j] in _OH:
                low = _phrase_at(tokens, j + 1, _CARDINALS, 1, 9)
                year = high[0] * 100 + low[0] if low else None
            else:
                low = _phrase_at(tokens, j, _CARDINALS, 10, 99)
                year = high[0] * 100 + low[0] if low else None
    if year is None or not today.year - 1 <= year <= today.year + 10:
        return None
    return year


def _make_date(year: int, month: int, day: int) -> datetime.date | None:
    try:
        return datetime.date(year, month, day)
    except ValueError:
        return None


def _next_occurrence(month: int, day: int, today: datetime.date) -> datetime.date | None:
    """The first ``day``/``month`` on or after today (29 February: the next leap year)."""
    for year in range(today.year, today.year + 9):
        found = _make_date(year, month, day)
        if found is not None and found >= today:
            return found
    return None


def _next_day_of_month(day: int, today: datetime.date, weekday: int | None) -> datetime.date | None:
    """The first date on or after today with this day of the month; with a weekday
    ("monday the seventh"), the first such date within a year that falls on it, else the
    first date."""
    year, month = today.year, today.month
    first: datetime.date | None = None
    seen = 0
    while seen < 12:
        found = _make_date(year, month, day)
        if found is not None and found >= today:
            seen += 1
            if weekday is None or found.weekday() == weekday:
                return found
            first = first or found
        month += 1
        if month > 12:
            year, month = year + 1, 1
        if year > today.year + 3:
            break
    return first


class _Vague(Exception):
    """A month without a day ("in december"): the text names no single day."""


def _month_date(tokens: Sequence[str], today: datetime.date) -> tuple[bool, datetime.date | None]:
    """ "7th of december", "december the 7th", "the seventh of december twenty
    twenty seven", "december 7 2027". (False, None) when there is no month with a day;
    (True, None) for an impossible date ("31st of february")."""
    for mi, token in enumerate(tokens):
        month = _MONTHS.get(token)
        if month is None:
            continue
        day: int | None = None
        year_from = mi + 1
        for i in range(max(0, mi - 4), mi):
            found = _day_number_at(tokens, i)
            if found is None:
                continue
            if found.end == mi or (found.end + 1 == mi and tokens[found.end] == "of"):
                day = found.value
                break
        if day is None:
            j = mi + 1
            if j < len(tokens) and tokens[j] == "the":
                j += 1
            found = _day_number_at(tokens, j)
            if found is not None:
                day, year_from = found.value, found.end
        if day is None:
            if token == "may":  # "may i have friday"
                continue
            raise _Vague(token)
        year = _year_at(tokens, year_from, today)
        if year is None:
            return True, _next_occurrence(month, day, today)
        return True, _make_date(year, month, day)
    return False, None


def _day_of_month_only(tokens: Sequence[str]) -> int | None:
    """ "the 7th", "monday the seventh", "on the 21st", "7th"."""
    for i in range(len(tokens)):
        found = _day_number_at(tokens, i)
        if found is None:
            continue
        prev = tokens[i - 1] if i else ""
        after_weekday = _weekday(prev) is not None or prev == "on"
        if found.suffixed or prev == "the" or (found.ordinal and after_weekday):
            nxt = tokens[found.end] if found.end < len(tokens) else ""
            if found.value == 1 and found.ordinal and nxt in _NOT_A_DAY_AFTER_FIRST:
                continue
            return found.value
    return None


def parse_day(text: str, today: datetime.date) -> datetime.date | None:
    """The day a caller means, or None.

    - "today"/"tonight", "tomorrow", "day after tomorrow", "yesterday";
    - "2026-12-07"; "7/12" and "7/12/2026" (UK: day first);
    - "7th of december", "december 7", "the seventh of december twenty twenty seven" —
      without a year: the next occurrence on or after today;
    - "the 7th", "monday the seventh" — the next 7th on or after today (with a weekday:
      the next 7th that is that weekday, within a year);
    - "friday", "this friday", "next friday" — the next Friday strictly after today
      (said on a Friday: a week today); "friday week"/"a week on friday": seven days
      later still; "friday next week": Friday of next calendar week (Monday to Sunday);
    - "this morning"/"this afternoon"/"this evening" alone: today.
    A month without a day ("in december") and unparseable text give None."""
    if isinstance(today, datetime.datetime):
        today = today.date()
    lowered = text.lower()
    iso = _ISO_DATE.search(lowered)
    if iso:
        return _make_date(int(iso.group(1)), int(iso.group(2)), int(iso.group(3)))
    slash = _SLASH_DATE.search(lowered)
    if slash:
        day, month = int(slash.group(1)), int(slash.group(2))
        if slash.group(3) is None:
            return _next_occurrence(month, day, today) if 1 <= month <= 12 else None
        year = int(slash.group(3))
        return _make_date(year + 2000 if year < 100 else year, month, day)

    tokens = _tokens(lowered)
    joined = f" {' '.join(tokens)} "
    one_day = datetime.timedelta(days=1)
    if " day after tomorrow " in joined:
        return today + 2 * one_day
    if " tomorrow " in joined or " tomorrows " in joined:
        return today + one_day
    if " today " in joined or " todays " in joined or " tonight " in joined:
        return today
    if " yesterday " in joined:
        return today - one_day

    try:
        matched, found = _month_date(tokens, today)
    except _Vague:
        return None
    if matched:
        return found

    weekday = next((w for w in map(_weekday, tokens) if w is not None), None)
    day_of_month = _day_of_month_only(tokens)
    if day_of_month is not None:
        return _next_day_of_month(day_of_month, today, weekday)
    if weekday is not None:
        if " next week " in joined:
            monday = today - today.weekday() * one_day + 7 * one_day
            return monday + weekday * one_day
        ahead = (weekday - today.weekday() - 1) % 7 + 1
        result = today + ahead * one_day
        if "week" in tokens and " next week " not in joined:  # "friday week"
            result += 7 * one_day
        return result
    if re.search(r" this (morning|afternoon|evening) ", joined):
        return today
    return None


# --------------------------------------------------------------------------- times


_HOUR_WORDS = {ONES[n]: n for n in range(1, 13)}
_PAST = {"past", "after"}
_TO = {"to", "till", "til", "before"}
_MINUTE_WORDS = {"minute", "minutes", "mins", "min"}


class _Hour(NamedTuple):
    value: int  # 0..23 as written (1..12 for words)
    kind: str  # "word", "digits", "digits0" (leading zero: 24-hour), "midday", "midnight"
    end: int


class _Reading(NamedTuple):
    hour: _Hour
    minutes: int  # past the hour, or before it for "to"
    to: bool


def _hour_at(tokens: Sequence[str], i: int) -> _Hour | None:
    if i >= len(tokens):
        return None
    token = tokens[i]
    if token in _HOUR_WORDS:
        return _Hour(_HOUR_WORDS[token], "word", i + 1)
    if token in ("midday", "noon"):
        return _Hour(12, "midday", i + 1)
    if token == "midnight":
        return _Hour(0, "midnight", i + 1)
    if re.fullmatch(r"\d{1,2}", token):
        kind = "digits0" if len(token) == 2 and token[0] == "0" else "digits"
        return _Hour(int(token), kind, i + 1)
    return None


def _minutes_after_hour(tokens: Sequence[str], i: int) -> tuple[int, int] | None:
    """ "oh seven", "forty five", "thirty", "05", "45" after an hour: (minutes, end)."""
    if i >= len(tokens):
        return None
    if tokens[i] in _OH:
        found = _phrase_at(tokens, i + 1, _CARDINALS, 1, 9)
        if found:
            return found
        if i + 1 < len(tokens) and re.fullmatch(r"[1-9]", tokens[i + 1]):
            return int(tokens[i + 1]), i + 2
        return None
    if re.fullmatch(r"\d{2}", tokens[i]):
        return int(tokens[i]), i + 1  # validated later (must be 0..59)
    return _phrase_at(tokens, i, _CARDINALS, 10, 59)


def _reading_at(tokens: Sequence[str], i: int) -> _Reading | None:
    """A clock reading starting at token ``i``."""
    token = tokens[i]
    nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
    if token in ("half", "quarter"):
        minutes = 30 if token == "half" else 15
        if nxt in _PAST or (token == "quarter" and nxt in _TO):
            hour = _hour_at(tokens, i + 2)
            return _Reading(hour, minutes, nxt in _TO) if hour else None
        if token == "half":  # British "half two" = 2:30
            hour = _hour_at(tokens, i + 1)
            return _Reading(hour, 30, False) if hour else None
        return None
    # "ten past nine", "25 to 4", "seven minutes past three"
    before = _phrase_at(tokens, i, _CARDINALS, 1, 59)
    if before is None and re.fullmatch(r"\d{1,2}", token):
        before = (int(token), i + 1)
    if before is not None:
        j = before[1]
        if j < len(tokens) and tokens[j] in _MINUTE_WORDS:
            j += 1
        if j < len(tokens) and tokens[j] in _PAST | _TO:
            hour = _hour_at(tokens, j + 1)
            if hour is not None:
                return _Reading(hour, before[0], tokens[j] in _TO)
    # "10:30"
    if re.fullmatch(r"\d+:\d+", token):
        hour_text, minute_text = token.split(":")
        if len(minute_text) != 2:
            return None
        kind = "digits0" if len(hour_text) == 2 and hour_text[0] == "0" else "digits"
        return _Reading(_Hour(int(hour_text), kind, i + 1), int(minute_text), False)
    # "eight o'clock", "ten thirty", "nine oh seven", "two", "10"
    hour = _hour_at(tokens, i)
    if hour is None:
        return None
    if hour.end < len(tokens) and tokens[hour.end] == "oclock":
        return _Reading(hour, 0, False)
    after = _minutes_after_hour(tokens, hour.end)
    return _Reading(hour, after[0] if after else 0, False)


def _period(tokens: Sequence[str]) -> str | None:
    """ "am", "pm" or "night" from am/pm/morning/afternoon/evening/tonight words; "both"
    when they contradict each other."""
    found: set[str] = set()
    for k, token in enumerate(tokens):
        prev = tokens[k - 1] if k else ""
        if token == "am":
            # Only after a time: "i am free at two" is not two in the morning.
            if prev in _NUMBER_WORDS or prev == "oclock" or prev[:1].isdigit():
                found.add("am")
        elif token in ("pm", "afternoon", "afternoons", "evening", "evenings", "noon", "midday"):
            found.add("pm")
        elif token in ("morning", "mornings"):
            found.add("am")
        elif token in ("tonight", "night", "midnight"):
            found.add("night")
    if {"am", "pm"} <= found:
        return "both"
    if "night" in found and len(found) > 1:
        found.discard("night")  # "eleven tonight in the evening", "two in the morning"
    return next(iter(found)) if found else None


def _resolve(reading: _Reading, period: str | None, default_pm_below: int) -> datetime.time | None:
    hour, minutes = reading.hour, reading.minutes
    if not 0 <= minutes <= 59 or (reading.to and minutes == 0):
        return None
    offset = -minutes if reading.to else minutes
    if hour.kind == "midday":
        total = 12 * 60 + offset
    elif hour.kind == "midnight":
        total = 24 * 60 + offset
    elif hour.value > 23:
        return None
    elif hour.value >= 13 or hour.value == 0:  # 24-hour clock: "14:30", "00:15"
        if (period == "am" and hour.value >= 13) or (period == "pm" and hour.value == 0):
            return None
        total = hour.value * 60 + offset
    elif hour.kind == "digits0" and period is None:  # "08:00"
        total = hour.value * 60 + offset
    else:
        on_clock = ((hour.value % 12) * 60 + offset) % (12 * 60)  # 0..719
        if period == "am":
            pm = False
        elif period == "pm":
            pm = True
        elif period == "night":
            pm = on_clock >= 5 * 60  # "twelve thirty at night", "eleven tonight"
        elif reading.to and hour.value == 12:
            pm = False  # "quarter to twelve" = 11:45
        else:
            pm = hour.value == 12 or hour.value < default_pm_below
        total = on_clock + (12 * 60 if pm else 0)
    total %= 24 * 60
    return datetime.time(total // 60, total % 60)


def parse_time(text: str, default_pm_below: int = 8) -> datetime.time | None:
    """The clock time a caller means, or None.

    Digits and words both work: "10:30", "10.30", "10 30", "ten thirty", "nine oh seven",
    "half past ten", "half ten" (10:30), "quarter to three", "twenty five past four",
    "eight o'clock", "10 am", "2pm", "two in the afternoon", "noon"/"midday" (12:00),
    "midnight" (00:00), "half past twelve at night" (00:30).

    Without am/pm or a part of day, an hour below ``default_pm_below`` means the
    afternoon ("two" -> 14:00, "half past three" -> 15:30, "eight" -> 08:00), twelve
    means midday; for "to" readings the named hour decides ("quarter to eight" ->
    07:45, "quarter to one" -> 12:45). "am"/"pm", "in the morning", "in the afternoon",
    "in the evening", "tonight", "at night" win; the part of day applies to the
    resulting time ("quarter to twelve in the morning" -> 11:45). A 24-hour reading
    ("14:30", "08:00", "00:15") is taken as is. A reading after "at" is preferred.
    Contradictions ("2pm in the morning"), minutes outside 0..59 ("10:75"), hours
    past 23 ("25:00") and no hour at all ("half past", "morning") give None."""
    tokens = _tokens(text)
    period = _period(tokens)
    if period == "both":
        return None
    order = list(range(len(tokens)))
    if "at" in tokens:
        start = tokens.index("at") + 1
        order = order[start:] + order[:start]
    for i in order:
        reading = _reading_at(tokens, i)
        if reading is not None:
            return _resolve(reading, period, default_pm_below)
    return None


_PARTS = {
    "morning": "morning",
    "mornings": "morning",
    "afternoon": "afternoon",
    "afternoons": "afternoon",
    "evening": "evening",
    "evenings": "evening",
    "tonight": "evening",
}


def part_of_day(text: str) -> str | None:
    """ "morning", "afternoon" or "evening" when the text names one part of day ("in the
    morning", "any time in the afternoon", "mornings", "tonight" -> "evening"); None
    when it names none, or more than one ("morning or afternoon")."""
    parts = {_PARTS[token] for token in _tokens(text) if token in _PARTS}
    return parts.pop() if len(parts) == 1 else None
