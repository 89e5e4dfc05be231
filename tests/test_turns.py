"""Turn-taking: the pure TurnTaker on synthetic VAD sequences, and whole calls on a
scripted timeline (fake engines with set delays, virtual time) through the real session."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from structlog.testing import capture_logs

from voicebot_pbx.answers.dialogue import CallInfo, DialogueTurn, RuleDialogue
from voicebot_pbx.call.prompts import ClipLibrary, TtsCache
from voicebot_pbx.call.session import CallSession, Shared
from voicebot_pbx.config import DialogueConfig, RuleConfig, VadConfig, load_config
from voicebot_pbx.pbx.media import AudioIn, InboundEvent
from voicebot_pbx.speech.stt import SttResult
from voicebot_pbx.speech.turn_model import TurnScore
from voicebot_pbx.speech.turns import (
    BargeIn,
    BargeInCancelled,
    BargeInOnset,
    PauseStarted,
    TurnTaker,
    UtteranceEnded,
    UtteranceStarted,
    looks_complete,
)
from voicebot_pbx.testing import (
    EnergyVad,
    FakeEngines,
    FakeMedia,
    ScriptedStt,
    ScriptedTurnModel,
    ToneTts,
    run_virtual,
    tone,
)

WINDOW_S = 0.032


def feed(taker: TurnTaker, probs: list[tuple[float, float]]) -> list[tuple[float, object]]:
    """probs: (duration_s, prob) runs -> [(time, action)]."""
    out: list[tuple[float, object]] = []
    now = 0.0
    for duration, prob in probs:
        end = now + duration
        while now < end - 1e-9:
            out.extend((now, action) for action in taker.on_vad(prob, now))
            now += WINDOW_S
    return out


def test_utterance_start_pause_and_end_at_max_silence() -> None:
    taker = TurnTaker(VadConfig(min_speech_ms=160, end_silence_ms=200, end_silence_max_ms=700))
    events = feed(taker, [(0.32, 0.02), (1.0, 0.95), (1.0, 0.02)])
    kinds = [type(a) for _, a in events]
    assert kinds == [UtteranceStarted, PauseStarted, UtteranceEnded]
    started = events[0][1]
    assert isinstance(started, UtteranceStarted)
    assert started.onset_s == pytest.approx(0.32, abs=0.04)
    ended_at, ended = events[2]
    assert isinstance(ended, UtteranceEnded)
    assert ended.speech_end_s == pytest.approx(1.32, abs=0.04)
    assert ended_at - ended.speech_end_s == pytest.approx(0.7, abs=0.04)


def test_over_the_bot_speech_counts_from_the_barge_in_minimum() -> None:
    """min_speech_ms (160) starts a turn; while the bot talks, barge_in_min_speech_ms (120)
    both starts it and stops the bot: 128 ms of speech (4 windows), not 160 + 120."""
    config = VadConfig(min_speech_ms=160, barge_in_min_speech_ms=120, barge_in_pause_at_onset=False)
    taker = TurnTaker(config)
    taker.set_bot_speaking(True)
    barge = [(t, a) for t, a in feed(taker, [(0.6, 0.95)]) if isinstance(a, BargeIn)]
    assert len(barge) == 1
    at, action = barge[0]
    assert at + WINDOW_S - action.onset_s == pytest.approx(4 * WINDOW_S)
    # A 100 ms blip over the bot is still nothing; the bot quiet again: 160 ms needed.
    taker = TurnTaker(config)
    taker.set_bot_speaking(True)
    assert feed(taker, [(0.09, 0.95), (0.5, 0.02)]) == []
    taker.set_bot_speaking(False)
    assert feed(taker, [(0.1, 0.95), (0.5, 0.02)]) == []  # 128 ms < 160


def test_the_bot_may_pause_at_the_first_window_of_speech_over_it() -> None:
    """``barge_in_pause_at_onset``: BargeInOnset at the first window above the raised
    threshold; a blip that ends before barge_in_min_speech_ms is cancelled (the bot goes
    on); speech that lasts becomes a BargeIn, never cancelled."""
    config = VadConfig(barge_in_min_speech_ms=120, barge_in_threshold=0.6)
    taker = TurnTaker(config)
    taker.set_bot_speaking(True)
    events = feed(taker, [(0.32, 0.02), (0.064, 0.95), (0.5, 0.02)])
    assert [type(a) for _, a in events] == [BargeInOnset, BargeInCancelled]
    (onset_at, onset), (cancel_at, _) = events
    assert isinstance(onset, BargeInOnset) and onset_at == onset.onset_s == pytest.approx(0.32)
    # Cancelled on the first silent window after the blip.
    assert cancel_at == pytest.approx(0.32 + 2 * WINDOW_S)

    taker = TurnTaker(config)
    taker.set_bot_speaking(True)
    events = feed(taker, [(0.32, 0.02), (0.6, 0.95), (0.7, 0.02)])
    kinds = [type(a) for _, a in events]
    assert kinds[:3] == [BargeInOnset, UtteranceStarted, BargeIn]
    assert BargeInCancelled not in kinds
    assert events[0][0] == pytest.approx(0.32)  # 4 windows before the barge-in
    assert events[2][0] == pytest.approx(0.32 + 3 * WINDOW_S)

    # Between the raised threshold and the quiet one (an echo level): nothing.
    taker = TurnTaker(config)
    taker.set_bot_speaking(True)
    assert feed(taker, [(0.5, 0.55)]) == []
    # The bot quiet, or the option off: no onset actions.
    assert not any(
        isinstance(a, BargeInOnset | BargeInCancelled)
        for _, a in feed(TurnTaker(config), [(0.064, 0.95), (0.5, 0.02)])
    )
    off = TurnTaker(dataclasses.replace(config, barge_in_pause_at_onset=False))
    off.set_bot_speaking(True)
    assert feed(off, [(0.064, 0.95), (0.5, 0.02)]) == []


def test_a_second_interruption_pauses_the_bot_at_its_onset_too() -> None:
    """After one barge-in has ended its turn, the next sound over the next reply pauses the
    bot at its first window again (it used to wait for the barge-in decision)."""
    config = VadConfig(barge_in_min_speech_ms=120, barge_in_threshold=0.6, barge_in_level_db=0)
    taker = TurnTaker(config)
    taker.set_bot_speaking(True)
    first = feed(taker, [(0.32, 0.02), (0.6, 0.95), (1.0, 0.02)])
    assert [type(a) for _, a in first if not isinstance(a, PauseStarted)] == [
        BargeInOnset,
        UtteranceStarted,
        BargeIn,
        UtteranceEnded,
    ]
    taker.set_bot_speaking(False)
    taker.set_bot_speaking(True)  # the reply to the interruption
    second = feed(taker, [(0.32, 0.02), (0.6, 0.95)])
    assert isinstance(second[0][1], BargeInOnset)
    assert second[0][0] == pytest.approx(0.32)


def test_end_turn_early_only_after_the_short_silence() -> None:
    taker = TurnTaker(VadConfig(end_silence_ms=200, end_silence_max_ms=700))
    feed(taker, [(0.5, 0.95), (0.1, 0.02)])
    assert taker.end_turn_early(0.5 + 0.1) is None  # only 100 ms of silence
    ended = taker.end_turn_early(0.5 + 0.25)
    assert isinstance(ended, UtteranceEnded)
    assert ended.speech_end_s == pytest.approx(0.51, abs=0.04)
    assert not taker.caller_speaking


def test_the_tiebreak_counts_from_the_last_sound_and_the_short_silence_from_the_fall() -> None:
    """silence_from_last_sound "tiebreak" (the default): a finished-sounding pause still needs
    its 150 ms after the VAD's fall (a 200 ms comma must not end a turn), but the tie-break's
    400 ms count from the caller's last sound (the fall lags it by ~160 ms here)."""
    taker = TurnTaker(VadConfig(end_silence_ms=150, end_silence_max_ms=700))
    assert taker.config.silence_from_last_sound == "tiebreak"
    windows = [(0.95, -12.0)] * 30 + [(0.95, -60.0)] * 5 + [(0.02, -60.0)] * 20
    for i, (prob, level) in enumerate(windows[:36]):  # through the fall (window 35)
        taker.on_vad(prob, i * WINDOW_S, level)
    fall_s = 35 * WINDOW_S  # the caller's last sound ended at window 30
    assert taker.pause_since_s == pytest.approx(fall_s)
    assert taker.end_turn_early(fall_s, 150) is None  # the short silence: from the fall
    assert taker.end_turn_early(fall_s, 150, tiebreak=True) is not None

    taker = TurnTaker(VadConfig(end_silence_ms=150, end_silence_max_ms=700))
    for i, (prob, level) in enumerate(windows[:36]):
        taker.on_vad(prob, i * WINDOW_S, level)
    # 400 ms from the last sound are heard through the window starting at 30 + 12 windows.
    assert taker.end_turn_early(41 * WINDOW_S, 400, tiebreak=True) is None
    ended = taker.end_turn_early(42 * WINDOW_S, 400, tiebreak=True)
    assert isinstance(ended, UtteranceEnded)
    assert ended.speech_end_s == pytest.approx(fall_s)  # records keep the fall's time

    # "off": the tie-break counts from the fall like every other silence.
    off = TurnTaker(
        VadConfig(end_silence_ms=150, end_silence_max_ms=700, silence_from_last_sound="off")
    )
    for i, (prob, level) in enumerate(windows[:36]):
        off.on_vad(prob, i * WINDOW_S, level)
    assert off.end_turn_early(fall_s, 150, tiebreak=True) is None


