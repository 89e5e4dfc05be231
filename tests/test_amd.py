"""Answering-machine detection (voicebot_pbx.call.amd) on synthetic calls: noise bursts for
speech, sines for beeps, line noise for silence, all timed in stream time (no clock); plus a
few espeak-ng items of the evaluation set (bench/amd_dataset.py) when espeak-ng is there."""

from __future__ import annotations

import dataclasses
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from voicebot_pbx.call.amd import (
    AmdConfig,
    AmdDetector,
    AmdEvent,
    AmdResult,
    AsteriskAmd,
    DropCue,
    GreetingEnd,
    LikelyHuman,
    Verdict,
    combine_asterisk,
    detect,
)
from voicebot_pbx.call.amd_words import greeting_words

ROOT = Path(__file__).resolve().parents[1]
RATES = [8000, 16000]
SPEECH_DBFS = -20.0
LINE_DBFS = -60.0


def _rng(seed: int = 7) -> np.random.Generator:
    return np.random.default_rng(seed)


def _scaled(x: np.ndarray, dbfs: float) -> np.ndarray:
    out: np.ndarray = x / np.sqrt(np.mean(x**2)) * 10 ** (dbfs / 20)
    return out


def line(seconds: float, rate: int, seed: int = 1) -> np.ndarray:
    """Quiet line noise: nobody speaking."""
    return _scaled(_rng(seed).standard_normal(round(seconds * rate)), LINE_DBFS)


def speech(seconds: float, rate: int, seed: int = 2) -> np.ndarray:
    """A noise burst standing in for speech: broadband, a syllable-rate swell, never a tone."""
    n = round(seconds * rate)
    t = np.arange(n) / rate
    envelope = 0.6 + 0.4 * np.abs(np.sin(2 * np.pi * 3.0 * t))
    return _scaled(_rng(seed).standard_normal(n) * envelope, SPEECH_DBFS)


def sine(hz: float, seconds: float, rate: int, dbfs: float = -18.0) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    out: np.ndarray = np.sin(2 * np.pi * hz * t) * np.sqrt(2) * 10 ** (dbfs / 20)
    return out


def call(*parts: np.ndarray, rate: int) -> bytes:
    """The pieces one after the other, over line noise, as 16-bit PCM."""
    x = np.concatenate(parts)
    x = x + line(x.size / rate, rate, seed=99)
    pcm: bytes = np.clip(np.rint(x * 32768), -32768, 32767).astype("<i2").tobytes()
    return pcm


def results(events: list[AmdEvent]) -> list[AmdResult]:
    return [e for e in events if isinstance(e, AmdResult)]


def cues(events: list[AmdEvent]) -> list[DropCue]:
    return [e for e in events if isinstance(e, DropCue)]


# --- the decision -------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", RATES)
def test_short_greeting_then_silence_is_human_within_its_budget(rate: int) -> None:
    config = AmdConfig()
    pcm = call(line(0.5, rate), speech(0.6, rate), line(4.0, rate), rate=rate)
    events, _ = detect(pcm, rate, config)
    first = results(events)[0]
    assert first.verdict == "human"
    assert first.reason == "short_greeting_then_silence"
    hello_end_s = 1.1
    waited_s = first.decided_at_s - hello_end_s
    # not before the silence it needs, and well inside the ~1.5 s human-answer budget
    assert waited_s >= config.after_greeting_silence_ms / 1000
    assert waited_s <= (config.after_greeting_silence_ms + config.energy_hangover_ms) / 1000 + 0.1
    assert first.speech_onset_s == pytest.approx(0.5, abs=0.05)
    assert first.greeting_s == pytest.approx(0.6 + config.energy_hangover_ms / 1000, abs=0.1)
    assert len(results(events)) == 1 and cues(events) == []


