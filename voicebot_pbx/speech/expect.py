"""What the caller is expected to say next, and decoding held to it (pure).

After the dialogue asks for an account number, the caller's next turn is most likely digits;
after "the postcode, or the date of birth?", letters and digits or a date. A free decode of
digits read out one by one on a phone line often turns them into words ("five" -> "time",
"nine" -> "I'm"); a decode held to the words such an answer is made of does not. But a
caller may answer anything ("I don't have it"), so the engine decodes both ways on the same
encoder output and :func:`prefer` keeps the held decode only when the model is about as sure
of it as of the free one (a held decode of other words comes out empty, looping or far less
likely).

:class:`HeldVocabulary` holds a decode to whole words: at each step it allows the tokens
that continue or end the current word as the start of an allowed word (in lower case or
capitalised), or start a new one once the current word is complete; digits, spaces and
``,.-?`` are always allowed. The dialogue says what it expects (Rasa: ``custom: {action:
collect_dtmf, expect: [digits]}``).

Measured in ``bench/eval_balance.py`` (README "Answers the dialogue expects").
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from voicebot_pbx.speech.stt import SttResult


class Expectation(enum.StrEnum):
    DIGITS = "digits"  # an account number, a PIN: digits one by one, "oh" for zero
    POSTCODE = "postcode"  # letters and digits one by one ("N W 9, 4 R Q")
    DATE = "date"  # "the 23rd of June 1987", "twenty third June nineteen eighty seven"


Expected = frozenset[Expectation]

_DIGIT_WORDS = "zero oh o one two three four five six seven eight nine".split()
_NUMBER_WORDS = (
    "ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty "
    "thirty forty fifty sixty seventy eighty ninety hundred thousand"
).split()
_ORDINALS = (
    "first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth "
    "thirteenth fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth twentieth "
    "thirtieth st nd rd th"
).split()
_MONTHS = (
    "january february march april may june july august september october november december"
).split()
WORDS: dict[Expectation, frozenset[str]] = {
    Expectation.DIGITS: frozenset(_DIGIT_WORDS),
    Expectation.POSTCODE: frozenset([*_DIGIT_WORDS, *"abcdefghijklmnopqrstuvwxyz", "double"]),
    Expectation.DATE: frozenset(
        [*_DIGIT_WORDS, *_NUMBER_WORDS, *_ORDINALS, *_MONTHS, "the", "of", "and"]
    ),
}

# How much less sure (mean token probability, 0..1) the held decode may be than the free one
# and still win: digits read out are about as likely either way or likelier held; other
# words held to digits lose 0.2-0.5 or come out empty (README "Answers the dialogue expects").
DEFAULT_MARGIN = 0.05

# Each digit word's figure, in _DIGIT_WORDS' order ("zero", "oh" and "o" are all 0).
_DIGIT_VALUE = dict(zip(_DIGIT_WORDS, "000123456789", strict=True))
_DIGIT_WORD_SET = frozenset(_DIGIT_WORDS)
_WORD_START = ("\u2581", " ")  # SentencePiece's word-start mark, or a space
_BREAKS = frozenset(" ,.-?0123456789")  # end a word; always allowed
_RUNS = re.compile(r"[a-z]+|[0-9]+")


def read_digits(text: str) -> str:
    """The digits ``text`` reads out, in order: each figure, and each digit word ("five",
    "oh"). Exact for a decode held to digits (it has no other words)."""
    out: list[str] = []
    for run in _RUNS.findall(text.lower()):
        if run.isdigit():
            out.append(run)
        elif run in _DIGIT_VALUE:
            out.append(_DIGIT_VALUE[run])
    return "".join(out)


def count_digits(text: str) -> int:
    """How many digits ``text`` reads out (:func:`read_digits`)."""
    return len(read_digits(text))


def parse_expected(values: Iterable[object]) -> Expected:
    """Expectations from the dialogue's words for them; unknown ones raise ValueError."""
    return frozenset(Expectation(str(v)) for v in values)


def label(expected: Expected) -> str:
    """ "digits", "date+postcode": for logs and the transcript's ``held_to``."""
    return "+".join(sorted(expected))