def test_a_short_utterance_ends_no_sooner_than_the_short_utterance_silence() -> None:
    """A question (1.2 s of speech) ends after end_silence_ms (150); a "yes" (0.4 s) only
    after short_end_silence_ms (200): "yes ... please" stays one turn."""
    config = VadConfig(
        end_silence_ms=150, short_utterance_ms=600, short_end_silence_ms=200, end_silence_max_ms=700
    )
    for speech_s, ends_after_s in ((1.2, 0.15), (0.4, 0.2)):
        taker = TurnTaker(config)
        feed(taker, [(0.32, 0.02), (speech_s, 0.95), (0.064, 0.02)])
        since_s = taker.pause_since_s
        assert since_s is not None
        # The last window before the silence reaches ends_after_s (windows are 32 ms).
        assert taker.end_turn_early(since_s + ends_after_s - 0.04) is None
        assert isinstance(taker.end_turn_early(since_s + ends_after_s), UtteranceEnded)


def test_an_interruption_ends_the_barge_in_silence_after_the_callers_last_sound() -> None:
    """Over the bot ("wait, ..."): the turn ends no sooner than barge_in_end_silence_ms
    (450), counted from the caller's last sound (5 quiet windows before the VAD's fall
    here), or from the fall with silence_from_last_sound "off"."""
    loud, quiet = -12.0, -60.0
    windows = [(0.02, quiet)] * 10 + [(0.95, loud)] * 25 + [(0.95, quiet)] * 5
    windows += [(0.02, quiet)] * 30
    for mode, counted_from in (("tiebreak", 35), ("off", 40)):
        config = VadConfig(
            end_silence_ms=150,
            barge_in_end_silence_ms=450,
            quiet_below_peak_db=30.0,
            silence_from_last_sound=mode,  # type: ignore[arg-type]
        )
        taker = TurnTaker(config)
        taker.set_bot_speaking(True)
        ended = None
        for i, (prob, level) in enumerate(windows):
            actions = taker.on_vad(prob, i * WINDOW_S, level)
            if i >= 40 and ended is None:  # in the pause: the model says "finished"
                ended = taker.end_turn_early(i * WINDOW_S)
                if ended is not None:
                    assert isinstance(ended, UtteranceEnded)
                    # 450 ms heard from the window it counts from: 15 windows (480 ms).
                    assert i == counted_from + 14
            assert not any(isinstance(a, UtteranceEnded) for a in actions)
        assert ended is not None


@pytest.mark.parametrize(
    ("quiet_windows", "after_sound_ms", "finished", "short", "ends_at"),
    [
        # 10 quiet windows (320 ms) before the fall (window 45): 250 ms after the last
        # sound (window 35) has passed when the pause begins, so the fall itself ends it;
        # the fall's 150 ms would be window 45 + 4.
        (10, 250, True, False, 45),
        (10, 0, True, False, 49),  # off: from the fall
        (10, 250, False, False, 49),  # not a "finished" verdict (the maximum, a tie-break)
        (10, 250, True, True, 51),  # after a short utterance: its own 200 ms from the fall
        # 6 quiet windows: the fall at window 41, 250 ms after the last sound at 42, before
        # the fall's 150 ms (45).
        (6, 250, True, False, 42),
        # The fall 2 windows after the last sound (a real voice): the fall's 150 ms first.
        (2, 250, True, False, 41),
    ],
)
def test_a_finished_turn_ends_after_the_last_sound_when_that_comes_first(
    quiet_windows: int, after_sound_ms: int, finished: bool, short: bool, ends_at: int
) -> None:
    loud, quiet = -12.0, -60.0
    speech = 8 if short else 25
    windows = [(0.02, quiet)] * 10 + [(0.95, loud)] * speech
    windows += [(0.95, quiet)] * quiet_windows + [(0.02, quiet)] * 30
    config = VadConfig(
        end_silence_ms=150,
        end_silence_after_sound_ms=after_sound_ms,
        quiet_below_peak_db=30.0,
        silence_from_last_sound="tiebreak",
    )
    taker = TurnTaker(config)
    ended_at = None
    for i, (prob, level) in enumerate(windows):
        taker.on_vad(prob, i * WINDOW_S, level)
        if ended_at is None and taker.end_turn_early(i * WINDOW_S, 150, finished=finished):
            ended_at = i
    assert ended_at == ends_at + (speech - 25)


def test_blip_shorter_than_min_speech_is_not_a_turn() -> None:
    taker = TurnTaker(VadConfig(min_speech_ms=160))
    assert feed(taker, [(0.1, 0.95), (1.0, 0.02)]) == []