@pytest.mark.parametrize("rate", RATES)
def test_long_continuous_greeting_is_a_machine(rate: int) -> None:
    config = AmdConfig()
    pcm = call(line(0.4, rate), speech(5.0, rate), line(2.0, rate), rate=rate)
    events, _ = detect(pcm, rate, config)
    first = results(events)[0]
    assert (first.verdict, first.reason) == ("machine", "long_greeting")
    assert first.decided_at_s == pytest.approx(0.4 + config.greeting_max_ms / 1000, abs=0.06)
    # no beep: the message is left once the greeting has been silent drop_silence_ms
    (cue,) = cues(events)
    assert cue.cause == "silence"
    assert cue.at_s == pytest.approx(5.4 + config.drop_silence_ms / 1000, abs=0.3)


def test_pauses_shorter_than_the_after_greeting_silence_do_not_end_a_greeting() -> None:
    rate = 8000
    sentences = [speech(0.9, rate, seed=s) for s in (3, 4, 5)]
    pause = line(0.3, rate)
    pcm = call(
        line(0.3, rate), sentences[0], pause, sentences[1], pause, sentences[2], line(2, rate),
        rate=rate,
    )  # fmt: skip
    first = results(detect(pcm, rate)[0])[0]
    assert (first.verdict, first.reason) == ("machine", "long_greeting")


def test_many_words_is_a_machine_when_the_limit_is_low() -> None:
    rate = 8000
    words = []
    for k in range(6):  # the gaps outlast the energy test's hangover (200 ms)
        words += [speech(0.15, rate, seed=10 + k), line(0.3, rate)]
    pcm = call(line(0.3, rate), *words, line(2, rate), rate=rate)
    first = results(detect(pcm, rate, AmdConfig(max_words=4))[0])[0]
    assert (first.verdict, first.reason) == ("machine", "many_words")
    assert first.words == 4


@pytest.mark.parametrize("rate", RATES)
def test_silence_is_decided_at_the_initial_silence_cap(rate: int) -> None:
    config = AmdConfig()
    events, detector = detect(call(line(6.0, rate), rate=rate), rate, config)
    first = results(events)[0]
    assert (first.verdict, first.reason) == ("silence", "initial_silence")
    assert first.decided_at_s == pytest.approx(config.initial_silence_ms / 1000)
    assert first.speech_onset_s is None and first.words == 0
    asterisk_like = dataclasses.replace(config, initial_silence_verdict="machine")
    assert results(detect(call(line(3.0, rate), rate=rate), rate, asterisk_like)[0])[0].verdict == (
        "machine"
    )
    assert detector.beeps == []


def test_a_click_is_not_a_word() -> None:
    rate = 8000
    pcm = call(line(0.2, rate), speech(0.03, rate), line(3.0, rate), rate=rate)
    first = results(detect(pcm, rate)[0])[0]
    assert first.verdict == "silence"


def test_nothing_decided_by_the_analysis_cap() -> None:
    rate = 8000
    config = AmdConfig(total_analysis_ms=3000)
    # a greeting starting at 2.2 s is still going (short of greeting_max_ms) at the cap
    pcm = call(line(2.2, rate), speech(1.5, rate), line(2.0, rate), rate=rate)
    first = results(detect(pcm, rate, config)[0])[0]
    assert (first.verdict, first.reason, first.decided_at_s) == (
        "human",
        "max_analysis_time",
        3.0,
    )
    undecided = dataclasses.replace(config, cap_verdict="undecided")
    assert results(detect(pcm, rate, undecided)[0])[0].verdict == "undecided"


# --- beeps ------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("hz", [440.0, 1000.0, 1850.0])
def test_beep_after_a_greeting_cues_the_message_at_its_end(rate: int, hz: float) -> None:
    greeting_end_s, gap_s, beep_s = 0.3 + 3.0, 0.5, 0.6
    pcm = call(
        line(0.3, rate), speech(3.0, rate), line(gap_s, rate), sine(hz, beep_s, rate),
        line(1.5, rate), rate=rate,
    )  # fmt: skip
    events, detector = detect(pcm, rate)
    assert results(events)[0].verdict == "machine"
    (cue,) = cues(events)
    true_end_s = greeting_end_s + gap_s + beep_s
    assert cue.cause == "beep"
    assert cue.beep_end_s == pytest.approx(true_end_s, abs=0.01)
    assert cue.beep_hz == pytest.approx(hz, abs=5)
    assert 0 <= cue.at_s - true_end_s <= 0.045  # within the next frame or two
    (beep,) = detector.beeps
    assert beep.start_s == pytest.approx(greeting_end_s + gap_s, abs=0.05)


