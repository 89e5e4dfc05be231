"""Known answers (voicebot_pbx/speech/verify.py): the identity question carries the answers
the back end knows, the session hands them to the recogniser with the caller's answer, and
Moonshine confirms the one the caller says, and not another."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import pytest
from structlog.testing import capture_logs

from tests.speech import espeak_pcm, have_espeak
from tests.test_expect import ExpectingScriptedStt, asking_shared
from tests.test_turns import DIGITS, HOURS, PHRASES, timeline
from voicebot_pbx.answers.dialogue import CallInfo, DialogueTurn, RuleDialogue
from voicebot_pbx.answers.rasa import parse_bot_messages
from voicebot_pbx.models import MOONSHINE_BASE_EN, MOONSHINE_TOKENIZER, model_path
from voicebot_pbx.speech.expect import Expectation
from voicebot_pbx.speech.moonshine import MoonshineEngine
from voicebot_pbx.speech.verify import (
    MIN_END_GAP,
    FormScore,
    KnownAnswer,
    accepted,
    known_answers,
    rival_classes,
    spoken_forms,
    written,
)
from voicebot_pbx.testing import run_virtual, tone

POSTCODE = KnownAnswer(Expectation.POSTCODE, "NW9 4RQ")
BORN = KnownAnswer(Expectation.DATE, "1987-06-23")
EXPECTED = frozenset({Expectation.POSTCODE, Expectation.DATE})


def test_the_payloads_answers_are_read_and_bad_ones_left_out() -> None:
    assert known_answers({"postcode": "nw9 4rq", "date": "1987-06-23"}) == (POSTCODE, BORN)
    assert known_answers({"postcode": "NW9", "date": "23/06/1987"}) == ()
    assert known_answers({"date": "1987-06-23", "pin": "1234"}) == (BORN,)
    assert known_answers({}) == ()


def test_a_confirmed_answer_is_written_as_the_dialogue_reads_it() -> None:
    assert written(POSTCODE) == "NW9 4RQ"
    assert written(BORN) == "the 23rd of June 1987"
    assert written(KnownAnswer(Expectation.DATE, "2001-03-11")) == "the 11th of March 2001"
    assert spoken_forms(POSTCODE) == ["N W 9, 4 R Q.", "NW9 4RQ."]
    assert spoken_forms(BORN) == ["The 23rd of June 1987.", "June 23rd, 1987."]


def test_digits_letters_and_months_are_each_others_rivals() -> None:
    pieces = ["<s>", "7", "3", "R", "\u2581R", "\u2581T", "Q", "\u2581June", "\u2581May", "of"]
    rivals = rival_classes(pieces)
    assert rivals[1] == (2,)  # "7" against "3"
    assert rivals[3] == (6,)  # "R" against "Q", not against "\u2581T"
    assert rivals[4] == (5,)
    assert rivals[7] == (8,)  # June against May
    assert 0 not in rivals and 9 not in rivals  # nothing to compare "of" with


def test_an_answer_is_confirmed_on_its_lead_and_its_worst_token() -> None:
    date = Expectation.DATE
    assert accepted(FormScore(-1.0, 1.2, -0.5), date, 0.5, -3.0)
    assert not accepted(FormScore(-1.0, 0.3, -0.5), date, 0.5, -3.0)  # trails on average
    assert not accepted(FormScore(-1.0, 2.0, -4.0), date, 0.5, -3.0)  # one token far behind
    assert not accepted(FormScore(-1.0, math.inf, math.inf), date, 0.5, -3.0)  # nothing


def test_an_answer_whose_tokens_barely_beat_the_end_of_the_text_is_not_confirmed() -> None:
    """Audio that stopped before a date's end ("the 23rd of June", no year): the decoder
    fills in the rest, leading its rivals, but those tokens barely beat the end of the text.
    Postcodes have no such guard: their letters compete with the end even when heard."""
    date, postcode = Expectation.DATE, Expectation.POSTCODE
    heard_to_the_end = FormScore(-1.0, 2.0, -0.5, MIN_END_GAP[date] + 1.0)
    cut_short = FormScore(-1.0, 2.0, -0.5, MIN_END_GAP[date] - 1.0)
    assert accepted(heard_to_the_end, date, 0.5, -3.0)
    assert not accepted(cut_short, date, 0.5, -3.0)
    assert accepted(FormScore(-1.0, 2.0, -0.5, -7.0), postcode, 0.5, -3.0)


def test_the_verify_payload_becomes_the_turns_known_answers_out_of_sight() -> None:
    custom = {
        "action": "collect_dtmf",
        "max_digits": 8,
        "expect": ["postcode", "date"],
        "verify": {"postcode": "NW9 4RQ", "date": "1987-06-23"},
    }
    said = parse_bot_messages([{"text": "What's the postcode?", "custom": custom}])
    assert said.known == (("postcode", "NW9 4RQ"), ("date", "1987-06-23"))
    assert "NW9 4RQ" not in repr(said)
    assert "NW9 4RQ" not in repr(DialogueTurn(known=said.known))
    with capture_logs() as logs:
        bad = parse_bot_messages([{"custom": {**custom, "verify": {"pin": "1234"}}}])
    assert bad.known == ()
    assert [e["event"] for e in logs] == ["rasa.bad_verify"] and "1234" not in str(logs)


class AsksWhoYouAre(RuleDialogue):
    """The rules, but the reply to the hours question is the identity question with the
    answers the back end knows (as action_ask_identity_check sends them)."""

    async def prepare(self, call: CallInfo, text: str) -> None:
        pass

    async def respond(
        self, call: CallInfo, text: str, alternatives: Sequence[str] = ()
    ) -> DialogueTurn:
        turn = await super().respond(call, text, alternatives)
        if "hours" in text:
            return dataclasses.replace(
                turn,
                collect_dtmf_digits=8,
                expect=("postcode", "date"),
                known=(("postcode", "NW9 4RQ"), ("date", "1987-06-23")),
            )
        return turn


@pytest.mark.parametrize("enabled", [True, False])
def test_the_answer_to_the_identity_question_is_checked_against_the_known_ones(
    enabled: bool,
) -> None:
    stt = ExpectingScriptedStt(PHRASES, delay_s=0.1)
    shared = asking_shared(stt, AsksWhoYouAre, verify_known=enabled)
    said = [
        (3.0, tone(1.0, 8000, HOURS)),  # -> the identity question, with the known answers
        (6.0, tone(1.0, 8000, DIGITS)),  # the caller's answer: checked against them
        (11.0, tone(1.0, 8000, HOURS)),  # asked again: the same
    ]
    with capture_logs() as logs:
        run_virtual(timeline(shared, said, until_s=14.0))
    known = {k for k in stt.known if k}
    assert known == ({(POSTCODE, BORN)} if enabled else set())
    assert all(k == () or k == (POSTCODE, BORN) for k in stt.known)
    assert "NW9 4RQ" not in str(logs) and "1987-06-23" not in str(logs)


@pytest.fixture(scope="module")
def base() -> MoonshineEngine:
    return MoonshineEngine(
        model_path(MOONSHINE_BASE_EN), tokenizer_path=model_path(MOONSHINE_TOKENIZER)
    )


needs_espeak = pytest.mark.skipif(not have_espeak(), reason="espeak-ng and sox are not installed")


@pytest.mark.models
@needs_espeak
@pytest.mark.parametrize(
    ("said", "right", "wrong"),
    [
        ("N W 9, 4 R Q.", POSTCODE, KnownAnswer(Expectation.POSTCODE, "NW3 7XL")),
        ("the 23rd of June 1987.", BORN, KnownAnswer(Expectation.DATE, "1962-11-04")),
    ],
)
def test_moonshine_confirms_the_answer_said_and_not_another(
    base: MoonshineEngine, said: str, right: KnownAnswer, wrong: KnownAnswer
) -> None:
    """On the phone line's 8 kHz; the other kind of answer is offered too, as the action
    server offers both."""
    pcm = espeak_pcm(said, 8000, voice="en-gb", speed=140)
    other_kind = BORN if right is POSTCODE else POSTCODE
    with capture_logs() as logs:
        confirmed = base.transcribe_expecting(pcm, 8000, EXPECTED, (right, other_kind))
        refused = base.transcribe_expecting(pcm, 8000, EXPECTED, (wrong, other_kind))
    assert (confirmed.text, confirmed.held_to) == (written(right), f"known:{right.kind}")
    assert refused.held_to is None or not refused.held_to.startswith("known:")
    assert refused.text != written(wrong)
    checks = [e for e in logs if e["event"] == "stt.moonshine.verify"]
    assert len(checks) == 4 and right.value not in str(logs)


@pytest.mark.models
@needs_espeak
def test_moonshine_does_not_confirm_a_date_whose_year_was_never_said(
    base: MoonshineEngine,
) -> None:
    """A caller who knows the day and the month but not the year: the decoder would fill in
    the year (its digits still lead their rivals), but they barely beat the end of the text,
    so the answer is not confirmed; the whole date, said the same way, is."""
    said_part = espeak_pcm("the 23rd of June.", 8000, voice="en-gb", speed=140)
    said_whole = espeak_pcm("the 23rd of June 1987.", 8000, voice="en-gb", speed=140)
    part = base.transcribe_expecting(said_part, 8000, EXPECTED, (BORN,))
    whole = base.transcribe_expecting(said_whole, 8000, EXPECTED, (BORN,))
    assert part.held_to is None or not part.held_to.startswith("known:")
    assert part.text != written(BORN)
    assert (whole.text, whole.held_to) == (written(BORN), "known:date")
