"""A reply still being worked out (a back-end lookup behind Rasa) gets the hold line after
``[dialogue] hold_after_s``, then the answer; a quick reply gets no hold line. Scripted
timelines in virtual time, through the real session."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence

from tests.test_turns import HOURS, make_shared, timeline
from voicebot_pbx.answers.dialogue import CallInfo, Dialogue, DialogueTurn, Understanding
from voicebot_pbx.call.session import Shared
from voicebot_pbx.testing import run_virtual, tone


class SlowDialogue:
    """Answers like ``inner``, ``delay_s`` later."""

    name = "slow"

    def __init__(self, inner: Dialogue, delay_s: float) -> None:
        self.inner, self.delay_s = inner, delay_s

    async def start(self, call: CallInfo) -> DialogueTurn:
        return await self.inner.start(call)

    async def understand(self, call: CallInfo, text: str) -> Understanding:
        return await self.inner.understand(call, text)

    async def prepare(self, call: CallInfo, text: str) -> None:
        pass

    async def respond(
        self, call: CallInfo, text: str, alternatives: Sequence[str] = ()
    ) -> DialogueTurn:
        await asyncio.sleep(self.delay_s)
        return await self.inner.respond(call, text)

    async def dtmf(self, call: CallInfo, digits: str) -> DialogueTurn:
        return await self.inner.dtmf(call, digits)

    async def end(self, call: CallInfo) -> None:
        await self.inner.end(call)


def slow(delay_s: float) -> Shared:
    shared = make_shared()
    hold = shared.config.dialogue.hold_reply
    shared.tts_cache.put(hold, 8000, shared.engines.script_tts.synthesize_all(hold, 8000))  # type: ignore[attr-defined]
    return dataclasses.replace(shared, dialogue=SlowDialogue(shared.dialogue, delay_s))


def speech_turn(session: object) -> object:
    (turn,) = [t for t in session.record.turns if t.kind == "speech"]  # type: ignore[attr-defined]
    return turn


def test_a_late_reply_gets_the_hold_line_first() -> None:
    shared = slow(1.5)
    after_s = shared.config.dialogue.hold_after_s
    media, session = run_virtual(timeline(shared, [(2.0, tone(1.0, 8000, HOURS))], 12.0))
    turn = speech_turn(session)
    assert turn.fallbacks == ["dialogue_hold"]  # type: ignore[attr-defined]
    assert turn.reply_text == "We open at eight."  # type: ignore[attr-defined]
    voiced = [t for t in media.voiced_times() if t > 3.0]
    # The hold line is heard while the dialogue still works: after hold_after_s, before the
    # answer exists (1.5 s after the transcript).
    assert 3.0 + after_s <= voiced[0] < 3.0 + 1.5
    assert session.record.end_reason == "caller_hangup"  # type: ignore[attr-defined]


def test_a_quick_reply_gets_no_hold_line() -> None:
    shared = slow(0.1)
    media, session = run_virtual(timeline(shared, [(2.0, tone(1.0, 8000, HOURS))], 8.0))
    turn = speech_turn(session)
    assert turn.fallbacks == []  # type: ignore[attr-defined]
    assert turn.reply_text == "We open at eight."  # type: ignore[attr-defined]


def test_hold_after_zero_turns_the_hold_line_off() -> None:
    shared = slow(1.5)
    config = shared.config
    shared = dataclasses.replace(
        shared,
        config=dataclasses.replace(
            config, dialogue=dataclasses.replace(config.dialogue, hold_after_s=0.0)
        ),
    )
    _, session = run_virtual(timeline(shared, [(2.0, tone(1.0, 8000, HOURS))], 12.0))
    assert speech_turn(session).fallbacks == []  # type: ignore[attr-defined]


def test_a_hung_rasa_gives_the_hold_line_then_the_rules_with_no_long_dead_air() -> None:
    """Issue #24 item 4: a SIGSTOPped Rasa (requests hang) used to give 2.28 s of dead air
    before the rules answered. Through the real session in virtual time: the hold line is
    heard within hold_after_s (+ the time to play it), the rules' answer after the Rasa
    timeout; no gap longer than 1.5 s."""
    from voicebot_pbx.answers.fallbacks import FallbackDialogue

    base = make_shared()
    hung = SlowDialogue(base.dialogue, 3600.0)
    shared = slow(0.0)
    timeout_s = shared.config.rasa.timeout_s
    shared = dataclasses.replace(
        shared, dialogue=FallbackDialogue(hung, base.dialogue, timeout_s=timeout_s)
    )
    media, session = run_virtual(timeline(shared, [(2.0, tone(1.0, 8000, HOURS))], 14.0))
    turn = speech_turn(session)
    assert turn.fallbacks[0] == "dialogue_hold"  # type: ignore[attr-defined]
    assert turn.reply_text == "We open at eight."  # type: ignore[attr-defined]
    voiced = [t for t in media.voiced_times() if t > 3.0]
    transcript_at = 3.0 + 0.232 + 0.1  # end of speech, end-of-turn wait, scripted STT
    assert voiced[0] - transcript_at < 1.5  # the hold line
    gaps = [b - a for a, b in zip(voiced, voiced[1:], strict=False)]
    assert max(gaps) < 1.5  # between the hold line and the rules' answer
    assert voiced[-1] > transcript_at + timeout_s  # the answer came after Rasa gave up


class HungDialogue(SlowDialogue):
    """Rasa SIGSTOPped: understanding hangs too (a turn asks twice: parse, then respond)."""

    async def understand(self, call: CallInfo, text: str) -> Understanding:
        await asyncio.sleep(self.delay_s)
        return await self.inner.understand(call, text)


def test_a_hung_primary_costs_one_timeout_per_turn_not_one_per_request() -> None:
    """Issue #24 item 4 (found by bench/bench_chaos.py): understand() timed out, then
    respond() waited for the hung Rasa again, and the turn ran into the dialogue timeout
    (a reprompt instead of the rules' answer). After a failure the primary rests."""
    from voicebot_pbx.answers.fallbacks import FallbackDialogue

    base = make_shared()
    fallback = FallbackDialogue(HungDialogue(base.dialogue, 3600.0), base.dialogue, timeout_s=2.0)
    call = CallInfo(call_id="c", pbx="test")

    async def turn() -> tuple[float, DialogueTurn, float]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await fallback.understand(call, "what are your opening hours")
        answer = await fallback.respond(call, "what are your opening hours")
        took_s = loop.time() - started
        await asyncio.sleep(fallback.rest_s)  # rested: the primary is tried again
        again = loop.time()
        await fallback.understand(call, "hours")
        return took_s, answer, loop.time() - again

    took_s, answer, retried_s = run_virtual(turn())
    assert took_s == 2.0  # one timeout
    assert [r.text for r in answer.replies] == ["We open at eight."]  # the rules answered
    assert "nlu_unavailable:slow" in answer.fallbacks
    assert retried_s == 2.0  # tried (and timed out) again after resting