def test_beep_right_after_a_short_greeting_decides_machine() -> None:
    rate = 8000
    pcm = call(
        line(0.3, rate), speech(0.8, rate), line(0.3, rate), sine(800, 0.4, rate),
        line(1.0, rate), rate=rate,
    )  # fmt: skip
    events, _ = detect(pcm, rate)
    (only,) = results(events)
    assert (only.verdict, only.reason) == ("machine", "beep")
    assert only.beep_end_s == pytest.approx(1.8, abs=0.01)
    assert cues(events)[0].cause == "beep"


def test_a_late_beep_revises_a_human_verdict() -> None:
    rate = 8000
    pcm = call(
        line(0.3, rate), speech(0.8, rate), line(1.5, rate), sine(1200, 0.5, rate),
        line(1.0, rate), rate=rate,
    )  # fmt: skip
    events, detector = detect(pcm, rate)
    first, revised = results(events)
    assert first.verdict == "human"
    assert (revised.verdict, revised.reason, revised.revises) == ("machine", "beep", "human")
    assert revised.beep_end_s == pytest.approx(3.1, abs=0.01)
    assert detector.result == revised and detector.finished
    assert cues(events)[0].beep_end_s == revised.beep_end_s


def test_no_revision_after_the_late_beep_window() -> None:
    rate = 8000
    config = AmdConfig(late_beep_ms=1000)
    pcm = call(
        line(0.3, rate), speech(0.8, rate), line(3.0, rate), sine(1200, 0.5, rate),
        line(1.0, rate), rate=rate,
    )  # fmt: skip
    events, detector = detect(pcm, rate, config)
    assert [r.verdict for r in results(events)] == ["human"]
    assert detector.finished


def test_beep_alone_without_greeting_and_no_words_counted() -> None:
    rate = 16000
    events, _ = detect(call(line(0.4, rate), sine(1000, 1.0, rate), line(1, rate), rate=rate), rate)
    first = results(events)[0]
    assert (first.verdict, first.reason, first.words) == ("machine", "beep", 0)
    assert first.beep_end_s == pytest.approx(1.4, abs=0.01)


def test_a_tone_too_short_or_too_long_is_no_beep() -> None:
    rate = 8000
    short = call(line(0.4, rate), sine(1000, 0.1, rate), line(3.0, rate), rate=rate)
    assert detect(short, rate)[1].beeps == []
    # a long steady tone (a dial or fax tone) is neither a beep nor a greeting
    long = call(line(0.4, rate), sine(1000, 3.0, rate), line(0.5, rate), rate=rate)
    events, detector = detect(long, rate)
    assert detector.beeps == []
    assert results(events)[0].verdict == "silence"


def test_a_gliding_swelling_harmonic_is_not_a_beep() -> None:
    """A vowel's strongest harmonic can be as pure as a beep, but its pitch glides with the
    intonation and its level swells and fades with each syllable: no beep."""
    rate = 8000
    n = round(0.5 * rate)
    t = np.arange(n) / rate
    hz = 480 + 800 * t  # a rising intonation: 16 Hz per 20 ms frame
    glide = np.sin(2 * np.pi * np.cumsum(hz) / rate) * 0.1
    syllable = np.sin(np.pi * (t % 0.2) / 0.2)  # three 200 ms syllables, 0 -> 1 -> 0
    swell = np.sin(2 * np.pi * 500 * t) * 0.1 * (0.05 + 0.95 * syllable)
    for vowel in (glide, swell):
        pcm = call(line(0.4, rate), vowel, line(1.0, rate), rate=rate)
        assert detect(pcm, rate)[1].beeps == []
    # the same harmonic held steady is a beep
    steady = np.sin(2 * np.pi * 500 * t) * 0.1
    assert (
        len(detect(call(line(0.4, rate), steady, line(1.0, rate), rate=rate), rate)[1].beeps) == 1
    )


# --- speech from the caller's VAD ---------------------------------------------------------------