def test_barge_in_needs_min_speech_and_the_raised_threshold() -> None:
    config = VadConfig(
        barge_in_min_speech_ms=200, barge_in_threshold=0.6, barge_in_pause_at_onset=False
    )
    taker = TurnTaker(config)
    taker.set_bot_speaking(True)
    # A cough (100 ms) and an echo of the bot below the raised threshold: nothing.
    assert feed(taker, [(0.1, 0.95), (0.5, 0.02), (1.0, 0.55)]) == []
    taker = TurnTaker(config)
    taker.set_bot_speaking(True)
    events = feed(taker, [(0.6, 0.95)])
    barge = [(t, a) for t, a in events if isinstance(a, BargeIn)]
    assert len(barge) == 1
    at, action = barge[0]
    # Decided on the window that completes 200 ms of speech heard (at = that window's start).
    assert isinstance(action, BargeIn) and at == action.decided_s
    assert 0.2 <= at + WINDOW_S - action.onset_s < 0.2 + WINDOW_S
    # The same echo level is speech when the bot is quiet.
    quiet = TurnTaker(config)
    assert any(isinstance(a, UtteranceStarted) for _, a in feed(quiet, [(1.0, 0.55)]))


@pytest.mark.parametrize(
    ("text", "complete"),
    [
        ("what are your opening hours", True),
        ("my account number is", False),
        ("my account number is one two three", False),
        ("it's 4 5 6", False),
        ("I want to speak to", False),
        ("uh", False),
        ("", False),
        ("goodbye.", True),
        # Finished questions the old list held for the full maximum silence (issue #17).
        ("Connect me to a human being, please.", True),
        ("how much do I still owe on my account?", True),
        ("where can I find you", True),
        ("I'd like to", False),
        ("um", False),
        # The STT's question mark: it heard a whole question, whatever its last word.
        ("so it's the one in the town centre then?", True),
        ("so it's the one in the town centre then", False),
        # A be-verb after a pronoun and a particle after an object pronoun end a sentence;
        # after a noun they do not.
        ("yes they were", True),
        ("I am not sure where we are", True),
        ("the trouble is", False),
        ("can the fitter let us in", True),
        ("please turn them on", True),
        ("the meter cupboard is in", False),
        ("I moved house on", False),
    ],
)
def test_looks_complete(text: str, complete: bool) -> None:
    assert looks_complete(text) is complete


# --- scripted timelines through the real session -----------------------------------------

HOURS = 440
AGENT = 660
TARIFF = 880
ACCOUNT = 550
DIGITS = 770
PHRASES = {
    HOURS: "what are your opening hours",
    AGENT: "agent please now",
    TARIFF: "tell me about tariffs",
    ACCOUNT: "my account number is",
    DIGITS: "one two three",
}
LONG = "First sentence here. Second sentence here. Third sentence here. Fourth one."


def make_shared(
    stt_delay_s: float = 0.1,
    tts_first_s: float = 0.15,
    incomplete_hz: frozenset[int] = frozenset({ACCOUNT}),
    stt: ScriptedStt | None = None,
    vad: EnergyVad | None = None,
) -> Shared:
    base = load_config()
    rules = (
        RuleConfig(keywords=("hours",), reply="We open at eight."),
        RuleConfig(keywords=("tariffs",), reply=LONG),
        RuleConfig(keywords=("three",), reply="Thanks, got your account."),
        RuleConfig(keywords=("agent",), reply="Transferring you.", then="transfer", target="q"),
    )
    config = dataclasses.replace(
        base, dialogue=DialogueConfig(greeting="Hi.", reprompt="Pardon?", rules=rules)
    )
    engines = FakeEngines(
        stt or ScriptedStt(PHRASES, delay_s=stt_delay_s),
        ToneTts(tts_first_s),
        vad=vad,
        # "my account number is ..." sounds unfinished.
        turn_model=ScriptedTurnModel(incomplete_hz=incomplete_hz),
    )
    cache = TtsCache("tone", None)
    for text in ("Hi.", "We open at eight."):
        cache.put(text, 8000, engines.script_tts.synthesize_all(text, 8000))
    return Shared(
        config=config,
        engines=engines,
        dialogue=RuleDialogue.from_config(config.dialogue),
        tts_cache=cache,
        clips=ClipLibrary({}),
    )


async def timeline(
    shared: Shared,
    script: list[tuple[float, bytes | str]],
    until_s: float,
    send_silence: bool = True,
    profile: str | None = None,
) -> tuple[FakeMedia, CallSession]:
    media = FakeMedia(send_silence=send_silence, profile=profile)
    session = CallSession(media, shared)
    async with asyncio.TaskGroup() as group:
        pacer = group.create_task(media.speaker.run(media.write))
        runner = group.create_task(session.run())
        await media.play_caller(script)
        await media.silence_until(until_s)
        if not runner.done():
            await media.hangup("caller_hangup")
        await runner
        pacer.cancel()
    return media, session


def test_cached_reply_latency_is_short_silence_plus_stt() -> None:
    shared = make_shared(stt_delay_s=0.1)
    speech = tone(1.0, 8000, HOURS)
    media, session = run_virtual(timeline(shared, [(3.0, speech)], until_s=6.0))
    (turn,) = [t for t in session.record.turns if t.kind == "speech"]
    assert turn.transcript == PHRASES[HOURS] and turn.reply_source == "cache"
    speech_end = 3.0 + 1.0
    first = min(t for t in media.voiced_times() if t > speech_end)
    # The short end-of-turn silence (vad.end_silence_ms, heard in whole 32 ms VAD windows;
    # the speculative transcript took 100 ms, so it was ready), then the next 20 ms tick.
    short_s = shared.config.vad.end_silence_ms / 1000.0
    assert first - speech_end == pytest.approx(short_s + 0.032, abs=0.045)
    assert first - speech_end < 0.35
    assert session.speculations_dropped == 0  # the decode at the pause was the answer


def first_reply_after(media: FakeMedia, t_s: float) -> float:
    return min(t for t in media.voiced_times() if t > t_s)


