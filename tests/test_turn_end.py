"""call/turn_end.py: the end-of-turn rules on one pause, as pure functions (the listener's
timelines in test_turns.py / test_expect.py run the same rules with the real clocks)."""

from __future__ import annotations

import pytest

from voicebot_pbx.call.turn_end import (
    CONFIRMED_DATE,
    FINISHED,
    NOTHING_EXPECTED,
    AnswerExpected,
    PauseEvidence,
    TurnRules,
    answer_expected,
    end_after,
    longest_silence_ms,
    waited_for_answer_s,
    waited_unfinished_s,
)
from voicebot_pbx.config import Config
from voicebot_pbx.speech.expect import Expectation
from voicebot_pbx.speech.stt import SttResult

# Distinct values, so a verdict says which setting it came from.
RULES = TurnRules(
    end_silence_ms=150,
    end_silence_max_ms=700,
    tiebreak_silence_ms=250,
    digits_max_silence_ms=1500,
    unfinished_max_silence_ms=1300,
    text_wait=False,
    detector="smart-turn",
    reading=False,
)


def rules(**changes: object) -> TurnRules:
    fields = {name: getattr(RULES, name) for name in TurnRules.__slots__}
    fields.update(changes)
    return TurnRules(**fields)  # type: ignore[arg-type]


def decoded(text: str, held_to: str | None = None) -> SttResult:
    return SttResult(text, 0.9, held_to=held_to)


EIGHT_DIGITS = AnswerExpected(digits=8)
DATE_OR_POSTCODE = AnswerExpected(read_out=True)
KNOWN_DATE_OR_POSTCODE = AnswerExpected(read_out=True, known_checked=True)


def test_the_model_hearing_a_finished_turn_ends_it_at_the_short_silence() -> None:
    pause = PauseEvidence(decode=decoded("I'd like to"), model_complete=True)
    assert end_after(RULES, NOTHING_EXPECTED, pause) == (150, "detector")


def test_an_unfinished_verdict_is_broken_by_a_transcript_that_reads_finished() -> None:
    finished = PauseEvidence(decode=decoded("What are your opening hours?"), model_complete=False)
    unfinished = PauseEvidence(decode=decoded("I'd like to"), model_complete=False)
    assert end_after(RULES, NOTHING_EXPECTED, finished) == (250, "tiebreak")
    assert end_after(RULES, NOTHING_EXPECTED, unfinished) is None
    assert end_after(rules(tiebreak_silence_ms=0), NOTHING_EXPECTED, finished) is None


def test_no_verdict_yet_leaves_the_pause_to_the_maximum_silence() -> None:
    pause = PauseEvidence(decode=decoded("What are your opening hours?"))
    assert end_after(RULES, NOTHING_EXPECTED, pause) is None
    assert longest_silence_ms(RULES, NOTHING_EXPECTED) is None  # the endpointer's own 700


def test_the_transcript_detector_reads_the_word_list_and_silence_reads_nothing() -> None:
    finished = PauseEvidence(decode=decoded("Put me through to an agent."))
    unfinished = PauseEvidence(decode=decoded("My account number is"))
    transcript = rules(detector="transcript")
    assert end_after(transcript, NOTHING_EXPECTED, finished) == (150, "detector")
    assert end_after(transcript, NOTHING_EXPECTED, unfinished) is None
    assert end_after(rules(detector="silence"), NOTHING_EXPECTED, finished) is None


def test_the_text_reader_holds_an_unfinished_transcript_and_ends_a_finished_one() -> None:
    reading = rules(reading=True)
    # The text reader arms a longer maximum (1300 ms) than the endpointer's 700.
    assert longest_silence_ms(reading, NOTHING_EXPECTED) == 1300
    held = PauseEvidence(decode=decoded("I'd like to"), text_read="unfinished", model_complete=True)
    assert end_after(reading, NOTHING_EXPECTED, held) is None
    finished = PauseEvidence(decode=decoded("yes"), text_read="finished", model_complete=False)
    assert end_after(reading, NOTHING_EXPECTED, finished) == (150, "text")
    unsure = PauseEvidence(decode=decoded("yes"), text_read="unsure", model_complete=False)
    assert end_after(reading, NOTHING_EXPECTED, unsure) == (250, "tiebreak")
    # Nothing holds the pause and no detector spoke: the usual maximum, said explicitly
    # because the endpointer was told to wait longer.
    quiet = PauseEvidence(decode=decoded("yes"), text_read="unsure")
    assert end_after(reading, NOTHING_EXPECTED, quiet) == (700, "silence")


def test_with_text_wait_nothing_ends_the_pause_before_the_reader_has_read_it() -> None:
    unread = PauseEvidence(decode=decoded("yes"), model_complete=True)
    assert end_after(rules(reading=True, text_wait=True), NOTHING_EXPECTED, unread) is None
    assert end_after(rules(reading=True), NOTHING_EXPECTED, unread) == (150, "detector")


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        ("", (150, "detector")),  # no digit said: the other rules decide
        ("It's 4 4 7 1", None),  # four of eight: wait
        ("4 4 7 1 0 9 3 2", (150, "digits")),
        ("four four seven one oh nine three two", (150, "digits")),
    ],
)
def test_digits_expected_end_the_turn_when_all_are_heard(
    text: str, verdict: tuple[int, str] | None
) -> None:
    pause = PauseEvidence(decode=decoded(text), model_complete=True)
    assert end_after(RULES, EIGHT_DIGITS, pause) == verdict