def test_speech_prob_decides_what_is_speech() -> None:
    rate = 8000
    frames = 250
    # loud noise from 0.3 s on: the energy test calls it a long greeting
    pcm = call(line(0.3, rate), speech(frames * 0.02 - 0.3, rate), rate=rate)
    assert results(detect(pcm, rate)[0])[0].verdict == "machine"
    # the VAD says a 0.6 s "hello" at 0.5 s, then nothing
    probs = [0.9 if 25 <= k < 55 else 0.02 for k in range(frames)]
    first = results(detect(pcm, rate, speech_probs=probs)[0])[0]
    assert first.verdict == "human"
    assert first.speech_onset_s == pytest.approx(0.5)
    assert first.decided_at_s == pytest.approx(1.1 + 0.6)
    # hysteresis: a dip to 0.4 inside speech is still speech
    wobbly = [0.4 if k == 40 else p for k, p in enumerate(probs)]
    assert results(detect(pcm, rate, speech_probs=wobbly)[0])[0].words == 1


def test_times_count_from_the_answer_with_start_s() -> None:
    rate = 8000
    pcm = call(line(0.3, rate), speech(0.5, rate), line(2.0, rate), rate=rate)
    early = results(detect(pcm, rate)[0])[0]
    late = results(detect(pcm, rate, start_s=0.4)[0])[0]
    assert late.decided_at_s == pytest.approx(early.decided_at_s + 0.4)
    assert late.speech_onset_s == pytest.approx(0.7, abs=0.05)


def test_feeding_after_finished_returns_nothing() -> None:
    rate = 8000
    detector = AmdDetector(AmdConfig(late_beep_ms=0), rate)
    frame = bytes(detector.frame_bytes)
    events: list[AmdEvent] = []
    while not detector.finished:
        events += detector.feed(frame)
    assert results(events)[0].verdict == "silence"
    assert detector.feed(frame) == []
    assert detector.now_s == pytest.approx(2.54)


# --- bad input ----------------------------------------------------------------------------------


def test_bad_input_is_a_clear_error() -> None:
    detector = AmdDetector(AmdConfig(), 8000)
    with pytest.raises(ValueError, match="320 bytes at 8000 Hz, not 321"):
        detector.feed(bytes(321))
    with pytest.raises(ValueError, match="320 bytes at 8000 Hz, not 640"):
        detector.feed(bytes(640))
    with pytest.raises(ValueError, match=r"speech_prob must be in \[0, 1\]"):
        detector.feed(bytes(320), 1.5)
    with pytest.raises(ValueError, match="8000 or 16000 Hz audio, not 44100"):
        AmdDetector(AmdConfig(), 44100)
    with pytest.raises(ValueError, match="even number of bytes"):
        detect(bytes(641), 8000)
    with pytest.raises(ValueError, match="2 speech probabilities for 5 frames"):
        detect(bytes(1600), 8000, speech_probs=[0.1, 0.2])
    with pytest.raises(ValueError, match="cap_verdict"):
        AmdConfig(cap_verdict="machine")
    with pytest.raises(ValueError, match="greeting_max_ms must be positive"):
        AmdConfig(greeting_max_ms=0)
    with pytest.raises(ValueError, match="beep_min_hz < beep_max_hz"):
        AmdConfig(beep_min_hz=2000, beep_max_hz=500)


# --- Asterisk's AMD() ---------------------------------------------------------------------------


def _own(verdict: Verdict, *, beep: bool = False) -> AmdResult:
    return AmdResult(
        verdict=verdict,
        decided_at_s=1.5,
        reason="beep" if beep else "short_greeting_then_silence",
        beep_end_s=4.0 if beep else None,
    )


def test_asterisk_result_parsing() -> None:
    amd = AsteriskAmd.parse("machine", "LONGGREETING-1620-1500")
    assert (amd.status, amd.cause, amd.numbers, amd.verdict) == (
        "MACHINE",
        "LONGGREETING",
        (1620, 1500),
        "machine",
    )
    assert AsteriskAmd.parse("MACHINE", "INITIALSILENCE-2500-2500").verdict == "silence"
    assert AsteriskAmd.parse("HUMAN", "HUMAN-800-800").verdict == "human"
    assert AsteriskAmd.parse("NOTSURE", "TOOLONG-5000").verdict == "undecided"
    assert AsteriskAmd.parse("HANGUP").label == "HANGUP"
    with pytest.raises(ValueError, match="AMDSTATUS"):
        AsteriskAmd.parse("PERSON")
    with pytest.raises(ValueError, match="AMDCAUSE"):
        AsteriskAmd.parse("MACHINE", "LONGGREETING-abc")


