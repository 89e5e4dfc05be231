"""Echo or caller? The pure detector on real speech (espeak voices), a line echo made the
way a telephone line makes it (delay, band-pass, attenuation, µ-law), and the session: a
quiet caller talking over the bot now interrupts it, the bot's own echo still does not."""

from __future__ import annotations

import asyncio
import dataclasses

import numpy as np
import pytest

from tests.speech import espeak_pcm, have_espeak, telephone_band
from tests.test_turns import ACCOUNT, LONG, PHRASES, TARIFF, make_shared
from voicebot_pbx.audio import pcm_to_ulaw, rms_dbfs, ulaw_to_pcm
from voicebot_pbx.call.session import CallSession
from voicebot_pbx.speech.echo import SILENCE_DBFS, echo_likeness, is_line_echo
from voicebot_pbx.testing import FakeMedia, run_virtual, tone

RATE_HZ = 8000
FRAME = 320  # bytes: 20 ms at 8 kHz
HISTORY_FRAMES = 18


def gain(pcm: bytes, db: float) -> bytes:
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64) * 10 ** (db / 20)
    return np.clip(samples, -32768, 32767).astype("<i2").tobytes()


def line_echo(bot: bytes, delay_ms: int, loss_db: float) -> bytes:
    """What comes back on the caller side: delayed, band-limited, quieter, through G.711."""
    delayed = bytes(delay_ms * RATE_HZ // 1000 * 2) + bot
    return ulaw_to_pcm(pcm_to_ulaw(gain(telephone_band(delayed, RATE_HZ), -loss_db)))[: len(bot)]


def decisions(caller: bytes, bot: bytes, **overrides: float) -> list[bool]:
    """is_line_echo for every caller frame loud enough to be speech (above the residue
    level and the silence floor), with the bot output up to that frame."""
    options = {"margin_db": 15.0, "min_correlation": 0.6, "residual_db": 25.0, **overrides}
    out = []
    for start in range(HISTORY_FRAMES * FRAME, min(len(caller), len(bot)) - FRAME, FRAME):
        frame = caller[start : start + FRAME]
        history = bot[start + FRAME - HISTORY_FRAMES * FRAME : start + FRAME]
        peak = max(rms_dbfs(history[i : i + FRAME]) for i in range(0, len(history) - FRAME, FRAME))
        level = rms_dbfs(frame)
        if level < peak - options["margin_db"] - options["residual_db"] or level < SILENCE_DBFS:
            continue  # residue level (echo by level alone) or silence (left to the VAD)
        context = caller[start - 2 * FRAME : start]
        out.append(
            is_line_echo(frame, history, bot_peak_dbfs=peak, caller_context_pcm=context, **options)
        )
    return out


pytestmark = pytest.mark.skipif(not have_espeak(), reason="needs espeak-ng and sox")


@pytest.fixture(scope="module")
def bot_speech() -> bytes:
    return espeak_pcm(LONG, RATE_HZ, voice="en-us", speed=160)


@pytest.mark.parametrize(("delay_ms", "loss_db"), [(20, 18.0), (64, 22.0), (180, 16.0)])
def test_a_line_echo_of_the_bot_is_echo(bot_speech: bytes, delay_ms: int, loss_db: float) -> None:
    echo = line_echo(bot_speech, delay_ms, loss_db)
    calls = decisions(echo, bot_speech)
    assert len(calls) > 50
    assert sum(calls) / len(calls) >= 0.85
    # What matters: never a stretch of "speech" long enough to start a turn (160 ms).
    longest, run = 0, 0
    for is_echo in calls:
        run = 0 if is_echo else run + 1
        longest = max(longest, run)
    assert longest <= 3


def test_a_quiet_caller_over_the_bot_is_not_echo(bot_speech: bytes) -> None:
    # Another voice, 20 dB below the bot: the old level-only rule called all of it echo.
    caller = gain(espeak_pcm("I want to talk about my bill please", RATE_HZ, voice="en-gb"), -8)
    caller = caller[: len(bot_speech)]
    levels = [rms_dbfs(caller[i : i + FRAME]) for i in range(0, len(caller) - FRAME, FRAME)]
    peak = max(rms_dbfs(bot_speech[i : i + FRAME]) for i in range(0, len(bot_speech), FRAME))
    assert np.median([v for v in levels if v > -60]) < peak - 15  # in the "maybe echo" band
    calls = decisions(caller, bot_speech)
    assert len(calls) > 20
    assert sum(calls) / len(calls) <= 0.1


def test_caller_and_echo_together_is_not_echo(bot_speech: bytes) -> None:
    caller = gain(espeak_pcm("I want to talk about my bill please", RATE_HZ, voice="en-gb"), -8)
    echo = line_echo(bot_speech, 40, 20.0)[: len(caller)]
    mixed = np.frombuffer(caller[: len(echo)], dtype="<i2").astype(np.int32) + np.frombuffer(
        echo, dtype="<i2"
    )
    both = np.clip(mixed, -32768, 32767).astype("<i2").tobytes()
    calls = decisions(both, bot_speech)
    assert sum(calls) / len(calls) <= 0.35


def test_loud_is_caller_very_quiet_is_residue_and_off_is_off(bot_speech: bytes) -> None:
    history = bot_speech[: HISTORY_FRAMES * FRAME]
    noise = np.random.default_rng(1).normal(0, 1, FRAME // 2)
    options = {"bot_peak_dbfs": -12.0, "min_correlation": 0.6, "residual_db": 12.0}
    loud = (noise * 3000).astype("<i2").tobytes()  # about -21 dBFS: within 15 dB of the bot
    residue = (noise * 100).astype("<i2").tobytes()  # about -50 dBFS
    assert not is_line_echo(loud, history, margin_db=15.0, **options)
    assert is_line_echo(residue, history, margin_db=15.0, **options)
    assert not is_line_echo(residue, history, margin_db=0.0, **options)
    # A gap between a caller's words is left to the VAD (gating it would split the turn).
    gap = (noise * 2).astype("<i2").tobytes()  # about -84 dBFS
    assert not is_line_echo(gap, history, margin_db=15.0, **options)


def test_echo_likeness_finds_the_delay_and_ignores_gain() -> None:
    rng = np.random.default_rng(7)
    reference = rng.normal(0, 1000, 2400)
    frame = 0.05 * reference[1000:1160]
    assert echo_likeness(frame, reference) == pytest.approx(1.0, abs=1e-6)
    assert echo_likeness(rng.normal(0, 1000, 160), reference) < 0.4
    assert echo_likeness(np.zeros(160), reference) == 0.0
    assert echo_likeness(frame, np.zeros(2400)) == 0.0


# --- in the session (fake engines, virtual time) -----------------------------------------


def test_a_quiet_caller_interrupts_but_the_bots_echo_does_not() -> None:
    async def run(echo_db: float | None, caller_level: float) -> CallSession:
        shared = make_shared()
        shared = dataclasses.replace(
            shared,
            config=dataclasses.replace(
                shared.config,
                fallbacks=dataclasses.replace(shared.config.fallbacks, no_input_s=0.0),
            ),
        )
        media = FakeMedia(echo_db=echo_db)
        session = CallSession(media, shared)
        async with asyncio.TaskGroup() as group:
            pacer = group.create_task(media.speaker.run(media.write))
            runner = group.create_task(session.run())
            script: list[tuple[float, bytes | str]] = [(2.0, tone(1.0, 8000, TARIFF))]
            if caller_level:
                # 17 dB below the bot's tones (level 0.3), while the long reply plays.
                script.append((5.0, tone(1.0, 8000, ACCOUNT, level=caller_level)))
            await media.play_caller(script)
            await media.silence_until(14.0)
            await media.hangup("caller_hangup")
            await runner
            pacer.cancel()
        return session

    quiet_caller = run_virtual(run(None, 0.042))
    speech = [t for t in quiet_caller.record.turns if t.kind == "speech"]
    assert speech[0].barged_in and speech[1].transcript == PHRASES[ACCOUNT]
    echo_only = run_virtual(run(20.0, 0.0))
    assert not any(t.barged_in for t in echo_only.record.turns)