@dataclass(frozen=True, slots=True)
class _Piece:
    lead: str  # letters before the first break ("" if it starts with one)
    tail: str | None  # letters after the last break; None when the piece has no break
    inner: tuple[str, ...]  # whole words between breaks


def _parse_piece(piece: str) -> _Piece | None:
    """A vocabulary piece as letters and breaks, or None when it has anything else."""
    text = piece.replace("\u2581", " ")
    runs: list[str] = []
    current = ""
    broken = False
    for char in text:
        if char.isascii() and char.isalpha():
            current += char
        elif char in _BREAKS:
            runs.append(current)
            current = ""
            broken = True
        else:
            return None
    if not broken:
        return _Piece(lead=current, tail=None, inner=())
    return _Piece(lead=runs[0], tail=current, inner=tuple(r for r in runs[1:] if r))


class HeldVocabulary:
    """Which tokens a decode held to ``words`` may emit next. The state of a decode is
    the word it is in the middle of (letters since the last break); :meth:`allowed`
    gives the token ids for a state (cached), :meth:`advance` the state after a token.
    ``pieces`` is the tokenizer's vocabulary as text (SentencePiece ``\u2581`` marks a
    word start); ``special`` ids are never allowed; ``end_id`` (end of text) is allowed
    between words."""

    def __init__(
        self,
        pieces: Sequence[str],
        words: Iterable[str],
        *,
        end_id: int,
        special: Iterable[int] = (),
    ) -> None:
        # As written: lower case, or capitalised (a sentence's first word, a month, a
        # letter); not "fiVe" pieced together from odd-cased pieces.
        self.words = frozenset(v for w in words for v in (w.lower(), w.capitalize()))
        self._prefixes = frozenset(w[:k] for w in self.words for k in range(len(w) + 1))
        self.end_id = end_id
        excluded = set(special) | {end_id}
        self._pieces: list[_Piece | None] = [
            None if i in excluded or not piece else _parse_piece(piece)
            for i, piece in enumerate(pieces)
        ]
        # Tokens by their leading letters: those that end the word inside them (a break
        # follows), provided what follows the break is allowed, and those that do not.
        self._closing: dict[str, list[int]] = {}
        self._open: dict[str, list[int]] = {}
        for token_id, parsed in enumerate(self._pieces):
            if parsed is None:
                continue
            if parsed.tail is None:
                self._open.setdefault(parsed.lead, []).append(token_id)
            elif all(w in self.words for w in parsed.inner) and parsed.tail in self._prefixes:
                self._closing.setdefault(parsed.lead, []).append(token_id)
        self._cache: dict[str, npt.NDArray[np.int64]] = {}
        # Figures each token writes ("5,", "1016"): for decodes held to a count of digits.
        self._figures = [sum(c.isdigit() for c in piece) for piece in pieces]

    def complete(self, state: str) -> bool:
        """Whether a decode may end (or break) here: between words or after a whole one."""
        return state == "" or state in self.words

    def allowed(self, state: str) -> npt.NDArray[np.int64]:
        """Token ids allowed after ``state`` (sorted), the end of text included when the
        word so far is complete."""
        cached = self._cache.get(state)
        if cached is not None:
            return cached
        ids: set[int] = set()
        if self.complete(state):
            ids.update(self._closing.get("", ()))
            ids.add(self.end_id)
        for word in self.words:
            if not word.startswith(state):
                continue
            for k in range(len(state) + 1, len(word) + 1):
                lead = word[len(state) : k]
                ids.update(self._open.get(lead, ()))
                if k == len(word):
                    ids.update(self._closing.get(lead, ()))
        allowed = np.array(sorted(ids), dtype=np.int64)
        self._cache[state] = allowed
        return allowed

    def digits_after(self, state: str, token_id: int) -> int:
        """How many digits ``token_id`` adds after ``state``: its figures, and the digit
        words ("five", "oh") it completes. The end of text adds :meth:`digits_ending`."""
        parsed = self._pieces[token_id]
        if parsed is None:
            return 0
        added = self._figures[token_id]
        if parsed.tail is not None:
            done = (state + parsed.lead, *parsed.inner)
            added += sum(w.lower() in _DIGIT_WORD_SET for w in done)
        return added

    @staticmethod
    def digits_ending(state: str) -> int:
        """1 when the decode ending at ``state`` completes a digit word, else 0."""
        return int(state.lower() in _DIGIT_WORD_SET)

    def advance(self, state: str, token_id: int) -> str:
        parsed = self._pieces[token_id]
        if parsed is None:  # the end of text (or a token the decode was not allowed)
            return ""
        return state + parsed.lead if parsed.tail is None else parsed.tail