def test_asterisk_combination_rule() -> None:
    machine = AsteriskAmd.parse("MACHINE", "LONGGREETING-1620-1500")
    human = AsteriskAmd.parse("HUMAN", "HUMAN-800-800")
    notsure = AsteriskAmd.parse("NOTSURE", "TOOLONG-5000")
    # 1. our beep wins over anything
    combined = combine_asterisk(_own("machine", beep=True), human, at_s=5.0)
    assert (combined.verdict, combined.beep_end_s) == ("machine", 4.0)
    # 2. the callee hung up
    assert combine_asterisk(_own("human"), AsteriskAmd.parse("HANGUP"), at_s=5.0).verdict == (
        "undecided"
    )
    # 3. one opinion only
    only = combine_asterisk(None, machine, at_s=2.0)
    assert (only.verdict, only.decided_at_s, only.reason) == (
        "machine",
        2.0,
        "asterisk:MACHINE-LONGGREETING",
    )
    assert combine_asterisk(_own("machine"), notsure, at_s=2.0).verdict == "machine"
    # 4. agreement keeps our timing
    agreed = combine_asterisk(_own("human"), human, at_s=2.0)
    assert (agreed.verdict, agreed.decided_at_s) == ("human", 1.5)
    assert agreed.reason == "short_greeting_then_silence|asterisk:HUMAN-HUMAN"
    # 5. disagreement: a person is never sent to voicemail on one opinion (default)
    assert combine_asterisk(_own("human"), machine, at_s=2.0).verdict == "human"
    assert combine_asterisk(_own("machine"), human, at_s=2.0).verdict == "human"
    assert combine_asterisk(_own("silence"), machine, at_s=2.0).verdict == "machine"
    assert combine_asterisk(_own("human"), machine, at_s=2.0, prefer="own").verdict == "human"
    assert (
        combine_asterisk(_own("human"), machine, at_s=2.0, prefer="asterisk").verdict == "machine"
    )


# --- espeak-ng items of the evaluation set ------------------------------------------------------


@pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("sox") is None,
    reason="espeak-ng and sox are needed to speak the AMD evaluation items",
)
def test_espeak_items_of_the_evaluation_set() -> None:
    """A loose floor, not the target (bench/eval_amd.py reports the accuracy)."""
    sys.path.insert(0, str(ROOT / "bench"))
    import amd_dataset

    plan = {item.id: item for item in amd_dataset.plan()}
    chosen = ["hs001", "hs005", "hs012", "mg003", "mg005", "mg009", "ms001", "si000", "si006"]
    right = []
    for uid in chosen:
        item = plan[uid]
        pcm = amd_dataset.render(item)
        events, _ = detect(pcm, amd_dataset.RATE_HZ)
        final = results(events)[-1].verdict if results(events) else "undecided"
        right.append(final == item.cls)
        if item.beep_end_s is not None and cues(events) and cues(events)[0].cause == "beep":
            assert cues(events)[0].beep_end_s == pytest.approx(item.beep_end_s, abs=0.03)
    assert sum(right) >= 7, dict(zip(chosen, right, strict=True))


def test_flite_family_is_the_espeak_plan_in_other_voices() -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    import amd_dataset

    espeak, flite = amd_dataset.plan(), amd_dataset.plan("flite")
    same = ("id", "kind", "split", "segments", "pauses_s", "beep_hz", "beep_s", "snr_db")
    assert [[getattr(i, k) for k in same] for i in flite] == [
        [getattr(i, k) for k in same] for i in espeak
    ]
    speaking = [i for i in flite if i.kind != "silence"]
    assert {i.voice for i in speaking} == {f"flite:{v}" for v in amd_dataset.FLITE_VOICES}
    assert all(i.voice == "" for i in flite if i.kind == "silence")
    assert amd_dataset.out_dir("flite") != amd_dataset.out_dir()
    with pytest.raises(ValueError, match="unknown voice family"):
        amd_dataset.plan("piper")


