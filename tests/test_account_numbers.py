"""Account numbers as callers give them (``rasa_project/actions/account_numbers.py``): the
8 digits taken, and the readings of a spoken number worth looking up."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "rasa_project"))

from actions.account_numbers import (  # noqa: E402
    keyed_or_said_account,
    one_digit_too_many,
    readings_to_look_up,
)


@pytest.mark.parametrize(
    ("value", "number"),
    [
        ("31415926", "31415926"),
        ("3141 5926", "31415926"),
        ("3141-5926#", "31415926"),
        ("31415926*", None),
        ("3141592", None),
        ("314159265", None),
        (None, None),
    ],
)
def test_eight_digits_keyed_or_said(value: object, number: str | None) -> None:
    assert keyed_or_said_account(value) == number


def test_a_digit_heard_twice_is_left_out_first() -> None:
    # "5 0 9 6 7 7 9 2" heard as "500 96 77 92": the doubled 0, then the doubled 7 ...
    readings = one_digit_too_many("500 96 77 92")
    assert readings[:2] == ["50967792", "50096792"]
    # ... then every other digit from the left, each reading once
    assert readings[2:] == ["00967792", "50067792", "50097792", "50096772", "50096779"]
    assert len(set(readings)) == len(readings)


@pytest.mark.parametrize("value", ["3141592", "31415926", "3141592653", "31415926x", ""])
def test_only_a_number_one_digit_too_long_has_shorter_readings(value: str) -> None:
    assert one_digit_too_many(value) == []


def test_the_readings_to_look_up() -> None:
    heard = "27182818"
    # The recogniser's readings, in order, without the number heard or a repeat, capped.
    others = ("27182813", heard, "27182813", "2718281", "17182818", "27182819")
    assert readings_to_look_up(heard, heard, others, 2) == ["27182813", "17182818"]
    # Nine digits heard: no 8 taken; the readings, then the number with a digit left out.
    nine = readings_to_look_up(None, "271828188", ("27182813",), 3)
    assert nine[0] == "27182813" and nine[1] == "27182818"  # the doubled 8 first
    assert "71828188" in nine and len(nine) == len(set(nine))
    # 0: nothing looked up at all
    assert readings_to_look_up(None, "271828188", ("27182813",), 0) == []
