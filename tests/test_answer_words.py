"""Words that are nothing but an identity answer (rasa_project/actions/answer_words.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "rasa_project"))

from actions.answer_words import only_answer_words  # noqa: E402


@pytest.mark.parametrize(
    "text",
    [
        "and b y b v e v",  # a postcode as a phone line may make it
        "nw3 9rp",
        "n w 3 9 r p",
        "the 23rd of june 19 87",
        "twenty third of june nineteen eighty seven",
        "double 4 b",
        "k",
    ],
)
def test_an_answer_made_of_its_words(text: str) -> None:
    assert only_answer_words(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "what's your address",  # a question in the middle: answered, then asked again
        "where is your office",
        "no",
        "goodbye",
        "i want to speak to an agent",
        "the of",  # no letter or figure said
        "it's nw3 9rp please",  # other words: left to Rasa's reading
        "north 3",
    ],
)
def test_anything_else_is_not(text: str) -> None:
    assert not only_answer_words(text)