# --- the words check's cue (call/amd_words.py reads the words) ----------------------------------


def greeting_ends(events: list[AmdEvent]) -> list[GreetingEnd]:
    return [e for e in events if isinstance(e, GreetingEnd)]


def test_a_long_greeting_that_ends_soon_is_cued_for_its_words() -> None:
    """A person answering with a sentence: a machine by length, then quiet: the session
    reads the words (once), and the machine's drop cue still follows without them."""
    rate, config = 8000, AmdConfig()
    pcm = call(line(0.4, rate), speech(3.0, rate), line(3.0, rate), rate=rate)
    events, _ = detect(pcm, rate, config)
    assert results(events)[0].reason == "long_greeting"
    (end,) = greeting_ends(events)
    spoken_end = 3.4 + config.energy_hangover_ms / 1000
    assert end.at_s == pytest.approx(spoken_end + config.after_greeting_silence_ms / 1000, abs=0.1)
    assert end.greeting_s == pytest.approx(3.0 + config.energy_hangover_ms / 1000, abs=0.1)
    assert events.index(end) < events.index(cues(events)[0])  # before the silence cue


def test_no_words_cue_for_long_greetings_beeps_or_when_off() -> None:
    rate = 8000
    longer = call(line(0.4, rate), speech(6.5, rate), line(3.0, rate), rate=rate)
    assert greeting_ends(detect(longer, rate)[0]) == []  # past words_check_max_ms
    beeped = call(
        line(0.4, rate), speech(3.0, rate), line(0.3, rate), sine(1000, 0.5, rate),
        line(2.0, rate), rate=rate,
    )  # fmt: skip
    assert greeting_ends(detect(beeped, rate)[0]) == []  # a beep says it all
    short = call(line(0.4, rate), speech(3.0, rate), line(3.0, rate), rate=rate)
    off = dataclasses.replace(AmdConfig(), words_check=False)
    assert greeting_ends(detect(short, rate, off)[0]) == []
    hello = call(line(0.4, rate), speech(0.6, rate), line(3.0, rate), rate=rate)
    assert greeting_ends(detect(hello, rate)[0]) == []  # a person by length already


def test_an_overruled_machine_verdict_still_turns_machine_on_a_beep() -> None:
    rate = 8000
    detector = AmdDetector(AmdConfig(), rate)
    greeting = call(line(0.4, rate), speech(3.0, rate), line(2.6, rate), rate=rate)
    size = detector.frame_bytes
    events = [
        e for k in range(0, len(greeting), size) for e in detector.feed(greeting[k : k + size])
    ]
    assert cues(events) and detector.finished  # the silence cue came: a machine's message
    human = detector.overrule("long_greeting|words_human")
    assert (human.verdict, human.reason) == ("human", "long_greeting|words_human")
    assert human.decided_at_s == detector.now_s  # the late-beep window starts now
    assert not detector.finished and detector.result == human and detector.drop_cue is None
    beep = call(sine(1000, 0.5, rate), line(0.5, rate), rate=rate)
    later = [e for k in range(0, len(beep), size) for e in detector.feed(beep[k : k + size])]
    (revised,) = results(later)
    assert (revised.verdict, revised.reason, revised.revises) == ("machine", "beep", "human")
    assert cues(later)[0].cause == "beep"
    person = AmdDetector(AmdConfig(), rate)
    hello = call(line(0.4, rate), speech(0.6, rate), line(1.5, rate), rate=rate)
    for k in range(0, len(hello), size):
        person.feed(hello[k : k + size])
    assert person.result is not None and person.result.verdict == "human"
    with pytest.raises(ValueError, match="only a machine verdict"):
        person.overrule("words")
    # No verdict yet (Asterisk's AMD() heard the person before the call reached the bot):
    # a person from now on, the late-beep watch starting now.
    fresh = AmdDetector(AmdConfig(), rate)
    taken = fresh.overrule("asterisk:HUMAN-HUMAN")
    assert (taken.verdict, taken.reason, taken.decided_at_s) == (
        "human",
        "asterisk:HUMAN-HUMAN",
        0.0,
    )
    assert fresh.result == taken and not fresh.finished


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello, Mark speaking, sorry I'm in the car, who is this please?", "human"),
        ("Good afternoon, Acme Dental, how can I help you today?", "human"),
        ("Yes, hello, hang on, I can barely hear you.", "human"),
        ("Hello, you're through to the garage, what can I do for you?", "human"),
        ("Hiya, is that the delivery?", "human"),
        ("Hi, you've reached Tom. Leave a message after the beep.", "machine"),
        ("The person you are calling is not available.", "machine"),
        ("Thanks for calling, how can I help? Please leave a message.", "machine"),
        ("Sorry I missed your call, I'll call you back.", "machine"),
        ("Hello, this is Daniel's phone.", None),
        ("Hey, it's Chris.", None),
        ("", None),
    ],
)
def test_a_greetings_words_say_who_answered(text: str, expected: str | None) -> None:
    assert greeting_words(text) == expected


