"""What the bot says when the conversation goes wrong (pure: no asyncio, no I/O).

The session decides *when* (a timer ran out, the dialogue failed, nothing could be
understood); these functions decide *what*: a clarification, "are you still there?", a
hand-over to a person (or a goodbye when there is nobody to hand to), the wrap-up before
the call's time limit, which short words are backchannels that must not interrupt, and
what the caller is expected to answer next.
"""

from __future__ import annotations

from voicebot_pbx.answers.dialogue import BotReply, DialogueTurn
from voicebot_pbx.config import FallbackConfig
from voicebot_pbx.speech.expect import Expected, parse_expected
from voicebot_pbx.speech.verify import KnownAnswer, known_answers


def normalise(text: str) -> str:
    return " ".join(text.lower().replace(".", " ").replace(",", " ").replace("!", " ").split())


def backchannel_set(fallbacks: FallbackConfig) -> frozenset[str]:
    return frozenset(normalise(b) for b in fallbacks.backchannels)


def not_understood_turn(fallbacks: FallbackConfig) -> DialogueTurn:
    return DialogueTurn(
        replies=(BotReply(text=fallbacks.clarify),), source="fallback", needs_fallback=True
    )


def give_up_turn(fallbacks: FallbackConfig, profile_target: str, reason: str) -> DialogueTurn:
    """Hand the caller to a person (or say goodbye when there is nobody to hand to)."""
    target = profile_target or fallbacks.give_up_target
    if target:
        return DialogueTurn(
            replies=(BotReply(text=fallbacks.give_up_transfer),),
            end="transfer",
            transfer_target=target,
            source="fallback",
            fallbacks=(reason,),
        )
    return DialogueTurn(
        replies=(BotReply(text=fallbacks.give_up_goodbye),),
        end="hangup",
        source="fallback",
        fallbacks=(reason,),
    )


def no_input_turn(fallbacks: FallbackConfig, times: int) -> tuple[DialogueTurn, str]:
    """The ``times``-th silence in a row: ask again, or end the call past the limit.
    Returns the answer and the fallback's name for the record."""
    if times > fallbacks.no_input_max:
        goodbye = DialogueTurn(
            replies=(BotReply(text=fallbacks.no_input_goodbye),), end="hangup", source="fallback"
        )
        return goodbye, "no_input_goodbye"
    still_there = DialogueTurn(replies=(BotReply(text=fallbacks.still_there),), source="fallback")
    return still_there, "no_input"


def wrap_up_turn(fallbacks: FallbackConfig, profile_target: str) -> DialogueTurn:
    """Near the call's time limit: say so, then hand over."""
    give_up = give_up_turn(fallbacks, profile_target, "max_duration")
    return DialogueTurn(
        replies=(BotReply(text=fallbacks.wrap_up), *give_up.replies),
        end=give_up.end,
        transfer_target=give_up.transfer_target,
        source="fallback",
        fallbacks=("max_duration",),
    )


def _asks_again(answer: DialogueTurn) -> bool:
    """``answer`` only asks the caller to say it again (the session's own "sorry, I didn't
    catch that"): what was expected of the caller still is."""
    return answer.source == "fallback" and answer.needs_fallback and answer.end is None


def expected_answer(answer: DialogueTurn, current: Expected | None) -> Expected | None:
    """What the caller's next turn is expected to be after ``answer``: what it says it
    expects (Rasa: ``expect`` beside ``collect_dtmf``); unchanged when it only asks the
    caller to say it again; else nothing."""
    if answer.expect:
        return parse_expected(answer.expect)  # the dialogue's reader kept known kinds only
    return current if _asks_again(answer) else None


def known_answers_after(
    answer: DialogueTurn, current: tuple[KnownAnswer, ...]
) -> tuple[KnownAnswer, ...]:
    """The answers the dialogue knows to the question it just asked (with ``expect``), kept
    like :func:`expected_answer` keeps what is expected; else none."""
    if answer.expect:
        return known_answers(dict(answer.known))
    return current if _asks_again(answer) else ()


DTMF_ENTRY_TIMEOUT_S = 3.0  # a half-typed entry is sent after this long without a key


class DtmfEntry:
    """Keys into dialogue input. Normally each key is sent as it comes; after the dialogue
    asked for N digits (``expect``), keys collect until N are typed, ``#`` is pressed, or
    ``DTMF_ENTRY_TIMEOUT_S`` passes (the session's timer calls ``flush``). ``*`` during an
    entry starts it again (the keys typed so far are dropped), as callers know from IVRs."""

    def __init__(self) -> None:
        self._expect: int | None = None
        self._buffer = ""

    def expect(self, digits: int) -> None:
        self._expect, self._buffer = digits, ""

    def key(self, digit: str) -> tuple[str, bool]:
        """(what to send now, or "" to keep collecting; whether the entry timer should run)."""
        if self._expect is None:
            return digit, False
        if digit == "#":
            return self.flush(), False
        if digit == "*":
            self._buffer = ""
            return "", True
        self._buffer += digit
        if len(self._buffer) >= self._expect:
            return self.flush(), False
        return "", True

    def flush(self) -> str:
        digits, self._buffer, self._expect = self._buffer, "", None
        return digits
