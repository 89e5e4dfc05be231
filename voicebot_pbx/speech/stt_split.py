"""Two speech-to-text engines split by utterance length: short turns to one, long to another.

Measured on the 350-utterance STT set (bench/bench_stt.py): Whisper tiny.en makes fewer word
errors on the shortest turns ("yes", "agent", "goodbye"), Moonshine base on longer ones (on
the recorded prompts 3.6 % against 6.2 % at 2-4 s). ``[stt] long_engine`` sends every
utterance with at least ``long_from_s`` of speech (:func:`speech_span_s`: the STT look-back
and the end-of-turn silence do not count) to the long engine; the shorter ones, including
every speculative decode at a pause that is still short, go to the configured engine.

**A second opinion** (``[stt] second_opinion``): given the deployment's vocabulary (the
dialogue's training examples and the knowledge files' words, :meth:`use_vocabulary` at
start-up), a short turn whose transcript holds a word outside it ("What's my madness?") is
decoded by the long engine too, and its transcript is kept when it has fewer such words and
no fewer known ones ("What's my balance?"). So is a short turn heard as nothing although it
holds 0.4 s of speech or more (Whisper's no-speech score rejects some voices' questions
whole): the long engine's words are kept when at least as many are known as not. A turn
the long engine decoded with less than ``LONG_SECOND_OPINION_BELOW_S`` (2 s) of speech gets
the short engine's opinion by the same rules: the short requests between ``long_from_s`` and
2 s are where Moonshine base is weakest. Both engines mishear synthetic voices, but rarely
the same turn the same way. A turn in the vocabulary costs nothing more.

Each engine keeps its own path: one with its own inference thread (Whisper's batcher,
``SttCapabilities.queued``) is awaited there; one without runs in the service's shared
inference pool, given here, never on the event loop. A decode held to what the caller is
expected to say (``speech/expect.py``: digits after the dialogue asked for an account
number) goes to the engine that can hold it, whatever its length.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Iterable, Sequence
from concurrent.futures import Executor

import numpy as np

from voicebot_pbx.audio import (
    LEVEL_FRAME_S,
    SPEECH_ABOVE_FLOOR_DB,
    SPEECH_BELOW_PEAK_DB,
    frame_levels_db,
    pcm_to_float32,
)
from voicebot_pbx.speech.expect import Expected
from voicebot_pbx.speech.stt import (
    BufferedStream,
    SttCapabilities,
    SttEngine,
    SttResult,
    timed,
)
from voicebot_pbx.speech.verify import KnownAnswer

_WORD_RE = re.compile(r"[a-z]+(?:'[a-z]+)?")
# A short turn the short engine heard as nothing gets a second opinion when it holds this
# much speech (speech_span_s): Whisper's no-speech score rejects some voices' whole questions
# ("where are you located", 1.2 s, en-029+m4), while a cough or a click is shorter.
EMPTY_SECOND_OPINION_MIN_S = 0.4
# A turn the long engine decoded (``long_from_s`` set below this) gets the short engine's
# opinion under the same rules when it holds less speech than this: the short requests an
# IVR lives on are where Moonshine base is weakest (bench/README.md, "Why the split at 2 s").
LONG_SECOND_OPINION_BELOW_S = 2.0


def spoken_words(text: str) -> list[str]:
    """The lower-case words of ``text``, apostrophes kept ("what's"; a curly one made
    straight), punctuation and digits dropped."""
    return _WORD_RE.findall(text.lower().replace("’", "'"))


def vocabulary_words(texts: Iterable[str]) -> frozenset[str]:
    """The words (:func:`spoken_words`) of ``texts``."""
    return frozenset(word for text in texts for word in spoken_words(text))


def known_and_unknown(text: str, vocabulary: frozenset[str]) -> tuple[int, int]:
    """How many of ``text``'s words are in ``vocabulary``, and how many are not."""
    words = spoken_words(text)
    known = sum(1 for w in words if w in vocabulary)
    return known, len(words) - known


