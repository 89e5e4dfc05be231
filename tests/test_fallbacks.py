"""Every fallback path of a call, on scripted timelines (virtual time, fake engines with
set delays) through the real session: no dead air, no talking over the caller."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncGenerator, Sequence

import pytest

from tests.test_turns import AGENT, HOURS, LONG, PHRASES, TARIFF, make_shared, timeline
from voicebot_pbx.answers.dialogue import CallInfo, DialogueTurn, Rejected, RuleDialogue, Sentence
from voicebot_pbx.answers.fallbacks import ComposingDialogue
from voicebot_pbx.call.session import Shared
from voicebot_pbx.config import DialogueConfig, FallbackConfig, RuleConfig
from voicebot_pbx.testing import FakeMedia, ScriptedLlm, run_virtual, tone

UHHUH = 990
NONSENSE = 1100
PHRASES.update({UHHUH: "uh-huh", NONSENSE: "purple elephant fridge"})


def with_fallbacks(shared: Shared, **changes: object) -> Shared:
    config = dataclasses.replace(
        shared.config,
        fallbacks=dataclasses.replace(shared.config.fallbacks, **changes),  # type: ignore[arg-type]
    )
    return dataclasses.replace(shared, config=config)


def voiced_runs(media: FakeMedia, gap_s: float = 0.3) -> list[tuple[float, float]]:
    """(start, end) of each stretch of bot audio."""
    runs: list[tuple[float, float]] = []
    for t in media.voiced_times():
        if runs and t - runs[-1][1] <= gap_s:
            runs[-1] = (runs[-1][0], t)
        else:
            runs.append((t, t))
    return runs


def test_backchannel_while_the_bot_talks_does_not_stop_the_reply() -> None:
    shared = make_shared()
    media, session = run_virtual(
        timeline(
            shared, [(2.0, tone(1.0, 8000, TARIFF)), (5.0, tone(0.4, 8000, UHHUH))], until_s=16.0
        )
    )
    kinds = [(t.kind, t.transcript) for t in session.record.turns]
    assert ("backchannel", "uh-huh") in kinds
    reply_turn = next(t for t in session.record.turns if t.transcript == PHRASES[TARIFF])
    assert not reply_turn.barged_in
    # The whole long reply was still played: total voiced time ~= its synthesized length
    # (ToneTts: 0.06 s per character of each sentence).
    expected_s = sum(len(s) * 0.06 for s in LONG.replace(". ", ".|").split("|"))
    voiced_s = sum(1 for t in media.voiced_times() if t > 3.0) * 0.02
    assert voiced_s == pytest.approx(expected_s, abs=0.1)
    # ... but not over the caller: silent while the "uh-huh" was spoken (after barge-in).
    assert not [t for t in media.voiced_times() if 5.0 + 0.3 < t < 5.4]


def test_cough_without_words_pauses_then_resumes() -> None:
    shared = make_shared()
    cough = tone(0.35, 8000, 3000)  # loud, but no phrase at that frequency -> no words
    media, session = run_virtual(
        timeline(shared, [(2.0, tone(1.0, 8000, TARIFF)), (5.0, cough)], until_s=16.0)
    )
    turns = session.record.turns
    assert any("false_interruption" in t.fallbacks for t in turns)
    expected_s = sum(len(s) * 0.06 for s in LONG.replace(". ", ".|").split("|"))
    voiced_s = sum(1 for t in media.voiced_times() if t > 3.0) * 0.02
    assert voiced_s == pytest.approx(expected_s, abs=0.1)


def test_an_interruption_with_a_pause_after_its_first_word_stays_one_turn() -> None:
    """ "Wait, ... what are your opening hours" over the bot's reply: Whisper hears nothing
    in a short "wait" and the model calls it finished, so at the short silence the bot took
    it for a cough and went on talking into the caller's pause (heard through the real
    Asterisk: barge-in p95 ~800 ms). An utterance that barged in ends no sooner than
    vad.barge_in_end_silence_ms: the bot stays quiet and answers the whole question."""
    shared = make_shared()
    wait = tone(0.4, 8000, 3000)  # no phrase at that frequency: an empty transcript
    said = [(2.0, tone(1.0, 8000, TARIFF)), (5.0, wait), (5.7, tone(1.0, 8000, HOURS))]
    media, session = run_virtual(timeline(shared, said, until_s=10.0))
    speech = [t for t in session.record.turns if t.kind == "speech"]
    assert [t.transcript for t in speech] == [PHRASES[TARIFF], PHRASES[HOURS]]
    assert speech[0].barged_in
    assert not any("false_interruption" in t.fallbacks for t in session.record.turns)
    voiced = media.voiced_times()
    assert any(4.5 < t < 5.0 for t in voiced)  # the long reply was playing
    # Quiet from the barge-in (200 ms of speech, a VAD window, a frame) to the answer,
    # which comes after the caller's end of speech.
    assert not [t for t in voiced if 5.0 + 0.3 < t < 6.7]
    assert any(6.7 < t < 8.0 for t in voiced)


def test_echo_of_the_bot_at_minus_20_db_does_not_interrupt_it() -> None:
    shared = with_fallbacks(make_shared(), no_input_s=0.0)

    async def run() -> tuple[FakeMedia, object]:
        import asyncio

        from voicebot_pbx.call.session import CallSession

        media = FakeMedia(echo_db=20.0)
        session = CallSession(media, shared)
        async with asyncio.TaskGroup() as group:
            pacer = group.create_task(media.speaker.run(media.write))
            runner = group.create_task(session.run())
            await media.play_caller([(2.0, tone(1.0, 8000, TARIFF))])
            await media.silence_until(16.0)
            await media.hangup("caller_hangup")
            await runner
            pacer.cancel()
        return media, session

    media, session = run_virtual(run())
    turns = session.record.turns  # type: ignore[attr-defined]
    assert not any(t.barged_in for t in turns)
    assert [t.kind for t in turns] == ["greeting", "speech"]
    expected_s = sum(len(s) * 0.06 for s in LONG.replace(". ", ".|").split("|"))
    voiced_s = sum(1 for t in media.voiced_times() if t > 3.0) * 0.02
    assert voiced_s == pytest.approx(expected_s, abs=0.1)


def test_no_input_asks_if_still_there_then_says_goodbye() -> None:
    shared = with_fallbacks(make_shared(), no_input_s=3.0, no_input_max=2)
    media, session = run_virtual(timeline(shared, [], until_s=30.0))
    kinds = [t.kind for t in session.record.turns]
    assert kinds == ["greeting", "no_input", "no_input", "no_input"]
    assert session.record.turns[-1].fallbacks == ["no_input_goodbye"]
    assert media.hangups == ["bot_hangup"]
    runs = voiced_runs(media)
    assert len(runs) == 4
    # Each prompt came no_input_s after the previous one ended.
    for previous, current in zip(runs, runs[1:], strict=False):
        # (+ up to the fake TTS's 0.15 s to first audio where a text was not cached yet)
        assert 3.0 <= current[0] - previous[1] <= 3.0 + 0.15 + 0.05


def test_not_understood_three_times_transfers_to_an_agent() -> None:
    shared = make_shared()
    script = [(2.0 + 4.0 * i, tone(0.8, 8000, NONSENSE)) for i in range(3)]
    media, session = run_virtual(timeline(shared, script, until_s=20.0))
    speech = [t for t in session.record.turns if t.kind == "speech"]
    assert [t.reply_text for t in speech[:2]] == ["Pardon?", "Pardon?"]
    assert speech[2].fallbacks == ["not_understood"]
    assert media.hangups == ["transferred"]
    assert session.record.transfer_target == "agents"


def test_empty_transcripts_get_a_clarification_then_give_up_with_goodbye() -> None:
    shared = with_fallbacks(make_shared(), give_up_target="")
    noise = tone(0.6, 8000, 3000)  # VAD hears it, the transcript is empty
    script = [(2.0 + 6.0 * i, noise) for i in range(3)]  # each after the clarification
    media, session = run_virtual(timeline(shared, script, until_s=26.0))
    speech = [t for t in session.record.turns if t.kind == "speech"]
    assert speech[0].fallbacks == ["stt_empty"]
    assert speech[0].reply_text == FallbackConfig().clarify
    assert "not_understood" in speech[2].fallbacks
    assert speech[2].reply_text == FallbackConfig().give_up_goodbye
    assert media.hangups == ["bot_hangup"]


class BrokenDialogue:
    name = "broken"

    async def start(self, call: CallInfo) -> DialogueTurn:
        return DialogueTurn()

    async def prepare(self, call: CallInfo, text: str) -> None:
        pass

    async def respond(
        self, call: CallInfo, text: str, alternatives: Sequence[str] = ()
    ) -> DialogueTurn:
        raise RuntimeError("boom")

    async def dtmf(self, call: CallInfo, digits: str) -> DialogueTurn:
        raise RuntimeError("boom")

    async def end(self, call: CallInfo) -> None:
        return None


def test_unexpected_dialogue_error_apologises_and_transfers() -> None:
    shared = dataclasses.replace(make_shared(), dialogue=BrokenDialogue())
    media, session = run_virtual(timeline(shared, [(1.0, tone(1.0, 8000, HOURS))], until_s=12.0))
    (turn,) = [t for t in session.record.turns if t.kind == "speech"]
    assert turn.reply_text.startswith(FallbackConfig().apology)
    assert media.hangups == ["transferred"]
    assert any("RuntimeError" in e for e in session.record.errors)
    assert media.voiced_times(), "the apology was spoken"


def test_max_call_duration_wraps_up_politely() -> None:
    shared = make_shared()
    config = dataclasses.replace(
        shared.config, server=dataclasses.replace(shared.config.server, max_call_duration_s=30.0)
    )
    shared = dataclasses.replace(
        with_fallbacks(
            dataclasses.replace(shared, config=config), wrap_up_before_s=8.0, no_input_s=0.0
        )
    )
    media, session = run_virtual(timeline(shared, [], until_s=40.0))
    wrap = [t for t in session.record.turns if t.kind == "wrap_up"]
    assert len(wrap) == 1 and wrap[0].fallbacks == ["max_duration"]
    assert media.hangups == ["transferred"]
    last_runs = voiced_runs(media)
    assert last_runs[-1][0] == pytest.approx(22.0, abs=0.3)


def test_caller_never_waits_more_than_1_5_s_of_silence_for_an_answer() -> None:
    # Slow STT (0.8 s) and slow first TTS audio (0.4 s): still under 1.5 s.
    shared = make_shared(stt_delay_s=0.8, tts_first_s=0.4)
    media, _session = run_virtual(timeline(shared, [(2.0, tone(1.0, 8000, AGENT))], until_s=10.0))
    first = min(t for t in media.voiced_times() if t > 3.0)
    assert first - 3.0 < 1.5


class FailingTts:
    voice_id = "broken"

    def synthesize(self, text: str, rate_hz: int, cancel: object = None) -> object:
        raise RuntimeError("voice model unreadable")
        yield b""  # pragma: no cover

    def synthesize_all(self, text: str, rate_hz: int) -> bytes:
        raise RuntimeError("voice model unreadable")


def test_tts_failure_uses_the_backup_voice() -> None:
    shared = make_shared()
    backup = shared.engines.tts
    shared.engines.tts = FailingTts()  # type: ignore[assignment]
    shared.engines.tts_backup = backup
    media, session = run_virtual(timeline(shared, [(2.0, tone(1.0, 8000, AGENT))], until_s=10.0))
    (turn,) = [t for t in session.record.turns if t.kind == "speech"]
    assert "tts_failed" in turn.fallbacks and turn.reply_source == "tts_backup"
    assert [t for t in media.voiced_times() if t > 3.0]
    assert media.hangups == ["transferred"]


def test_tts_failure_without_backup_plays_the_intent_clip(tmp_path: object) -> None:
    from pathlib import Path

    from voicebot_pbx.audio import write_wav
    from voicebot_pbx.call.prompts import ClipLibrary

    clip_path = Path(str(tmp_path)) / "rule3.wav"
    write_wav(clip_path, tone(0.5, 16000, 500), 16000)  # any rate: converted on load
    shared = dataclasses.replace(make_shared(), clips=ClipLibrary({"rule3": clip_path}))
    shared.engines.tts = FailingTts()  # type: ignore[assignment]
    media, session = run_virtual(timeline(shared, [(2.0, tone(1.0, 8000, AGENT))], until_s=10.0))
    (turn,) = [t for t in session.record.turns if t.kind == "speech"]
    assert turn.intent == "rule3" and turn.reply_source == "clip"
    assert "tts_clip" in turn.fallbacks
    voiced = [t for t in media.voiced_times() if t > 3.0]
    assert len(voiced) == pytest.approx(25, abs=1)  # the 0.5 s clip


def test_tts_failure_with_nothing_else_transfers_with_the_cached_line() -> None:
    shared = make_shared()
    give_up = shared.config.fallbacks.give_up_transfer
    shared.tts_cache.put(give_up, 8000, tone(1.0, 8000, 300))
    shared.engines.tts = FailingTts()  # type: ignore[assignment]
    media, session = run_virtual(
        timeline(shared, [(2.0, tone(1.0, 8000, HOURS + 0))], until_s=10.0)
    )
    (turn,) = [t for t in session.record.turns if t.kind == "speech"]
    # "We open at eight." is cached, so that one still plays; ask something uncached:
    assert turn.reply_source == "cache"
    media, session = run_virtual(timeline(shared, [(2.0, tone(1.0, 8000, TARIFF))], until_s=10.0))
    (turn,) = [t for t in session.record.turns if t.kind == "speech"]
    assert "tts_unavailable" in turn.fallbacks
    assert media.hangups == ["transferred"]
    voiced = [t for t in media.voiced_times() if t > 3.0]
    assert len(voiced) == pytest.approx(50, abs=1)  # the cached 1 s give-up line


def test_the_llm_composes_only_spoken_turns_the_dialogue_did_not_understand() -> None:
    rules = RuleDialogue.from_config(
        DialogueConfig(rules=(RuleConfig(keywords=("hours",), reply="We open at eight."),))
    )
    llm = ScriptedLlm([(0.0, "Meters are read every quarter.")])
    brain = ComposingDialogue(rules, llm)
    call = CallInfo(call_id="c")

    async def turns() -> tuple[DialogueTurn, DialogueTurn, DialogueTurn, DialogueTurn]:
        return (
            await brain.respond(call, "what are your hours"),
            await brain.respond(call, "when is my meter read"),
            await brain.respond(call, "   "),
            await brain.dtmf(call, "7"),
        )

    understood, composed, blank, keys = run_virtual(turns())
    assert understood.composed is None and understood.replies[0].text == "We open at eight."
    assert composed.composed is not None and composed.needs_fallback
    assert composed.composed.question == "when is my meter read"
    answer = composed.composed.composer.answer(composed.composed.question)
    assert [item.text for item in run_virtual(_items(answer))] == ["Meters are read every quarter."]
    assert llm.questions == ["when is my meter read"]  # the LLM composes it
    assert blank.composed is None and keys.composed is None


async def _items(stream: AsyncGenerator[Sentence | Rejected, None]) -> list[Sentence]:
    return [item async for item in stream if isinstance(item, Sentence)]
