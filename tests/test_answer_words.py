"""Words that are nothing but an identity answer, and words that say a read-back is wrong
(rasa_project/actions/answer_words.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "rasa_project"))

from actions.answer_words import only_answer_words, says_it_is_wrong  # noqa: E402


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


@pytest.mark.parametrize(
    "text",
    [
        "no",
        "nope",
        "no that's not it",
        "that's the wrong number",
        "so that's the wrong number",  # the "no" lost on the line
        "that's not my number",
        "it isn't mine",
        "that's not right",
        "it's not",
        "incorrect",
    ],
)
def test_words_that_say_the_read_back_is_wrong(text: str) -> None:
    assert says_it_is_wrong(text)


@pytest.mark.parametrize(
    "text",
    [
        "and not a new fan when say pal not a new",  # a spelled postcode as the line made it
        "yes that's right",
        "n w 7 8 l w",
        "the 3rd of may 19 80",
        "that's not a problem",
    ],
)
def test_words_with_a_bare_not_do_not_say_the_read_back_is_wrong(text: str) -> None:
    assert not says_it_is_wrong(text)
