"""Speakable wording for the Northwind Energy phone bot (UK English).

Everything returned here is read out by Piper, so money, numbers, dates and times are
spelt out in words and no symbols ("£", "/", ":") are used. Only :func:`say_digits` and
:func:`say_postcode` leave single digits as figures: Piper reads a lone digit well.

Pure functions, standard library only, Python 3.10+.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence

__all__ = [
    "ASK_DATE_OF_BIRTH_INSTEAD",
    "ASK_POSTCODE_INSTEAD",
    "ACCOUNT_AGAIN",
    "MONTH_NAMES",
    "READ_BACK_OPENING",
    "ONES",
    "TENS",
    "WEEKDAY_NAMES",
    "read_back_account",
    "say_account_number",
    "say_balance",
    "say_date",
    "say_digits",
    "say_duration_until",
    "say_fix_estimate",
    "say_money",
    "say_number",
    "say_ordinal",
    "say_postcode",
    "say_slot",
    "say_slots",
    "say_time",
    "say_year",
]

# The identity question asked again after a first answer that did not match (the account
# number kept): the other of the two answers, the first allowed again.
ASK_DATE_OF_BIRTH_INSTEAD = (
    "Let's try the account holder's date of birth instead. You can also type it on the "
    "keypad, as day, month and year."
)
ASK_POSTCODE_INSTEAD = (
    "Let's try the postcode of the property instead. Or say the date of birth again."
)

# After a caller said "no" to the account number read back to them.
ACCOUNT_AGAIN = "Sorry about that. Let's take the account number again."

# The account number heard again as the reading the caller said "no" to (before the
# account number question, which offers the keypad).
SAME_NUMBER_AGAIN = "Sorry, I heard the same number again. It may be easier on the keypad."


def say_account_number(number: str) -> str:
    """An account number read back in two groups: "12345678" -> "1 2 3 4, 5 6 7 8"."""
    digits = say_digits(number).split()
    half = len(digits) // 2
    if half < 2:
        return " ".join(digits)
    return f"{' '.join(digits[:half])}, {' '.join(digits[half:])}"


# How the account number read back to the caller begins (the evaluation's caller listens
# for it).
READ_BACK_OPENING = "That's account number"


def read_back_account(number: str) -> str:
    """The account number a caller said, read back before the identity question."""
    return f"{READ_BACK_OPENING} {say_account_number(number)}."


ONES: tuple[str, ...] = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
)
TENS: tuple[str, ...] = (
    "",
    "",
    "twenty",
    "thirty",
    "forty",
    "fifty",
    "sixty",
    "seventy",
    "eighty",
    "ninety",
)
MONTH_NAMES: tuple[str, ...] = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
WEEKDAY_NAMES: tuple[str, ...] = (
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
)

_MAX_NUMBER = 999_999_999
_ORDINAL_IRREGULAR = {
    "one": "first",
    "two": "second",
    "three": "third",
    "five": "fifth",
    "eight": "eighth",
    "nine": "ninth",
    "twelve": "twelfth",
}
# A year is said on top of the day and month only when the date is not in the current
# year or is further away than this.
_YEAR_AFTER_DAYS = 300


# --------------------------------------------------------------------------- numbers


def _below_hundred(n: int) -> str:
    if n < 20:
        return ONES[n]
    tens, ones = divmod(n, 10)
    return TENS[tens] + (f"-{ONES[ones]}" if ones else "")


def _below_thousand(n: int) -> str:
    hundreds, rest = divmod(n, 100)
    if not hundreds:
        return _below_hundred(rest)
    head = f"{ONES[hundreds]} hundred"
    return f"{head} and {_below_hundred(rest)}" if rest else head


def say_number(n: int) -> str:
    """Cardinal in British words: 345 -> "three hundred and forty-five",
    12345 -> "twelve thousand, three hundred and forty-five", 1005 -> "one thousand and
    five". Supports -999,999,999 ... 999,999,999 (negatives get "minus")."""
    if n < 0:
        return "minus " + say_number(-n)
    if n > _MAX_NUMBER:
        raise ValueError(f"say_number supports up to {_MAX_NUMBER}, got {n}")
    if n == 0:
        return "zero"
    millions, rest = divmod(n, 1_000_000)
    thousands, units = divmod(rest, 1000)
    parts: list[str] = []
    if millions:
        parts.append(_below_thousand(millions) + " million")
    if thousands:
        parts.append(_below_thousand(thousands) + " thousand")
    if units:
        if parts and units < 100:
            # British: "one thousand and five", "two million and ten".
            return ", ".join(parts) + " and " + _below_hundred(units)
        parts.append(_below_thousand(units))
    return ", ".join(parts)


