"""Whole calls over real sockets with the real models: the simulated Asterisk peer talks
to the bot; what the bot says is checked by transcribing its audio."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from tests.conftest import running_bot
from tests.speech import add_noise, espeak_pcm, have_espeak, pink_noise, silence
from voicebot_pbx.cli import reply_segments
from voicebot_pbx.config import Config, DialogueConfig, RuleConfig, load_config
from voicebot_pbx.pbx.caller import CallResult, Pause, Say, SimulatedCaller, Step
from voicebot_pbx.speech.engines import Engines

pytestmark = [
    pytest.mark.models,
    pytest.mark.skipif(not have_espeak(), reason="needs espeak-ng and sox (scripts/install)"),
]

HOURS_REPLY = "We are open Monday to Friday from eight am to six pm."
LONG_REPLY = (
    "Our tariffs are explained in detail on your annual statement. "
    "The standard tariff has a daily standing charge and a unit rate for every kilowatt hour. "
    "The fixed tariff keeps the unit rate the same for two years. "
    "The green tariff matches all of your electricity with renewable generation."
)


def bot_config(**vad: int | float) -> Config:
    base = load_config()
    rules = (
        RuleConfig(keywords=("opening", "open", "hours"), reply=HOURS_REPLY),
        RuleConfig(keywords=("energy", "plan", "plans"), reply=LONG_REPLY),
        RuleConfig(keywords=("goodbye", "bye"), reply="Goodbye!", then="hangup"),
    )
    return dataclasses.replace(
        base,
        server=dataclasses.replace(base.server, port=0),
        vad=dataclasses.replace(base.vad, **vad),  # type: ignore[arg-type]
        dialogue=DialogueConfig(
            greeting="Hello, how can I help?", reprompt="Sorry, say again?", rules=rules
        ),
    )


def speak(text: str, rate_hz: int = 8000) -> bytes:
    return silence(200, rate_hz) + espeak_pcm(text, rate_hz) + silence(100, rate_hz)


async def one_call(
    engines: Engines,
    tmp_path: Path,
    cache_dir: Path,
    steps: list[Step],
    *,
    rate_hz: int = 8000,
    config: Config | None = None,
) -> tuple[CallResult, list[dict[str, object]]]:
    cfg = config or bot_config()
    async with running_bot(engines, cfg, cache_dir, tmp_path) as (server, shared):
        caller = SimulatedCaller("127.0.0.1", server.port, rate_hz=rate_hz, reply_gap_s=0.8)
        result = await caller.run(steps, hangup_after_s=0.3)
        for _ in range(100):  # the record is written as the call closes
            if not server.calls:
                break
            await asyncio.sleep(0.05)
        assert shared.recorder is not None
        return result, shared.recorder.read_all()


def said(engines: Engines, result: CallResult) -> list[str]:
    return [
        engines.stt.transcribe(segment, result.rate_hz).text.lower()  # type: ignore[attr-defined]
        for segment in reply_segments(bytes(result.bot_pcm), result.rate_hz)
    ]


def speech_turns(records: list[dict[str, object]]) -> list[dict[str, object]]:
    (record,) = records
    turns = record["turns"]
    assert isinstance(turns, list)
    return [t for t in turns if t["kind"] == "speech"]


@pytest.mark.parametrize("rate_hz", [8000, 16000])
def test_opening_hours_question_gets_the_configured_answer(
    engines: Engines, tmp_path: Path, tts_cache_dir: Path, rate_hz: int
) -> None:
    steps: list[Step] = [Say(speak("what are your opening hours", rate_hz))]
    result, records = asyncio.run(
        one_call(engines, tmp_path, tts_cache_dir, steps, rate_hz=rate_hz)
    )
    assert result.greeting_heard
    replies = said(engines, result)
    assert len(replies) == 2, replies
    assert "monday" in replies[1] and "friday" in replies[1], replies
    turns = speech_turns(records)
    assert len(turns) == 1 and "open" in str(turns[0]["transcript"]).lower()
    assert turns[0]["reply_source"] == "cache"
    latency = result.turns[0].latency_ms
    assert latency is not None and latency > 0
    assert records[0]["rate_hz"] == rate_hz
    # Every outbound frame had the call's size (20 ms at its rate).
    assert len(result.bot_pcm) % (rate_hz // 50 * 2) == 0


def test_noisy_question_and_goodbye_hangs_up(
    engines: Engines, tmp_path: Path, tts_cache_dir: Path
) -> None:
    steps: list[Step] = [
        Say(add_noise(speak("what are your opening hours"), snr_db=15, seed=3)),
        Say(speak("thank you goodbye")),
    ]
    result, records = asyncio.run(one_call(engines, tmp_path, tts_cache_dir, steps))
    replies = said(engines, result)
    assert any("monday" in r for r in replies), replies
    assert result.got_hangup, "goodbye should end the call with 0x00"
    assert records[0]["end_reason"] == "bot_hangup"


def test_silent_caller_and_background_noise_make_no_turn(
    engines: Engines, tmp_path: Path, tts_cache_dir: Path
) -> None:
    noise = pink_noise(4000, 8000, level_dbfs=-40.0, seed=5)
    steps: list[Step] = [Pause(4.0), Say(noise)]
    result, records = asyncio.run(one_call(engines, tmp_path, tts_cache_dir, steps))
    assert result.greeting_heard
    assert speech_turns(records) == []
    # Nothing but the greeting and, after 8 s of caller silence, "are you still there?".
    (record,) = records
    assert [t["kind"] for t in record["turns"]] == ["greeting", "no_input"]  # type: ignore[union-attr,index]
    assert len(reply_segments(bytes(result.bot_pcm), 8000)) == 2


def test_barge_in_stops_the_bot_with_no_stale_frames(
    engines: Engines, tmp_path: Path, tts_cache_dir: Path
) -> None:
    steps: list[Step] = [
        Say(speak("tell me about your energy plans")),
        Say(speak("what are your opening hours"), barge_in_after_s=1.5),
    ]
    result, records = asyncio.run(one_call(engines, tmp_path, tts_cache_dir, steps))
    barge = result.turns[1]
    assert barge.bot_silent_s is not None, "the bot never went quiet while the caller talked"
    assert barge.stale_frames == 0
    assert barge.barge_in_ms is not None and barge.barge_in_ms < 1000
    turns = speech_turns(records)
    assert turns[0]["barged_in"] is True
    # The interrupting question was answered.
    assert any("monday" in r for r in said(engines, result))


def test_concurrent_calls_keep_their_own_vad_state(
    engines: Engines, tmp_path: Path, tts_cache_dir: Path
) -> None:
    async def scenario() -> tuple[CallResult, CallResult, list[dict[str, object]]]:
        async with running_bot(engines, bot_config(), tts_cache_dir, tmp_path) as (server, shared):
            talker = SimulatedCaller("127.0.0.1", server.port)
            quiet = SimulatedCaller("127.0.0.1", server.port)
            a, b = await asyncio.gather(
                talker.run([Say(speak("what are your opening hours"))], hangup_after_s=0.3),
                quiet.run([Pause(5.0)], hangup_after_s=0.3),
            )
            for _ in range(100):
                if not server.calls:
                    break
                await asyncio.sleep(0.05)
            assert shared.recorder is not None
            return a, b, shared.recorder.read_all()

    a, b, records = asyncio.run(scenario())
    by_id = {r["call_id"]: r for r in records}
    assert len(speech_turns([by_id[a.call_id]])) == 1
    assert speech_turns([by_id[b.call_id]]) == []
    assert any("monday" in r for r in said(engines, a))
    assert len(reply_segments(bytes(b.bot_pcm), 8000)) == 1
