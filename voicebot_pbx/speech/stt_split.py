"""Two speech-to-text engines split by utterance length: short turns to one, long to another.

Measured on the 350-utterance STT set (bench/bench_stt.py): Whisper tiny.en makes fewer word
errors on short turns ("yes", "agent", "goodbye"), Moonshine base on longer ones (on the
recorded prompts 3.6 % against 6.2 % at 2-4 s). ``[stt] long_engine`` sends every utterance
with at least ``long_from_s`` of speech (:func:`speech_span_s`: the STT look-back and the
end-of-turn silence do not count) to the long engine; the shorter ones, including every
speculative decode at a pause that is still short, go to the configured engine.

Each engine keeps its own path: one with its own inference thread (Whisper's batcher,
``SttCapabilities.queued``) is awaited there; one without runs in the service's shared
inference pool, given here, never on the event loop. A decode held to what the caller is
expected to say (``speech/expect.py``: digits after the dialogue asked for an account
number) goes to the engine that can hold it, whatever its length.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
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
    ExpectingTranscriber,
    SttCapabilities,
    SttEngine,
    SttResult,
    timed,
)
from voicebot_pbx.speech.verify import KnownAnswer


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
        # Decodes sent to each engine, and those held to an expectation (bench, tests).
        self.routed = {"short": 0, "long": 0, "held": 0}

    @property
    def name(self) -> str:
        return f"{self.short.name}+{self.long.name}"

    @property
    def capabilities(self) -> SttCapabilities:
        expecting = self if self._expecting() is not None else None
        return SttCapabilities(batch=self, queued=self, expecting=expecting)

    def _expecting(self) -> ExpectingTranscriber | None:
        """The engine that holds decodes to an expectation: the long one when it can (the
        packaged split: Moonshine base), else the short one, else none."""
        return self.long.capabilities.expecting or self.short.capabilities.expecting

    def transcribe_expecting(
        self,
        pcm: bytes,
        rate_hz: int,
        expected: Expected,
        known: Sequence[KnownAnswer] = (),
    ) -> SttResult:
        """Blocking: whatever the utterance's length, on the engine that can hold it."""
        expecting = self._expecting()
        if expecting is None:
            return self.transcribe(pcm, rate_hz)
        self.routed["held"] += 1
        return expecting.transcribe_expecting(pcm, rate_hz, expected, known)

    def new_stream(self, rate_hz: int) -> BufferedStream:
        return BufferedStream(self, rate_hz)

    def pick(self, pcm: bytes, rate_hz: int) -> SttEngine:
        """The engine for this utterance (counted in ``routed``)."""
        long = speech_span_s(pcm, rate_hz) >= self.long_from_s
        self.routed["long" if long else "short"] += 1
        return self.long if long else self.short

    def transcribe(self, pcm: bytes, rate_hz: int) -> SttResult:
        """Blocking, on the calling worker thread."""
        batch = self.pick(pcm, rate_hz).capabilities.batch
        assert batch is not None  # checked in __init__
        return batch.transcribe(pcm, rate_hz)

    async def transcribe_async(
        self, pcm: bytes, rate_hz: int, *, urgent: bool = False
    ) -> SttResult:
        engine = self.pick(pcm, rate_hz)
        capabilities = engine.capabilities
        if capabilities.queued is not None:
            return await capabilities.queued.transcribe_async(pcm, rate_hz, urgent=urgent)
        batch = capabilities.batch
        assert batch is not None  # checked in __init__
        loop = asyncio.get_running_loop()
        job = timed(functools.partial(batch.transcribe, pcm, rate_hz), engine.name)
        return await loop.run_in_executor(self._pool, job)

    def close(self) -> None:
        self.short.close()
        self.long.close()
