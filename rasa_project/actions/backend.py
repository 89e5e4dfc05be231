"""What the custom actions ask the Northwind Energy back ends, independent of how they are
reached (SQL: ``backend_sql.py``; JSON over HTTP: ``backend_http.py``; chosen per system by
``backend_config.py``).

Runs on Python 3.10 (the Rasa venv) and 3.11+; stdlib only.

Times are naive local times (the company's wall clock). A failure to get an answer is a
:class:`BackendError` (the caller apologises: "the billing system isn't answering"); a slot
that is no longer free is a :class:`SlotTaken` (the caller offers another one).
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "REASONS",
    "SYSTEMS",
    "Account",
    "Backend",
    "BackendError",
    "Booking",
    "Outage",
    "SlotTaken",
    "is_slot",
    "iso_minute",
    "normalise_account_number",
    "normalise_area",
    "normalise_postcode",
    "outward_code",
    "parse_iso_minute",
    "slot_starts",
]

SYSTEMS = ("billing", "outages", "bookings")

REASONS = (
    "timeout",  # no answer within the budget
    "unreachable",  # could not connect
    "malformed",  # an answer, but not one we understand
    "too_large",  # an answer larger than we are willing to read
    "circuit_open",  # recent calls failed: not tried at all
    "server_error",  # the back end said it failed (HTTP 5xx)
    "error",  # anything else
)


@dataclass(frozen=True)
class Account:
    number: str  # 8 digits
    name: str
    postcode: str  # normalised, upper case, one space: "NW1 4RY"
    birth_date: datetime.date
    balance_pence: int  # > 0 the customer owes; < 0 in credit
    last_bill_pence: int
    last_bill_date: datetime.date


@dataclass(frozen=True)
class Outage:
    area: str  # an outward code ("NW3") or a full postcode ("NW3 2QG")
    cause: str  # short spoken phrase, e.g. "a damaged underground cable"
    estimated_fix: datetime.datetime  # naive local time


@dataclass(frozen=True)
class Booking:
    reference: str  # e.g. "NW" + 6 digits
    account_number: str
    start: datetime.datetime  # naive local time


class BackendError(Exception):
    """The back end could not answer. ``reason`` is one of :data:`REASONS`; ``system`` is
    what the caller hears it as ("billing", "outages", "bookings"); ``detail`` is for logs."""

    def __init__(self, system: str, reason: str, detail: str = "") -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown BackendError reason {reason!r}; expected one of {REASONS}")
        self.system = system
        self.reason = reason
        self.detail = detail
        super().__init__(f"{system}: {reason}" + (f" ({detail})" if detail else ""))


class SlotTaken(Exception):
    """A normal outcome, not a failure: the slot was booked meanwhile, or is not a bookable
    slot at all."""


class Backend(Protocol):
    system: str  # "billing" | "outages" | "bookings" (what the caller hears it as)

    async def account(self, number: str) -> Account | None:
        """The account, or None when there is no such account (or ``number`` is not 8 digits
        once spaces and punctuation are dropped)."""
        ...

    async def outage(self, postcode: str) -> Outage | None:
        """A full postcode match first, else an outward code (district) match. ``postcode``
        is normalised ("nw3 2qg", "NW32QG"); an outward code alone ("NW3") matches districts
        only; None when there is no known outage (or it is not a postcode)."""
        ...

    async def free_slots(
        self, day: datetime.date, now: datetime.datetime
    ) -> list[datetime.datetime]:
        """Engineer visit starts on ``day``: sorted, strictly after ``now``, not booked."""
        ...

    async def book(self, account_number: str, start: datetime.datetime) -> Booking:
        """Books ``start`` for the account; :class:`SlotTaken` if it is booked already or is
        not a slot (:func:`is_slot`)."""
        ...

    async def bookings(self, account_number: str) -> list[Booking]:
        """All the account's bookings, future and past, sorted by start."""
        ...

    async def aclose(self) -> None: ...


# --- postcodes -------------------------------------------------------------------------------

# The shape of a UK postcode (the government data standard, without the exceptions list):
# outward A9, A99, AA9, AA99, A9A, AA9A; inward 9AA; plus the Girobank "GIR 0AA".
_OUTWARD = (
    r"(?:[A-PR-UWYZ][0-9][0-9]?"
    r"|[A-PR-UWYZ][A-HK-Y][0-9][0-9]?"
    r"|[A-PR-UWYZ][0-9][A-HJKPSTUW]"
    r"|[A-PR-UWYZ][A-HK-Y][0-9][ABEHMNPRVWXY])"
)
_INWARD = r"[0-9][ABD-HJLNP-UW-Z]{2}"
_FULL_RE = re.compile(rf"^(?:(?P<out>{_OUTWARD})(?P<in>{_INWARD})|(?P<gir>GIR)(?P<gin>0AA))$")
_OUTWARD_RE = re.compile(rf"^{_OUTWARD}$")

_NUMBER_WORDS = {
    "zero": "0",
    "nought": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
}
_REPEATS = {"double": 2, "treble": 3, "triple": 3}
_LETTER_W = {"u", "you"}  # after "double": how W is said
_MAX_SPOKEN_CHARS = 80