def first_sentence(pieces: Sequence[str]) -> int:
    """How many of a decode's tokens (as vocabulary pieces) make its first sentence: up to
    a full stop or question mark followed by a new word (not "7.5" inside a number), or
    all of them when there is none. A held decode that runs on past the caller's words
    repeats itself ("Six, nine, one. Oh, oh, oh, ..."; "66135051. 66135051. ...") where a
    free one would have said a word that is not allowed; its first sentence is the answer."""
    for index, piece in enumerate(pieces[:-1]):
        if piece.rstrip().endswith((".", "?")) and pieces[index + 1].startswith(_WORD_START):
            return index + 1
    return len(pieces)


def spoken_units(text: str) -> int:
    """How much ``text`` says: its words, each figure counted as one ("NW9 4RQ": 4;
    "the 23rd of June 1987": 10)."""
    return sum(len(run) if run.isdigit() else 1 for run in _RUNS.findall(text.lower()))


def real_words(text: str) -> int:
    """Words of three letters or more in ``text``: what a free decode says beyond the
    letters and short pieces it makes of a spelled postcode ("And, u.l.u. F.m." -> 1;
    "No, that is not my account." -> 3)."""
    return sum(1 for run in _RUNS.findall(text.lower()) if run.isalpha() and len(run) >= 3)


# Said between the pieces of a date or a spelled postcode, saying nothing on their own.
_BETWEEN = frozenset({"the", "of", "and"})
_TOKEN = re.compile(r"[a-z0-9]+")
# A figure ("23rd" with its ending) or a piece of a postcode ("nw7", "8lw").
_FIGURE = re.compile(r"\d+(?:st|nd|rd|th)?|[a-z]{0,2}\d[a-z\d]{0,2}")


def only_expected_words(text: str, expected: Expected) -> bool:
    """``text`` says something and is made only of what an answer of ``expected`` is made
    of: figures and postcode pieces ("23rd", "nw7") and the expectations' words
    (:data:`WORDS`: a postcode's letters said alone, a date's number words and months);
    "the", "of" and "and" are allowed but say nothing. A spelled postcode as a phone line
    makes it ("And, u.l.u. F.m."), not "what's your address?" nor a lone "no"."""
    said = [word for word in _TOKEN.findall(text.lower()) if word not in _BETWEEN]
    allowed = frozenset().union(*(WORDS[e] for e in expected))
    return bool(said) and all(_FIGURE.fullmatch(word) or word in allowed for word in said)


# A free decode of these words alone is the caller's yes or no, not the start of an answer
# (a lone "no" held to a date comes out "November").
_YES_NO = frozenset({"no", "nope", "nah", "yes", "yeah", "yep", "yup"})


def only_yes_or_no(text: str) -> bool:
    """``text`` says nothing but yes or no words ("No.", "Nope, no.", "Yes")."""
    runs = _RUNS.findall(text.lower())
    return bool(runs) and all(run in _YES_NO for run in runs)


def prefer(free: SttResult, held: SttResult, *, margin: float = DEFAULT_MARGIN) -> bool:
    """Whether the held decode should be the transcript: it has words, its confidence is
    within ``margin`` of the free decode's (or the free one has none), the free one is
    not a yes or no alone (:func:`only_yes_or_no`), and it says at least half as much as
    the free one's words (:func:`real_words`): a held decode of one allowed word for a
    sentence of other words ("No, that is not my account number." held to a date:
    "November.") is not the answer, however sure of that word the model is."""
    if not held.text.strip() or held.confidence is None:
        return False
    if free.confidence is None or not free.text.strip():
        return True
    if only_yes_or_no(free.text):
        return False
    if 2 * spoken_units(held.text) < real_words(free.text):
        return False
    return held.confidence >= free.confidence - margin
