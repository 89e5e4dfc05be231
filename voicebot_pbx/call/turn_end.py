"""When a pause ends the caller's turn: the end-of-turn rules as pure functions.

At each pause the listener (``call/listener.py``) gathers what is known about it, a
:class:`PauseEvidence` (the speculative decode at this pause, the text model's reading of
it, the smart-turn verdict), and what the dialogue expects of the turn
(:class:`AnswerExpected`). :func:`end_after` says how much silence ends the turn now and
which rule decided, or None: only the endpointer's maximum silence
(:func:`longest_silence_ms`) does. The rules, first match wins:

1. An answer being held (digits still to come, a postcode or a date read out): "wait"
   holds the turn to ``turn.digits_max_silence_ms``; enough digits, or a date the
   dialogue knows confirmed to its end, end it at the short silence.
2. The text model (or the word list as its reader) reads the decode at this pause
   unfinished: held to ``turn.unfinished_max_silence_ms``; finished: the short silence.
3. The detector: smart-turn "complete" at the short silence; "incomplete" with a
   transcript that reads finished at ``turn.tiebreak_silence_ms``; the transcript
   detector on the word list alone.
4. Otherwise ``vad.end_silence_max_ms`` (said explicitly when a longer rule was armed).

No clock and no I/O: which verdict belongs to the current pause (staleness) and the timers
stay with the listener; the how-long figures a transcript carries (``waited_*_s``) are here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from voicebot_pbx.answers.normalize import count_digits
from voicebot_pbx.config import Config
from voicebot_pbx.speech.expect import Expectation
from voicebot_pbx.speech.stt import SttResult
from voicebot_pbx.speech.turn_text import TextVerdict
from voicebot_pbx.speech.turns import looks_complete
from voicebot_pbx.speech.verify import confirmed_label

EndedBy = Literal["digits", "known", "text", "detector", "tiebreak", "silence"]
# Rules whose verdict is that the caller finished (the endpointer counts them apart).
FINISHED: frozenset[str] = frozenset({"detector", "digits", "known", "text"})
# A decode that confirmed a date the dialogue knows (speech/verify.py, the engine's held_to).
CONFIRMED_DATE = confirmed_label(Expectation.DATE)


@dataclass(frozen=True, slots=True)
class TurnRules:
    """The settings the rules read (``[vad]`` and ``[turn]``), and ``reading``: a text
    reader (the model or the word list) reads the decode at each pause."""

    end_silence_ms: int
    end_silence_max_ms: int
    tiebreak_silence_ms: int
    digits_max_silence_ms: int
    unfinished_max_silence_ms: int
    text_wait: bool
    detector: str  # "smart-turn" | "transcript" | "silence"
    reading: bool

    @classmethod
    def from_config(cls, config: Config, *, reading: bool) -> TurnRules:
        return cls(
            end_silence_ms=config.vad.end_silence_ms,
            end_silence_max_ms=config.vad.end_silence_max_ms,
            tiebreak_silence_ms=config.turn.tiebreak_silence_ms,
            digits_max_silence_ms=config.turn.digits_max_silence_ms,
            unfinished_max_silence_ms=config.turn.unfinished_max_silence_ms,
            text_wait=config.turn.text_wait,
            detector=config.turn.detector,
            reading=reading,
        )


@dataclass(frozen=True, slots=True)
class AnswerExpected:
    """What the dialogue expects of the caller's next turn, as the rules see it:
    ``digits`` how many digits complete it (None: not counted), ``read_out`` a postcode or
    a date being read out, ``known_checked`` the decodes check answers the dialogue knows
    (``speech/verify.py``)."""

    digits: int | None = None
    read_out: bool = False
    known_checked: bool = False

    @property
    def holding(self) -> bool:
        """Digits still to come, or a postcode or a date read out: a pause after a digit
        waits for ``turn.digits_max_silence_ms``."""
        return self.digits is not None or self.read_out


NOTHING_EXPECTED = AnswerExpected()


def answer_expected(
    rules: TurnRules, kinds: frozenset[Expectation], digits: int | None, known_checked: bool
) -> AnswerExpected:
    """The rules' view of an expected answer of ``kinds`` (``digits``: how many complete it).
    Digits are counted only with a count and ``turn.digits_max_silence_ms`` on; a postcode
    or a date is held when digits are not counted: its end cannot be told from the words
    (a known answer is confirmed on "N W 5" as well as on "N W 5, 6 P L":
    ``bench/eval_verify.py``'s cut-short row)."""
    holding = rules.digits_max_silence_ms > 0
    counting = Expectation.DIGITS in kinds and bool(digits) and holding
    read_out = bool({Expectation.POSTCODE, Expectation.DATE} & kinds) and not counting
    return AnswerExpected(
        digits=digits if counting else None,
        read_out=read_out and holding,
        known_checked=known_checked,
    )


@dataclass(frozen=True, slots=True)
class PauseEvidence:
    """What is known of the current pause (older pauses' verdicts left out): ``decode``
    the speculative decode at it (None: still running), ``text_read`` the text reader's
    verdict on that decode (None: not read yet), ``model_complete`` smart-turn's verdict
    (None: not scored yet)."""

    decode: SttResult | None = None
    text_read: TextVerdict | None = None
    model_complete: bool | None = None


def longest_silence_ms(rules: TurnRules, expected: AnswerExpected) -> int | None:
    """The endpointer's maximum silence: the longest wait a rule can ask for (an answer
    held, a transcript read unfinished); None: ``vad.end_silence_max_ms``. The rules end
    other pauses sooner (:func:`end_after`)."""
    waits = [0]
    if expected.holding:
        waits.append(rules.digits_max_silence_ms)
    if rules.reading:
        waits.append(rules.unfinished_max_silence_ms)
    longest = max(waits)
    return longest if longest > rules.end_silence_max_ms else None


def end_after(
    rules: TurnRules, expected: AnswerExpected, pause: PauseEvidence
) -> tuple[int, EndedBy] | None:
    """How much silence ends the turn at this pause, and what decided it; None: only the
    maximum silence does (:func:`longest_silence_ms`)."""
    match _answer_verdict(rules, expected, pause):
        case "wait":
            return None
        case (int() as silence_ms, str() as ended_by):
            return silence_ms, ended_by
    if _text_gate(rules, pause) != "pass":
        return None
    if rules.reading and pause.text_read == "finished":
        return rules.end_silence_ms, "text"
    verdict = _detector_verdict(rules, pause)
    if verdict is None and longest_silence_ms(rules, expected) is not None:
        # The endpointer waits for the longest rule: no rule holds this pause.
        return rules.end_silence_max_ms, "silence"
    return verdict


def _answer_verdict(
    rules: TurnRules, expected: AnswerExpected, pause: PauseEvidence
) -> tuple[int, EndedBy] | Literal["wait", "no_opinion"]:
    """While an answer is held: the short silence once the decode at this pause holds as
    many digits as asked for ("digits") or confirms a date the dialogue knows ("known":
    verify's end guard confirms a date only when its year was heard, so nothing is left to
    wait for; a confirmed postcode has no such guard and waits); "wait" while that decode
    is still running, holds fewer digits, or (answers known) confirms nothing: it may be a
    garbled first half ("the 21st of September, [pause] 1957"); "no_opinion" when nothing
    is held or no digit was said (the other rules decide)."""
    if not expected.holding:
        return "no_opinion"
    if pause.decode is None:
        return "wait"
    if expected.read_out and pause.decode.held_to == CONFIRMED_DATE:
        return rules.end_silence_ms, "known"
    if expected.read_out and expected.known_checked:
        return "wait"
    heard = count_digits(pause.decode.text)
    if expected.digits is not None and heard >= expected.digits:
        return rules.end_silence_ms, "digits"
    return "no_opinion" if heard == 0 else "wait"


def _text_gate(rules: TurnRules, pause: PauseEvidence) -> Literal["pass", "wait", "hold"]:
    """The text reader's rule: "wait" until it has read the decode at this pause (with
    ``turn.text_wait``; without, the detectors decide meanwhile), "hold" when it reads it
    unfinished, else "pass"."""
    if not rules.reading:
        return "pass"
    if pause.text_read is None:
        return "wait" if rules.text_wait else "pass"
    return "hold" if pause.text_read == "unfinished" else "pass"


def _detector_verdict(rules: TurnRules, pause: PauseEvidence) -> tuple[int, EndedBy] | None:
    """The end-of-turn detector's verdict once no other rule holds the pause."""
    if rules.detector == "smart-turn":
        if pause.model_complete is None:
            return None
        if pause.model_complete:
            return rules.end_silence_ms, "detector"
        # The model hears an unfinished turn; a transcript that reads finished breaks
        # the tie at a middle silence (callers whose prosody the model misjudges).
        if rules.tiebreak_silence_ms > 0 and _reads_finished(rules, pause):
            return rules.tiebreak_silence_ms, "tiebreak"
        return None
    if rules.detector == "transcript" and _reads_finished(rules, pause):
        return rules.end_silence_ms, "detector"
    return None  # "silence": only end_silence_max_ms ends a turn


def _reads_finished(rules: TurnRules, pause: PauseEvidence) -> bool:
    """The decode at this pause may be a finished turn: the text reader, when on, does not
    read it unfinished (nor has it not read it yet); else the old word list."""
    if rules.reading:
        return pause.text_read in ("finished", "unsure")
    return pause.decode is not None and looks_complete(pause.decode.text)


def waited_longer_s(
    rules: TurnRules, expected: AnswerExpected, ended_by: str, rule_ms: int
) -> float:
    """How much longer than ``vad.end_silence_max_ms`` a turn ended by the maximum silence
    waited (a rule that holds the turn, ``rule_ms`` long, was on)."""
    if ended_by != "silence":
        return 0.0
    longest = longest_silence_ms(rules, expected)
    if longest is None:
        return 0.0
    return max(0.0, (min(longest, rule_ms) - rules.end_silence_max_ms) / 1000.0)


def waited_for_answer_s(rules: TurnRules, expected: AnswerExpected, ended_by: str) -> float:
    """The longer wait of a turn ended by the maximum silence while an answer was held."""
    if not expected.holding:
        return 0.0
    return waited_longer_s(rules, expected, ended_by, rules.digits_max_silence_ms)


def waited_unfinished_s(
    rules: TurnRules, expected: AnswerExpected, ended_by: str, verdict: TextVerdict | None
) -> float:
    """The longer wait of a turn ended by the maximum silence after the text reader read
    its last pause unfinished (beyond what the held answer accounts for)."""
    if verdict != "unfinished":
        return 0.0
    waited = waited_longer_s(rules, expected, ended_by, rules.unfinished_max_silence_ms)
    return max(0.0, waited - waited_for_answer_s(rules, expected, ended_by))
