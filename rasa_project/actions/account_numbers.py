"""Account numbers as callers give them: keyed or said, and the readings of a spoken one
that are worth looking up in the billing back end.

Pure functions, standard library only, Python 3.10+ (the action server imports them, and so
does ``bench/eval_account_digits.py``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

ACCOUNT_DIGITS = 8


def keyed_or_said_account(value: Any) -> str | None:
    """8 digits from what the caller said or keyed, or None. A keyed ``#`` ends the entry;
    a ``*`` (or anything else) makes it a mistake."""
    text = str(value or "").strip().rstrip("#")
    digits = re.sub(r"[\s-]", "", text)
    if len(digits) == ACCOUNT_DIGITS and digits.isdigit():
        return digits
    return None


def one_digit_too_many(value: Any, size: int = ACCOUNT_DIGITS) -> list[str]:
    """The numbers of ``size`` digits that a spoken number heard with one digit more
    becomes with one digit left out, likeliest first: a digit heard twice where it was said
    once ("5 0 0 9 6 ..." for "5 0 9 6 ..."; the recogniser's "500" for "five oh"), then
    each other digit from the left (a word heard as a digit, "three" before the first).
    Empty unless ``value`` is exactly ``size`` + 1 digits (spaces and hyphens ignored)."""
    digits = re.sub(r"[\s-]", "", str(value or ""))
    if len(digits) != size + 1 or not digits.isdigit():
        return []
    doubled = [i for i in range(1, len(digits)) if digits[i] == digits[i - 1]]
    order = doubled + [i for i in range(len(digits)) if i not in doubled]
    shorter = (digits[:i] + digits[i + 1 :] for i in order)
    return list(dict.fromkeys(shorter))


def readings_to_look_up(
    heard: str | None, said: Any, alternatives: Sequence[str], limit: int
) -> list[str]:
    """The numbers to look up, in order, when ``heard`` (the 8 digits taken from what the
    caller ``said``, or None) may be no account: the recogniser's other readings
    (``alternatives``, at most ``limit``), then the readings of a number heard with one
    digit too many (:func:`one_digit_too_many`). ``limit`` 0: none at all."""
    if limit <= 0:
        return []
    others = [r for r in dict.fromkeys(alternatives) if r != heard and keyed_or_said_account(r)][
        :limit
    ]
    if heard is None:
        others += [r for r in one_digit_too_many(said) if r not in others]
    return others