def second_opinion_wins(first: str, second: str, vocabulary: frozenset[str]) -> bool:
    """Whether the second engine's transcript is the better one: not empty, fewer words
    outside ``vocabulary``, no fewer inside it; when the first heard no words at all, at
    least as many words inside ``vocabulary`` as outside it (one at least)."""
    if not second.strip():
        return False
    known_1, unknown_1 = known_and_unknown(first, vocabulary)
    known_2, unknown_2 = known_and_unknown(second, vocabulary)
    if known_1 + unknown_1 == 0:
        return known_2 >= max(1, unknown_2)
    return unknown_2 < unknown_1 and known_2 >= known_1


def speech_span_s(pcm: bytes, rate_hz: int) -> float:
    """Seconds from the first to the last loud frame of ``pcm`` (int16 mono): the utterance
    without the STT look-back and the end-of-turn silence around it. Loud: within
    ``SPEECH_BELOW_PEAK_DB`` of the loudest frame and, where the line has a noise floor below
    the loudest frame, ``SPEECH_ABOVE_FLOOR_DB`` above it (``frame_levels_db``)."""
    energy_db, floor_db = frame_levels_db(pcm_to_float32(pcm), rate_hz)
    if floor_db is None:
        return 0.0
    peak_db = float(energy_db.max())
    threshold_db = peak_db - SPEECH_BELOW_PEAK_DB
    if floor_db + SPEECH_ABOVE_FLOOR_DB < peak_db:  # a steady sound has no floor below it
        threshold_db = max(threshold_db, floor_db + SPEECH_ABOVE_FLOOR_DB)
    loud = np.flatnonzero(energy_db >= threshold_db)
    return float(loud[-1] - loud[0] + 1) * LEVEL_FRAME_S


