"""A sound over the bot, from the caller line's level alone (pure; no model, no clock).

Silero needs 90-210 ms of a caller's speech before its probability crosses the threshold
(``bench/bench_barge_in.py``); the level of the line rises in the first window. So while
the bot speaks, a window ``above_db`` over the line's noise floor (and at least
``min_dbfs``) pauses the bot at once; the VAD then confirms it as speech or the bot goes
on (``speech/turns.TurnTaker``).

The noise floor follows the quietest recent windows: it falls to any quieter window at
once and rises by at most ``rise_db_per_s`` (steady line noise, a fan, becomes the floor
within seconds). A sound the VAD did not confirm (a cough, a door) raises the bar by how
far that sound went over it, plus ``REFRACTORY_MARGIN_DB``; once the line is quiet again
the raise decays by ``decay_db_per_s``, so a noisy room does not stop the bot at every bump.

A loud window must also be voiced (:func:`voicing`: the normalised autocorrelation at a
pitch lag, 2.5-12.5 ms), so breaths, clicks and coughs, which are noise, do not pause the
bot; the unvoiced start of a word ("s", "h") waits for its vowel, one or two windows later.
"""

from __future__ import annotations

import math

import numpy as np

from voicebot_pbx.audio import pcm_to_int16

REFRACTORY_MARGIN_DB = 3.0
SOUND_OVER_WINDOWS = 2  # windows in a row under the bar that end a sound
PITCH_LAGS_S = (0.0025, 0.0125)  # 400 Hz down to 80 Hz


def voicing(pcm: bytes, rate_hz: int) -> float:
    """How periodic the audio is at a voice's pitch: the largest normalised
    autocorrelation (0..1) over lags of 2.5-12.5 ms (speech vowels: ~0.6-0.95; noise,
    breaths, clicks: mostly under 0.5)."""
    x = pcm_to_int16(pcm).astype(np.float64)
    x -= x.mean() if x.size else 0.0
    n = x.size
    low = max(1, round(PITCH_LAGS_S[0] * rate_hz))
    high = min(n - 1, round(PITCH_LAGS_S[1] * rate_hz))
    if high < low:
        return 0.0
    size = 1 << (2 * n - 1).bit_length()
    spectrum = np.fft.rfft(x, size)
    dots = np.fft.irfft(spectrum * np.conj(spectrum), size)[: high + 1]
    energy = np.concatenate(([0.0], np.cumsum(x * x)))
    lags = np.arange(low, high + 1)
    # sum x[i] x[i + lag] over i < n - lag, against the energies of both stretches
    norms = np.sqrt(energy[n - lags] * (energy[n] - energy[lags]))
    valid = norms > 1e-9
    if not np.any(valid):
        return 0.0
    return float(np.max(dots[lags][valid] / norms[valid]))


class LevelOnset:
    """Feed every window's level (dBFS) with ``update`` (True: a sound over the line's
    floor), or ``echo`` for a window that is the bot's own voice."""

    def __init__(
        self,
        *,
        above_db: float,
        min_dbfs: float,
        window_s: float,
        rise_db_per_s: float = 3.0,
        decay_db_per_s: float = 6.0,
    ) -> None:
        if above_db <= 0:
            raise ValueError("above_db must be > 0")
        self.above_db = above_db
        self.min_dbfs = min_dbfs
        self.window_s = window_s
        self.rise_db_per_s = rise_db_per_s
        self.decay_db_per_s = decay_db_per_s
        self._floor_dbfs: float | None = None
        self._extra_db = 0.0  # the raise after an unconfirmed sound (decaying)
        self._quiet_run = 0  # windows in a row under it
        self._burst_peak_dbfs = -math.inf  # the loudest window of the latest sound

    @property
    def floor_dbfs(self) -> float | None:
        return self._floor_dbfs

    @property
    def bar_dbfs(self) -> float:
        """The level a window needs to count as a sound."""
        return self._bar_dbfs(self._extra_db)

    def _bar_dbfs(self, extra_db: float) -> float:
        floor = self.min_dbfs if self._floor_dbfs is None else self._floor_dbfs
        return max(floor + self.above_db + extra_db, self.min_dbfs)

    @property
    def sound_over(self) -> bool:
        """The last sound has ended (``SOUND_OVER_WINDOWS`` windows under the bar)."""
        return self._quiet_run >= SOUND_OVER_WINDOWS

    def update(self, level_dbfs: float) -> bool:
        """One window's level; True when it is over the bar (a sound)."""
        loud = level_dbfs >= self.bar_dbfs
        if loud:
            # The loudest window of this sound (a new one after the last ended).
            previous = -math.inf if self.sound_over else self._burst_peak_dbfs
            self._burst_peak_dbfs = max(previous, level_dbfs)
            self._quiet_run = 0
        else:
            self._quiet_run += 1
        floor = self._floor_dbfs
        if floor is None or level_dbfs < floor:
            self._floor_dbfs = level_dbfs
        else:
            self._floor_dbfs = floor + min(self.rise_db_per_s * self.window_s, level_dbfs - floor)
        if level_dbfs < self._bar_dbfs(0.0):
            # The raise decays only while the line is back under the plain bar: a sound that
            # goes on holds it until the floor has risen to it.
            self._extra_db = max(0.0, self._extra_db - self.decay_db_per_s * self.window_s)
        return loud

    def echo(self) -> None:
        """A window the echo gate took for the bot's own voice: no sound of the caller's
        (a sound under way may end), and not the line's floor either."""
        self._quiet_run += 1

    def unconfirmed(self) -> None:
        """The last sound was not speech: raise the bar over it for a while."""
        if self._burst_peak_dbfs == -math.inf:
            return
        over_db = self._burst_peak_dbfs - self.bar_dbfs + REFRACTORY_MARGIN_DB
        self._extra_db += max(0.0, over_db)
        self._burst_peak_dbfs = -math.inf