def test_a_caller_who_sends_no_frames_while_silent_is_answered_as_fast() -> None:
    """A Local channel in Wait(), silence suppression: after the question, nothing comes.
    The missing frames count as silence on the call's clock, so the turn ends.

    Where the end of speech falls against the 20 ms frames, the 32 ms VAD windows and the
    bot's 20 ms send ticks moves the difference by up to a frame or two, so it is measured
    at eight phases of a frame: the median within 50 ms (the target), none beyond the
    jitter allowance plus two frames."""
    differences: list[float] = []
    for phase in range(8):
        speech_s = 1.0 + phase * 0.0025 * 2
        speech = tone(speech_s, 8000, HOURS)
        speech_end = 3.0 + speech_s
        latency: dict[bool, float] = {}
        for streams in (True, False):
            media, session = run_virtual(
                timeline(make_shared(), [(3.0, speech)], until_s=6.0, send_silence=streams)
            )
            (turn,) = [t for t in session.record.turns if t.kind == "speech"]
            assert turn.transcript == PHRASES[HOURS] and turn.reply_text == "We open at eight."
            latency[streams] = first_reply_after(media, speech_end) - speech_end
        assert latency[False] < 0.35
        differences.append(latency[False] - latency[True])
    assert sorted(differences)[len(differences) // 2] <= 0.05 + 1e-6
    assert max(differences) <= 0.03 + 2 * 0.02 + 1e-6


def test_frames_queued_as_the_wait_for_them_times_out_are_audio_not_a_gap() -> None:
    """The bot's loop runs late: the reader queues the caller's next frame in the same
    loop turn as the session's wait for it times out. That frame is the caller's audio; no
    silence is filled in before it (it used to be: a gap inside the caller's words)."""

    class ArrivesAtTheTimeout(asyncio.Queue[InboundEvent]):
        """Frames become available exactly when a wait for them is given up."""

        def __init__(self) -> None:
            super().__init__()
            self.late: list[InboundEvent] = []
            self.drained = asyncio.Event()

        async def get(self) -> InboundEvent:
            try:
                return await super().get()
            except asyncio.CancelledError:
                if self.late:
                    self.put_nowait(self.late.pop(0))
                    if not self.late:
                        self.drained.set()
                raise

    async def main() -> tuple[float, float]:
        media = FakeMedia()
        queue = ArrivesAtTheTimeout()
        media.inbound = queue
        session = CallSession(media, make_shared())
        loop = asyncio.get_running_loop()
        async with asyncio.TaskGroup() as group:
            pacer = group.create_task(media.speaker.run(media.write))
            runner = group.create_task(session.run())
            queue.put_nowait(AudioIn(bytes(320), 8000, loop.time()))  # the clock starts
            # 1 s of the caller's audio, each frame queued as the wait for it times out.
            queue.late.extend(AudioIn(bytes(320), 8000, 0.0) for _ in range(50))
            await queue.drained.wait()
            await asyncio.sleep(0.01)
            clock = session.listener.clock
            filled_s, stream_s = clock.filled_s, clock.stream_s
            await media.hangup("caller_hangup")
            await runner
            pacer.cancel()
        return filled_s, stream_s

    filled_s, stream_s = run_virtual(main())
    assert stream_s == pytest.approx(1.02, abs=0.001)  # every frame, nothing filled between
    assert filled_s == 0.0


def test_speech_in_the_first_frame_after_no_frames_gets_a_silent_lookback() -> None:
    """The caller's first frame after sending none is already speech: STT still gets the
    configured look-back before it, as silence (tiny.en returns nothing for audio that
    starts mid-word)."""
    shared = make_shared()
    speech = tone(1.0, 8000, HOURS)
    _media, session = run_virtual(
        timeline(shared, [(3.0, speech)], until_s=6.0, send_silence=False)
    )
    stt = shared.engines.stt
    assert isinstance(stt, ScriptedStt)
    heard = np.frombuffer(stt.last_input, dtype="<i2")
    lead = int(0.3 * 8000)  # vad.lookback_ms
    assert heard.size >= lead + 8000 * 0.9
    assert not heard[:lead].any() and np.abs(heard[lead : lead + 160]).max() > 1000


def test_no_input_prompt_reaches_a_caller_who_went_silent_without_frames() -> None:
    shared = make_shared()
    shared.config = dataclasses.replace(
        shared.config, fallbacks=dataclasses.replace(shared.config.fallbacks, no_input_s=3.0)
    )
    speech = tone(1.0, 8000, HOURS)
    media, session = run_virtual(timeline(shared, [(2.0, speech)], until_s=9.5, send_silence=False))
    kinds = [t.kind for t in session.record.turns]
    assert kinds[:2] == ["greeting", "speech"] and "no_input" in kinds
    assert session.record.turns[kinds.index("no_input")].reply_text == "Are you still there?"


def test_frames_late_in_a_burst_after_a_gap_keep_the_utterance_whole() -> None:
    """Mid-question the link stalls 150 ms, then the held frames arrive at once: the gap is
    filled with a little silence, the burst is appended, and the question stays one turn."""

    async def run() -> tuple[FakeMedia, CallSession]:
        shared = make_shared()
        media = FakeMedia()
        session = CallSession(media, shared)
        part1, part2 = tone(0.6, 8000, ACCOUNT), tone(0.8, 8000, DIGITS)
        async with asyncio.TaskGroup() as group:
            pacer = group.create_task(media.speaker.run(media.write))
            runner = group.create_task(session.run())
            await media.play_caller([(2.0, part1)])
            loop = asyncio.get_running_loop()
            await asyncio.sleep(0.15)  # nothing arrives for 150 ms ...
            for offset in range(0, 320 * 8, 320):  # ... then 8 held frames in one burst
                media.inbound.put_nowait(AudioIn(part2[offset : offset + 320], 8000, loop.time()))
            await media.play_caller([(0.0, part2[320 * 8 :])])
            await media.silence_until(loop.time() + 3.0)
            await media.hangup("caller_hangup")
            await runner
            pacer.cancel()
        return media, session

    media, session = run_virtual(run())
    speech_turns = [t for t in session.record.turns if t.kind == "speech"]
    assert [t.transcript for t in speech_turns] == ["my account number is one two three"]
    assert session.listener.clock.filled_s == pytest.approx(0.12, abs=0.021)  # 150 ms less jitter


def test_incomplete_phrase_waits_for_the_rest() -> None:
    shared = make_shared()
    part1 = tone(1.0, 8000, ACCOUNT)
    part2 = tone(0.8, 8000, DIGITS)
    # "my account number is" ... 450 ms pause ... "one two three"
    media, session = run_virtual(timeline(shared, [(3.0, part1), (4.45, part2)], until_s=8.0))
    speech_turns = [t for t in session.record.turns if t.kind == "speech"]
    assert [t.transcript for t in speech_turns] == ["my account number is one two three"]
    assert speech_turns[0].reply_text == "Thanks, got your account."
    # No bot audio while the caller paused mid-sentence (after the greeting ended).
    assert not [t for t in media.voiced_times() if 4.0 < t < 5.25]


def speech_transcripts(
    shared: Shared, said: list[tuple[float, bytes]], until_s: float
) -> tuple[list[str], CallSession]:
    """The transcripts of the call's speech turns, in order (and the session)."""
    _, session = run_virtual(timeline(shared, list(said), until_s=until_s))
    return [t.transcript for t in session.record.turns if t.kind == "speech"], session


def test_a_speculative_decode_is_dropped_when_the_caller_speaks_on() -> None:
    # A slow engine (400 ms a decode, as when many calls queue for it): the decode started
    # at the 150 ms mid-sentence pause would only be thrown away, so it is cancelled before
    # it runs; the one at the real end of the turn serves the answer.
    shared = make_shared(stt_delay_s=0.4)
    said = [(3.0, tone(1.0, 8000, ACCOUNT)), (4.15, tone(0.8, 8000, DIGITS))]
    transcripts, session = speech_transcripts(shared, said, until_s=8.0)
    assert transcripts == ["my account number is one two three"]
    assert session.speculations_dropped == 1
    assert shared.engines.stt.decodes == 1  # type: ignore[attr-defined]


def test_words_transcribed_after_the_caller_spoke_again_open_the_next_turn() -> None:
    # A slow engine (1.2 s a decode): "what are your opening hours", a pause long enough to
    # end the turn (700 ms), then "agent please now" starts before the first transcript is
    # back. Nothing had been answered, so the first words lead the next turn's transcript
    # (they were dropped), and the first turn is decoded from its own audio.
    said = [(3.0, tone(1.0, 8000, HOURS)), (4.85, tone(0.8, 8000, AGENT))]
    transcripts, _ = speech_transcripts(make_shared(stt_delay_s=1.2), said, until_s=10.0)
    assert transcripts == ["what are your opening hours agent please now"]


def test_each_turn_is_decoded_from_its_own_audio_when_the_engine_lags_behind() -> None:
    # 2.5 s a decode: three short utterances end before the first decode is back, so the
    # second and third turns are decoded after the next utterance has begun (no speculation
    # of theirs ran). Each decode must read the audio of its own turn.
    said = [
        (3.0, tone(0.5, 8000, HOURS)),
        (4.3, tone(0.4, 8000, AGENT)),
        (5.5, tone(0.5, 8000, TARIFF)),
    ]
    transcripts, _ = speech_transcripts(make_shared(stt_delay_s=2.5), said, until_s=14.0)
    assert transcripts == ["what are your opening hours agent please now tell me about tariffs"]


@pytest.mark.parametrize("gap_s", [0.25, 0.3])
def test_the_next_utterance_does_not_reach_back_into_the_previous_one(gap_s: float) -> None:
    # "what are your opening hours" is answered at the short silence; the caller cuts in
    # with "agent please now" 250-300 ms after finishing, less than the 300 ms lookback kept
    # before an onset. The lookback stops where the previous speech ended: the new turn's
    # transcript does not repeat the question (it did, so the caller got the hours again
    # instead of an agent). The words are what the test is about: with
    # turn.went_on_within_ms on, the second utterance (over the answer, so soon after the
    # first) would be answered together with the first (the test just below).
    said = [(3.0, tone(1.0, 8000, HOURS)), (4.0 + gap_s, tone(0.8, 8000, AGENT))]
    shared = with_turn(make_shared(stt_delay_s=0.1), went_on_within_ms=0)
    _, session = speech_transcripts(shared, said, until_s=8.0)
    turns = [t for t in session.record.turns if t.kind == "speech"]
    assert [t.transcript for t in turns] == [PHRASES[HOURS], PHRASES[AGENT]]
    assert turns[0].barged_in and turns[1].reply_text == "Transferring you."


def test_barge_in_silences_the_bot_within_a_frame_and_nothing_stale_follows() -> None:
    shared = make_shared()
    question = tone(1.0, 8000, TARIFF)
    interrupt = tone(1.0, 8000, HOURS)
    media, session = run_virtual(timeline(shared, [(2.0, question), (5.0, interrupt)], until_s=9.0))
    turns = [t for t in session.record.turns if t.kind == "speech"]
    assert turns[0].barged_in and turns[1].transcript == PHRASES[HOURS]
    voiced = media.voiced_times()
    # The long reply was playing when the caller started at 5.0 ...
    assert any(4.5 < t < 5.0 for t in voiced)
    # ... and stopped once the caller had spoken barge_in_min_speech_ms (+ two VAD windows
    # and one frame), with no frame of it while the caller was still talking.
    cutoff = 5.0 + shared.config.vad.barge_in_min_speech_ms / 1000.0 + 0.064 + 0.02
    assert not [t for t in voiced if cutoff < t < 6.0]
    # The answer to the interrupting question came after it.
    assert any(6.0 < t < 7.0 for t in voiced)


def test_a_click_over_the_bot_pauses_it_briefly_and_it_goes_on() -> None:
    """A 60 ms sound over the long reply: the bot goes quiet at its first speech window and
    resumes where it stopped as soon as the sound is over (no barge-in, the whole reply is
    played); with the option off it is not paused at all."""
    for pause_at_onset in (True, False):
        shared = make_shared()
        shared = dataclasses.replace(
            shared,
            config=dataclasses.replace(
                shared.config,
                vad=dataclasses.replace(shared.config.vad, barge_in_pause_at_onset=pause_at_onset),
            ),
        )
        question = tone(1.0, 8000, TARIFF)
        click = tone(0.06, 8000, HOURS)
        media, session = run_virtual(
            timeline(shared, [(2.0, question), (5.0, click)], until_s=14.0)
        )
        turns = [t for t in session.record.turns if t.kind == "speech"]
        assert len(turns) == 1 and not turns[0].barged_in
        # The record says the reply was paused for a noise (admins count these: echo).
        assert turns[0].fallbacks == (["paused_for_noise"] if pause_at_onset else [])
        voiced = media.voiced_times()
        gap = [t for t in voiced if 4.9 < t < 5.4]
        frame_s = 0.02
        holes = [b - a for a, b in zip(gap, gap[1:], strict=False) if b - a > frame_s + 1e-6]
        if pause_at_onset:
            # One hole of a few frames right after the click began, then the reply again.
            assert len(holes) == 1 and 0.03 <= holes[0] <= 0.2, holes
        else:
            assert holes == []
        # The reply played to its end either way: as many voiced frames as the other run.
        if pause_at_onset:
            paused_frames = len(voiced)
        else:
            assert len(voiced) == paused_frames


def test_transfer_after_the_reply_has_played() -> None:
    shared = make_shared()
    media, session = run_virtual(timeline(shared, [(2.0, tone(1.0, 8000, AGENT))], until_s=8.0))
    assert media.hangups == ["transferred"]
    assert session.record.end_reason == "transferred" and session.record.transfer_target == "q"
    last_voice = max(media.voiced_times())
    assert last_voice > 3.0  # "Transferring you." was played before the hand-off


def test_silence_and_noise_free_call_makes_no_turn() -> None:
    shared = make_shared()
    _media, session = run_virtual(timeline(shared, [], until_s=10.0))
    assert [t for t in session.record.turns if t.kind == "speech"] == []


def test_inbound_audio_at_another_rate_is_converted_for_the_session() -> None:
    shared = make_shared()

    async def run() -> tuple[FakeMedia, CallSession]:
        from voicebot_pbx.audio import resample
        from voicebot_pbx.pbx.media import AudioIn

        media = FakeMedia()  # the session runs at 8 kHz ...
        session = CallSession(media, shared)
        async with asyncio.TaskGroup() as group:
            pacer = group.create_task(media.speaker.run(media.write))
            runner = group.create_task(session.run())
            loop = asyncio.get_running_loop()
            # ... and the caller's audio arrives at 16 kHz (640-byte frames).
            speech = resample(tone(1.0, 8000, HOURS), 8000, 16000)
            audio = bytes(16000 * 2 * 2) + speech + bytes(16000 * 2 * 2)
            for offset in range(0, len(audio), 640):
                await asyncio.sleep(0.02)
                await media.inbound.put(AudioIn(audio[offset : offset + 640], 16000, loop.time()))
            await media.hangup("caller_hangup")
            await runner
            pacer.cancel()
        return media, session

    _media, session = run_virtual(run())
    turns = [t for t in session.record.turns if t.kind == "speech"]
    assert [t.transcript for t in turns] == [PHRASES[HOURS]]


def test_call_recording_has_both_directions(tmp_path: object) -> None:
    from pathlib import Path

    from voicebot_pbx.config import AnalyticsConfig
    from voicebot_pbx.ops.recording import CallRecording  # noqa: F401  (the session's writer)

    shared = make_shared()
    recordings = Path(str(tmp_path)) / "recordings"
    config = dataclasses.replace(
        shared.config,
        analytics=AnalyticsConfig(record_audio=True, recordings_dir=str(recordings)),
    )
    shared = dataclasses.replace(shared, config=config)
    _media, session = run_virtual(timeline(shared, [(2.0, tone(1.0, 8000, HOURS))], until_s=6.0))
    import wave

    import numpy as np

    assert session.record.recording_path is not None
    with wave.open(session.record.recording_path, "rb") as wav:
        assert wav.getnchannels() == 2 and wav.getframerate() == 8000
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, 2)
    caller, bot = samples[:, 0].astype(float), samples[:, 1].astype(float)
    assert len(samples) / 8000 == pytest.approx(6.0, abs=0.5)
    # Caller speech at 2-3 s on the left; the bot's greeting and answer on the right.
    assert np.abs(caller[2 * 8000 + 800 : 3 * 8000 - 800]).mean() > 1000
    assert np.abs(caller[: 1 * 8000]).mean() < 50
    assert np.abs(bot).max() > 1000