class LengthSplitEngine:
    """``short`` for utterances under ``long_from_s`` of speech, ``long`` for the rest. Both
    must transcribe whole utterances (``SttCapabilities.batch``)."""

    def __init__(
        self,
        short: SttEngine,
        long: SttEngine,
        *,
        long_from_s: float,
        pool: Executor,
    ) -> None:
        for engine in (short, long):
            if engine.capabilities.batch is None:
                raise ValueError(
                    f"stt: the {engine.name} engine streams; only whole-utterance engines "
                    "can share utterances by length"
                )
        if long_from_s <= 0:
            raise ValueError("stt: long_from_s must be > 0")
        self.short = short
        self.long = long
        self.long_from_s = long_from_s
        self._pool = pool
        # Decodes sent to each engine, those held to an expectation, short turns given a
        # second opinion and those whose second opinion was kept (bench, tests).
        self.routed = {"short": 0, "long": 0, "held": 0, "second": 0, "second_kept": 0}
        self._vocabulary: frozenset[str] = frozenset()

    def use_vocabulary(self, words: frozenset[str]) -> None:
        """The deployment's words: short turns with a word outside them get a second
        opinion from the long engine (empty: never)."""
        self._vocabulary = frozenset(words)

    @property
    def name(self) -> str:
        return f"{self.short.name}+{self.long.name}"

    @property
    def capabilities(self) -> SttCapabilities:
        expecting = self if self._holder() is not None else None
        return SttCapabilities(batch=self, queued=self, expecting=expecting, vocabulary=self)

    def _holder(self) -> SttEngine | None:
        """The engine that holds decodes to an expectation: the long one when it can (the
        packaged split: Moonshine base), else the short one, else none."""
        for engine in (self.long, self.short):
            if engine.capabilities.expecting is not None:
                return engine
        return None

    def transcribe_expecting(
        self,
        pcm: bytes,
        rate_hz: int,
        expected: Expected,
        known: Sequence[KnownAnswer] = (),
        digits: int | None = None,
    ) -> SttResult:
        """Blocking: whatever the utterance's length, on the engine that can hold it; heard
        as nothing although it holds ``EMPTY_SECOND_OPINION_MIN_S`` of speech, the other
        engine's free decode (by the second opinion's rule; only with the vocabulary)."""
        holder = self._holder()
        if holder is None:
            return self.transcribe(pcm, rate_hz)
        expecting = holder.capabilities.expecting
        assert expecting is not None  # _holder
        self.routed["held"] += 1
        result = expecting.transcribe_expecting(pcm, rate_hz, expected, known, digits)
        if result.text.strip() or not self._vocabulary:
            return result
        # Heard as nothing although it holds speech (a held decode that ran into its token
        # limit, "0, 0, 0, ..."): the other engine's free decode, as for any other turn.
        if speech_span_s(pcm, rate_hz) < EMPTY_SECOND_OPINION_MIN_S:
            return result
        other = self.short if holder is self.long else self.long
        other_batch = other.capabilities.batch
        assert other_batch is not None  # checked in __init__
        return self._better(result, other_batch.transcribe(pcm, rate_hz))

    def new_stream(self, rate_hz: int) -> BufferedStream:
        return BufferedStream(self, rate_hz)

    def _pick(self, pcm: bytes, rate_hz: int) -> tuple[SttEngine, float]:
        """The engine for this utterance (counted in ``routed``) and its seconds of speech."""
        span_s = speech_span_s(pcm, rate_hz)
        long = span_s >= self.long_from_s
        self.routed["long" if long else "short"] += 1
        return (self.long if long else self.short), span_s

    def transcribe(self, pcm: bytes, rate_hz: int) -> SttResult:
        """Blocking, on the calling worker thread."""
        engine, span_s = self._pick(pcm, rate_hz)
        batch = engine.capabilities.batch
        assert batch is not None  # checked in __init__
        result = batch.transcribe(pcm, rate_hz)
        other = self._second_opinion_from(engine, result, span_s)
        if other is None:
            return result
        other_batch = other.capabilities.batch
        assert other_batch is not None
        return self._better(result, other_batch.transcribe(pcm, rate_hz))

    async def transcribe_async(
        self, pcm: bytes, rate_hz: int, *, urgent: bool = False
    ) -> SttResult:
        engine, span_s = self._pick(pcm, rate_hz)
        result = await self._decode(engine, pcm, rate_hz, urgent)
        other = self._second_opinion_from(engine, result, span_s)
        if other is None:
            return result
        return self._better(result, await self._decode(other, pcm, rate_hz, urgent))

    async def _decode(self, engine: SttEngine, pcm: bytes, rate_hz: int, urgent: bool) -> SttResult:
        capabilities = engine.capabilities
        if capabilities.queued is not None:
            return await capabilities.queued.transcribe_async(pcm, rate_hz, urgent=urgent)
        batch = capabilities.batch
        assert batch is not None  # checked in __init__
        loop = asyncio.get_running_loop()
        job = timed(functools.partial(batch.transcribe, pcm, rate_hz), engine.name)
        return await loop.run_in_executor(self._pool, job)

    def _second_opinion_from(
        self, engine: SttEngine, result: SttResult, span_s: float
    ) -> SttEngine | None:
        """The other engine, for a turn heard with a word outside the vocabulary, or heard
        as nothing although it holds ``EMPTY_SECOND_OPINION_MIN_S`` of speech or more: every
        short engine's turn, and a long engine's turn under ``LONG_SECOND_OPINION_BELOW_S``
        of speech. None: the first transcript stands."""
        if not self._vocabulary:
            return None
        if engine is self.short:
            other = self.long
        elif span_s < LONG_SECOND_OPINION_BELOW_S:
            other = self.short
        else:
            return None
        known, unknown = known_and_unknown(result.text, self._vocabulary)
        if unknown > 0 or (known == 0 and span_s >= EMPTY_SECOND_OPINION_MIN_S):
            return other
        return None

    def _better(self, first: SttResult, second: SttResult) -> SttResult:
        """The first engine's transcript or the other's second opinion (both counted)."""
        self.routed["second"] += 1
        if not second_opinion_wins(first.text, second.text, self._vocabulary):
            return first
        self.routed["second_kept"] += 1
        return second

    def close(self) -> None:
        self.short.close()
        self.long.close()
