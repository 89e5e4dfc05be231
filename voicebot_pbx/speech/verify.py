"""Checking a spoken answer against the one the dialogue already knows (pure).

After "what's the postcode of the property, or the date of birth?", the billing back end
knows the right answer. A free transcript of a spelled postcode on a phone line is mostly
wrong ("N W 7, 9 P W" -> "And I double"), so comparing transcripts fails real callers; but
the recogniser can be asked a narrower question: *does this audio say the known answer?*
Each written form of the answer is fed to the decoder token by token (teacher forcing), and
at each of its digits, letters and months the known token is compared with its likeliest
rival there (another digit, letter or month). The answer is confirmed when the known
tokens lead their rivals on average by ``min_lead``, none trails by more than ``floor``, and
for a date, each after the first beats the end of the text by :data:`MIN_END_GAP` (audio
that stopped before the date's end, "the 23rd of June" and no year, has the decoder fill in
the rest, and those tokens barely beat the end): then the transcript is the answer written
plainly ("NW9 4RQ", "the 23rd of June 1987") and the dialogue's own check passes. Otherwise
the transcript is whatever was decoded, and the dialogue's check fails as before. A caller
who says another postcode or date trails at several places; one who says a neighbour's
postcode, one letter off, trails at one (``floor`` is that guard: measured in
``bench/eval_verify.py``, README "Known answers").

The known answers reach the bot from the action server in the question's payload
(``verify: {postcode, date}``) and are never logged.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from voicebot_pbx.speech.expect import Expectation

MONTHS = (
    "January February March April May June July August September October November December"
).split()
# The known tokens' mean lead over their rivals (log-probability): a caller saying another
# answer trails on average; one saying this one leads.
DEFAULT_MIN_LEAD = 0.5
# The near-miss guard: no known token may trail its likeliest rival by more than this.
# 0: each must be the likeliest (a neighbour's postcode one letter off is refused, and so
# are many real callers on a poor line); more negative: more forgiving.
DEFAULT_FLOOR = -3.0
# The end guard, by the kind of answer: each digit and month of a date after the first must
# beat the end of the text by this much (log-probability). Audio that stops before the date's
# end (a caller who says "the 23rd of June" and no year) still has its tokens lead their
# rivals, the decoder filling in a year it never heard, but there they barely beat the end.
# Chosen on bench/eval_verify.py's dev set, midway between the genuine dates' lowest (8.7)
# and the cut-short dates' highest (5.5). Not for postcodes: their letters compete with the
# end even when heard (a genuine "N W 9, 5 A E" in eval_balance's set: -6.8, below every
# cut-short postcode of the dev set), so no threshold separates them.
MIN_END_GAP: Mapping[Expectation, float] = {Expectation.DATE: 7.0}
_POSTCODE = re.compile(r"^([A-Z]{1,2}[0-9][A-Z0-9]?) ([0-9][A-Z]{2})$")


@dataclass(frozen=True, slots=True)
class KnownAnswer:
    """An answer the dialogue already knows: a UK postcode ("NW9 4RQ") or a date
    ("1987-06-23")."""

    kind: Expectation
    value: str


def known_answers(raw: Mapping[str, object]) -> tuple[KnownAnswer, ...]:
    """The payload's ``{"postcode": "NW9 4RQ", "date": "1987-06-23"}`` (either may be
    missing); a value of the wrong shape is left out."""
    found: list[KnownAnswer] = []
    postcode = str(raw.get("postcode") or "").strip().upper()
    if _POSTCODE.match(postcode):
        found.append(KnownAnswer(Expectation.POSTCODE, postcode))
    date = str(raw.get("date") or "").strip()
    try:
        dt.date.fromisoformat(date)
    except ValueError:
        pass
    else:
        found.append(KnownAnswer(Expectation.DATE, date))
    return tuple(found)


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def written(answer: KnownAnswer) -> str:
    """The transcript of a verified answer, as the dialogue reads it."""
    if answer.kind is Expectation.DATE:
        day = dt.date.fromisoformat(answer.value)
        return f"the {_ordinal(day.day)} of {MONTHS[day.month - 1]} {day.year}"
    return answer.value


def confirmed_label(kind: Expectation) -> str:
    """A confirmed answer's ``held_to`` on the transcript ("known:date"): what the engine
    says it held the decode to."""
    return f"known:{kind.value}"


def spoken_forms(answer: KnownAnswer) -> list[str]:
    """How the recogniser may write the answer when it hears it (each is scored; the best
    counts)."""
    if answer.kind is Expectation.DATE:
        day = dt.date.fromisoformat(answer.value)
        month, nth = MONTHS[day.month - 1], _ordinal(day.day)
        return [f"The {nth} of {month} {day.year}.", f"{month} {nth}, {day.year}."]
    outward, inward = answer.value.split()
    return [f"{' '.join(outward)}, {' '.join(inward)}.", f"{outward} {inward}."]


def rival_classes(pieces: Sequence[str]) -> dict[int, tuple[int, ...]]:
    """Token id -> the ids of its rivals, for the tokens an answer's content is made of: a
    digit ("7") against the other digits, a capital letter ("R", "▁R") against the other
    letters written the same way, a month ("▁June") against the other months."""
    ids = {piece: i for i, piece in enumerate(pieces)}
    groups = [
        [ids[d] for d in "0123456789" if d in ids],
        [ids[c] for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if c in ids],
        [ids["▁" + c] for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if "▁" + c in ids],
        [ids["▁" + m] for m in MONTHS if "▁" + m in ids],
    ]
    rivals: dict[int, tuple[int, ...]] = {}
    for group in groups:
        for token in group:
            rivals[token] = tuple(t for t in group if t != token)
    return rivals


@dataclass(frozen=True, slots=True)
class FormScore:
    """How the audio takes one written form of an answer: the mean log-probability of its
    tokens (which form it says), and over its digits, letters and months each token's
    log-probability less its likeliest rival's: the mean (``lead``) and the lowest
    (``worst``); both inf when it has none. ``end_gap``: over those tokens after the first,
    the lowest log-probability less the end of the text's (inf: fewer than two)."""

    mean: float
    lead: float
    worst: float
    end_gap: float = math.inf


def accepted(score: FormScore, kind: Expectation, min_lead: float, floor: float) -> bool:
    """The known tokens lead their rivals by ``min_lead`` on average, none trails by more
    than ``floor``, and none after the first comes close to the end of the text
    (:data:`MIN_END_GAP` for the answer's ``kind``: the audio went on to the answer's end)."""
    return (
        math.isfinite(score.lead)
        and score.lead >= min_lead
        and score.worst >= floor
        and score.end_gap >= MIN_END_GAP.get(kind, -math.inf)
    )