# --- the end-of-turn detector ([turn]) ---------------------------------------------------


def with_turn(shared: Shared, **changes: object) -> Shared:
    shared.config = dataclasses.replace(
        shared.config, turn=dataclasses.replace(shared.config.turn, **changes)
    )
    return shared


def test_the_model_ends_a_finished_turn_at_the_short_silence() -> None:
    """The model's "finished" verdict ends the turn at vad.end_silence_ms."""
    shared = make_shared()
    speech = tone(1.0, 8000, HOURS)
    media, session = run_virtual(timeline(shared, [(3.0, speech)], until_s=6.0))
    engines = shared.engines
    assert isinstance(engines, FakeEngines)
    assert engines.script_turns.scores >= 1
    assert session.listener.turn_scores >= 1
    first = first_reply_after(media, 4.0)
    short_s = shared.config.vad.end_silence_ms / 1000.0
    assert first - 4.0 == pytest.approx(short_s + 0.032, abs=0.045)


def test_an_unfinished_sounding_pause_waits_for_the_maximum_silence() -> None:
    """The model hears "my account number is" as unfinished: the caller who then says
    nothing more is answered only after vad.end_silence_max_ms, not at the short silence;
    with the word list reading the transcript (the default turn.text_reader, "is" ends no
    sentence), after turn.unfinished_max_silence_ms."""
    shared = with_turn(make_shared(), unfinished_max_silence_ms=0)
    media, session = run_virtual(timeline(shared, [(3.0, tone(1.0, 8000, ACCOUNT))], until_s=7.0))
    first = first_reply_after(media, 4.0)
    assert first - 4.0 >= 0.7
    assert first - 4.0 < 0.7 + 0.032 + 0.25

    shared = make_shared()
    held_s = shared.config.turn.unfinished_max_silence_ms / 1000.0
    media, session = run_virtual(timeline(shared, [(3.0, tone(1.0, 8000, ACCOUNT))], until_s=7.0))
    assert held_s <= first_reply_after(media, 4.0) - 4.0 < held_s + 0.032 + 0.25


