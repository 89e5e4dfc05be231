"""The LLM fallback inside a call, on scripted timelines (virtual time): sentences reach
TTS one by one, the hold line covers a slow first sentence, the hard limit and rejections
get the fallback reply, and barge-in closes the generation."""

from __future__ import annotations

import dataclasses

import pytest

from tests.test_turns import make_shared, timeline
from voicebot_pbx.call.session import Shared
from voicebot_pbx.config import LlmConfig
from voicebot_pbx.testing import ScriptedLlm, run_virtual, tone

QUESTION = 1250  # a tone the scripted STT hears as an off-script question
FALLBACK = LlmConfig().fallback_reply


def with_llm(llm: ScriptedLlm) -> Shared:
    shared = make_shared()
    shared.engines.script_stt.phrases[QUESTION] = "can I pay my bill by card"  # type: ignore[attr-defined]
    return dataclasses.replace(shared, llm=llm)  # type: ignore[arg-type]


def speech_turn(session: object) -> object:
    (turn,) = [t for t in session.record.turns if t.kind == "speech"]  # type: ignore[attr-defined]
    return turn


def test_sentences_stream_to_tts_as_they_come() -> None:
    llm = ScriptedLlm([(0.3, "Yes, you can pay by card."), (0.6, "You can also pay online.")])
    shared = with_llm(llm)
    media, session = run_virtual(timeline(shared, [(2.0, tone(1.0, 8000, QUESTION))], 12.0))
    turn = speech_turn(session)
    assert llm.questions == ["can I pay my bill by card"]
    assert turn.reply_text == "Yes, you can pay by card. You can also pay online."  # type: ignore[attr-defined]
    assert turn.dialogue == "llm" and "llm" in turn.reply_source  # type: ignore[attr-defined]
    assert turn.llm_first_sentence_ms == pytest.approx(300, abs=25)  # type: ignore[attr-defined]
    # The first sentence was on the wire before the second one existed.
    speech_end = 3.0
    first_voice = min(t for t in media.voiced_times() if t > speech_end)
    assert first_voice < speech_end + 0.232 + 0.3 + 0.15 + 0.05  # end of turn + LLM + TTS
    assert not llm.closed_early


def test_slow_first_sentence_gets_the_hold_line_then_the_answer() -> None:
    llm = ScriptedLlm([(2.0, "Yes, you can pay by card.")])
    shared = with_llm(llm)
    media, session = run_virtual(timeline(shared, [(2.0, tone(1.0, 8000, QUESTION))], 14.0))
    turn = speech_turn(session)
    assert "llm_hold" in turn.fallbacks  # type: ignore[attr-defined]
    assert turn.reply_text == "Yes, you can pay by card."  # type: ignore[attr-defined]
    voiced = [t for t in media.voiced_times() if t > 3.0]
    # The hold line starts 1.2 s (max_dead_air_s) after the caller stopped speaking, before
    # the answer (2.0 s after the LLM was asked).
    assert 3.0 + 1.2 <= voiced[0] < 3.0 + 1.2 + 0.15 + 0.1  # + the (uncached) hold line's TTS


def test_no_answer_within_the_hard_limit_gets_the_fallback_reply() -> None:
    llm = ScriptedLlm([(30.0, "Too late.")])
    shared = with_llm(llm)
    media, session = run_virtual(timeline(shared, [(2.0, tone(1.0, 8000, QUESTION))], 16.0))
    turn = speech_turn(session)
    assert turn.fallbacks[:2] == ["llm_hold", "llm_timeout"]  # type: ignore[attr-defined]
    assert turn.reply_text == FALLBACK  # type: ignore[attr-defined]
    assert llm.closed_early  # the generation was stopped, not left running


def test_rejected_answer_plays_the_fallback_and_counts_as_not_understood() -> None:
    llm = ScriptedLlm([(0.2, ("reject", "ungrounded"))])
    shared = with_llm(llm)
    _media, session = run_virtual(timeline(shared, [(2.0, tone(1.0, 8000, QUESTION))], 10.0))
    turn = speech_turn(session)
    assert "llm_ungrounded" in turn.fallbacks  # type: ignore[attr-defined]
    assert turn.reply_text == FALLBACK  # type: ignore[attr-defined]
    assert session._not_understood == 1


def test_barge_in_closes_the_generation_and_no_stale_sentence_is_spoken() -> None:
    long_answer = [(0.6, f"This is sentence number {i} of a long answer.") for i in range(8)]
    llm = ScriptedLlm(long_answer)
    shared = with_llm(llm)
    question = tone(1.0, 8000, QUESTION)
    media, session = run_virtual(
        timeline(shared, [(2.0, question), (5.0, tone(1.0, 8000, 440))], 12.0)
    )
    assert llm.closed_early and llm.produced < len(long_answer)
    turns = [t for t in session.record.turns if t.kind == "speech"]
    assert turns[0].barged_in and turns[1].transcript == "what are your opening hours"
    # Silent from shortly after the barge-in until the caller finished.
    assert not [t for t in media.voiced_times() if 5.3 < t < 6.0]


def test_the_record_times_an_llm_reply_from_its_first_audio() -> None:
    """bench_chaos found LLM turns recorded 0.3-0.6 s too fast: the first-frame marker fired
    as soon as the pacer reached it, before the answer had any audio."""
    llm = ScriptedLlm([(0.8, "Yes, you can pay by card.")])
    media, session = run_virtual(timeline(with_llm(llm), [(2.0, tone(1.0, 8000, QUESTION))], 12.0))
    turn = speech_turn(session)
    first_voice = min(t for t in media.voiced_times() if t > 3.0)
    recorded_at = 3.0 + turn.end_of_speech_to_first_frame_ms / 1000.0  # type: ignore[attr-defined]
    # Speech end as the VAD saw it is within a window of the tone's end.
    assert recorded_at == pytest.approx(first_voice, abs=0.06)
    assert turn.end_of_speech_to_first_frame_ms > 800  # type: ignore[attr-defined]