def _compact(text: str) -> str | None:
    """Spoken-ish text to the bare characters: "n w three 2 q g" -> "NW32QG"; "double"
    repeats the next character ("e c 1 a 1 double b" -> "EC1A1BB") except in "double u" /
    "double-you", the letter W; "oh" is a zero except as the first word (the Oldham "OL"
    area)."""
    if len(text) > _MAX_SPOKEN_CHARS:
        return None
    words = re.findall(r"[a-z0-9]+", text.lower())
    out: list[str] = []
    repeat = 1
    for index, word in enumerate(words):
        if word == "double" and index + 1 < len(words) and words[index + 1] in _LETTER_W:
            continue  # "double u", "double-you": the letter W
        if word in _LETTER_W and index > 0 and words[index - 1] == "double":
            out.append("w")
            continue
        if word in _REPEATS:
            repeat = _REPEATS[word]
            continue
        if word in _NUMBER_WORDS:
            word = _NUMBER_WORDS[word]
        elif word == "oh":
            word = "o" if index == 0 else "0"
        if repeat > 1:
            if len(word) != 1:
                return None
            word *= repeat
            repeat = 1
        out.append(word)
    if repeat > 1:
        return None
    return "".join(out).upper()


def normalise_postcode(text: str) -> str | None:
    """A UK postcode in its normal form ("NW3 2QG"), from "nw3 2qg", "NW32QG", "n w 3 2 q g",
    "n w three two q g"; None when ``text`` is not (only) a postcode."""
    compact = _compact(text)
    if not compact:
        return None
    match = _FULL_RE.match(compact)
    if match is None:
        return None
    if match.group("gir"):
        return "GIR 0AA"
    return f"{match.group('out')} {match.group('in')}"


def normalise_area(text: str) -> str | None:
    """A full postcode ("NW3 2QG") or an outward code alone ("NW3"), normalised; else None."""
    full = normalise_postcode(text)
    if full is not None:
        return full
    compact = _compact(text)
    if compact and _OUTWARD_RE.match(compact):
        return compact
    return None


def outward_code(postcode: str) -> str:
    """The outward code (district) of a postcode: "nw3 2qg" -> "NW3"; an outward code alone
    is returned normalised. ValueError if ``postcode`` is neither."""
    area = normalise_area(postcode)
    if area is None:
        raise ValueError(f"not a UK postcode: {postcode!r}")
    return area.split(" ", 1)[0]


def normalise_account_number(text: str) -> str | None:
    """The 8 digits of an account number ("1234 5678", "12-34-56-78"), else None."""
    digits = re.sub(r"[\s\-.]", "", text)
    if len(digits) == 8 and digits.isascii() and digits.isdigit():
        return digits
    return None


# --- engineer visit slots ------------------------------------------------------------------

# Monday to Saturday from 8 am to 6 pm: starts on the hour and half hour, the last at 17:30.
SLOT_MINUTES = 30
FIRST_SLOT = datetime.time(8, 0)
LAST_SLOT = datetime.time(17, 30)
SLOT_DAYS = frozenset(range(6))  # date.weekday(): Monday 0 .. Saturday 5; no Sunday


def slot_starts(day: datetime.date) -> list[datetime.datetime]:
    """Every bookable start on ``day`` (booked or not), sorted; [] on a Sunday."""
    if day.weekday() not in SLOT_DAYS:
        return []
    start = datetime.datetime.combine(day, FIRST_SLOT)
    last = datetime.datetime.combine(day, LAST_SLOT)
    step = datetime.timedelta(minutes=SLOT_MINUTES)
    starts: list[datetime.datetime] = []
    while start <= last:
        starts.append(start)
        start += step
    return starts


def is_slot(start: datetime.datetime) -> bool:
    """Whether ``start`` (naive local time) is a bookable start."""
    return (
        start.tzinfo is None
        and start.weekday() in SLOT_DAYS
        and start.second == 0
        and start.microsecond == 0
        and start.minute % SLOT_MINUTES == 0
        and FIRST_SLOT <= start.time() <= LAST_SLOT
    )


# --- the one text form of a time, in both SQL and JSON ------------------------------------

_MINUTE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}$")
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def iso_minute(moment: datetime.datetime) -> str:
    """ "YYYY-MM-DDTHH:MM" (seconds dropped)."""
    return moment.strftime("%Y-%m-%dT%H:%M")


def parse_iso_minute(text: str) -> datetime.datetime:
    """The inverse of :func:`iso_minute`, strictly; ValueError otherwise."""
    if not _MINUTE_RE.match(text):
        raise ValueError(f"not YYYY-MM-DDTHH:MM: {text!r}")
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M")


def parse_iso_date(text: str) -> datetime.date:
    """ "YYYY-MM-DD" strictly; ValueError otherwise."""
    if not _DATE_RE.match(text):
        raise ValueError(f"not YYYY-MM-DD: {text!r}")
    return datetime.date.fromisoformat(text)