def test_a_finished_transcript_breaks_the_models_unfinished_verdict() -> None:
    """The model hears "what are your opening hours" as unfinished (a caller whose prosody
    it misjudges) but the speculative transcript reads finished: the turn ends at
    turn.tiebreak_silence_ms, not at vad.end_silence_max_ms; with the tie-break off it waits
    for the maximum. "my account number is" (unfinished on both counts) still waits."""
    latency_s: dict[int, float] = {}
    for tiebreak_ms in (400, 0):
        shared = make_shared(incomplete_hz=frozenset({ACCOUNT, HOURS}))
        with_turn(shared, tiebreak_silence_ms=tiebreak_ms)
        media, session = run_virtual(timeline(shared, [(3.0, tone(1.0, 8000, HOURS))], until_s=6.0))
        (turn,) = [t for t in session.record.turns if t.kind == "speech"]
        assert turn.transcript == PHRASES[HOURS] and turn.reply_source == "cache"
        latency_s[tiebreak_ms] = first_reply_after(media, 4.0) - 4.0
    assert latency_s[400] == pytest.approx(0.4 + 0.032, abs=0.045)
    assert latency_s[0] >= 0.7

    shared = with_turn(make_shared(), tiebreak_silence_ms=400)
    media, _ = run_virtual(timeline(shared, [(3.0, tone(1.0, 8000, ACCOUNT))], until_s=7.0))
    assert first_reply_after(media, 4.0) - 4.0 >= 0.7


def test_the_transcript_detector_is_still_available() -> None:
    """[turn] detector = "transcript": the speculative transcript's last word decides (the
    old rule), and the model is not asked."""
    shared = with_turn(make_shared(), detector="transcript")
    engines = shared.engines
    assert isinstance(engines, FakeEngines)
    media, session = run_virtual(timeline(shared, [(3.0, tone(1.0, 8000, HOURS))], until_s=6.0))
    assert engines.script_turns.scores == 0
    assert first_reply_after(media, 4.0) - 4.0 < 0.35


def test_silence_detector_always_waits_for_the_maximum() -> None:
    shared = with_turn(make_shared(), detector="silence")
    media, _session = run_virtual(timeline(shared, [(3.0, tone(1.0, 8000, HOURS))], until_s=6.0))
    assert first_reply_after(media, 4.0) - 4.0 >= 0.7


class FailingTurnModel(ScriptedTurnModel):
    def score(self, pcm: bytes, rate_hz: int) -> TurnScore:
        self.scores += 1
        raise RuntimeError("onnxruntime: bad input")


def test_a_failing_model_falls_back_to_the_silence_rule_logged_once() -> None:
    shared = make_shared()
    engines = shared.engines
    assert isinstance(engines, FakeEngines)
    failing = FailingTurnModel()
    engines.turn_model = failing
    engines.script_turns = failing
    said = [(3.0, tone(1.0, 8000, HOURS)), (6.0, tone(1.0, 8000, HOURS))]
    with capture_logs() as logs:
        media, session = run_virtual(timeline(shared, said, until_s=9.0))
    assert failing.scores >= 2
    # Both turns answered, each after the long silence (no verdict), the failure logged once.
    replies = [t for t in session.record.turns if t.kind == "speech"]
    assert [t.reply_text for t in replies] == ["We open at eight."] * 2
    assert first_reply_after(media, 4.0) - 4.0 >= 0.7
    assert [e["event"] for e in logs].count("turn_model_failed") == 1
    assert session.record.errors.count("turn_model_failed") == 1


