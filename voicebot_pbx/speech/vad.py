"""Silero voice activity detection with plain onnxruntime + numpy (no torch), and a pure
endpointer that turns per-window speech probabilities into start/end-of-speech events.

One :class:`SileroVad` (one ``onnxruntime.InferenceSession``) per process, one
:class:`VadStream` per call direction. ``VadStream.process`` is synchronous and costs about
0.1 ms of CPU per 32 ms window, so calling it inline on the event loop for each 20 ms frame
is acceptable; ``InferenceSession.run`` is thread-safe, so streams may also be driven from a
thread pool.

The streaming logic mirrors ``OnnxWrapper.__call__`` in silero-vad 6.2.3's ``utils_vad.py``:
8 kHz takes 256-sample windows, 16 kHz 512; each window is prefixed with the last 32 (8 kHz)
or 64 (16 kHz) samples of the previous window (zeros at the start); the recurrent state is a
2x1x128 float32 tensor starting at zeros.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import structlog

from voicebot_pbx.audio import rms_dbfs

if TYPE_CHECKING:
    import onnxruntime

log = structlog.get_logger(__name__)

_WINDOW_SAMPLES = {8000: 256, 16000: 512}
WINDOW_MS = 1000.0 * _WINDOW_SAMPLES[8000] / 8000  # silero's window: 32 ms at both rates
# Float slack for duration comparisons (5 windows of 0.032 s are 0.15999... s).
_EPS_S = 1e-6
_CONTEXT_SAMPLES = {8000: 32, 16000: 64}
_STATE_SHAPE = (2, 1, 128)


def import_onnxruntime() -> Any:
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    import onnxruntime

    disable = getattr(onnxruntime, "disable_telemetry_events", None)
    if disable is not None:
        disable()
    return onnxruntime


class SileroVad:
    """The silero VAD ONNX model, loaded once; hands out independent :class:`VadStream` s."""

    def __init__(self, model_path: Path, *, threads: int = 1) -> None:
        ort = import_onnxruntime()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.model_path = Path(model_path)
        self._session: onnxruntime.InferenceSession = ort.InferenceSession(
            str(self.model_path), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        log.debug("vad.loaded", model=str(self.model_path), threads=threads)

    def new_stream(self, rate_hz: int) -> VadStream:
        return VadStream(self, rate_hz)

    def _run(
        self,
        x: npt.NDArray[np.float32],
        state: npt.NDArray[np.float32],
        sr: npt.NDArray[np.int64],
    ) -> tuple[float, npt.NDArray[np.float32]]:
        out, new_state = self._session.run(None, {"input": x, "state": state, "sr": sr})
        return float(out[0, 0]), new_state


class VadStream:
    """Per-stream VAD state: accepts PCM of any length, re-windows it, keeps RNN state."""

    def __init__(self, vad: SileroVad, rate_hz: int) -> None:
        if rate_hz not in _WINDOW_SAMPLES:
            raise ValueError(f"silero VAD supports 8000 or 16000 Hz, not {rate_hz}")
        self._vad = vad
        self.rate_hz = rate_hz
        self.window_samples = _WINDOW_SAMPLES[rate_hz]
        self._context_samples = _CONTEXT_SAMPLES[rate_hz]
        self._window_bytes = self.window_samples * 2
        self._pending = bytearray()
        self._state = np.zeros(_STATE_SHAPE, dtype=np.float32)
        self._sr = np.array(rate_hz, dtype=np.int64)
        # [context | window]: the context is the previous window's tail (zeros at first)
        self._x = np.zeros((1, self._context_samples + self.window_samples), dtype=np.float32)
        self._windows_done = 0

    @property
    def window_ms(self) -> float:
        return 1000.0 * self.window_samples / self.rate_hz

    @property
    def window_s(self) -> float:
        return self.window_samples / self.rate_hz

    @property
    def windows_done(self) -> int:
        """Windows processed since creation or the last :meth:`reset`."""
        return self._windows_done

    def reset(self) -> None:
        """Forget the RNN state, the context and any partial window."""
        self._pending.clear()
        self._state = np.zeros(_STATE_SHAPE, dtype=np.float32)
        self._x[:] = 0.0
        self._windows_done = 0

    def process(self, pcm: bytes) -> list[float]:
        """Feed int16 mono PCM (e.g. one 20 ms frame); one probability per completed window."""
        return [prob for _, prob in self.process_timed(pcm)]

    def process_timed(self, pcm: bytes) -> list[tuple[float, float]]:
        """Like :meth:`process` but returns ``(window_start_s, probability)`` pairs.

        ``window_start_s`` is stream time (audio fed since the last reset), the time base
        :meth:`Endpointer.update` expects.
        """
        return [(w.start_s, w.prob) for w in self.process_windows(pcm)]

    def process_windows(self, pcm: bytes) -> list[VadWindow]:
        """Like :meth:`process_timed`, with each window's level (for ``Endpointer``'s
        energy end of speech)."""
        self._pending += pcm
        results: list[VadWindow] = []
        size = self._window_bytes
        n = self.window_samples
        while len(self._pending) >= size:
            x = self._x
            x[0, : self._context_samples] = x[0, -self._context_samples :]
            x[0, self._context_samples :] = np.frombuffer(self._pending, dtype="<i2", count=n)
            x[0, self._context_samples :] *= np.float32(1.0 / 32768.0)
            pcm = bytes(self._pending[:size])
            level_dbfs = rms_dbfs(pcm)
            del self._pending[:size]
            prob, self._state = self._vad._run(x, self._state, self._sr)
            results.append(VadWindow(self._windows_done * self.window_s, prob, level_dbfs, pcm))
            self._windows_done += 1
        return results


@dataclass(frozen=True, slots=True)
class VadWindow:
    start_s: float
    """Stream time of the window's first sample."""
    prob: float
    level_dbfs: float
    """RMS level of the window (full-scale sine: -3 dBFS; digital silence: -120)."""
    pcm: bytes = b""
    """The window's audio (16-bit little-endian), for the voicing test of a barge-in."""