def say_ordinal(n: int) -> str:
    """Ordinal in words: 1 -> "first", 21 -> "twenty-first", 112 -> "one hundred and
    twelfth"."""
    if n < 0:
        raise ValueError(f"say_ordinal needs n >= 0, got {n}")
    words = say_number(n)
    cut = max(words.rfind(" "), words.rfind("-")) + 1
    head, last = words[:cut], words[cut:]
    if last in _ORDINAL_IRREGULAR:
        last = _ORDINAL_IRREGULAR[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return head + last


def say_year(year: int) -> str:
    """A year as people say it: 2027 -> "twenty twenty-seven", 2005 -> "two thousand and
    five", 1905 -> "nineteen oh five", 1900 -> "nineteen hundred"."""
    if not 1000 <= year <= 9999:
        return say_number(year)
    if 2000 <= year <= 2009:
        return say_number(year)
    high, low = divmod(year, 100)
    if low == 0:
        return f"{say_number(high)} hundred"
    if low < 10:
        return f"{say_number(high)} oh {ONES[low]}"
    return f"{say_number(high)} {say_number(low)}"


# --------------------------------------------------------------------------- money


def say_money(pence: int) -> str:
    """An amount of money in words (the sign is ignored: the caller words credit/debt).

    4215 -> "forty-two pounds and fifteen pence", 100 -> "one pound", 1 -> "one penny",
    101 -> "one pound and one penny", 0 -> "zero pounds"."""
    pounds, pennies = divmod(abs(pence), 100)
    if not pounds and not pennies:
        return "zero pounds"
    parts: list[str] = []
    if pounds:
        parts.append(f"{say_number(pounds)} pound" + ("" if pounds == 1 else "s"))
    if pennies:
        parts.append("one penny" if pennies == 1 else f"{say_number(pennies)} pence")
    return " and ".join(parts)


def say_balance(pence: int) -> str:
    """A full sentence about an account balance; positive means the customer owes."""
    if pence > 0:
        return f"Your balance is {say_money(pence)}."
    if pence < 0:
        return f"Your account is in credit by {say_money(pence)}."
    return "Your account is fully paid up, with nothing to pay."


# --------------------------------------------------------------------------- dates


def _as_date(d: datetime.date) -> datetime.date:
    return d.date() if isinstance(d, datetime.datetime) else d


def say_date(d: datetime.date, today: datetime.date) -> str:
    """ "today", "tomorrow", "yesterday", otherwise "Friday the fourth of December",
    with the year ("... of January twenty twenty-seven") when ``d`` is not in the current
    year or is more than 300 days away."""
    d, today = _as_date(d), _as_date(today)
    delta = (d - today).days
    if delta == 0:
        return "today"
    if delta == 1:
        return "tomorrow"
    if delta == -1:
        return "yesterday"
    text = f"{WEEKDAY_NAMES[d.weekday()]} the {say_ordinal(d.day)} of {MONTH_NAMES[d.month - 1]}"
    if d.year != today.year or abs(delta) > _YEAR_AFTER_DAYS:
        text += " " + say_year(d.year)
    return text


# --------------------------------------------------------------------------- times


def _clock(hour: int, minute: int) -> str:
    """The clock reading without a part of day: "half past six", "nine oh seven"."""
    if (hour, minute) == (0, 0):
        return "midnight"
    if (hour, minute) == (12, 0):
        return "midday"
    this_hour = ONES[hour % 12 or 12]
    next_hour = ONES[(hour + 1) % 12 or 12]
    if minute == 0:
        return f"{this_hour} o'clock"
    if minute == 15:
        return f"quarter past {this_hour}"
    if minute == 30:
        return f"half past {this_hour}"
    if minute == 45:
        return f"quarter to {next_hour}"
    if minute in (5, 10, 20, 25):
        return f"{say_number(minute)} past {this_hour}"
    if minute in (35, 40, 50, 55):
        return f"{say_number(60 - minute)} to {next_hour}"
    if minute < 10:
        return f"{this_hour} oh {ONES[minute]}"
    return f"{this_hour} {say_number(minute)}"


def _period(hour: int) -> str:
    """The part of day said after a time; it follows the hour of the time itself."""
    if hour == 0:
        return "at night"
    if hour < 12:
        return "in the morning"
    if hour == 12:
        return ""
    if hour < 18:
        return "in the afternoon"
    return "in the evening"


def say_time(t: datetime.time) -> str:
    """A clock time in words, with the part of day when it is not obvious.

    08:00 -> "eight o'clock in the morning", 10:30 -> "half past ten in the morning",
    09:07 -> "nine oh seven in the morning", 12:00 -> "midday", 12:30 -> "half past
    twelve", 14:00 -> "two o'clock in the afternoon", 17:45 -> "quarter to six in the
    afternoon", 18:20 -> "twenty past six in the evening", 00:00 -> "midnight",
    00:30 -> "half past twelve at night". Seconds are ignored."""
    clock = _clock(t.hour, t.minute)
    if clock in ("midnight", "midday"):
        return clock
    period = _period(t.hour)
    return f"{clock} {period}" if period else clock


def say_slot(start: datetime.datetime, today: datetime.date) -> str:
    """ "Friday the fourth of December at half past ten in the morning"."""
    return f"{say_date(start.date(), today)} at {say_time(start.time())}"


def _spoken_list(items: Sequence[str]) -> str:
    if not items:
        return ""
    if len(items) == 1:
        return items[0]
    if len(items) == 2:
        return f"{items[0]} or {items[1]}"
    return ", ".join(items[:-1]) + f", or {items[-1]}"


def say_slots(starts: Sequence[datetime.datetime], today: datetime.date) -> str:
    """Appointment choices as one spoken list; the day is said once for each run of
    slots on the same day: "tomorrow at eight o'clock in the morning, half past eight in
    the morning, or Friday the fourth of December at two o'clock in the afternoon".
    An empty sequence gives ""."""
    items: list[str] = []
    previous_day: datetime.date | None = None
    for start in starts:
        day = start.date()
        if day == previous_day:
            items.append(say_time(start.time()))
        else:
            items.append(say_slot(start, today))
        previous_day = day
    return _spoken_list(items)


# --------------------------------------------------------------------------- references


def say_digits(text: str) -> str:
    """Letters and digits one by one, spaces between: "12345678" -> "1 2 3 4 5 6 7 8",
    "ab-12" -> "A B 1 2". Anything else (spaces, dashes, "*") is dropped."""
    return " ".join(ch.upper() for ch in text if ch.isascii() and ch.isalnum())


def say_postcode(pc: str) -> str:
    """A UK postcode character by character, a pause between its two halves:
    "NW3 2QG" -> "N W 3, 2 Q G" (also without the space: "nw32qg")."""
    compact = "".join(ch.upper() for ch in pc if ch.isascii() and ch.isalnum())
    if len(compact) < 5:
        return say_digits(compact)
    # The inward code (after the space) is always one digit and two letters.
    return f"{say_digits(compact[:-3])}, {say_digits(compact[-3:])}"


# --------------------------------------------------------------------------- estimates


def _round_half_up(x: float) -> int:
    return int(x + 0.5)


def say_duration_until(t: datetime.datetime, now: datetime.datetime) -> str:
    """How long until ``t``, roughly: "in about a minute", "in about five minutes",
    "in about forty-five minutes", "in about an hour", "in about an hour and a half",
    "in about two and a half hours", "in about two days"; "shortly" when ``t`` is past."""
    seconds = (t - now).total_seconds()
    if seconds <= 0:
        return "shortly"
    minutes = -(-int(seconds) // 60)  # round up: never promise too early
    if minutes <= 1:
        return "in about a minute"
    if minutes < 10:
        return f"in about {say_number(minutes)} minutes"
    if minutes < 53:
        return f"in about {say_number(5 * _round_half_up(minutes / 5))} minutes"
    if minutes < 36 * 60:
        halves = _round_half_up(minutes / 30)
        whole, half = divmod(halves, 2)
        if whole == 1:
            return "in about an hour and a half" if half else "in about an hour"
        if half:
            return f"in about {say_number(whole)} and a half hours"
        return f"in about {say_number(whole)} hours"
    days = _round_half_up(minutes / 1440)
    return f"in about {say_number(days)} days"


def _round_up_to_quarter(t: datetime.datetime) -> datetime.datetime:
    base = t.replace(second=0, microsecond=0)
    if base < t:
        base += datetime.timedelta(minutes=1)
    return base + datetime.timedelta(minutes=(-base.minute) % 15)


def _by_when(at: datetime.datetime, now: datetime.datetime) -> str:
    """ "half past six this evening", "eight o'clock tomorrow morning", "midday today"."""
    days = (at.date() - now.date()).days
    hour, minute = at.hour, at.minute
    clock = _clock(hour, minute)
    if days == 0:
        if clock == "midday":
            return "midday today"
        if hour < 12:
            return f"{clock} this morning"
        if hour < 18:
            return f"{clock} this afternoon"
        return f"{clock} this evening" if hour < 22 else f"{clock} tonight"
    if days == 1:
        if clock == "midnight":
            return "midnight tonight"
        if clock == "midday":
            return "midday tomorrow"
        if hour < 5:
            return f"{clock} tonight"
        if hour < 12:
            return f"{clock} tomorrow morning"
        if hour < 18:
            return f"{clock} tomorrow afternoon"
        return f"{clock} tomorrow evening"
    return f"{say_time(at.time())} on {say_date(at.date(), now.date())}"


def say_fix_estimate(fix: datetime.datetime, now: datetime.datetime) -> str:
    """The spoken power-cut estimate. ``fix`` is rounded up to the next quarter hour:
    "We expect power back by about half past six this evening." / "... by about eight
    o'clock tomorrow morning." / "... by about two o'clock in the afternoon on Friday
    the fourth of December." When ``fix`` is not after ``now``: "Engineers are working
    on it and power should be back shortly." Both datetimes must be naive, or both aware
    (then ``fix`` is read in ``now``'s time zone)."""
    if fix.tzinfo is not None and now.tzinfo is not None:
        fix = fix.astimezone(now.tzinfo)
    if fix <= now:
        return "Engineers are working on it and power should be back shortly."
    return f"We expect power back by about {_by_when(_round_up_to_quarter(fix), now)}."