def test_a_slow_model_score_times_out_to_the_silence_rule() -> None:
    shared = with_turn(make_shared(), timeout_ms=100)
    engines = shared.engines
    assert isinstance(engines, FakeEngines)
    engines.script_turns.delay_s = 0.5  # longer than turn.timeout_ms
    media, session = run_virtual(timeline(shared, [(3.0, tone(1.0, 8000, HOURS))], until_s=6.0))
    assert first_reply_after(media, 4.0) - 4.0 >= 0.7
    assert "turn_model_failed" in session.record.errors


def test_the_transcript_event_says_how_the_turn_ended_and_where_the_words_came_from() -> None:
    shared = make_shared()
    said = [(3.0, tone(1.0, 8000, HOURS)), (6.0, tone(1.0, 8000, ACCOUNT))]
    with capture_logs() as logs:
        run_virtual(timeline(shared, said, until_s=9.0))
    events = [e for e in logs if e["event"] == "transcript"]
    assert [(e["ended_by"], e["stt_source"]) for e in events] == [
        ("detector", "speculative"),  # finished: the decode at the pause was the answer
        ("silence", "speculative"),  # unfinished-sounding: waited for the maximum
    ]
    assert all(e["speculations_dropped"] == 0 for e in events)


def test_the_transcript_event_says_how_long_the_end_of_turn_verdict_took() -> None:
    """A verdict that waited in a busy inference pool explains the late end of its turn."""
    shared = make_shared()
    engines = shared.engines
    assert isinstance(engines, FakeEngines)
    engines.script_turns.delay_s = 0.12  # a score that waited behind other calls' decodes
    said = [(3.0, tone(1.0, 8000, HOURS)), (6.0, tone(1.0, 8000, ACCOUNT))]
    with capture_logs() as logs:
        media, _session = run_virtual(timeline(shared, said, until_s=9.0))
    events = [e for e in logs if e["event"] == "transcript"]
    assert [e["ended_by"] for e in events] == ["detector", "silence"]
    assert 120.0 <= events[0]["turn_verdict_ms"] < 160.0
    # The reply came no sooner than the verdict allowed (the pause's first window + 120 ms).
    assert first_reply_after(media, 4.0) - 4.0 >= 0.12
    assert 120.0 <= events[1]["turn_verdict_ms"] < 160.0  # "unfinished" also came late


# --- the decode started in the quiet run before the pause (vad.speculate_after_quiet_ms) ------


def with_vad(shared: Shared, **changes: object) -> Shared:
    shared.config = dataclasses.replace(
        shared.config, vad=dataclasses.replace(shared.config.vad, **changes)
    )
    return shared


def test_the_decode_starts_in_the_quiet_run_before_the_probability_falls() -> None:
    """A VAD whose probability stays up 160 ms after the last sound (as silero's does): the
    decode starts 64 ms into the quiet run instead of at the fall, so a 250 ms decode is
    ready ~100 ms sooner."""
    latency_s: dict[int, float] = {}
    sources: dict[int, list[str]] = {}
    for after_ms in (64, 0):
        shared = make_shared(stt_delay_s=0.25, vad=EnergyVad(hangover_windows=5))
        with_vad(shared, speculate_after_quiet_ms=after_ms)
        with capture_logs() as logs:
            media, session = run_virtual(
                timeline(shared, [(3.0, tone(1.0, 8000, HOURS))], until_s=6.0)
            )
        (turn,) = [t for t in session.record.turns if t.kind == "speech"]
        assert turn.transcript == PHRASES[HOURS] and turn.reply_text == "We open at eight."
        latency_s[after_ms] = first_reply_after(media, 4.0) - 4.0
        sources[after_ms] = [e["stt_source"] for e in logs if e["event"] == "transcript"]
        assert session.speculations_dropped == 0
    assert sources == {64: ["early"], 0: ["speculative"]}
    # The fall 160 ms after the last sound, then the 150 ms short silence (whole windows).
    # The answer waits for the transcript: decoded from 64 ms after the last sound instead
    # of from the fall, 160 ms after it (then the next 20 ms tick).
    assert latency_s[64] == pytest.approx(0.064 + 0.25 + 0.01, abs=0.02)
    assert latency_s[0] == pytest.approx(0.16 + 0.25 + 0.01, abs=0.03)


@pytest.mark.parametrize("stt_delay_s", [0.01, 0.05])
def test_a_sound_before_the_fall_drops_the_early_decode(stt_delay_s: float) -> None:
    """The caller goes on after a quiet run long enough for an early decode (a gap between
    two words the VAD still calls speech): that decode is dropped (in flight: 50 ms; or done
    already: 10 ms), and the turn's words are all of them, not the first phrase (which would
    have asked for an agent)."""
    shared = make_shared(stt_delay_s=stt_delay_s, vad=EnergyVad(hangover_windows=5))
    with_vad(shared, speculate_after_quiet_ms=64)
    said = tone(0.6, 8000, AGENT) + bytes(2 * 800) + tone(0.8, 8000, HOURS)  # a 100 ms gap
    with capture_logs() as logs:
        media, session = run_virtual(timeline(shared, [(3.0, said)], until_s=6.0))
    (turn,) = [t for t in session.record.turns if t.kind == "speech"]
    assert turn.transcript == f"{PHRASES[AGENT]} {PHRASES[HOURS]}"
    assert turn.reply_text == "We open at eight."
    # The decode of the first phrase alone: cancelled, or thrown away when it came.
    assert session.speculations_dropped == (1 if stt_delay_s > 0.02 else 0)
    assert [e["stt_source"] for e in logs if e["event"] == "transcript"] == ["early"]


class SlowAfterFirstStt(ScriptedStt):
    """The first decode is quick, every later one slow (a busy engine)."""

    def transcribe(self, pcm: bytes, rate_hz: int) -> SttResult:
        result = super().transcribe(pcm, rate_hz)
        self.delay_s = 0.5
        return result


def test_a_dropped_early_transcript_never_speaks_for_the_pause() -> None:
    """The early decode of "what are your opening hours" finished before the caller went on
    ("... my account number is", which the model hears unfinished). While the pause's own
    decode is still running, that stale transcript must not break the tie (it reads
    finished): the turn waits for the maximum silence."""
    stt = SlowAfterFirstStt(PHRASES, delay_s=0.01)
    shared = make_shared(stt=stt, vad=EnergyVad(hangover_windows=5))
    with_vad(shared, speculate_after_quiet_ms=64)
    said = tone(0.8, 8000, HOURS) + bytes(2 * 800) + tone(0.8, 8000, ACCOUNT)
    with capture_logs() as logs:
        run_virtual(timeline(shared, [(3.0, said)], until_s=7.0))
    (event,) = [e for e in logs if e["event"] == "transcript"]
    assert event["text"] == f"{PHRASES[HOURS]} {PHRASES[ACCOUNT]}"
    assert event["ended_by"] == "silence"


