"""Whether a caller's words are nothing but an identity answer, and whether they say the
account number read back is wrong (pure; no rasa_sdk here).

After "what's the postcode of the property, or the account holder's date of birth?", a
caller spells letters and digits or says a date. On a phone line such an answer is often
heard as a string of odd letters ("and b y b v e v"), which Rasa's classifier may put in
any intent, an FAQ's or a goodbye's among them: the form then steps aside for the FAQ's
answer (the customer centre's address) or the goodbye instead of checking the answer.
Words made only of what a postcode or a date is made of are the answer, whatever intent
they were given; a question in the middle ("what's your address?") has other words and is
answered as before.
"""

from __future__ import annotations

import re

from .wording import MONTH_NAMES, say_number, say_ordinal

# The words a spoken postcode or date of birth is made of, besides single letters and
# figures (the bot's normaliser writes most numbers as figures, "23rd" as a figure with its
# ending): number and ordinal words up to 99, the months, and the small words between.
_NUMBER_WORDS = frozenset(
    part
    for n in range(100)
    for words in (say_number(n), say_ordinal(n))
    for part in re.split(r"[ -]", words)
)
ANSWER_WORDS = frozenset(
    {
        *_NUMBER_WORDS,
        *(m.lower() for m in MONTH_NAMES),
        "hundred",
        "thousand",
        "oh",
        "double",
        "triple",
    }
)
# Said between them, saying nothing on their own.
_BETWEEN = frozenset({"the", "of", "and"})
# A letter said alone, a figure ("23rd" included) or a piece of a postcode ("nw3", "9rp").
_PIECE = re.compile(r"[a-z]|\d+(?:st|nd|rd|th)?|[a-z]{0,2}\d[a-z\d]{0,2}")
_WORD = re.compile(r"[a-z0-9]+")


def only_answer_words(text: str) -> bool:
    """``text`` is made only of the words of a postcode or a date of birth, and says at
    least one of them ("and b y b v e v", "nw3 9rp", "the 23rd of june 19 87"; not
    "what's your address", "no", "the of")."""
    words = _WORD.findall(text.lower())
    said = [w for w in words if w not in _BETWEEN]
    return bool(said) and all(_PIECE.fullmatch(w) or w in ANSWER_WORDS for w in said)


# "No", "wrong", ... anywhere; "not" / "isn't" only before what was read back ("not it", "not
# right", "isn't my number") or at the end ("it's not"): a spelled postcode garbled by the
# line holds a bare "not" often enough ("N W 7, 8 L W" heard as "and not a new fan when say
# pal not a new").
_CORRECTION = re.compile(
    r"\b(?:no|nope|wrong|incorrect|mistake)\b"
    r"|\b(?:not|isn't|isnt)\s+(?:\w+\s+)?(?:it|right|correct|mine|my|that|this|the)\b"
    r"|\b(?:not|isn't|isnt)\W*$",
    re.IGNORECASE,
)


def says_it_is_wrong(text: str) -> bool:
    """Whether ``text`` says what the bot read back is wrong ("no, that's not it", "that's
    the wrong number", "it isn't mine")."""
    return _CORRECTION.search(text) is not None
