"""The caller-recording analysis of the real-PBX tests and bench_pbx (tests/realpbx/speech.py),
on synthetic recordings: no PBX needed."""

from __future__ import annotations

import numpy as np

from tests.realpbx.speech import dropouts

RATE_HZ = 8000


def _speech(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE_HZ)) / RATE_HZ
    return (8000 * np.sin(2 * np.pi * 300 * t)).astype(np.int16)


def _zeros(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE_HZ), dtype=np.int16)


def test_a_frame_missing_inside_a_reply_is_a_dropout() -> None:
    heard = np.concatenate([_zeros(1.0), _speech(0.5), _zeros(0.04), _speech(0.5), _zeros(1.0)])
    assert dropouts(heard, RATE_HZ) == [(1.5, 0.04)]


def test_silence_between_replies_and_quiet_pauses_in_speech_are_not_dropouts() -> None:
    rng = np.random.default_rng(3)
    pause = rng.integers(-3, 4, int(0.3 * RATE_HZ)).astype(np.int16)  # a pause, not zeros
    heard = np.concatenate(
        [
            _speech(0.5),
            pause,  # between two words or sentences of a reply
            _speech(0.5),
            _zeros(0.01),  # shorter than a frame: a zero crossing, not a missing frame
            _speech(0.5),
            _zeros(1.5),  # the bot is silent between two replies
            _speech(0.5),
        ]
    )
    assert dropouts(heard, RATE_HZ) == []