class SlowRecordingRules(RuleDialogue):
    """The rules, 0.5 s to answer (a dialogue server), noting what they were given and
    what was taken back."""

    delay_s = 0.5

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.given: list[str] = []
        self.retracted: list[str] = []
        self.prepared: list[tuple[float, str]] = []  # (loop time, text)

    async def prepare(self, call: CallInfo, text: str) -> None:
        self.prepared.append((asyncio.get_running_loop().time(), text))

    async def respond(
        self, call: CallInfo, text: str, alternatives: Sequence[str] = ()
    ) -> DialogueTurn:
        self.given.append(text)
        await asyncio.sleep(self.delay_s)
        return await super().respond(call, text, alternatives)

    async def retract(self, call: CallInfo, text: str) -> None:
        self.retracted.append(text)


def test_a_caller_who_goes_on_before_the_answer_is_answered_whole_and_the_part_taken_back() -> None:
    """The caller stops long enough to end the turn, then goes on while the dialogue is
    still answering: the answer to the first part is dropped, the dialogue takes that part
    back (``Dialogue.retract``: Rasa forgets the message and what it did after it) and
    answers the whole utterance once."""
    shared = make_shared()
    dialogue = SlowRecordingRules.from_config(shared.config.dialogue)
    shared = dataclasses.replace(shared, dialogue=dialogue)
    said = [(3.0, tone(1.0, 8000, TARIFF)), (4.4, tone(1.0, 8000, HOURS))]
    media, session = run_virtual(timeline(shared, said, until_s=9.0))
    whole = f"{PHRASES[TARIFF]} {PHRASES[HOURS]}"
    assert dialogue.given == [PHRASES[TARIFF], whole]
    assert dialogue.retracted == [PHRASES[TARIFF]]
    speech = [t for t in session.record.turns if t.kind == "speech"]
    assert speech[-1].transcript == whole and speech[-1].reply_text == "We open at eight."
    # Nothing of the first part's answer was heard: the first bot audio after the caller
    # began is the whole utterance's answer, after its end.
    assert first_reply_after(media, 3.0) > 5.4


def test_a_caller_who_goes_on_over_the_answer_is_answered_whole_and_the_part_taken_back() -> None:
    """The turn ended at the caller's pause and its answer has begun when the caller goes on
    (0.8 s after their words, within ``turn.went_on_within_ms``): the answer stops (a
    barge-in), the dialogue takes the first part back and answers the whole utterance."""
    shared = make_shared()
    dialogue = SlowRecordingRules.from_config(shared.config.dialogue)
    dialogue.delay_s = 0.0
    shared = dataclasses.replace(shared, dialogue=dialogue)
    said = [(3.0, tone(1.0, 8000, TARIFF)), (4.8, tone(1.0, 8000, HOURS))]
    with capture_logs() as logs:
        media, session = run_virtual(timeline(shared, said, until_s=10.0))
    whole = f"{PHRASES[TARIFF]} {PHRASES[HOURS]}"
    # The first part's answer was heard before the caller went on.
    assert first_reply_after(media, 4.0) < 4.8
    assert dialogue.given == [PHRASES[TARIFF], whole]
    assert dialogue.retracted == [PHRASES[TARIFF]]
    speech = [t for t in session.record.turns if t.kind == "speech"]
    assert speech[0].barged_in
    assert speech[-1].transcript == whole and speech[-1].reply_text == "We open at eight."
    assert "went_on_over_reply" in speech[-1].fallbacks
    (went_on,) = [e for e in logs if e["event"] == "caller_went_on"]
    assert 700 <= went_on["after_silence_ms"] <= 1000


@pytest.mark.parametrize(("second_at_s", "within_ms"), [(5.3, None), (4.8, 0)])
def test_speech_over_the_answer_after_a_longer_silence_is_a_turn_of_its_own(
    second_at_s: float, within_ms: int | None
) -> None:
    """Speech over an answer 1.3 s after the caller's words (past the default
    ``turn.went_on_within_ms``: a caller answering what they heard of it), or 0.8 s after
    them with the rule off: the answer stops, and the new words are answered alone; nothing
    is taken back."""
    shared = make_shared()
    if within_ms is not None:
        shared = with_turn(shared, went_on_within_ms=within_ms)
    dialogue = SlowRecordingRules.from_config(shared.config.dialogue)
    dialogue.delay_s = 0.0
    shared = dataclasses.replace(shared, dialogue=dialogue)
    said = [(3.0, tone(1.0, 8000, TARIFF)), (second_at_s, tone(1.0, 8000, HOURS))]
    media, session = run_virtual(timeline(shared, said, until_s=11.0))
    assert first_reply_after(media, 4.0) < second_at_s
    assert dialogue.given == [PHRASES[TARIFF], PHRASES[HOURS]]
    assert dialogue.retracted == []
    speech = [t for t in session.record.turns if t.kind == "speech"]
    assert speech[0].barged_in
    assert speech[-1].transcript == PHRASES[HOURS]


def test_words_carried_into_a_later_turn_keep_the_silence_before_them() -> None:
    """Speech over an answer 2.4 s after the caller's words is a turn of its own (past
    ``turn.went_on_within_ms``); when the caller speaks again 0.9 s after it, before its slow
    decode is back, its words open the next turn's transcript, and the silence before *them*
    decides: nothing of the first turn is joined or taken back."""
    shared = make_shared(stt_delay_s=1.2)
    dialogue = SlowRecordingRules.from_config(shared.config.dialogue)
    dialogue.delay_s = 0.0
    shared = dataclasses.replace(shared, dialogue=dialogue)
    said = [
        (3.0, tone(1.0, 8000, TARIFF)),
        (6.4, tone(0.5, 8000, HOURS)),
        (7.8, tone(0.5, 8000, ACCOUNT)),
    ]
    with capture_logs() as logs:
        media, session = run_virtual(timeline(shared, said, until_s=14.0))
    assert first_reply_after(media, 4.0) < 6.4  # the first answer had begun
    assert dialogue.retracted[:1] != [PHRASES[TARIFF]]
    assert not any(text.startswith(PHRASES[TARIFF] + " ") for text in dialogue.given)
    assert [e for e in logs if e["event"] == "caller_went_on"] == []
    speech = [t for t in session.record.turns if t.kind == "speech"]
    assert speech[0].barged_in
    assert all("went_on_over_reply" not in t.fallbacks for t in speech)


def test_the_dialogue_may_prepare_the_answer_to_the_decode_at_a_pause() -> None:
    """The decode at the caller's pause reaches the dialogue's ``prepare`` (work without
    side effects: the knowledge lookup and the parse) before the turn has ended; the
    dialogue is given the turn only when it has."""
    shared = make_shared()
    dialogue = SlowRecordingRules.from_config(shared.config.dialogue)
    shared = dataclasses.replace(shared, dialogue=dialogue)
    with capture_logs() as logs:
        run_virtual(timeline(shared, [(3.0, tone(1.0, 8000, HOURS))], until_s=6.0))
    (event,) = [e for e in logs if e["event"] == "transcript"]
    assert [text for _, text in dialogue.prepared] == [PHRASES[HOURS]]
    assert dialogue.given == [PHRASES[HOURS]]
    # Prepared inside the pause, before the turn ended (the speech ended at 4.0 s; the turn
    # after vad.end_silence_ms, the decode took 0.1 s of it).
    prepared_at = dialogue.prepared[0][0]
    assert 4.0 < prepared_at < 4.0 + event["stt_ms"] / 1000.0
