"""Caller audio for the real-PBX tests, and what the caller's recording says.

The caller's questions are espeak-ng speech (not the bot's Piper voice) at 8 kHz; the
analysis works on the caller half's MixMonitor files: ``said`` (what the caller sent) and
``heard`` (what reached the caller from the bot), sample-aligned.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from tests.speech import espeak_pcm

WINDOW_S = 0.01
VOICED_DBFS = -40.0


def question_pcm(text: str, voice: str = "en-us", speed: int = 150, pitch: int = 50) -> bytes:
    """A spoken question at 8 kHz, the leading and trailing silence of espeak trimmed."""
    return trim_silence(espeak_pcm(text, 8000, voice=voice, speed=speed, pitch=pitch))


def trim_silence(pcm: bytes) -> bytes:
    """16-bit PCM without its leading and trailing near-silence (|sample| <= 300)."""
    samples = np.frombuffer(pcm, dtype="<i2")
    voiced = np.flatnonzero(np.abs(samples.astype(np.int32)) > 300)
    if voiced.size == 0:
        return pcm
    return samples[voiced[0] : voiced[-1] + 1].tobytes()


def voiced_windows(samples: np.ndarray, rate_hz: int, dbfs: float = VOICED_DBFS) -> np.ndarray:
    """Per 10 ms window: True where the level is above ``dbfs``."""
    size = int(rate_hz * WINDOW_S)
    count = len(samples) // size
    if count == 0:
        return np.zeros(0, dtype=bool)
    frames = samples[: count * size].astype(np.float64).reshape(count, size) / 32768.0
    level = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    return np.asarray(level > dbfs)


def segments(voiced: np.ndarray, min_gap_s: float = 0.5) -> list[tuple[float, float]]:
    """(start_s, end_s) of voiced stretches, joining gaps shorter than ``min_gap_s``."""
    out: list[tuple[float, float]] = []
    idx = np.flatnonzero(voiced)
    for i in idx:
        t = i * WINDOW_S
        if out and t - out[-1][1] < min_gap_s:
            out[-1] = (out[-1][0], t + WINDOW_S)
        else:
            out.append((t, t + WINDOW_S))
    return out


def first_voiced_after(voiced: np.ndarray, t_s: float) -> float | None:
    start = int(round(t_s / WINDOW_S))
    idx = np.flatnonzero(voiced[start:])
    return None if idx.size == 0 else (start + int(idx[0])) * WINDOW_S


def last_voiced_before(voiced: np.ndarray, t_s: float) -> float | None:
    idx = np.flatnonzero(voiced[: int(round(t_s / WINDOW_S))])
    return None if idx.size == 0 else (int(idx[-1]) + 1) * WINDOW_S


def last_voiced_between(voiced: np.ndarray, start_s: float, end_s: float) -> float | None:
    """End of the last voiced window that starts in ``[start_s, end_s)``, if any."""
    start = int(round(start_s / WINDOW_S))
    idx = np.flatnonzero(voiced[start : int(round(end_s / WINDOW_S))])
    return None if idx.size == 0 else (start + int(idx[-1]) + 1) * WINDOW_S


class Recorded(Protocol):
    """A caller half's recordings (Asterisk's MixMonitor, FreeSWITCH's record_session)."""

    @property
    def heard(self) -> np.ndarray: ...
    @property
    def said(self) -> np.ndarray: ...
    @property
    def rate_hz(self) -> int: ...


def said_segments(rec: Recorded) -> list[tuple[float, float]]:
    """What the caller said, as (start_s, end_s) stretches (:func:`segments`)."""
    return segments(voiced_windows(rec.said, rec.rate_hz))


def heard_after(rec: Recorded, t_s: float) -> float | None:
    """When the caller first heard the bot at or after ``t_s``."""
    return first_voiced_after(voiced_windows(rec.heard, rec.rate_hz), t_s)


DROPOUT_MIN_S = 0.02  # one 20 ms frame that never came
DROPOUT_MAX_S = 0.5  # longer: the bot's silence between two replies
DROPOUT_SPEECH_NEAR_S = 0.2


def dropouts(samples: np.ndarray, rate_hz: int) -> list[tuple[float, float]]:
    """(start_s, length_s) of the gaps heard inside speech: runs of exact digital zeros
    ``DROPOUT_MIN_S`` to ``DROPOUT_MAX_S`` long with voiced audio within
    ``DROPOUT_SPEECH_NEAR_S`` on both sides. MixMonitor writes zeros for a direction that had
    no frame (a frame the bot sent late, or Asterisk's queue run dry), while the bot's
    speech, its pauses between words and sentences included, is never exactly zero for 20 ms
    (Piper's output is not)."""
    voiced = voiced_windows(samples, rate_hz)
    zero = np.concatenate(([0], (samples == 0).astype(np.int8), [0]))
    edges = np.diff(zero)
    out: list[tuple[float, float]] = []
    for start, end in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True):
        if not DROPOUT_MIN_S * rate_hz <= end - start <= DROPOUT_MAX_S * rate_hz:
            continue
        start_s, end_s = start / rate_hz, end / rate_hz
        before = last_voiced_between(voiced, max(0.0, start_s - DROPOUT_SPEECH_NEAR_S), start_s)
        after = first_voiced_after(voiced, end_s)
        if before is not None and after is not None and after - end_s <= DROPOUT_SPEECH_NEAR_S:
            out.append((round(start_s, 3), round(end_s - start_s, 3)))
    return out
