"""Normalise recognised speech before it reaches Rasa (pure: no I/O).

Rasa's shipped extractors find no spoken numbers ("two pm", "one two three"), so the STT text
is rewritten into the canonical forms the NLU regexes and training examples use:

* digit runs: "one two three four" -> "1234", "oh" as zero inside a run, "double five" -> "55",
  "triple seven" -> "777"; adjacent digit strings from the STT ("1234 5678") are joined;
* numbers: "twenty five" -> "25", "two hundred and fifty" -> "250" (a lone "one" stays a word:
  it is usually a pronoun, "no one", "the one i got");
* times, as 24-hour "HH:MM": "two pm" / "two p m" / "2 p.m." -> "14:00", "half past three" ->
  "15:30", "quarter to nine" -> "08:45", "nine in the morning" -> "09:00", "noon" -> "12:00";
  without am/pm ("three thirty", "at three", "3:30") hours below ``afternoon_below_hour``
  (default 8) are taken as afternoon: this is an office-hours line, nobody books 3 am;
* dates: "the fifth of march" / "march the fifth" / "march fifth" / "5th march" -> "march 5th";
  "on the fifth" -> "on the 5th"; relative words ("tomorrow", "next monday") are kept as is;
* UK postcodes spelled out: "n w one four e n" -> "nw1 4en", "n double u one ..." too,
  "sw1a 1aa" kept;
* lower case, punctuation removed (apostrophes inside words kept), so STT text can never look
  like Rasa's ``/intent{...}`` syntax.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from voicebot_pbx.answers.number_words import (
    MONTHS,
    ORDINAL_TEENS,
    ORDINAL_UNITS,
    TEENS,
    TENS,
    UNITS,
)

__all__ = ["normalize"]

_ZERO_WORDS = frozenset({"oh", "o"})
_REPEAT_WORDS: dict[str, int] = {"double": 2, "triple": 3}
# "at one of them", "at two hundred": not a time
_NOT_AFTER_AT_HOUR = frozenset(
    {"hundred", "thousand", "of", "the", "a", "an", "them", "those", "these", "least", "all"}
)
_CLOCK_RE = re.compile(r"(\d{1,2})[:.](\d{2})")
_DIGIT_ORDINAL_RE = re.compile(r"(\d{1,2})(st|nd|rd|th)")
_POSTCODE_RE = re.compile(r"([a-z]{1,2}\d[a-z\d]?)(\d[a-z]{2})")
_POSTCODE_PIECE_RE = re.compile(r"[a-z\d]{1,7}")
# The letter W said as its name, as a recogniser writes it ("u", "you", "u5" with the figure
# after it run on): the word after "double" in a spelled postcode.
_DOUBLE_U_RE = re.compile(r"(?:u|you)(\d{0,2})")

# Text clean-up, applied in order on the lower-cased text.
_CLEANUPS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\b([ap])\.\s?m\.?(?=\W|$)"), r" \1m "),  # "p.m." / "p. m." -> " pm "
    (re.compile(r"(\d)\s?([ap])m\b"), r"\1 \2m"),  # "3pm" -> "3 pm"
    (re.compile(r"\bo'?\s?clock\b"), " oclock "),
    (re.compile(r"(\d),(\d{3})\b"), r"\1\2"),  # "12,345" -> "12345"
    (re.compile(r"(\d)[:.](\d\d)\b"), r"\1:\2"),  # "3.30" -> "3:30"
    (re.compile(r"[^a-z0-9:' ]+"), " "),  # all other punctuation (incl. / { } " -)
    (re.compile(r"(?<!\d):|:(?!\d)"), " "),  # ":" only between digits
    (re.compile(r"(?<![a-z])'|'(?![a-z])"), " "),  # "'" only inside words
)


def _ordinal_suffix(day: int) -> str:
    if 10 <= day % 100 <= 20:
        return "th"
    return {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")


def _fmt_clock(hour: int, minute: int) -> str:
    return f"{hour:02d}:{minute:02d}"


class _Parser:
    """Left-to-right rewriter over whitespace tokens."""

    def __init__(self, tokens: Sequence[str], afternoon_below_hour: int) -> None:
        self.t = tokens
        self.afternoon_below_hour = afternoon_below_hour

    def tok(self, i: int) -> str:
        return self.t[i] if 0 <= i < len(self.t) else ""

    # -- numbers ---------------------------------------------------------------------------

    def under_100(self, i: int) -> tuple[int, int] | None:
        """A cardinal 0..99 in words ("five", "fifteen", "forty five") -> (value, n_tokens)."""
        w = self.tok(i)
        if w in TENS:
            nxt = self.tok(i + 1)
            if nxt in UNITS and UNITS[nxt] > 0:
                return TENS[w] + UNITS[nxt], 2
            return TENS[w], 1
        if w in TEENS:
            return TEENS[w], 1
        if w in UNITS:
            return UNITS[w], 1
        return None

    def cardinal(self, i: int) -> tuple[int, int] | None:
        """Cardinal in words up to 999,999 ("two hundred and fifty", "three thousand")."""
        total = 0
        n = 0
        current = self.under_100(i)
        if current is None and self.tok(i) == "a" and self.tok(i + 1) in ("hundred", "thousand"):
            current = (1, 1)  # "a hundred"
        if current is None:
            return None
        value, used = current
        n += used
        if self.tok(i + n) == "hundred":
            value *= 100
            n += 1
            rest = self._and_under_100(i + n)
            if rest is not None:
                value += rest[0]
                n += rest[1]
        if self.tok(i + n) == "thousand":
            total = value * 1000
            n += 1
            value = 0
            hundreds = self.under_100(i + n)
            if hundreds is not None and self.tok(i + n + hundreds[1]) == "hundred":
                value = hundreds[0] * 100
                n += hundreds[1] + 1
            rest = self._and_under_100(i + n)
            if rest is not None:
                value += rest[0]
                n += rest[1]
        return total + value, n

    def _and_under_100(self, i: int) -> tuple[int, int] | None:
        skip = 1 if self.tok(i) == "and" else 0
        rest = self.under_100(i + skip)
        if rest is None:
            return None
        return rest[0], rest[1] + skip

    def ordinal(self, i: int) -> tuple[int, int] | None:
        """Day ordinal 1..31: "fifth", "twenty first", "5th" -> (day, n_tokens)."""
        w = self.tok(i)
        m = _DIGIT_ORDINAL_RE.fullmatch(w)
        if m:
            day = int(m.group(1))
            return (day, 1) if 1 <= day <= 31 else None
        if w in ORDINAL_UNITS:
            return ORDINAL_UNITS[w], 1
        if w in ORDINAL_TEENS:
            return ORDINAL_TEENS[w], 1
        if w in ("twenty", "thirty") and self.tok(i + 1) in ORDINAL_UNITS:
            day = TENS[w] + ORDINAL_UNITS[self.tok(i + 1)]
            return (day, 2) if day <= 31 else None
        return None

    def day_number(self, i: int) -> tuple[int, int] | None:
        """A day given as an ordinal or a plain number 1..31 ("5", "five")."""
        found = self.ordinal(i)
        if found is not None:
            return found
        w = self.tok(i)
        if w.isdigit() and 1 <= int(w) <= 31:
            return int(w), 1
        card = self.under_100(i)
        if card is not None and 1 <= card[0] <= 31:
            return card
        return None

    # -- times -----------------------------------------------------------------------------

    def hour(self, i: int) -> tuple[int, int, int] | None:
        """Hour (optionally "H:MM") -> (hour, minute, n_tokens); hour 0..23 for digits."""
        w = self.tok(i)
        m = _CLOCK_RE.fullmatch(w)
        if m:
            hh, mm = int(m.group(1)), int(m.group(2))
            if hh <= 23 and mm <= 59:
                return hh, mm, 1
            return None
        if w.isdigit() and len(w) <= 2 and 0 < int(w) <= 12:
            return int(w), 0, 1
        value = UNITS.get(w, TEENS.get(w, 0))
        if 0 < value <= 12:
            return value, 0, 1
        return None

    def minutes(self, i: int, *, allow_oh: bool) -> tuple[int, int] | None:
        """Minutes after an hour: "thirty", "forty five", "oh five" (allow_oh), "30"."""
        w = self.tok(i)
        if w.isdigit() and len(w) == 2 and int(w) <= 59:
            return int(w), 1
        if allow_oh and w in _ZERO_WORDS and self.tok(i + 1) in UNITS:
            return UNITS[self.tok(i + 1)], 2
        found = self.under_100(i)
        if found is not None and 10 <= found[0] <= 59:
            return found
        return None

    def meridiem(self, i: int) -> tuple[str, int] | None:
        w, nxt = self.tok(i), self.tok(i + 1)
        if w in ("am", "pm"):
            return w, 1
        if w in ("a", "p") and nxt == "m":
            return w + "m", 2
        if w == "in" and nxt == "the":
            part = self.tok(i + 2)
            if part == "morning":
                return "am", 3
            if part in ("afternoon", "evening"):
                return "pm", 3
        if w == "at" and nxt == "night":
            return "pm", 2
        return None

    def clock(self, hour: int, minute: int, meridiem: str | None) -> str:
        if meridiem == "pm" and hour < 12:
            hour += 12
        elif meridiem == "am" and hour == 12:
            hour = 0
        elif meridiem is None and 1 <= hour < self.afternoon_below_hour:
            hour += 12
        return _fmt_clock(hour, minute)

    def time(self, i: int, *, after_at: bool = False) -> tuple[str, int] | None:
        w = self.tok(i)
        if w in ("noon", "midday"):
            return "12:00", 1
        if w == "twelve" and self.tok(i + 1) in ("noon", "midday"):
            return "12:00", 2
        if w == "midnight":
            return "00:00", 1
        relative = self.relative_time(i)
        if relative is not None:
            return relative
        if w == "at":
            inner = self.time(i + 1, after_at=True) if self.tok(i + 1) != "at" else None
            if inner is not None:
                return "at " + inner[0], 1 + inner[1]
            return self.at_hour(i)
        hour = self.hour(i)
        if hour is None:
            return None
        hh, mm, n = hour
        is_clock_string = ":" in w
        mins = None if is_clock_string else self.minutes(i + n, allow_oh=True)
        after = i + n + (mins[1] if mins else 0)
        if self.tok(after) == "oclock" and mins is None:
            mer = self.meridiem(after + 1)
            used = n + 1 + (mer[1] if mer else 0)
            return self.clock(hh, 0, mer[0] if mer else None), used
        mer = self.meridiem(after)
        if mer is not None and hh <= 12:
            minute = mins[0] if mins else mm
            return self.clock(hh, minute, mer[0]), after - i + mer[1]
        if is_clock_string:
            return self.clock(hh, mm, None) if hh <= 12 else _fmt_clock(hh, mm), 1
        if mins is not None and not w.isdigit():
            # "three thirty" (words only: "3 30" stays a digit run); "at nine oh five"
            plain = self.minutes(i + n, allow_oh=after_at)
            if plain is not None:
                return self.clock(hh, plain[0], None), n + plain[1]
        return None

    def relative_time(self, i: int) -> tuple[str, int] | None:
        """ "half past three", "quarter to nine", "ten past four", "twenty five to six"."""
        w = self.tok(i)
        if w == "half" and self.tok(i + 1) == "past":
            minute, n_rel, direction = 30, 1, "past"
        elif w == "quarter" and self.tok(i + 1) in ("past", "to"):
            minute, n_rel, direction = 15, 1, self.tok(i + 1)
        elif w == "a" and self.tok(i + 1) == "quarter" and self.tok(i + 2) in ("past", "to"):
            minute, n_rel, direction = 15, 2, self.tok(i + 2)
        else:
            count = self.under_100(i)
            if count is None and w.isdigit() and len(w) <= 2:
                count = (int(w), 1)
            if count is None or not 1 <= count[0] <= 29:
                return None
            minute, n_rel = count
            if self.tok(i + n_rel) in ("minute", "minutes"):
                n_rel += 1
            direction = self.tok(i + n_rel)
            if direction not in ("past", "to"):
                return None
        hour = self.hour(i + n_rel + 1)
        if hour is None or ":" in self.tok(i + n_rel + 1):
            return None
        hh, _, n_hour = hour
        used = n_rel + 1 + n_hour
        if direction == "to":
            hh = hh - 1 if hh > 1 else 12
            minute = 60 - minute
        mer = self.meridiem(i + used)
        if mer is not None:
            return self.clock(hh, minute, mer[0]), used + mer[1]
        return self.clock(hh, minute, None), used

    def at_hour(self, i: int) -> tuple[str, int] | None:
        """ "at three" -> "at 15:00" when no number follows (else it is a digit run)."""
        hour = self.hour(i + 1)
        if hour is None or ":" in self.tok(i + 1):
            return None
        hh, _, n = hour
        nxt = self.tok(i + 1 + n)
        if self._is_number_word(nxt) or nxt in _ZERO_WORDS or nxt in _NOT_AFTER_AT_HOUR:
            return None
        return "at " + self.clock(hh, 0, None), 1 + n

    @staticmethod
    def _is_number_word(w: str) -> bool:
        return w.isdigit() or w in UNITS or w in TEENS or w in TENS or w in _REPEAT_WORDS

    # -- dates -----------------------------------------------------------------------------

    def date(self, i: int) -> tuple[str, int] | None:
        w = self.tok(i)
        if w in MONTHS:
            j = i + 1 + (1 if self.tok(i + 1) == "the" else 0)
            day = self.day_number(j)
            if day is not None:
                return f"{w} {day[0]}{_ordinal_suffix(day[0])}", j - i + day[1]
            return None
        j = i + (1 if w == "the" else 0)
        day = self.ordinal(j) if w == "the" else self.day_number(j)
        if day is None:
            return None
        k = j + day[1]
        k += 1 if self.tok(k) == "of" else 0
        month = self.tok(k)
        if month in MONTHS:
            return f"{month} {day[0]}{_ordinal_suffix(day[0])}", k - i + 1
        if w == "the" and self.ordinal(j) is not None:
            return f"the {day[0]}{_ordinal_suffix(day[0])}", j - i + day[1]
        return None

    # -- digit runs and postcodes ----------------------------------------------------------

    def digit_item(self, i: int) -> tuple[str, int] | None:
        w = self.tok(i)
        if w.isdigit():
            return w, 1
        if w in UNITS:
            if self.tok(i + 1) in ("hundred", "thousand"):
                return None
            return str(UNITS[w]), 1
        if w in _ZERO_WORDS:
            return "0", 1
        if w in _REPEAT_WORDS:
            nxt = self.tok(i + 1)
            digit = str(UNITS[nxt]) if nxt in UNITS else nxt if re.fullmatch(r"\d", nxt) else ""
            if digit:
                return digit * _REPEAT_WORDS[w], 2
        return None

    def digit_run(self, i: int) -> tuple[str, int] | None:
        parts: list[str] = []
        words: list[str] = []
        j = i
        while True:
            item = self.digit_item(j)
            if item is None:
                break
            parts.append(item[0])
            words.append(self.tok(j))
            j += item[1]
        # a leading "oh"/"o" needs 2 digits after it ("oh i see", "oh two" stay words)
        if words and words[0] in _ZERO_WORDS and len(words) < 3:
            return None
        repeated = any(w in _REPEAT_WORDS for w in words)
        if len(parts) >= 2 or repeated:
            return "".join(parts), j - i
        return None

    def postcode(self, i: int) -> tuple[str, int] | None:
        """A UK postcode spelled in pieces: "n w one four e n", "sw1a 1aa", "nw14en"; a W
        said as its name: "n double u five ...", "n double you5 ..." (the recogniser's)."""
        pieces: list[str] = []
        best: tuple[str, int] | None = None
        j = i
        while j < min(i + 9, len(self.t)):
            w, used = self.t[j], 1
            double_u = _DOUBLE_U_RE.fullmatch(self.tok(j + 1)) if w == "double" else None
            if double_u is not None:  # "double u" / "double you", maybe a figure after it
                w, used = "w" + double_u.group(1), 2
            number = UNITS.get(w, TEENS.get(w))  # "e fourteen" -> "e14"
            piece = str(number) if number is not None else w
            if not _POSTCODE_PIECE_RE.fullmatch(piece):
                break
            if len(piece) > 1 and piece.isalpha():
                break  # a real word ends the spelling
            pieces.append(piece)
            j += used
            m = _POSTCODE_RE.fullmatch("".join(pieces))
            if m:
                best = f"{m.group(1)} {m.group(2)}", j - i
        return best

    # -- driver ----------------------------------------------------------------------------

    def run(self) -> list[str]:
        out: list[str] = []
        i = 0
        while i < len(self.t):
            w = self.t[i]
            found = self.postcode(i) or self.time(i) or self.date(i) or self.digit_run(i)
            if found is not None:
                out.append(found[0])
                i += found[1]
                continue
            card = self.cardinal(i)
            if card is not None and not (w == "one" and card[1] == 1):
                out.append(str(card[0]))
                i += card[1]
                continue
            out.append(w)
            i += 1
        return out


def normalize(text: str, *, afternoon_below_hour: int = 8) -> str:
    """Rewrite one recognised utterance into the canonical form Rasa was trained on.

    ``afternoon_below_hour``: a time said without am/pm whose hour is below this (and >= 1)
    is taken as pm ("at three" -> "15:00"); 0 disables the guess.
    """
    cleaned = text.lower()
    for pattern, replacement in _CLEANUPS:
        cleaned = pattern.sub(replacement, cleaned)
    tokens = cleaned.split()
    return " ".join(_Parser(tokens, afternoon_below_hour).run())


def count_digits(text: str) -> int:
    """How many digits ``text`` says, written or as words ("Six, nine, 1." -> 3)."""
    return sum(c.isdigit() for c in normalize(text))
