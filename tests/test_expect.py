"""speech/expect.py: decodes held to what the caller is expected to say (digits after the
dialogue asked for an account number): the token filter, the choice between the free and
the held decode, the dialogue's expectation, and the real Moonshine engine holding a decode."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import numpy as np
import pytest
from structlog.testing import capture_logs

from tests.speech import espeak_pcm
from tests.test_moonshine import moonshine  # noqa: F401  (the packaged tiny model, module-scoped)
from tests.test_stt import caller, silence, words
from tests.test_turns import DIGITS, HOURS, PHRASES, first_reply_after, make_shared, timeline
from voicebot_pbx.answers.dialogue import BotReply, CallInfo, DialogueTurn, RuleDialogue
from voicebot_pbx.call import policy
from voicebot_pbx.call.session import Shared
from voicebot_pbx.config import FallbackConfig
from voicebot_pbx.speech.expect import (
    WORDS,
    Expectation,
    Expected,
    HeldVocabulary,
    first_sentence,
    label,
    only_expected_words,
    only_yes_or_no,
    prefer,
    spoken_units,
)
from voicebot_pbx.speech.moonshine import MoonshineEngine
from voicebot_pbx.speech.stt import SttCapabilities, SttResult
from voicebot_pbx.speech.verify import KnownAnswer, confirmed_label, written
from voicebot_pbx.testing import ScriptedStt, run_virtual, tone

PIECES = [
    "<unk>",  # 0
    "<s>",  # 1
    "</s>",  # 2: the end of text
    "<0x2C>",  # 3: a byte token
    "\u2581five",  # 4
    "\u2581Five",  # 5
    "5",  # 6
    "42",  # 7
    ",",  # 8
    "\u2581",  # 9
    ".",  # 10
    "\u2581time",  # 11
    "\u2581sev",  # 12
    "en",  # 13
    "\u2581oh",  # 14
    "\u2581zero,",  # 15
    "\u00b2",  # 16: a superscript two
    "\u2581I'm",  # 17
    "teen",  # 18
    "rd",  # 19
    "\u2581the",  # 20
    "\u2581Sept",  # 21
    "ember",  # 22
    "\u2581N",  # 23
    "W",  # 24
    "",  # 25
]


def vocabulary(*expected: Expectation) -> HeldVocabulary:
    words = frozenset[str]().union(*(WORDS[e] for e in expected))
    return HeldVocabulary(PIECES, words, end_id=2, special=[0, 1, 2, 3])


def test_a_digits_decode_may_say_digits_digit_words_spaces_and_punctuation_only() -> None:
    digits = vocabulary(Expectation.DIGITS)
    # Between words: a digit word or its start ("sev", "N" of "nine"), digits, a space,
    # punctuation, the end.
    assert set(digits.allowed("").tolist()) == {2, 4, 5, 6, 7, 8, 9, 10, 12, 14, 15, 23}
    assert 24 not in digits.allowed("N")  # "NW" starts no digit word
    assert digits.advance("", 23) == "N" and 13 not in digits.allowed("N")  # not "Nen"
    assert digits.advance("", 12) == "sev"
    # In the middle of "sev": only what completes "seven"; no end of text, no new word.
    assert set(digits.allowed("sev").tolist()) == {13}
    assert digits.advance("sev", 13) == "seven" and digits.complete("seven")
    assert 2 in digits.allowed("seven") and 18 not in digits.allowed("seven")  # no "seventeen"
    assert digits.advance("seven", 8) == ""  # a comma ends the word


def test_a_date_or_postcode_decode_builds_words_from_several_pieces() -> None:
    either = vocabulary(Expectation.POSTCODE, Expectation.DATE)
    assert 18 in either.allowed("seven")  # "seventeen"
    assert 19 in either.allowed("")  # "23rd": "rd" after the digits
    assert {20, 21, 23} <= set(either.allowed("").tolist())  # "the", "Sept...", "N"
    assert set(either.allowed("Sept").tolist()) == {22}  # "September", nothing else
    assert 24 in either.allowed("")  # "W" (a letter of a postcode)
    assert 24 not in vocabulary(Expectation.DATE).allowed("")  # not a date word
    assert 11 not in either.allowed("") and 17 not in either.allowed("")  # "time", "I'm"


def test_the_held_decode_wins_when_about_as_sure_as_the_free_one() -> None:
    free = SttResult("Time, I'm one, two.", 0.70)
    assert prefer(free, SttResult("Five, nine, one, two.", 0.93))
    assert prefer(free, SttResult("Five, nine, one, two.", 0.66), margin=0.05)
    assert not prefer(free, SttResult("Five, nine, one, two.", 0.64), margin=0.05)
    assert not prefer(free, SttResult("", None))  # the held decode found no digits
    assert prefer(SttResult("", None), SttResult("Four.", 0.4))  # the free one found nothing
    # A held decode that says far less than the free one explains only part of the audio.
    said = SttResult("No, that is not my account number.", 0.60)
    assert not prefer(said, SttResult("November.", 0.78))
    assert prefer(SttResult("I made me a rope and one me.", 0.5), SttResult("98071005", 0.6))
    assert spoken_units("the 23rd of June 1987") == 10 and spoken_units("NW9 4RQ") == 4
    # Letters and pieces of a spelled postcode are not words the held decode leaves out.
    assert prefer(SttResult("And, u.l.u. F.m. and, i.e. D.l.u.", 0.5), SttResult("NW7 9PW", 0.6))
    # A yes or no alone is the caller's answer to something else, not a date's first sound.
    for answer in ("No.", "Nope", "no, no", "Yeah."):
        assert not prefer(SttResult(answer, 0.6), SttResult("November.", 0.9)), answer
    assert prefer(SttResult("Note.", 0.6), SttResult("November.", 0.9))
    assert only_yes_or_no("Yes, yep.") and not only_yes_or_no("no 5") and not only_yes_or_no("")


DIGITS_ONLY = frozenset({Expectation.DIGITS})
DIGIT_OF = {
    w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine".split())
}


def test_the_caller_is_expected_to_say_what_the_dialogue_says_it_expects() -> None:
    ask = DialogueTurn(
        replies=(BotReply(text="Your account number?"),), collect_dtmf_digits=8, expect=("digits",)
    )
    keys_only = DialogueTurn(replies=(BotReply(text="Type it."),), collect_dtmf_digits=8)
    other = DialogueTurn(replies=(BotReply(text="Your postcode?"),), source="rasa")
    again = policy.not_understood_turn(FallbackConfig())
    assert policy.expected_answer(ask, None) == DIGITS_ONLY
    assert policy.expected_answer(keys_only, None) is None  # keypad digits alone: no guess
    # "Sorry, I didn't catch that" asks for the same answer again; anything else ends it.
    assert policy.expected_answer(again, DIGITS_ONLY) == DIGITS_ONLY
    assert policy.expected_answer(other, DIGITS_ONLY) is None


@pytest.mark.models
def test_moonshine_holds_a_digit_answer_to_digits(moonshine: MoonshineEngine) -> None:  # noqa: F811
    """Eight digits read out one by one: the free decode makes words of some of them (base:
    "Two seven-year-old four and one-eighth six."), the held one gives the digits."""
    assert moonshine.capabilities.expecting is moonshine
    pcm = caller("2 7 0 4 9 1 8 6", 16000)
    result = moonshine.transcribe_expecting(pcm, 16000, DIGITS_ONLY)
    assert result.held_to == "digits", result
    said = [w for w in re.findall(r"[a-z]+|\d", result.text.lower())]
    assert "".join(DIGIT_OF.get(w, w) for w in said) == "27049186", result.text


@pytest.mark.models
def test_moonshine_keeps_the_free_decode_when_the_caller_says_something_else(
    moonshine: MoonshineEngine,  # noqa: F811
) -> None:
    pcm = caller("I want to report a power cut", 8000)
    result = moonshine.transcribe_expecting(pcm, 8000, DIGITS_ONLY)
    assert result.held_to is None
    assert {"report", "power"} <= words(result.text), result.text
    assert result == moonshine.transcribe(pcm, 8000)


@pytest.mark.models
def test_a_held_moonshine_decode_emits_only_the_allowed_tokens(
    moonshine: MoonshineEngine,  # noqa: F811
) -> None:
    # Words that are not digits, held to digits: whatever comes out is digits or nothing.
    audio = np.frombuffer(caller("I want to report a power cut", 16000), "<i2")
    audio = audio.astype(np.float32) / 32768.0
    held = moonshine.held_vocabulary(DIGITS_ONLY)
    tokens, _logprobs, _ended = moonshine._generate(moonshine._encode(audio), audio.size, 20, held)
    word = ""
    for token in tokens:
        assert token in held.allowed(word), (tokens, word)
        word = held.advance(word, token)
    assert len(held.allowed("")) < 2000  # of the 32768 tokens
    text = moonshine._tokenizer.decode(tokens)
    assert not words(text) - set("0123456789") - {"oh", "o"}, text


@dataclasses.dataclass
class ExpectingScriptedStt(ScriptedStt):
    """Tone "speech" (``ScriptedStt``) from an engine that can hold decodes: says which
    expectation each decode was held to (None: a free decode)."""

    held: list[Expected | None] = dataclasses.field(default_factory=list)

    def transcribe(self, pcm: bytes, rate_hz: int) -> SttResult:
        self.held.append(None)
        return super().transcribe(pcm, rate_hz)

    known: list[tuple[KnownAnswer, ...]] = dataclasses.field(default_factory=list)
    digits: list[int | None] = dataclasses.field(default_factory=list)
    # The other readings a held decode told its count of digits gives.
    readings: tuple[str, ...] = ()

    def transcribe_expecting(
        self,
        pcm: bytes,
        rate_hz: int,
        expected: Expected,
        known: Sequence[KnownAnswer] = (),
        digits: int | None = None,
    ) -> SttResult:
        result = super().transcribe(pcm, rate_hz)
        self.held.append(expected)
        self.known.append(tuple(known))
        self.digits.append(digits)
        readings = self.readings if digits else ()
        return dataclasses.replace(result, held_to=label(expected), alternatives=readings)

    @property
    def capabilities(self) -> SttCapabilities:
        return SttCapabilities(batch=self, expecting=self)


class AsksForDigits(RuleDialogue):
    """The rules, but the reply to the hours question asks for an account number on the
    keypad or spoken (as Rasa's balance form does: ``collect_dtmf`` + ``expect``)."""

    async def prepare(self, call: CallInfo, text: str) -> None:
        pass

    async def respond(
        self, call: CallInfo, text: str, alternatives: Sequence[str] = ()
    ) -> DialogueTurn:
        turn = await super().respond(call, text, alternatives)
        if "hours" in text:
            return dataclasses.replace(turn, collect_dtmf_digits=8, expect=("digits",))
        return turn


def asking_shared(
    stt: ExpectingScriptedStt, dialogue: type[RuleDialogue], **stt_settings: object
) -> Shared:
    """The test service with ``stt``, ``dialogue`` (rules that ask for something) and
    these ``[stt]`` settings changed."""
    shared = make_shared(stt=stt)
    config = dataclasses.replace(
        shared.config, stt=dataclasses.replace(shared.config.stt, **stt_settings)
    )
    return dataclasses.replace(
        shared, config=config, dialogue=dialogue.from_config(config.dialogue)
    )


@pytest.mark.parametrize("enabled", [True, False])
def test_the_answer_after_a_request_for_digits_is_decoded_held_to_digits(enabled: bool) -> None:
    stt = ExpectingScriptedStt(PHRASES, delay_s=0.1)
    shared = asking_shared(stt, AsksForDigits, hold_expected=enabled)
    said = [
        (3.0, tone(1.0, 8000, HOURS)),  # -> "We open at eight." + 8 digits asked for
        (6.0, tone(1.0, 8000, DIGITS)),  # "one two three" -> "Thanks, got your account."
        (11.0, tone(1.0, 8000, HOURS)),
    ]
    with capture_logs() as logs:
        _media, session = run_virtual(timeline(shared, said, until_s=14.0))
    speech = [t for t in session.record.turns if t.kind == "speech"]
    assert [t.transcript for t in speech] == [PHRASES[HOURS], PHRASES[DIGITS], PHRASES[HOURS]]
    # Every decode of a turn (the speculative one at the pause, and any after it).
    per_turn = {e["turn_id"]: e.get("stt_held_to") for e in logs if e["event"] == "transcript"}
    assert list(per_turn.values()) == [None, "digits" if enabled else None, None]
    assert set(stt.held) == ({None, DIGITS_ONLY} if enabled else {None})
    # The held decodes know how many digits the dialogue asked for (speech/digit_beam.py).
    assert set(stt.digits) == ({8} if enabled else set())


class HearsReadings(AsksForDigits):
    """``AsksForDigits``, noting the recogniser's other readings each turn came with."""

    given: list[tuple[str, tuple[str, ...]]] = []

    async def respond(
        self, call: CallInfo, text: str, alternatives: Sequence[str] = ()
    ) -> DialogueTurn:
        HearsReadings.given.append((text, tuple(alternatives)))
        return await super().respond(call, text, alternatives)


def test_the_other_readings_of_the_number_asked_for_reach_the_dialogue() -> None:
    stt = ExpectingScriptedStt(PHRASES, delay_s=0.1, readings=("12345678", "12345679"))
    shared = asking_shared(stt, HearsReadings)
    HearsReadings.given = []
    said = [
        (3.0, tone(1.0, 8000, HOURS)),  # -> 8 digits asked for
        (6.0, tone(1.0, 8000, DIGITS)),  # the answer: decoded held, with its readings
        (11.0, tone(1.0, 8000, HOURS)),  # a free decode: none
    ]
    run_virtual(timeline(shared, said, until_s=14.0))
    assert HearsReadings.given == [
        (PHRASES[HOURS], ()),
        (PHRASES[DIGITS], ("12345678", "12345679")),
        (PHRASES[HOURS], ()),
    ]


def test_a_held_decode_that_runs_on_keeps_its_first_sentence() -> None:
    said = ["\u2581Six", ",", "\u2581nine", ".", "\u2581Oh", ",", "\u2581oh", ","]
    assert first_sentence(said) == 4  # "Six, nine."
    number = ["\u2581", "7", ".", "0", "3", ".", "\u2581", "7", ".", "0"]
    assert first_sentence(number) == 6  # "7.03.": a full stop inside a number goes on
    assert first_sentence(["\u2581Six", ",", "\u2581nine"]) == 3  # no sentence end: all


FOUR_DIGITS = 990  # a tone "saying" four digits


def holding(phrases: dict[int, str], dialogue: type[RuleDialogue], holding_ms: int) -> Shared:
    """The test service hearing ``phrases``, with ``dialogue`` (rules that ask for an
    answer) and turn.digits_max_silence_ms = ``holding_ms`` (the word list's own hold,
    turn.unfinished_max_silence_ms, off: it would keep an answer's parts together too, at
    its own pace; so is turn.went_on_within_ms, which joins a part said over the reply to
    the one before it)."""
    shared = make_shared(stt=ExpectingScriptedStt(phrases, delay_s=0.1))
    turn = dataclasses.replace(
        shared.config.turn,
        digits_max_silence_ms=holding_ms,
        unfinished_max_silence_ms=0,
        went_on_within_ms=0,
    )
    config = dataclasses.replace(shared.config, turn=turn)
    return dataclasses.replace(
        shared, config=config, dialogue=dialogue.from_config(config.dialogue)
    )


@pytest.mark.parametrize("holding_ms", [1500, 0])
def test_a_caller_reading_digits_in_groups_keeps_the_turn_until_all_are_heard(
    holding_ms: int,
) -> None:
    """Eight digits asked for, read as two groups of four with a second's pause between:
    the pause after four does not end the turn (turn.digits_max_silence_ms); the eighth
    digit ends it at the short silence. Without the rule the pause ends the first turn (the
    word list's hold of a transcript that ends in digits, turn.unfinished_max_silence_ms,
    is off here: it would keep the groups together too, only at its own pace)."""
    shared = holding({**PHRASES, FOUR_DIGITS: "one two three four"}, AsksForDigits, holding_ms)
    said = [
        (3.0, tone(1.0, 8000, HOURS)),  # -> 8 digits asked for
        (6.0, tone(1.0, 8000, FOUR_DIGITS)),
        (8.0, tone(1.0, 8000, FOUR_DIGITS)),  # after a 1 s pause
    ]
    with capture_logs() as logs:
        media, session = run_virtual(timeline(shared, said, until_s=12.0))
    speech = [t.transcript for t in session.record.turns if t.kind == "speech"]
    ended_by = [e["ended_by"] for e in logs if e["event"] == "transcript"]
    if holding_ms:
        assert speech == [PHRASES[HOURS], "one two three four one two three four"]
        assert ended_by == ["detector", "digits"]
        # Answered soon after the eighth digit: the short silence + the decode, not 1.5 s.
        assert first_reply_after(media, 9.0) - 9.0 < 0.6
    else:
        assert speech == [PHRASES[HOURS], "one two three four", "one two three four"]


def test_a_caller_who_stops_short_of_the_digits_is_answered_after_the_longer_wait() -> None:
    """Four of eight digits, then nothing: the turn ends at turn.digits_max_silence_ms, and
    that wait is not dead air (no dead-air filler before the answer)."""
    stt = ExpectingScriptedStt({**PHRASES, FOUR_DIGITS: "one two three four"}, delay_s=0.1)
    shared = make_shared(stt=stt)
    shared = dataclasses.replace(shared, dialogue=AsksForDigits.from_config(shared.config.dialogue))
    said = [(3.0, tone(1.0, 8000, HOURS)), (6.0, tone(1.0, 8000, FOUR_DIGITS))]
    with capture_logs() as logs:
        media, session = run_virtual(timeline(shared, said, until_s=11.0))
    (_hours, digits) = [t for t in session.record.turns if t.kind == "speech"]
    event = [e for e in logs if e["event"] == "transcript"][-1]
    waited_ms = shared.config.turn.digits_max_silence_ms - shared.config.vad.end_silence_max_ms
    assert (event["ended_by"], event["waited_for_digits_ms"]) == ("silence", waited_ms)
    assert "dialogue_hold" not in digits.fallbacks, digits.fallbacks
    first = first_reply_after(media, 7.0) - 7.0
    wait_s = shared.config.turn.digits_max_silence_ms / 1000.0
    assert wait_s <= first < wait_s + 0.4


def test_the_wait_for_digits_is_not_dead_air_for_the_voice_either() -> None:
    """The reply to a turn that waited turn.digits_max_silence_ms is synthesized (not
    cached): the voice's dead-air clock, like the dialogue's, starts when the bot stopped
    waiting for the caller, so the hold line does not play before the reply. (Counted from
    the caller's last word, the 1.5 s wait was already past max_dead_air_s: every spelled
    postcode in eval_balance heard the hold line before its balance.)"""
    stt = ExpectingScriptedStt({**PHRASES, FOUR_DIGITS: "one two three four"}, delay_s=0.1)
    shared = make_shared(stt=stt)
    shared = dataclasses.replace(shared, dialogue=AsksForDigits.from_config(shared.config.dialogue))
    hold = shared.config.dialogue.hold_reply
    shared.tts_cache.put(hold, 8000, shared.engines.script_tts.synthesize_all(hold, 8000))
    said = [(3.0, tone(1.0, 8000, HOURS)), (6.0, tone(1.0, 8000, FOUR_DIGITS))]
    media, session = run_virtual(timeline(shared, said, until_s=11.0))
    (_hours, digits) = [t for t in session.record.turns if t.kind == "speech"]
    assert digits.reply_text == "Thanks, got your account."
    assert digits.fallbacks == [], digits.fallbacks
    wait_s = shared.config.turn.digits_max_silence_ms / 1000.0
    assert wait_s <= first_reply_after(media, 7.0) - 7.0 < wait_s + 0.5


class AsksForPostcode(RuleDialogue):
    """The rules, but the reply to the hours question asks for the postcode or the date of
    birth (as the balance form's identity question does: ``expect: [postcode, date]``)."""

    async def prepare(self, call: CallInfo, text: str) -> None:
        pass

    async def respond(
        self, call: CallInfo, text: str, alternatives: Sequence[str] = ()
    ) -> DialogueTurn:
        turn = await super().respond(call, text, alternatives)
        if "hours" in text:
            return dataclasses.replace(turn, expect=("postcode", "date"))
        return turn


OUTWARD = 1110  # a tone "saying" a postcode's first half
INWARD = 1230  # ... and its second half


@pytest.mark.parametrize("holding_ms", [1500, 0])
def test_a_postcode_read_out_with_a_pause_inside_stays_one_turn(holding_ms: int) -> None:
    """A postcode (or date of birth) expected, said as "N W 5, [0.8 s] 6 P L": the pause
    after the first half, whose decode holds a digit, ends the turn only at
    turn.digits_max_silence_ms, so the caller's second half joins it (a known answer can be
    confirmed on the first half alone: bench/eval_verify.py's cut-short row). Without the
    rule the pause ends the turn (here at vad.end_silence_max_ms)."""
    shared = holding({**PHRASES, OUTWARD: "N W 5", INWARD: "6 P L"}, AsksForPostcode, holding_ms)
    said = [
        (3.0, tone(1.0, 8000, HOURS)),  # -> the postcode or the date of birth asked for
        (6.0, tone(0.8, 8000, OUTWARD)),
        (7.6, tone(0.8, 8000, INWARD)),  # after a 0.8 s pause
    ]
    with capture_logs() as logs:
        media, session = run_virtual(timeline(shared, said, until_s=12.0))
    speech = [t.transcript for t in session.record.turns if t.kind == "speech"]
    if holding_ms:
        assert speech == [PHRASES[HOURS], "N W 5 6 P L"]
        event = [e for e in logs if e["event"] == "transcript"][-1]
        assert event["ended_by"] == "silence"
        # The longer wait is the caller's, not dead air.
        assert event["waited_for_digits_ms"] > 0
        wait_s = holding_ms / 1000.0
        assert wait_s <= first_reply_after(media, 8.4) - 8.4 < wait_s + 0.4
    else:
        assert speech[:2] == [PHRASES[HOURS], "N W 5"]


BORN = "1987-06-23"
WHOLE_DATE = 1350  # a tone "saying" the whole date of birth


class AsksForIdentity(AsksForPostcode):
    """As ``AsksForPostcode``, with the date of birth the back end knows beside the question
    (the action server's ``verify``)."""

    async def respond(
        self, call: CallInfo, text: str, alternatives: Sequence[str] = ()
    ) -> DialogueTurn:
        turn = await super().respond(call, text, alternatives)
        if "hours" in text:
            return dataclasses.replace(turn, known=(("date", BORN),))
        return turn


@dataclasses.dataclass
class ConfirmingStt(ExpectingScriptedStt):
    """Confirms the known date when the audio says it whole (``confirm``), as the Moonshine
    check does (speech/verify.py); else decodes as ``ExpectingScriptedStt``."""

    confirm: bool = True

    def transcribe_expecting(
        self,
        pcm: bytes,
        rate_hz: int,
        expected: Expected,
        known: Sequence[KnownAnswer] = (),
        digits: int | None = None,
    ) -> SttResult:
        result = super().transcribe_expecting(pcm, rate_hz, expected, known, digits)
        dates = [k for k in known if k.kind is Expectation.DATE]
        if self.confirm and dates and result.text == self.phrases[WHOLE_DATE]:
            return SttResult(written(dates[0]), 0.9, held_to=confirmed_label(Expectation.DATE))
        return result


@pytest.mark.parametrize("confirmed", [True, False])
def test_a_date_of_birth_confirmed_whole_ends_the_turn_without_the_longer_wait(
    confirmed: bool,
) -> None:
    """The identity answer holds digits, so a pause after it waits for
    turn.digits_max_silence_ms (the caller may be reading on). A date the decode at the
    pause confirms whole (verify's end guard: its year was heard) leaves nothing to wait
    for: the turn ends at the short silence. Unconfirmed, the longer wait stays."""
    phrases = {**PHRASES, WHOLE_DATE: "the 23rd of June 1987"}
    shared = holding(phrases, AsksForIdentity, 1500)
    stt = ConfirmingStt(phrases, delay_s=0.1, confirm=confirmed)
    shared = dataclasses.replace(shared, engines=make_shared(stt=stt).engines)
    said = [
        (3.0, tone(1.0, 8000, HOURS)),  # -> the postcode or the date of birth asked for
        (6.0, tone(1.0, 8000, WHOLE_DATE)),
    ]
    with capture_logs() as logs:
        media, session = run_virtual(timeline(shared, said, until_s=11.0))
    assert stt.known[-1] == (KnownAnswer(Expectation.DATE, BORN),)
    event = [e for e in logs if e["event"] == "transcript"][-1]
    first = first_reply_after(media, 7.0) - 7.0
    if confirmed:
        assert event["ended_by"] == "known"
        assert session.record.turns[-1].transcript == "the 23rd of June 1987"
        assert first < 0.6
    else:
        assert event["ended_by"] == "silence"
        assert first >= shared.config.turn.digits_max_silence_ms / 1000.0


GARBLED = 1470  # a tone the decode hears as no digits at all ("But when people come")
YEAR = 1590  # ... and the rest of the answer


@pytest.mark.parametrize("known", [True, False])
def test_a_pause_in_an_identity_answer_that_confirms_nothing_waits_while_answers_are_known(
    known: bool,
) -> None:
    """The first half of a date of birth decoded as words without a digit ("the 21st of
    September" heard as "but when people come"), then a 0.8 s pause: with answers known,
    a pause whose decode confirms none of them waits for turn.digits_max_silence_ms, so
    the rest joins the same turn and the answer is checked whole. Without known answers the
    digit rule alone holds a pause, and this one ends the turn."""
    phrases = {**PHRASES, GARBLED: "but when people come", YEAR: "1957"}
    shared = holding(phrases, AsksForIdentity if known else AsksForPostcode, 1500)
    stt = ConfirmingStt(phrases, delay_s=0.1, confirm=False)
    shared = dataclasses.replace(shared, engines=make_shared(stt=stt).engines)
    said = [
        (3.0, tone(1.0, 8000, HOURS)),  # -> the postcode or the date of birth asked for
        (6.0, tone(0.8, 8000, GARBLED)),
        (7.6, tone(0.6, 8000, YEAR)),  # after a 0.8 s pause
    ]
    _media, session = run_virtual(timeline(shared, said, until_s=12.0))
    speech = [t.transcript for t in session.record.turns if t.kind == "speech"]
    if known:
        assert speech == [PHRASES[HOURS], "but when people come 1957"]
    else:
        assert speech[:2] == [PHRASES[HOURS], "but when people come"]


@pytest.mark.models
def test_a_no_to_the_identity_question_is_not_held_to_a_date(
    moonshine: MoonshineEngine,  # noqa: F811
) -> None:
    """ "No" to the account number read back, while a postcode or a date is expected, with
    the line's quiet after it: the free decode of the whole audio comes out empty, and the
    held one is "November.m."; the free decode of the speech without its quiet ends is the
    transcript."""
    pcm = silence(300, 8000) + espeak_pcm(
        "no, that is not my account", 8000, voice="en-gb", speed=140
    )
    pcm += silence(2000, 8000)
    result = moonshine.transcribe_expecting(
        pcm, 8000, frozenset({Expectation.POSTCODE, Expectation.DATE})
    )
    assert result.held_to is None and words(result.text) >= {"no", "not", "account"}, result


def test_words_made_only_of_an_expected_answer() -> None:
    """A spelled postcode or a date as a phone line may make them are the answer's words;
    a question, a lone "no" or other words are not."""
    identity = frozenset({Expectation.POSTCODE, Expectation.DATE})
    for text in (
        "And, u.l.u. F.m. and, i.e. D.l.u.",
        "and i double i double i",
        "NW7 8LW",
        "the 23rd of february 1991",
        "the twentieth, the third of february, nineteen hundred and nineteen one",
    ):
        assert only_expected_words(text, identity), text
    for text in ("what's your address?", "no", "the of", "bellow bellow", "The fans of 1900", ""):
        assert not only_expected_words(text, identity), text
    digits = frozenset({Expectation.DIGITS})
    assert only_expected_words("seven seven one one, 6 4 6", digits)
    assert not only_expected_words("february", digits)  # a date's word, not a digit's
    assert not only_expected_words("and then 3 in the air", digits)
