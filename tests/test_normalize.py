"""voicebot_pbx.answers.normalize: spoken numbers, times, dates and postcodes -> Rasa's
canonical text."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from voicebot_pbx.answers.normalize import normalize

PROJECT = Path(__file__).resolve().parent.parent / "rasa_project"


@pytest.mark.parametrize(
    ("spoken", "expected"),
    [
        ("one two three four", "1234"),
        (
            "my account number is one two three four five six seven eight",
            "my account number is 12345678",
        ),
        ("double five", "55"),
        ("triple seven two", "7772"),
        ("one double two three", "1223"),
        ("seven seven oh one two three", "770123"),
        ("oh one two three", "0123"),
        ("five o two", "502"),
        ("1234 5678", "12345678"),
        ("1 2 3 4 5 6 7 8", "12345678"),
        ("zero nine", "09"),
    ],
)
def test_digit_runs(spoken: str, expected: str) -> None:
    assert normalize(spoken) == expected


@pytest.mark.parametrize(
    ("spoken", "expected"),
    [
        ("twenty five", "25"),
        ("i owe twenty five pounds", "i owe 25 pounds"),
        ("two hundred and fifty", "250"),
        ("a hundred", "100"),
        ("a hundred and five", "105"),
        ("three thousand two hundred", "3200"),
        ("nineteen", "19"),
        ("i have two kids", "i have 2 kids"),
        ("ninety nine", "99"),
    ],
)
def test_numbers(spoken: str, expected: str) -> None:
    assert normalize(spoken) == expected


@pytest.mark.parametrize(
    ("spoken", "expected"),
    [
        ("two pm", "14:00"),
        ("two p m", "14:00"),
        ("2 p.m.", "14:00"),
        ("2pm", "14:00"),
        ("2 PM", "14:00"),
        ("ten am", "10:00"),
        ("twelve am", "00:00"),
        ("twelve pm", "12:00"),
        ("half past three", "15:30"),
        ("half past nine", "09:30"),
        ("half past three in the morning", "03:30"),
        ("quarter past ten", "10:15"),
        ("a quarter to nine", "08:45"),
        ("quarter to one", "12:45"),
        ("ten past four", "16:10"),
        ("twenty five to six pm", "17:35"),
        ("three thirty", "15:30"),
        ("ten thirty", "10:30"),
        ("eight forty five", "08:45"),
        ("twelve fifteen", "12:15"),
        ("nine oh five am", "09:05"),
        ("at nine oh five", "at 09:05"),
        ("three o'clock", "15:00"),
        ("nine oclock in the morning", "09:00"),
        ("seven in the evening", "19:00"),
        ("nine in the morning", "09:00"),
        ("noon", "12:00"),
        ("twelve noon", "12:00"),
        ("midnight", "00:00"),
        ("3:30", "15:30"),
        ("3:30pm", "15:30"),
        ("3.30 pm", "15:30"),
        ("15:45", "15:45"),
        ("10:00", "10:00"),
        ("at three", "at 15:00"),
        ("at 10", "at 10:00"),
        ("tomorrow at two", "tomorrow at 14:00"),
        ("friday at half past ten", "friday at 10:30"),
    ],
)
def test_times(spoken: str, expected: str) -> None:
    assert normalize(spoken) == expected


def test_time_afternoon_guess_can_be_disabled() -> None:
    assert normalize("three thirty", afternoon_below_hour=0) == "03:30"
    assert normalize("at three", afternoon_below_hour=0) == "at 03:00"
    assert normalize("two pm", afternoon_below_hour=0) == "14:00"  # explicit pm still wins


@pytest.mark.parametrize(
    ("spoken", "expected"),
    [
        ("the fifth of march", "march 5th"),
        ("march fifth", "march 5th"),
        ("march the fifth", "march 5th"),
        ("march 5", "march 5th"),
        ("March 5th", "march 5th"),
        ("5th March", "march 5th"),
        ("5 march", "march 5th"),
        ("the twenty first of june", "june 21st"),
        ("june twenty second", "june 22nd"),
        ("the thirty first of december", "december 31st"),
        ("the twelfth of may", "may 12th"),
        ("the first of may", "may 1st"),
        ("may the fourth", "may 4th"),
        ("on the fifth", "on the 5th"),
        ("the 23rd", "the 23rd"),
        ("april eleventh", "april 11th"),
        ("tomorrow", "tomorrow"),
        ("the day after tomorrow", "the day after tomorrow"),
        ("next monday", "next monday"),
        ("book it for tomorrow please", "book it for tomorrow please"),
    ],
)
def test_dates(spoken: str, expected: str) -> None:
    assert normalize(spoken) == expected


@pytest.mark.parametrize(
    ("spoken", "expected"),
    [
        ("my postcode is n w one four e n", "my postcode is nw1 4en"),
        ("sw1a 1aa", "sw1a 1aa"),
        ("SW1A 1AA", "sw1a 1aa"),
        ("nw14en", "nw1 4en"),
        ("m one one a e", "m1 1ae"),
        ("it's e fourteen five a b", "it's e14 5ab"),
        # W said as its name, as recognisers write it
        ("n double u five six p l", "nw5 6pl"),
        ("n double u5 6 p l", "nw5 6pl"),
        ("double you one four e n", "w1 4en"),
        ("s double u nine, two b y", "sw9 2by"),
        # "double" before a digit is still two of it, and "double u" in words stays words
        ("my number is double five one two", "my number is 5512"),
        ("i want double you know", "i want double you know"),
    ],
)
def test_postcodes(spoken: str, expected: str) -> None:
    assert normalize(spoken) == expected


@pytest.mark.parametrize(
    ("spoken", "expected"),
    [
        # words that look like numbers or times but are not
        ("no one answered", "no one answered"),
        ("the one i got last month", "the one i got last month"),
        ("look at one of them", "look at one of them"),
        ("at least two", "at least 2"),
        ("oh i see", "oh i see"),
        ("may i speak to an agent", "may i speak to an agent"),
        ("i want to speak to someone", "i want to speak to someone"),
        ("i am calling about my bill", "i am calling about my bill"),
        ("a man called", "a man called"),
        ("uh i wanna like check my balance", "uh i wanna like check my balance"),
        ("wat time r u open", "wat time r u open"),
        ("first of all", "first of all"),
    ],
)
def test_leaves_ordinary_words_alone(spoken: str, expected: str) -> None:
    assert normalize(spoken) == expected


@pytest.mark.parametrize(
    ("spoken", "expected"),
    [
        ("Hello, I'd like to book an appointment.", "hello i'd like to book an appointment"),
        ("What's the weather?!", "what's the weather"),
        ("twenty-five", "25"),
        ("one-two-three-four", "1234"),
        ("12,345", "12345"),
        ('/dtmf{"digits":"1"}', "dtmf digits 1"),
        ("/restart", "restart"),
        ("  lots   of   space  ", "lots of space"),
        ("", ""),
        ("'quoted'", "quoted"),
    ],
)
def test_cleanup(spoken: str, expected: str) -> None:
    assert normalize(spoken) == expected


def test_full_sentences() -> None:
    assert (
        normalize("I'd like to book an appointment for March 5th at 2 p.m.")
        == "i'd like to book an appointment for march 5th at 14:00"
    )
    assert (
        normalize("can someone come on the fifth of march at half past two")
        == "can someone come on march 5th at 14:30"
    )
    assert (
        normalize("my account number is double four five six seven eight nine oh")
        == "my account number is 44567890"
    )


def test_idempotent() -> None:
    for text in (
        "i'd like to book for march 5th at 14:00",
        "my account number is 12345678",
        "power cut at nw1 4en",
        "the 5th at 09:30",
        "i owe 25 pounds",
    ):
        assert normalize(normalize(text)) == normalize(text) == text


def _examples(path: Path) -> list[str]:
    texts: list[str] = []
    intent: str | None = None
    for line in path.read_text().splitlines():
        header = re.match(r"\s+- (intent|regex|lookup|synonym): (\w+)", line)
        if header:
            intent = header.group(2) if header.group(1) == "intent" else None
            continue
        item = re.match(r"\s+- (.*)$", line)
        if item and intent:
            texts.append(re.sub(r"\[([^\]]+)\]\(\w+\)", r"\1", item.group(1)))
    return texts


@pytest.mark.parametrize("name", ["data/nlu.yml", "tests/nlu_test.yml"])
def test_rasa_examples_are_already_normalised(name: str) -> None:
    """Rasa must be trained on the text it will receive: every example is a fixed point."""
    examples = _examples(PROJECT / name)
    assert len(examples) > 90
    changed = [(t, normalize(t)) for t in examples if normalize(t) != t]
    assert changed == []