def test_a_held_answer_waits_for_the_decode_at_its_pause() -> None:
    still_decoding = PauseEvidence(model_complete=True, text_read="finished")
    assert end_after(RULES, EIGHT_DIGITS, still_decoding) is None
    assert end_after(RULES, DATE_OR_POSTCODE, still_decoding) is None
    assert end_after(RULES, NOTHING_EXPECTED, still_decoding) == (150, "detector")


def test_a_postcode_or_date_read_out_waits_after_any_digit() -> None:
    part = PauseEvidence(decode=decoded("N W 5"), model_complete=True)
    assert end_after(RULES, DATE_OR_POSTCODE, part) is None
    no_digit = PauseEvidence(decode=decoded("I don't know it"), model_complete=True)
    assert end_after(RULES, DATE_OR_POSTCODE, no_digit) == (150, "detector")


def test_with_answers_known_only_a_confirmed_date_ends_the_turn_early() -> None:
    confirmed = PauseEvidence(decode=decoded("12 March 1961", CONFIRMED_DATE))
    assert end_after(RULES, KNOWN_DATE_OR_POSTCODE, confirmed) == (150, "known")
    assert end_after(RULES, DATE_OR_POSTCODE, confirmed) == (150, "known")
    # A decode that confirms nothing may be a garbled first half: wait, digits or not.
    garbled = PauseEvidence(decode=decoded("But when people come"), model_complete=True)
    assert end_after(RULES, KNOWN_DATE_OR_POSTCODE, garbled) is None
    # A confirmed postcode has no end guard: it waits like any read-out digit.
    postcode = PauseEvidence(decode=decoded("N W 9 5 A E", "known:postcode"))
    assert end_after(RULES, KNOWN_DATE_OR_POSTCODE, postcode) is None


def test_the_rules_that_say_the_caller_finished() -> None:
    assert {"detector", "digits", "known", "text"} == FINISHED
    assert "tiebreak" not in FINISHED and "silence" not in FINISHED


@pytest.mark.parametrize(
    ("kinds", "digits", "holding_ms", "expected"),
    [
        ({Expectation.DIGITS}, 8, 1500, AnswerExpected(digits=8)),
        ({Expectation.DIGITS}, None, 1500, AnswerExpected()),  # no count: nothing counted
        ({Expectation.DIGITS}, 8, 0, AnswerExpected()),  # the rule off
        ({Expectation.POSTCODE}, None, 1500, AnswerExpected(read_out=True)),
        ({Expectation.DATE, Expectation.POSTCODE}, None, 0, AnswerExpected()),
        # Counted digits take precedence over a read-out answer of the same turn.
        ({Expectation.DIGITS, Expectation.DATE}, 6, 1500, AnswerExpected(digits=6)),
    ],
)
def test_what_the_rules_hold_of_an_expected_answer(
    kinds: set[Expectation], digits: int | None, holding_ms: int, expected: AnswerExpected
) -> None:
    held = answer_expected(rules(digits_max_silence_ms=holding_ms), frozenset(kinds), digits, False)
    assert held == expected


def test_the_longest_wait_armed_and_how_much_longer_a_turn_waited() -> None:
    reading = rules(reading=True)
    assert longest_silence_ms(RULES, EIGHT_DIGITS) == 1500
    assert longest_silence_ms(reading, EIGHT_DIGITS) == 1500
    # Ended by the maximum silence while digits were held: 1.5 s against the usual 0.7 s.
    assert waited_for_answer_s(RULES, EIGHT_DIGITS, "silence") == pytest.approx(0.8)
    assert waited_for_answer_s(RULES, EIGHT_DIGITS, "digits") == 0.0
    assert waited_for_answer_s(RULES, NOTHING_EXPECTED, "silence") == 0.0
    # Read unfinished: the text reader's 1.3 s, less what the digits already account for.
    assert waited_unfinished_s(reading, NOTHING_EXPECTED, "silence", "unfinished") == (
        pytest.approx(0.6)
    )
    assert waited_unfinished_s(reading, EIGHT_DIGITS, "silence", "unfinished") == 0.0
    assert waited_unfinished_s(reading, NOTHING_EXPECTED, "silence", "finished") == 0.0


def test_the_rules_read_the_configured_settings() -> None:
    config = Config()
    read = TurnRules.from_config(config, reading=True)
    assert read.end_silence_ms == config.vad.end_silence_ms
    assert read.end_silence_max_ms == config.vad.end_silence_max_ms
    assert read.tiebreak_silence_ms == config.turn.tiebreak_silence_ms
    assert read.digits_max_silence_ms == config.turn.digits_max_silence_ms
    assert read.unfinished_max_silence_ms == config.turn.unfinished_max_silence_ms
    assert read.detector == config.turn.detector
    assert read.reading
