"""Answering-machine detection, pure: an answered outbound call's first seconds in, a verdict out.

No asyncio and no clock. The detector is fed the answered call's inbound audio one 20 ms frame
at a time, from the moment of the answer. Times are stream time: ``start_s`` (where the first
frame sits after the answer, 0.0 by default) plus 20 ms per frame fed, so a call whose
frames stop coming must be filled with silence frames first (``InboundClock`` does that). Every
time reported is the end of the frame that showed it, in seconds from the answer.

Speech, per frame, comes from one of two places, chosen by the caller frame by frame:

* ``speech_prob`` given: the caller's VAD probability for this frame (the project's silero
  ``VadStream`` works in 32 ms windows: pass the latest window probability available when the
  frame arrives). A frame is speech at ``speech_threshold`` or above, and stays speech down to
  ``speech_neg_threshold`` (hysteresis, as the turn-taking endpointer does).
* ``speech_prob`` None: the detector's own energy test. A frame is speech when its level is
  ``energy_min_dbfs`` or louder and ``energy_margin_db`` above the noise floor (the 10th
  percentile of the frame levels over the last ``noise_window_ms``, rising no faster than
  ``noise_rise_db_per_s``; 3 dB less margin to stay speech). Once a word is under way, speech
  is held ``energy_hangover_ms`` past its last loud frame, as a VAD's probability lingers after
  speech, so one set of thresholds serves both. Noise that is loud from the answer on is the
  floor, not speech; noise that starts loud later is speech until the floor has risen to it.

Either way a steady tone (below) is not speech from its third frame on, so a beep does not
lengthen a greeting.

The decision is the call-centre dialer's (the rules and names follow Asterisk's ``AMD()``):

* **silence**: no word within ``initial_silence_ms`` of the answer (``initial_silence``;
  ``initial_silence_verdict = "machine"`` gives Asterisk's answer instead, but a silent answer
  is usually a person waiting for the caller to speak first, who should get a short prompt);
* **human**: a greeting no longer than ``greeting_max_ms`` followed by
  ``after_greeting_silence_ms`` of silence (``short_greeting_then_silence``): a person says
  "hello?" (0.3-1.5 s) and waits;
* **machine**: the greeting goes on past ``greeting_max_ms`` counting its pauses shorter than
  ``after_greeting_silence_ms`` (``long_greeting``), or has ``max_words`` words (runs of speech
  ``min_word_ms`` or longer apart by ``between_words_ms`` of silence or more: ``many_words``), or
  one word lasts ``max_word_ms`` (``max_word_length``), or a **beep** ends (``beep``);
* nothing decided within ``total_analysis_ms``: ``cap_verdict`` ("human" by default, or
  "undecided"; reason ``max_analysis_time``).

Before the verdict, a greeting short enough for a person's followed by
``likely_human_silence_ms`` of silence (less than ``after_greeting_silence_ms``) gives a
:class:`LikelyHuman`, once per pause: the opening may start then (a person hears it ~250 ms
sooner), and is cut if the greeting goes on and the verdict comes out machine, which is
before any beep, so a voicemail never records it.

A beep is a steady tone: frames whose spectrum holds ``beep_purity`` of its 100-3800 Hz power
within 100 Hz of one peak between ``beep_min_hz`` and ``beep_max_hz`` (a 20 ms Hann-windowed
FFT, zero-padded, the peak interpolated), at ``beep_min_dbfs`` or louder, the peak within
``beep_step_hz`` of the previous frame's and the level within ``beep_level_db`` of the run's
mean, for ``beep_min_ms`` to ``beep_max_ms`` (a vowel's strongest harmonic can be as pure for a
frame or two, but glides with the intonation and swells and fades). Its end is placed to
2.5 ms (the last sub-block within 10 dB of the tone's level) and reported when the first frame
without it has been fed. A beep means "machine, leave the message now".

After the verdict the detector keeps listening (the caller keeps feeding frames until
``finished``):

* after **machine** it waits for the moment to leave the message and reports it once as a
  :class:`DropCue`: a beep ends (``beep``), or ``drop_silence_ms`` of silence follows the
  greeting with no tone in progress (``silence``: greetings without a beep), or
  ``drop_wait_max_ms`` passes (``timeout``);
* after **machine** by length or words (``long_greeting``, ``many_words``,
  ``max_word_length``), when ``words_check`` is on and the greeting goes quiet
  (``after_greeting_silence_ms``) within ``words_check_max_ms`` of its start and before any
  beep, a :class:`GreetingEnd` once: the session transcribes the greeting, and when its words
  are a person's (``call/amd_words.py``: "... speaking, who is this?") it calls
  :meth:`AmdDetector.overrule`, after which the detector watches as after "human";
* after **human**, **silence** or **undecided**, a beep within ``late_beep_ms`` still means a
  machine (a short "leave a message" greeting, a greeting that started late): a second
  :class:`AmdResult` (verdict machine, reason ``beep``, ``revises`` the first verdict) and a
  :class:`DropCue` at once. Only a beep revises: once the bot talks, the inbound audio may carry
  the echo of its own voice, which a greeting rule would take for a machine.

Asterisk's ``AMD()`` result (channel variables ``AMDSTATUS`` and ``AMDCAUSE``) can be combined
with the detector's own by :func:`combine_asterisk`; the rule is documented there.

Wiring: one :class:`AmdDetector` per answered outbound call, fed every inbound frame (with the
VAD probability the session computes anyway, or None) from the answer until ``finished``. The
first :class:`AmdResult` arrives about ``after_greeting_silence_ms`` (plus the VAD's lag) after a
person's "hello" ends, ``greeting_max_ms`` after a machine's greeting starts, or at
``initial_silence_ms`` on a silent line: speak the opening on "human", prompt on "silence",
wait on "machine" for the :class:`DropCue`, then play the voicemail message.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import numpy.typing as npt

from voicebot_pbx.audio import FRAME_MS, SAMPLE_WIDTH_BYTES

Verdict = Literal["human", "machine", "silence", "undecided"]
VERDICTS: tuple[Verdict, ...] = ("human", "machine", "silence", "undecided")
DropCause = Literal["beep", "silence", "timeout"]
AsteriskPrefer = Literal["human", "own", "asterisk"]
RATES_HZ = (8000, 16000)
FRAME_S = FRAME_MS / 1000.0

_BAND_HZ = (100.0, 3800.0)  # the power a tone's purity is measured against
_PEAK_HALF_WIDTH_HZ = 100.0  # a 20 ms Hann window's main lobe: +-2 bins of 50 Hz
_NFFT = {8000: 1024, 16000: 2048}  # zero padding: 7.8 Hz bins at both rates
_SUB_BLOCK_S = 0.0025  # beep end resolution
_BEEP_END_DROP_DB = 10.0
_HOLD_MARGIN_DB = 3.0  # energy speech stays speech with this much less margin
_NOISE_PERCENTILE = 10.0
_SILENT_DBFS = -120.0
# From its third steady frame on, a tone is not speech (a vowel's frame or two can be as pure).
_TONE_NOT_SPEECH_FRAMES = 3
_SOUND_FRAMES = 2  # after the first word, 40 ms of speech ends a silence (a click does not)

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class AmdConfig:
    """Thresholds (times in ms from the answer or of the audio, levels in dBFS).

    ``greeting_max_ms`` and ``after_greeting_silence_ms`` were chosen on the dev split of
    ``bench/amd_dataset.py`` (``bench/eval_amd.py --sweep``; of the settings tied on machine
    accuracy, the one kindest to people); results in ``bench/results/amd.md``."""

    # -- the decision
    initial_silence_ms: int = 2500  # no word by then: initial_silence_verdict
    greeting_max_ms: int = 1800  # a longer greeting (pauses included) is a machine's
    after_greeting_silence_ms: int = 600  # silence after a short greeting: a human waiting
    # A short greeting followed by this much silence is *likely* a person (LikelyHuman): the
    # bot may start the opening then and cut it if the verdict comes out machine (0: off).
    likely_human_silence_ms: int = 350
    total_analysis_ms: int = 4500  # nothing decided by then: cap_verdict
    min_word_ms: int = 100  # shorter runs of speech (clicks, breaths) are not words
    between_words_ms: int = 60  # a shorter gap does not split a word
    max_words: int = 6  # this many words before the greeting ends: a machine
    max_word_ms: int = 2500  # one word (run of speech) this long: a machine
    cap_verdict: Verdict = "human"  # "human" or "undecided"
    initial_silence_verdict: Verdict = "silence"  # "silence" or "machine" (Asterisk's)
    # -- speech from the caller's VAD probabilities (speech_prob given)
    speech_threshold: float = 0.5
    speech_neg_threshold: float = 0.35
    # -- speech from energy (speech_prob None)
    energy_min_dbfs: float = -48.0
    energy_margin_db: float = 10.0  # above the noise floor
    noise_window_ms: int = 2000
    noise_rise_db_per_s: float = 3.0
    energy_hangover_ms: int = 200  # a word's speech lasts this long past its last loud frame
    # -- beep
    beep_min_hz: float = 350.0
    beep_max_hz: float = 2500.0
    beep_min_ms: int = 160
    beep_max_ms: int = 2000
    beep_purity: float = 0.7  # share of the band's power within 100 Hz of the peak
    beep_step_hz: float = 6.0  # the peak moves less from one frame to the next
    beep_level_db: float = 2.0  # each frame's level this close to the tone's mean
    beep_min_dbfs: float = -45.0
    # -- the words of a greeting that was too long for a "hello" (call/amd_words.py)
    # After a machine verdict by length or words, a greeting that ends (after_greeting_silence_ms
    # of silence, no tone) within words_check_max_ms of its start is transcribed: a person who
    # answered with a sentence ("Hello, Mark speaking, who is this please?") gets the opening.
    words_check: bool = True
    words_check_max_ms: int = 6000  # chosen on the dev split (bench/eval_amd.py)
    # A machine by length or words whose greeting went quiet with no beep, and who then talks
    # over the voicemail message (words, none a machine's): a person after all (a recording
    # machine does not talk back); the message stops and the opening plays (call/outbound.py).
    talk_back_is_person: bool = True
    # -- after the verdict
    late_beep_ms: int = 6000  # after human/silence/undecided, a beep this soon: machine
    drop_silence_ms: int = 1500  # after machine, this much silence: leave the message
    drop_wait_max_ms: int = 30000  # after machine, leave it by then whatever is heard
    # -- combining with Asterisk's AMD() (combine_asterisk)
    asterisk_prefer: AsteriskPrefer = "human"

    def __post_init__(self) -> None:
        positive = (
            "initial_silence_ms",
            "greeting_max_ms",
            "after_greeting_silence_ms",
            "total_analysis_ms",
            "min_word_ms",
            "max_words",
            "max_word_ms",
            "noise_window_ms",
            "beep_min_ms",
            "beep_max_ms",
            "drop_silence_ms",
            "drop_wait_max_ms",
            "words_check_max_ms",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"amd.{name} must be positive, not {getattr(self, name)}")
        for name in (
            "between_words_ms",
            "late_beep_ms",
            "energy_hangover_ms",
            "likely_human_silence_ms",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"amd.{name} must be >= 0, not {getattr(self, name)}")
        if self.cap_verdict not in ("human", "undecided"):
            raise ValueError(f"amd.cap_verdict must be human or undecided, not {self.cap_verdict}")
        if self.initial_silence_verdict not in ("silence", "machine"):
            raise ValueError(
                "amd.initial_silence_verdict must be silence or machine, "
                f"not {self.initial_silence_verdict}"
            )
        if self.asterisk_prefer not in ("human", "own", "asterisk"):
            raise ValueError(
                f"amd.asterisk_prefer must be human, own or asterisk, not {self.asterisk_prefer}"
            )
        if not 0.0 <= self.speech_neg_threshold <= self.speech_threshold <= 1.0:
            raise ValueError("amd: 0 <= speech_neg_threshold <= speech_threshold <= 1 needed")
        if not 0.0 < self.beep_min_hz < self.beep_max_hz:
            raise ValueError("amd: 0 < beep_min_hz < beep_max_hz needed")
        if 0 < self.after_greeting_silence_ms <= self.likely_human_silence_ms:
            raise ValueError(
                "amd.likely_human_silence_ms must be below after_greeting_silence_ms (or 0: off)"
            )
        if self.beep_min_ms > self.beep_max_ms:
            raise ValueError("amd: beep_min_ms <= beep_max_ms needed")
        if self.noise_rise_db_per_s <= 0:
            raise ValueError("amd.noise_rise_db_per_s must be positive")
        if not 0.0 < self.beep_purity <= 1.0:
            raise ValueError("amd.beep_purity must be in (0, 1]")


@dataclass(frozen=True, slots=True)
class AmdResult:
    """The verdict. ``decided_at_s``: seconds from the answer (the end of the deciding frame)."""

    verdict: Verdict
    decided_at_s: float
    reason: str  # e.g. long_greeting, beep, initial_silence, short_greeting_then_silence
    beep_end_s: float | None = None  # a beep was heard: leave the message from here
    beep_hz: float | None = None
    speech_onset_s: float | None = None  # where the first word began (the initial silence)
    greeting_s: float | None = None  # the greeting's length (pauses included) when decided
    words: int = 0
    revises: Verdict | None = None  # this result replaces an earlier verdict (a late beep)


@dataclass(frozen=True, slots=True)
class DropCue:
    """A machine: leave the voicemail message now (``at_s`` from the answer)."""

    at_s: float
    cause: DropCause
    beep_end_s: float | None = None
    beep_hz: float | None = None


@dataclass(frozen=True, slots=True)
class GreetingEnd:
    """After a machine verdict by length or words (``words_check``): the greeting, no longer
    than ``words_check_max_ms``, has ended (``at_s`` from the answer): what it said may
    still show a person (``call/amd_words.py``). Given once, never after a beep."""

    at_s: float
    greeting_s: float


@dataclass(frozen=True, slots=True)
class LikelyHuman:
    """No verdict yet, but a greeting short enough for a person's "hello?" has been followed
    by ``likely_human_silence_ms`` of silence (``at_s`` from the answer): the opening may
    start now, to be cut if the verdict comes out machine (the greeting goes on). Given at
    most once per pause."""

    at_s: float
    greeting_s: float


CHECKABLE_REASONS = frozenset({"long_greeting", "many_words", "max_word_length"})


@dataclass(frozen=True, slots=True)
class Beep:
    start_s: float
    end_s: float
    hz: float
    level_dbfs: float


AmdEvent = AmdResult | DropCue | GreetingEnd | LikelyHuman


@dataclass(slots=True)
class _ToneRun:
    start: int  # frame index
    frames: int
    hz_sum: float
    last_hz: float
    level_sum_db: float
    last_x: FloatArray = field(default_factory=lambda: np.zeros(0))

    @property
    def hz(self) -> float:
        return self.hz_sum / self.frames


class AmdDetector:
    """One per answered call. Feed every inbound 20 ms frame from the answer with
    :meth:`feed` until :attr:`finished`; act on the events it returns."""

    def __init__(self, config: AmdConfig, rate_hz: int, *, start_s: float = 0.0) -> None:
        if rate_hz not in RATES_HZ:
            raise ValueError(f"AMD takes 8000 or 16000 Hz audio, not {rate_hz}")
        if start_s < 0:
            raise ValueError(f"start_s must be >= 0, not {start_s}")
        self.config = config
        self.rate_hz = rate_hz
        self.start_s = start_s
        self.frame_samples = rate_hz * FRAME_MS // 1000
        self.frame_bytes = self.frame_samples * SAMPLE_WIDTH_BYTES
        # spectrum
        self._nfft = _NFFT[rate_hz]
        self._window = np.hanning(self.frame_samples)
        freqs = np.fft.rfftfreq(self._nfft, 1.0 / rate_hz)
        self._bin_hz = float(freqs[1])
        self._band = (freqs >= _BAND_HZ[0]) & (freqs <= min(_BAND_HZ[1], rate_hz / 2 - 100))
        self._peak_lo = int(np.searchsorted(freqs, config.beep_min_hz))
        self._peak_hi = int(np.searchsorted(freqs, config.beep_max_hz, side="right"))
        self._half_bins = int(round(_PEAK_HALF_WIDTH_HZ / self._bin_hz))
        self._sub_block = max(1, int(round(_SUB_BLOCK_S * rate_hz)))
        # speech
        self._levels: deque[float] = deque(maxlen=max(1, config.noise_window_ms // FRAME_MS))
        self._floor_db: float | None = None
        self._floor_rise_db = config.noise_rise_db_per_s * FRAME_S
        self._voiced = False
        self._quiet_frames = 0
        self._word_start: int | None = None
        self._word_end: int | None = None  # exclusive frame index
        self._word_counted = False
        self._greeting_start: int | None = None
        # exclusive: where the last sound of the greeting ended: a counted word or, once the
        # greeting has begun, any run of speech of _SOUND_FRAMES (a short syllable ends a
        # silence too; a click does not)
        self._last_sound_end: int | None = None
        self._words = 0
        # tone
        self._tone: _ToneRun | None = None
        self._prev_x: FloatArray = np.zeros(self.frame_samples)
        self.beeps: list[Beep] = []
        # outcome
        self._n = 0
        self._result: AmdResult | None = None
        self._first_verdict_frame: int | None = None
        self._drop: DropCue | None = None
        self._greeting_end: GreetingEnd | None = None
        self._likely_after: int | None = None  # the sound end the last LikelyHuman followed
        self._finished = False

    # -- state --------------------------------------------------------------------------------

    @property
    def result(self) -> AmdResult | None:
        """The latest verdict (None until decided)."""
        return self._result

    @property
    def drop_cue(self) -> DropCue | None:
        return self._drop

    @property
    def finished(self) -> bool:
        """Nothing more will come: the drop cue was given, or the late-beep watch is over."""
        return self._finished

    @property
    def now_s(self) -> float:
        """Stream time from the answer: the end of the last frame fed."""
        return self._time(self._n)

    def overrule(self, reason: str) -> AmdResult:
        """A person, on other evidence: a machine verdict taken back (the greeting's words
        were a person's, ``call/amd_words.py``), or no verdict yet and Asterisk's ``AMD()``
        heard a person before the call reached the bot. From the next frame on the detector
        watches as after a "human" verdict (a beep within ``late_beep_ms`` still revises it
        to machine), even if it had given its drop cue. Returns the new verdict."""
        if self._result is None:
            self._result = AmdResult(verdict="human", decided_at_s=self.now_s, reason=reason)
        elif self._result.verdict == "machine":
            self._result = replace(
                self._result, verdict="human", reason=reason, decided_at_s=self.now_s
            )
        else:
            raise ValueError("only a machine verdict or none can be overruled")
        self._first_verdict_frame = self._n
        self._drop = None
        self._finished = False
        return self._result

    def _time(self, frame: int) -> float:
        return round(self.start_s + frame * FRAME_S, 6)

    def _elapsed_ms(self, frames: int) -> float:
        return self.start_s * 1000.0 + frames * FRAME_MS

    # -- input --------------------------------------------------------------------------------

    def feed(self, pcm: bytes, speech_prob: float | None = None) -> list[AmdEvent]:
        """One 20 ms frame of 16-bit little-endian mono PCM at ``rate_hz``; ``speech_prob``
        the caller's VAD probability for it (None: the detector's energy test decides)."""
        if len(pcm) != self.frame_bytes:
            raise ValueError(
                f"AMD frames are {FRAME_MS} ms of 16-bit mono PCM: {self.frame_bytes} bytes at "
                f"{self.rate_hz} Hz, not {len(pcm)}"
            )
        if speech_prob is not None and not 0.0 <= speech_prob <= 1.0:
            raise ValueError(f"speech_prob must be in [0, 1], not {speech_prob}")
        i = self._n
        self._n += 1
        if self._finished:
            return []
        x: FloatArray = np.frombuffer(pcm, dtype="<i2").astype(np.float64) / 32768.0
        level_db = _level_dbfs(x)
        self._update_floor(level_db)
        tonal, hz = self._tonal(x, level_db)
        beep = self._track_tone(i, x, tonal, hz, level_db)
        self._prev_x = x
        in_tone = self._tone is not None and self._tone.frames >= _TONE_NOT_SPEECH_FRAMES
        voiced = not in_tone and self._is_speech(level_db, speech_prob)
        self._voiced = voiced
        if voiced:
            self._on_voiced(i)
        if self._result is None:
            return self._decide(i, beep)
        return self._after_verdict(i, beep)

    # -- speech -------------------------------------------------------------------------------

    def _update_floor(self, level_db: float) -> None:
        """The noise floor: the 10th percentile of the recent frame levels, rising no faster
        than ``noise_rise_db_per_s`` (a greeting that hardly pauses is not absorbed into it)."""
        self._levels.append(level_db)
        window_db = float(np.percentile(np.fromiter(self._levels, float), _NOISE_PERCENTILE))
        if self._floor_db is None or window_db <= self._floor_db:
            self._floor_db = window_db
        else:
            self._floor_db = min(window_db, self._floor_db + self._floor_rise_db)

    def _is_speech(self, level_db: float, speech_prob: float | None) -> bool:
        c = self.config
        assert self._floor_db is not None
        if speech_prob is not None:
            threshold = c.speech_neg_threshold if self._voiced else c.speech_threshold
            return speech_prob >= threshold
        floor_db = self._floor_db
        margin_db = c.energy_margin_db - (_HOLD_MARGIN_DB if self._voiced else 0.0)
        if level_db >= c.energy_min_dbfs and level_db >= floor_db + margin_db:
            self._quiet_frames = 0
            return True
        # after a word, held past the last loud frame as a VAD's probability lingers
        self._quiet_frames += 1
        return (
            self._voiced
            and self._word_counted
            and self._quiet_frames * FRAME_MS <= c.energy_hangover_ms
        )

    def _on_voiced(self, i: int) -> None:
        c = self.config
        gap_ms = None if self._word_end is None else (i - self._word_end) * FRAME_MS
        if gap_ms is None or (gap_ms > 0 and gap_ms >= c.between_words_ms):
            self._word_start, self._word_counted = i, False
        self._word_end = i + 1
        assert self._word_start is not None
        if not self._word_counted and self._word_ms() >= c.min_word_ms:
            self._word_counted = True
            self._words += 1
            if self._greeting_start is None:
                self._greeting_start = self._word_start
        run_frames = self._word_end - self._word_start
        if self._word_counted or (self._greeting_start is not None and run_frames >= _SOUND_FRAMES):
            self._last_sound_end = i + 1

    def _word_ms(self) -> int:
        if self._word_start is None or self._word_end is None:
            return 0
        return (self._word_end - self._word_start) * FRAME_MS

    def _greeting_ms(self) -> int | None:
        if self._greeting_start is None or self._last_sound_end is None:
            return None
        return (self._last_sound_end - self._greeting_start) * FRAME_MS

    # -- tone ---------------------------------------------------------------------------------

    def _tonal(self, x: FloatArray, level_db: float) -> tuple[bool, float]:
        """(a steady tone's frame?, its frequency)."""
        c = self.config
        if level_db < c.beep_min_dbfs:
            return False, 0.0
        spectrum = np.abs(np.fft.rfft(x * self._window, self._nfft)) ** 2
        total = float(spectrum[self._band].sum())
        if total <= 0.0 or self._peak_hi <= self._peak_lo:
            return False, 0.0
        k = self._peak_lo + int(np.argmax(spectrum[self._peak_lo : self._peak_hi]))
        lo, hi = max(0, k - self._half_bins), k + self._half_bins + 1
        purity = float(spectrum[lo:hi].sum()) / total
        if purity < c.beep_purity:
            return False, 0.0
        hz = k * self._bin_hz
        if 0 < k < spectrum.size - 1:  # parabolic interpolation of the log peak
            a, b, d = np.log(spectrum[k - 1 : k + 2] + 1e-30)
            denom = a - 2 * b + d
            if denom < 0:
                hz += 0.5 * float(a - d) / float(denom) * self._bin_hz
        return bool(c.beep_min_hz <= hz <= c.beep_max_hz), hz

    def _track_tone(
        self, i: int, x: FloatArray, tonal: bool, hz: float, level_db: float
    ) -> Beep | None:
        """Extend or end the current tone run; the beep that ended with this frame, if any.

        A run goes on while each frame's peak is within ``beep_step_hz`` of the last one's
        and its level within ``beep_level_db`` of the run's mean: a beep is that steady, a
        vowel's dominant harmonic glides with the intonation and swells and fades."""
        c = self.config
        run = self._tone
        if (
            tonal
            and run is not None
            and abs(hz - run.last_hz) <= c.beep_step_hz
            and abs(level_db - run.level_sum_db / run.frames) <= c.beep_level_db
        ):
            run.frames += 1
            run.hz_sum += hz
            run.last_hz = hz
            run.level_sum_db += level_db
            run.last_x = x
            return None
        beep = self._end_tone(i, x) if run is not None else None
        self._tone = _ToneRun(i, 1, hz, hz, level_db, x) if tonal else None
        return beep

    def _end_tone(self, i: int, x: FloatArray) -> Beep | None:
        """The run before frame ``i`` ended; a beep when its length fits."""
        run = self._tone
        assert run is not None
        length_ms = run.frames * FRAME_MS
        if not self.config.beep_min_ms <= length_ms <= self.config.beep_max_ms:
            return None
        level_db = run.level_sum_db / run.frames
        # the tone's end: the last 2.5 ms block of [last tonal frame | this frame] near its level
        both = np.concatenate([run.last_x, x])
        n = self._sub_block
        blocks = both[: both.size // n * n].reshape(-1, n)
        block_db = 10 * np.log10(np.mean(blocks**2, axis=1) + 1e-12)
        loud = np.flatnonzero(block_db >= level_db - _BEEP_END_DROP_DB)
        end_sample = (int(loud[-1]) + 1) * n if loud.size else self.frame_samples
        end_s = self._time(i - 1) + end_sample / self.rate_hz
        beep = Beep(self._time(run.start), round(end_s, 6), round(run.hz, 1), round(level_db, 1))
        self.beeps.append(beep)
        return beep

    def _tone_in_progress(self) -> bool:
        return self._tone is not None and self._tone.frames * FRAME_MS <= self.config.beep_max_ms

    # -- decisions ----------------------------------------------------------------------------

    def _make(self, verdict: Verdict, i: int, reason: str, beep: Beep | None) -> AmdResult:
        onset = self._greeting_start
        greeting_ms = self._greeting_ms()
        return AmdResult(
            verdict=verdict,
            decided_at_s=self._time(i + 1),
            reason=reason,
            beep_end_s=beep.end_s if beep else None,
            beep_hz=beep.hz if beep else None,
            speech_onset_s=None if onset is None else self._time(onset),
            greeting_s=None if greeting_ms is None else greeting_ms / 1000.0,
            words=self._words,
        )

    def _decide(self, i: int, beep: Beep | None) -> list[AmdEvent]:
        c = self.config
        verdict: Verdict | None = None
        reason = ""
        greeting_ms = self._greeting_ms()
        if beep is not None:
            verdict, reason = "machine", "beep"
        elif greeting_ms is not None and self._last_sound_end is not None:
            silence_ms = (i + 1 - self._last_sound_end) * FRAME_MS
            if greeting_ms > c.greeting_max_ms:
                verdict, reason = "machine", "long_greeting"
            elif self._words >= c.max_words:
                verdict, reason = "machine", "many_words"
            elif self._word_counted and self._voiced and self._word_ms() >= c.max_word_ms:
                verdict, reason = "machine", "max_word_length"
            elif silence_ms >= c.after_greeting_silence_ms and not self._tone_in_progress():
                verdict, reason = "human", "short_greeting_then_silence"
            elif self._likely(silence_ms):
                self._likely_after = self._last_sound_end
                return [LikelyHuman(self._time(i + 1), greeting_ms / 1000.0)]
        elif self._elapsed_ms(i + 1) >= c.initial_silence_ms - 1e-6:
            verdict, reason = c.initial_silence_verdict, "initial_silence"
        if verdict is None and self._elapsed_ms(i + 1) >= c.total_analysis_ms - 1e-6:
            verdict, reason = c.cap_verdict, "max_analysis_time"
        if verdict is None:
            return []
        self._result = self._make(verdict, i, reason, beep)
        self._first_verdict_frame = i + 1
        events: list[AmdEvent] = [self._result]
        if beep is not None:
            events.append(self._cue(i, "beep", beep))
        return events

    def _likely(self, silence_ms: int) -> bool:
        """A short greeting (the caller checked it is no longer than ``greeting_max_ms``, has
        fewer than ``max_words``) followed by ``likely_human_silence_ms`` of silence, no tone
        under way, not yet said for this pause."""
        c = self.config
        return (
            c.likely_human_silence_ms > 0  # below after_greeting_silence_ms (AmdConfig)
            and silence_ms >= c.likely_human_silence_ms
            and not self._voiced
            and not self._tone_in_progress()
            and self._likely_after != self._last_sound_end
        )

    def _greeting_ended(self, i: int) -> list[AmdEvent]:
        """The GreetingEnd event, once, for a machine verdict ``words_check`` may revisit."""
        c = self.config
        result = self._result
        greeting_ms = self._greeting_ms()
        if (
            not c.words_check
            or self._greeting_end is not None
            or result is None
            or result.reason not in CHECKABLE_REASONS
            or greeting_ms is None
            or greeting_ms > c.words_check_max_ms
            or self.beeps
        ):
            return []
        self._greeting_end = GreetingEnd(at_s=self._time(i + 1), greeting_s=greeting_ms / 1000.0)
        return [self._greeting_end]

    def _cue(self, i: int, cause: DropCause, beep: Beep | None) -> DropCue:
        self._drop = DropCue(
            at_s=self._time(i + 1),
            cause=cause,
            beep_end_s=beep.end_s if beep else None,
            beep_hz=beep.hz if beep else None,
        )
        self._finished = True
        return self._drop

    def _after_verdict(self, i: int, beep: Beep | None) -> list[AmdEvent]:
        c = self.config
        result = self._result
        assert result is not None and self._first_verdict_frame is not None
        since_verdict_ms = (i + 1 - self._first_verdict_frame) * FRAME_MS
        if result.verdict == "machine":
            if beep is not None:
                return [self._cue(i, "beep", beep)]
            quiet_since = (
                self._last_sound_end
                if self._last_sound_end is not None
                else self._first_verdict_frame
            )
            quiet_ms = (i + 1 - quiet_since) * FRAME_MS
            quiet = not self._voiced and not self._tone_in_progress()
            if quiet_ms >= c.drop_silence_ms and quiet:
                return [self._cue(i, "silence", None)]
            if since_verdict_ms >= c.drop_wait_max_ms:
                return [self._cue(i, "timeout", None)]
            if quiet and quiet_ms >= c.after_greeting_silence_ms:
                return self._greeting_ended(i)
            return []
        if beep is not None and beep.end_s <= result.decided_at_s + c.late_beep_ms / 1000.0:
            self._result = replace(self._make("machine", i, "beep", beep), revises=result.verdict)
            return [self._result, self._cue(i, "beep", beep)]
        if since_verdict_ms >= c.late_beep_ms and not self._tone_in_progress():
            self._finished = True
        return []


def _level_dbfs(x: FloatArray) -> float:
    power = float(np.mean(x * x)) if x.size else 0.0
    if power <= 0.0:
        return _SILENT_DBFS
    return max(_SILENT_DBFS, 10.0 * float(np.log10(power)))


def detect(
    pcm: bytes,
    rate_hz: int,
    config: AmdConfig | None = None,
    *,
    speech_probs: Sequence[float] | None = None,
    start_s: float = 0.0,
) -> tuple[list[AmdEvent], AmdDetector]:
    """Run a detector over a whole recording (20 ms frames; a partial last frame is dropped).
    ``speech_probs``: one VAD probability per frame, or None for the energy test. Returns
    every event in order and the detector (its ``beeps``, ``result``, ``drop_cue``)."""
    if len(pcm) % SAMPLE_WIDTH_BYTES:
        raise ValueError(f"16-bit PCM has an even number of bytes, not {len(pcm)}")
    detector = AmdDetector(config or AmdConfig(), rate_hz, start_s=start_s)
    size = detector.frame_bytes
    n_frames = len(pcm) // size
    if speech_probs is not None and len(speech_probs) < n_frames:
        raise ValueError(f"{len(speech_probs)} speech probabilities for {n_frames} frames")
    events: list[AmdEvent] = []
    for k in range(n_frames):
        prob = None if speech_probs is None else float(speech_probs[k])
        events.extend(detector.feed(pcm[k * size : (k + 1) * size], prob))
        if detector.finished:
            break
    return events, detector


# --- Asterisk's AMD() ------------------------------------------------------------------------

_ASTERISK_STATUSES = ("HUMAN", "MACHINE", "NOTSURE", "HANGUP")


@dataclass(frozen=True, slots=True)
class AsteriskAmd:
    """Asterisk's ``AMD()`` outcome from the channel variables: ``AMDSTATUS`` (HUMAN, MACHINE,
    NOTSURE, HANGUP) and ``AMDCAUSE`` (e.g. ``LONGGREETING-1620-1500``: the cause, then its
    numbers)."""

    status: str
    cause: str = ""
    numbers: tuple[int, ...] = ()

    @classmethod
    def parse(cls, status: str, cause: str = "") -> AsteriskAmd:
        status = status.strip().upper()
        if status not in _ASTERISK_STATUSES:
            raise ValueError(
                f"AMDSTATUS must be one of {', '.join(_ASTERISK_STATUSES)}: {status!r}"
            )
        word, *rest = cause.strip().upper().split("-") if cause.strip() else [""]
        try:
            numbers = tuple(int(n) for n in rest if n)
        except ValueError:
            raise ValueError(
                f"AMDCAUSE is a cause and numbers (LONGGREETING-1620-1500): {cause!r}"
            ) from None
        return cls(status, word, numbers)

    @property
    def verdict(self) -> Verdict:
        """MACHINE because of INITIALSILENCE is this module's "silence" (nobody spoke);
        NOTSURE and HANGUP are "undecided"."""
        if self.status == "HUMAN":
            return "human"
        if self.status == "MACHINE":
            return "silence" if self.cause == "INITIALSILENCE" else "machine"
        return "undecided"

    @property
    def label(self) -> str:
        return f"{self.status}-{self.cause}" if self.cause else self.status


def combine_asterisk(
    own: AmdResult | None,
    asterisk: AsteriskAmd,
    *,
    at_s: float,
    prefer: AsteriskPrefer = "human",
) -> AmdResult:
    """The detector's verdict (None: not decided yet) combined with Asterisk's.

    1. The detector heard a beep: machine, whatever Asterisk says (a beep is direct evidence).
    2. Asterisk saw the callee hang up (HANGUP): undecided (the call is over anyway).
    3. Only one has an opinion (the detector has none or "undecided"; Asterisk NOTSURE is no
       opinion): that one.
    4. Both agree: the detector's result (its timing and numbers).
    5. They disagree: ``prefer`` decides. "human" (the default): human when either says human
       (a person treated as a machine hears a recorded message and is hung up on: the worst
       mistake), otherwise machine (one heard a greeting the other took for silence); "own": the
       detector; "asterisk": Asterisk.

    ``at_s``: when the combined verdict is taken (seconds from the answer), used when the result
    is Asterisk's alone. The reason names both: ``"<own reason>|asterisk:<STATUS-CAUSE>"``."""
    theirs = asterisk.verdict
    tag = f"asterisk:{asterisk.label}"

    def asterisk_only() -> AmdResult:
        return AmdResult(verdict=theirs, decided_at_s=at_s, reason=tag)

    if own is not None and own.verdict == "machine" and own.beep_end_s is not None:
        return replace(own, reason=f"{own.reason}|{tag}")
    if asterisk.status == "HANGUP":
        return AmdResult(verdict="undecided", decided_at_s=at_s, reason=tag)
    if own is None or own.verdict == "undecided":
        return asterisk_only() if theirs != "undecided" or own is None else own
    mine = replace(own, reason=f"{own.reason}|{tag}")
    if theirs in ("undecided", own.verdict):
        return mine
    if prefer == "own":
        return mine
    if prefer == "asterisk":
        return replace(asterisk_only(), decided_at_s=max(at_s, own.decided_at_s))
    winner: Verdict = "human" if "human" in (own.verdict, theirs) else "machine"
    if own.verdict == winner:
        return mine
    return AmdResult(
        verdict=winner, decided_at_s=max(at_s, own.decided_at_s), reason=f"{own.reason}|{tag}"
    )