# --- endpointing (pure) ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    at_s: float
    """Onset: time of the first window of the speech run."""


@dataclass(frozen=True, slots=True)
class SpeechEnded:
    at_s: float
    """When the end was decided (after ``end_silence_ms`` of silence)."""
    speech_end_s: float
    """When speech actually stopped (time of the first silent window)."""


EndpointEvent = SpeechStarted | SpeechEnded


class Endpointer:
    """Hysteresis endpointer over VAD probabilities. Pure: no clock, no I/O, no asyncio.

    Call :meth:`update` once per VAD window with the window's *start* time in seconds
    (``VadStream.process_timed`` gives it). A window counts as speech when its probability
    is ``>= threshold`` and as silence when it is ``< neg_threshold``; probabilities in
    between keep the current state (silero's own hysteresis).

    * ``SpeechStarted(at_s=onset)`` once speech has lasted ``min_speech_ms`` without a
      silent window (a shorter blip is dropped).
    * ``SpeechEnded(at_s=now, speech_end_s=...)`` once silence has lasted
      ``end_silence_ms``; a speech window before that cancels the pending end.

    Durations count the audio heard: from the start of the run's first window to the end of
    the current one (``now_s + window_ms``), so a decision is taken on the first window that
    completes the given time (200 ms of 32 ms windows: the 7th, heard at 224 ms; measuring
    between window starts waited for the 8th, 56 ms beyond what was configured).
    ``lookback_s`` is how much audio before ``SpeechStarted.at_s`` the caller should keep
    (ring buffer) and hand to STT, since the VAD fires a little after the true onset.
    Thresholds can be changed at run time (e.g. raised while the bot is talking).

    **The caller's last sound** (``quiet_below_peak_db`` > 0, windows given with their
    level): silero's probability stays up for ~100-200 ms after a caller's last sound (median
    ~110-160 ms to the first window under ``neg_threshold`` on 8 kHz espeak speech). A window
    ``quiet_below_peak_db`` under the loudest window of the utterance so far is *quiet*; when
    the probability falls, ``last_sound_s`` is the start of the unbroken run of quiet windows
    that reaches the falling window (the fall itself without one: a line whose noise is
    within ``quiet_below_peak_db`` of the voice); a window that is not quiet later in the
    pause (a sound before the probability rises again) moves it to that window's end. With
    ``silence_from_last_sound`` every silence of the pause is counted from there instead of
    from the fall. Only the fall starts a pause: a quiet run the model still calls speech is
    not one (starting pauses there made the end-of-turn model's verdicts worse:
    ``bench/bench_turn_end.py``).
    """

    def __init__(
        self,
        threshold: float = 0.5,
        neg_threshold: float = 0.35,
        min_speech_ms: int = 250,
        end_silence_ms: int = 700,
        lookback_ms: int = 300,
        window_ms: float = WINDOW_MS,
        quiet_below_peak_db: float = 0.0,
        silence_from_last_sound: bool = False,
    ) -> None:
        self._threshold = 0.5
        self._neg_threshold = 0.35
        self.set_threshold(threshold, neg_threshold)
        if min_speech_ms < 0 or end_silence_ms < 0 or lookback_ms < 0:
            raise ValueError("durations must be >= 0")
        if window_ms <= 0:
            raise ValueError("window_ms must be > 0")
        if quiet_below_peak_db < 0:
            raise ValueError("quiet_below_peak_db must be >= 0")
        self.quiet_below_peak_db = quiet_below_peak_db
        self.silence_from_last_sound = silence_from_last_sound
        self._last_sound_s: float | None = None
        self._follows_quiet = False  # the pause began with a quiet run (levels count)
        self._peak_dbfs = -math.inf  # loudest speech window of the utterance so far
        self._quiet_since_s: float | None = None
        self.window_s = window_ms / 1000.0
        self.min_speech_s = min_speech_ms / 1000.0
        self.end_silence_s = end_silence_ms / 1000.0
        self.lookback_s = lookback_ms / 1000.0
        self._onset_s: float | None = None
        self._in_speech = False
        self._silence_start_s: float | None = None

    def reached(self, since_s: float, now_s: float, duration_s: float) -> bool:
        """The audio heard from the window starting at ``since_s`` through the one at
        ``now_s`` lasts at least ``duration_s``."""
        return now_s + self.window_s - since_s >= duration_s - _EPS_S

    @property
    def threshold(self) -> float:
        return self._threshold

    @property
    def neg_threshold(self) -> float:
        return self._neg_threshold

    @property
    def in_speech(self) -> bool:
        """True between SpeechStarted and SpeechEnded."""
        return self._in_speech

    @property
    def pending_onset_s(self) -> float | None:
        """Before ``SpeechStarted``: the start of the run of speech windows that may become
        speech (None: no such run, or already in speech)."""
        return None if self._in_speech else self._onset_s

    @property
    def last_sound_s(self) -> float | None:
        """While in speech, in a pause: when the caller's last sound ended (see above; the
        pause's start when no level says otherwise)."""
        return self._last_sound_s if self.silence_since_s is not None else None

    @property
    def quiet_since_s(self) -> float | None:
        """While in speech and not yet in a pause: the start of the current run of quiet
        windows (the caller may have stopped; the probability has not fallen yet)."""
        if not self._in_speech or self._silence_start_s is not None:
            return None
        return self._quiet_since_s

    @property
    def silence_since_s(self) -> float | None:
        """While in speech: start of the current run of silent windows (a pending end)."""
        return self._silence_start_s if self._in_speech else None

    def set_threshold(self, threshold: float, neg_threshold: float | None = None) -> None:
        """Change thresholds now; ``neg_threshold`` defaults to ``threshold - 0.15``."""
        if neg_threshold is None:
            neg_threshold = max(0.01, threshold - 0.15)
        if not 0.0 < neg_threshold <= threshold < 1.0:
            raise ValueError(
                f"need 0 < neg_threshold <= threshold < 1, got {neg_threshold}, {threshold}"
            )
        self._threshold = threshold
        self._neg_threshold = neg_threshold

    def set_end_silence_ms(self, end_silence_ms: int) -> None:
        if end_silence_ms < 0:
            raise ValueError("end_silence_ms must be >= 0")
        self.end_silence_s = end_silence_ms / 1000.0

    def reset(self) -> None:
        """Back to idle without emitting anything (e.g. after a barge-in was handled)."""
        self._onset_s = None
        self._in_speech = False
        self._silence_start_s = None
        self._peak_dbfs = -math.inf
        self._quiet_since_s = None
        self._last_sound_s = None
        self._follows_quiet = False

    def update(
        self, prob: float, now_s: float, level_dbfs: float | None = None
    ) -> EndpointEvent | None:
        """One window: its probability, start time and (for silence from the last sound)
        its level; without a level only the probability counts."""
        is_speech = prob >= self._threshold
        is_silence = prob < self._neg_threshold
        if level_dbfs is not None and self.quiet_below_peak_db > 0:
            if is_speech:
                self._peak_dbfs = max(self._peak_dbfs, level_dbfs)
            if level_dbfs >= self._peak_dbfs - self.quiet_below_peak_db:
                self._quiet_since_s = None
            elif self._quiet_since_s is None:
                self._quiet_since_s = now_s

        if not self._in_speech:
            if self._onset_s is None:
                if not is_speech:
                    return None
                self._onset_s = now_s
            elif is_silence:
                self.reset()  # a blip shorter than min_speech: drop it
                return None
            if self.reached(self._onset_s, now_s, self.min_speech_s):
                self._in_speech = True
                self._silence_start_s = None
                return SpeechStarted(at_s=self._onset_s)
            return None

        if is_speech:
            self._silence_start_s = None
            return None
        if self._silence_start_s is not None and self._follows_quiet:
            # A sound inside the pause (the next word starting before the probability
            # rises, a breath) is the caller's last sound now: count from its end.
            quiet_since = self._quiet_since_s
            self._last_sound_s = now_s + self.window_s if quiet_since is None else quiet_since
        if is_silence:
            if self._silence_start_s is None:
                quiet_since = self._quiet_since_s
                self._last_sound_s = now_s if quiet_since is None else quiet_since
                # Without a quiet run at the fall (line noise within quiet_below_peak_db of
                # the voice) the level says nothing: the pause counts from the fall.
                self._follows_quiet = quiet_since is not None
                from_last = self.silence_from_last_sound
                self._silence_start_s = self._last_sound_s if from_last else now_s
            if self.reached(self._silence_start_s, now_s, self.end_silence_s):
                ended = SpeechEnded(at_s=now_s, speech_end_s=self._silence_start_s)
                self.reset()
                return ended
        return None