# --- a person likely before the verdict ---------------------------------------------------------


def likely(events: list[AmdEvent]) -> list[LikelyHuman]:
    return [e for e in events if isinstance(e, LikelyHuman)]


@pytest.mark.parametrize("rate", RATES)
def test_a_short_greeting_makes_a_person_likely_before_the_verdict(rate: int) -> None:
    config = AmdConfig()
    pcm = call(line(0.5, rate), speech(0.6, rate), line(4.0, rate), rate=rate)
    events, _ = detect(pcm, rate, config)
    (early,) = likely(events)
    (verdict,) = results(events)
    assert events.index(early) < events.index(verdict)
    hello_end_s = 1.1
    silence_s = (config.energy_hangover_ms + config.likely_human_silence_ms) / 1000
    assert early.at_s == pytest.approx(hello_end_s + silence_s, abs=0.06)
    gap_ms = config.after_greeting_silence_ms - config.likely_human_silence_ms
    assert verdict.decided_at_s - early.at_s == pytest.approx(gap_ms / 1000, abs=0.03)
    assert early.greeting_s == pytest.approx(verdict.greeting_s or 0.0)


def test_likely_once_per_pause_and_not_for_long_greetings_or_when_off() -> None:
    rate, config = 8000, AmdConfig()
    # "Hi, you've reached Sam. [0.7 s] Leave a message ...": likely in the pause, then machine.
    pcm = call(line(0.4, rate), speech(0.6, rate, seed=3), line(0.7, rate),
               speech(3.0, rate, seed=4), line(2.0, rate), rate=rate)  # fmt: skip
    events, _ = detect(pcm, rate, config)
    assert len(likely(events)) == 1
    first = results(events)[0]
    assert (first.verdict, first.reason) == ("machine", "long_greeting")
    assert likely(events)[0].at_s < first.decided_at_s
    # Two such pauses: one each.
    pcm = call(line(0.4, rate), speech(0.3, rate, seed=3), line(0.7, rate),
               speech(0.3, rate, seed=4), line(0.7, rate), speech(2.0, rate, seed=5),
               line(2.0, rate), rate=rate)  # fmt: skip
    assert len(likely(detect(pcm, rate, config)[0])) == 2
    # A greeting already too long for a person's: never likely.
    pcm = call(line(0.4, rate), speech(2.5, rate), line(0.7, rate), speech(1.0, rate, seed=6),
               line(2.0, rate), rate=rate)  # fmt: skip
    assert likely(detect(pcm, rate, config)[0]) == []
    off = dataclasses.replace(config, likely_human_silence_ms=0)
    pcm = call(line(0.5, rate), speech(0.6, rate), line(3.0, rate), rate=rate)
    events, _ = detect(pcm, rate, off)
    assert likely(events) == [] and results(events)[0].verdict == "human"
    with pytest.raises(ValueError, match="likely_human_silence_ms"):
        AmdConfig(likely_human_silence_ms=600)
