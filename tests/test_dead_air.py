"""Issue #24 item 4: whatever hangs (the dialogue, the LLM, the voice), the caller never sits
in more than ~1.5 s of silence: the hold line, then the fallback, on scripted timelines
(virtual time, exact). The real processes (SIGSTOPped Rasa, action server, LLM endpoint)
are probed by ``bench/bench_chaos.py``."""

from __future__ import annotations

import dataclasses

from tests.test_fallbacks import voiced_runs
from tests.test_llm_session import QUESTION, with_llm
from tests.test_turns import HOURS, TARIFF, make_shared, timeline
from voicebot_pbx.call.session import Shared
from voicebot_pbx.config import FallbackConfig, LlmConfig
from voicebot_pbx.testing import FakeMedia, ScriptedLlm, run_virtual, tone

SPEECH_END_S = 3.0  # the caller's question: a 1 s tone from 2.0 s
DEAD_AIR_S = 1.5  # the target


def longest_silence(media: FakeMedia, until_s: float) -> float:
    """The longest stretch without bot audio from the end of the caller's question to
    ``until_s`` (the start of what the caller finally hears)."""
    edges = [SPEECH_END_S]
    for start, end in voiced_runs(media):
        if start >= until_s:
            break
        if end > SPEECH_END_S:
            edges += [max(start, SPEECH_END_S), end]
    edges.append(until_s)
    return max(edges[i + 1] - edges[i] for i in range(0, len(edges) - 1, 2))


def runs_after_question(media: FakeMedia) -> list[tuple[float, float]]:
    return [run for run in voiced_runs(media) if run[0] > SPEECH_END_S]


def speech_turn(session: object) -> object:
    (turn,) = [t for t in session.record.turns if t.kind == "speech"]  # type: ignore[attr-defined]
    return turn


def cached(shared: Shared, *texts: str) -> Shared:
    for text in texts:
        shared.tts_cache.put(text, 8000, shared.engines.script_tts.synthesize_all(text, 8000))  # type: ignore[attr-defined]
    return shared


def test_the_measure_sees_a_long_silence() -> None:
    """The check below can fail: a reply 3 s late is 3 s of dead air."""
    slow = make_shared(stt_delay_s=3.0)
    media, _session = run_virtual(timeline(slow, [(2.0, tone(1.0, 8000, HOURS))], 12.0))
    (first, *_rest) = runs_after_question(media)
    assert longest_silence(media, first[0]) > 3.0


def test_a_hung_llm_gets_the_hold_line_then_the_fallback_within_the_dead_air_bound() -> None:
    llm = ScriptedLlm([(3600.0, "Never.")])
    shared = cached(with_llm(llm), LlmConfig().hold_reply, LlmConfig().fallback_reply)
    media, session = run_virtual(timeline(shared, [(2.0, tone(1.0, 8000, QUESTION))], 16.0))
    turn = speech_turn(session)
    assert turn.fallbacks[:2] == ["llm_hold", "llm_timeout"]  # type: ignore[attr-defined]
    assert turn.reply_text == LlmConfig().fallback_reply  # type: ignore[attr-defined]
    hold, fallback, *_ = runs_after_question(media)
    assert longest_silence(media, fallback[0]) <= DEAD_AIR_S
    # Given up well before the LLM's hard limit (6 s): hold end + max_dead_air_s.
    assert fallback[0] - hold[1] <= 1.2 + 0.1
    assert llm.closed_early


def test_an_llm_that_stalls_after_its_first_sentence_is_given_up_on() -> None:
    llm = ScriptedLlm([(0.3, "Yes, you can pay by card."), (3600.0, "Never said.")])
    shared = with_llm(llm)
    media, session = run_virtual(timeline(shared, [(2.0, tone(1.0, 8000, QUESTION))], 16.0))
    turn = speech_turn(session)
    assert "llm_stalled" in turn.fallbacks  # type: ignore[attr-defined]
    assert turn.reply_text == "Yes, you can pay by card."  # type: ignore[attr-defined]
    assert llm.closed_early
    # The turn ended (the caller may speak again): the no-input prompt follows the answer
    # by no_input_s, counted from when the bot gave up (end of the answer + dead air).
    answer, still_there, *_ = runs_after_question(media)
    no_input_s = FallbackConfig().no_input_s
    assert still_there[0] - answer[1] <= no_input_s + 1.2 + 0.2


def test_a_hung_voice_gets_the_hold_line_then_the_apology_from_the_cache() -> None:
    shared = make_shared(tts_first_s=3600.0)
    apology = FallbackConfig().apology
    shared = cached(shared, shared.config.dialogue.hold_reply, apology)
    # The tariffs rule's reply is not cached: it needs the (hung) voice.
    media, session = run_virtual(timeline(shared, [(2.0, tone(1.0, 8000, TARIFF))], 12.0))
    turn = speech_turn(session)
    assert turn.fallbacks[:3] == ["tts_hold", "tts_timeout", "tts_apology"]  # type: ignore[attr-defined]
    hold, apology_run, *_ = runs_after_question(media)
    assert longest_silence(media, apology_run[0]) <= DEAD_AIR_S


def test_without_a_bound_the_voice_gets_its_own_timeout() -> None:
    """max_dead_air_s = 0: each stage's own timeout only (the voice's 10 s)."""
    shared = make_shared(tts_first_s=3600.0)
    config = dataclasses.replace(
        shared.config, dialogue=dataclasses.replace(shared.config.dialogue, max_dead_air_s=0.0)
    )
    shared = cached(dataclasses.replace(shared, config=config), FallbackConfig().apology)
    media, session = run_virtual(timeline(shared, [(2.0, tone(1.0, 8000, TARIFF))], 20.0))
    turn = speech_turn(session)
    assert "tts_timeout" in turn.fallbacks  # type: ignore[attr-defined]
    (apology_run, *_) = runs_after_question(media)
    assert longest_silence(media, apology_run[0]) >= shared.config.tts.timeout_s
