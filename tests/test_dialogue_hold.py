"""A reply still being worked out (a back-end lookup behind Rasa) gets the hold line after
``[dialogue] hold_after_s``, then the answer; a quick reply gets no hold line. Scripted
timelines in virtual time, through the real session."""

from __future__ import annotations

import asyncio
import dataclasses

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

    async def respond(self, call: CallInfo, text: str) -> DialogueTurn:
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
