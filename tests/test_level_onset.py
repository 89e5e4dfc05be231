"""A sound over the bot from the line's level (speech/level_onset.py) and how the TurnTaker
pauses the bot with it before the VAD hears speech, then lets the VAD decide."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from voicebot_pbx.config import ConfigError, VadConfig, load_config
from voicebot_pbx.speech.level_onset import LevelOnset, voicing
from voicebot_pbx.speech.turns import BargeIn, BargeInCancelled, BargeInOnset, TurnTaker
from voicebot_pbx.speech.vad import WINDOW_MS

WINDOW_S = WINDOW_MS / 1000.0
NOISE_DBFS = -60.0


def onset(**kw: float) -> LevelOnset:
    return LevelOnset(above_db=15.0, min_dbfs=-45.0, window_s=WINDOW_S, **kw)


def test_a_window_over_the_floor_is_a_sound_and_the_floor_follows_the_quiet() -> None:
    level = onset()
    assert not any(level.update(NOISE_DBFS) for _ in range(20))
    assert level.floor_dbfs == pytest.approx(NOISE_DBFS)
    assert level.bar_dbfs == pytest.approx(-45.0)  # 15 dB over -60
    assert not level.update(-46.0)
    assert level.update(-44.0)
    # A quieter line lowers the floor at once; the bar never drops under min_dbfs.
    level.update(-120.0)
    assert level.floor_dbfs == pytest.approx(-120.0)
    assert level.bar_dbfs == pytest.approx(-45.0)
    # A louder steady line (a fan) raises the floor slowly: 3 dB a second.
    for _ in range(round(1.0 / WINDOW_S)):
        level.update(-30.0)
    floor = level.floor_dbfs
    assert floor is not None and -120.0 + 2.5 < floor < -120.0 + 3.5
    for _ in range(round(40.0 / WINDOW_S)):
        level.update(-30.0)
    assert level.floor_dbfs == pytest.approx(-30.0)
    assert not level.update(-20.0) and level.update(-14.0)


def test_a_sound_that_was_no_speech_raises_the_bar_for_a_while() -> None:
    level = onset(decay_db_per_s=6.0)
    for _ in range(20):
        level.update(NOISE_DBFS)
    assert level.update(-20.0) and level.update(-18.0)  # a cough, 25-27 dB over the bar
    level.update(NOISE_DBFS)
    level.unconfirmed()
    assert level.bar_dbfs == pytest.approx(-18.0 + 3.0, abs=0.5)
    assert not level.update(-18.0)  # the same cough again: no pause
    for _ in range(round(6.0 / WINDOW_S)):  # 30 dB decays in 5 s
        level.update(NOISE_DBFS)
    assert level.bar_dbfs == pytest.approx(-45.0)
    level.unconfirmed()  # nothing loud since: nothing to raise
    assert level.bar_dbfs == pytest.approx(-45.0)


def window_pcm(level_dbfs: float, *, voiced: bool, seed: int = 0) -> bytes:
    """One 8 kHz VAD window at ``level_dbfs``: a 150 Hz tone (voiced) or white noise."""
    n = round(8000 * WINDOW_S)
    if voiced:
        x = np.sin(2 * np.pi * 150.0 * np.arange(n) / 8000) * np.sqrt(2)
    else:
        x = np.random.default_rng(seed).normal(size=n)
    x *= 32768.0 * 10 ** (level_dbfs / 20) / np.sqrt(np.mean(x * x))
    return np.clip(np.rint(x), -32768, 32767).astype("<i2").tobytes()


def feed(
    taker: TurnTaker,
    runs: list[tuple[float, float, float]],
    *,
    echo: bool = False,
    voiced: bool = True,
) -> list[tuple[float, object]]:
    """runs: (duration_s, prob, level_dbfs) -> [(window start, action)]; each window's
    audio is a tone (voiced) or noise at that level."""
    out: list[tuple[float, object]] = []
    now = 0.0
    for duration, prob, level in runs:
        end = now + duration
        while now < end - 1e-9:
            pcm = window_pcm(level, voiced=voiced, seed=round(now / WINDOW_S))
            out.extend((now, a) for a in taker.on_vad(prob, now, level, echo=echo, pcm=pcm))
            now += WINDOW_S
    return out


CONFIG = VadConfig(barge_in_min_speech_ms=120, barge_in_threshold=0.6)


def speaking(config: VadConfig = CONFIG) -> TurnTaker:
    taker = TurnTaker(config)
    taker.set_bot_speaking(True)
    return taker


def test_a_caller_is_heard_by_the_level_before_the_vad_and_the_vad_then_decides() -> None:
    """The first loud window pauses the bot; the VAD hears speech ~100 ms later and the
    barge-in follows as before; the onset is never cancelled."""
    events = feed(
        speaking(),
        [(0.5, 0.02, NOISE_DBFS), (0.096, 0.1, -25.0), (0.5, 0.95, -20.0), (0.5, 0.02, -60.0)],
    )
    kinds = [type(a) for _, a in events]
    assert kinds[0] is BargeInOnset and BargeIn in kinds and BargeInCancelled not in kinds
    at, first = events[0]
    assert isinstance(first, BargeInOnset)
    assert at == first.onset_s == pytest.approx(16 * WINDOW_S)  # the first loud window
    # Without the level, the first speech window is the onset: 3 windows later.
    off = feed(
        speaking(dataclasses.replace(CONFIG, barge_in_level_db=0.0)),
        [(0.5, 0.02, NOISE_DBFS), (0.096, 0.1, -25.0), (0.5, 0.95, -20.0), (0.5, 0.02, -60.0)],
    )
    assert isinstance(off[0][1], BargeInOnset)
    assert off[0][0] == pytest.approx(19 * WINDOW_S)


def test_a_sound_the_vad_does_not_call_speech_is_cancelled_when_it_stops() -> None:
    taker = speaking()
    events = feed(taker, [(0.5, 0.02, NOISE_DBFS), (0.2, 0.1, -20.0), (0.5, 0.02, NOISE_DBFS)])
    assert [type(a) for _, a in events] == [BargeInOnset, BargeInCancelled]
    (start, _), (end, _) = events
    # Two quiet windows after the sound: the bot goes on ~64 ms after the cough.
    assert end - start == pytest.approx(0.2 + WINDOW_S, abs=WINDOW_S / 2)
    # The same cough again soon after does not pause the bot (the bar was raised) ...
    assert feed(taker, [(0.2, 0.1, -20.0), (0.3, 0.02, NOISE_DBFS)]) == []


def test_only_a_voiced_sound_pauses_the_bot_unless_voicing_is_off() -> None:
    """A breath or a click is noise: no pause (the VAD still decides on speech); with
    barge_in_level_voicing 0 any loud window pauses the bot."""
    assert voicing(window_pcm(-20.0, voiced=True), 8000) > 0.9
    assert voicing(window_pcm(-20.0, voiced=False), 8000) < 0.4
    assert voicing(b"", 8000) == 0.0 and voicing(bytes(512), 8000) == 0.0
    runs = [(0.5, 0.02, NOISE_DBFS), (0.2, 0.1, -20.0), (0.5, 0.02, NOISE_DBFS)]
    assert feed(speaking(), runs, voiced=False) == []
    any_sound = speaking(dataclasses.replace(CONFIG, barge_in_level_voicing=0.0))
    events = feed(any_sound, runs, voiced=False)
    assert [type(a) for _, a in events] == [BargeInOnset, BargeInCancelled]


def test_a_long_sound_without_speech_is_cancelled_after_the_confirm_time() -> None:
    events = feed(speaking(), [(0.5, 0.02, NOISE_DBFS), (2.0, 0.1, -20.0)])
    assert [type(a) for _, a in events] == [BargeInOnset, BargeInCancelled]
    (start, _), (end, _) = events
    assert end + WINDOW_S - start == pytest.approx(0.25, abs=WINDOW_S)


def test_echo_after_a_sound_ends_it_as_quiet_windows_do() -> None:
    taker = speaking()
    events = feed(taker, [(0.5, 0.02, NOISE_DBFS), (0.064, 0.1, -20.0)])
    now = round(0.5 / WINDOW_S) * WINDOW_S + 2 * WINDOW_S  # the window after the sound
    events += [(now, a) for a in taker.on_vad(0.0, now, -20.0, echo=True)]
    assert [type(a) for _, a in events] == [BargeInOnset]
    now += WINDOW_S
    events += [(now, a) for a in taker.on_vad(0.0, now, -20.0, echo=True)]
    assert [type(a) for _, a in events] == [BargeInOnset, BargeInCancelled]
    assert now + WINDOW_S - events[0][0] < 0.25  # before the confirm time


def test_echo_quiet_bots_and_the_option_off_give_no_level_onset() -> None:
    runs = [(0.5, 0.02, NOISE_DBFS), (0.3, 0.1, -20.0), (0.3, 0.02, NOISE_DBFS)]
    assert feed(speaking(), runs, echo=True) == []  # the echo gate took it for the bot
    assert feed(TurnTaker(CONFIG), runs) == []  # the bot is not speaking
    assert feed(speaking(dataclasses.replace(CONFIG, barge_in_level_db=0.0)), runs) == []
    no_pause = dataclasses.replace(CONFIG, barge_in_pause_at_onset=False)
    assert feed(speaking(no_pause), runs) == []


def test_level_settings_are_validated(tmp_path: Path) -> None:
    for bad in (
        "barge_in_level_db = -1",
        "barge_in_level_confirm_ms = 0",
        "barge_in_level_min_dbfs = 5",
        "barge_in_level_voicing = 1.0",
    ):
        path = tmp_path / "bad.toml"
        path.write_text(f"[vad]\n{bad}\n")
        with pytest.raises(ConfigError, match="barge_in_level"):
            load_config(path)
