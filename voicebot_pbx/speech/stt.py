"""Speech-to-text, engine-neutral: what every STT engine returns and declares.

Owns the result type (:class:`SttResult`), the per-call stream protocol (:class:`SttStream`),
the whole-utterance protocols (:class:`BatchTranscriber`, :class:`QueuedTranscriber`,
:class:`ExpectingTranscriber` for decodes held to an expected answer), the
capabilities an engine declares (:class:`SttCapabilities`) and the engine protocol
(:class:`SttEngine`). The engines live in ``speech/whisper.py`` (faster-whisper, default,
batched across calls on its own thread) and ``speech/vosk_stt.py`` (Vosk, streaming);
``speech/stt_load.py`` picks one by config name. Measured trade-offs:
``bench/bench_stt.py`` and ``bench/README-stt.md``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Sequence

    from voicebot_pbx.speech.expect import Expected
    from voicebot_pbx.speech.verify import KnownAnswer


@dataclass(frozen=True, slots=True)
class SttTiming:
    """Where a decode's time went, so a slow turn explains itself: Whisper's batching
    thread, or a whole-utterance engine in the shared inference pool (:func:`timed`)."""

    queue_wait_ms: float  # submitted -> taken by the inference thread
    decode_ms: float  # taken -> result (all windows tried)
    batch: int  # utterances decoded together in its first round (1 in the shared pool)
    # Decodes of the audio tried: 1, or more after a degenerate or empty first decode
    # (Whisper: a longer encoder window; Moonshine: the speech without its quiet ends).
    windows: int
    engine: str = ""  # the engine that decoded it ("whisper", "moonshine"; "": not said)


def timed(fn: Callable[[], SttResult], engine: str = "") -> Callable[[], SttResult]:
    """``fn`` (a blocking decode for the shared inference pool) with its wait in the pool
    in the result's :class:`SttTiming`: added to the engine's own timing when it gave one
    (its run time, batch, decodes and name are its own), else measured here (one decode,
    ``engine``)."""
    submitted_s = time.monotonic()

    def run() -> SttResult:
        taken_s = time.monotonic()
        result = fn()
        wait_ms = (taken_s - submitted_s) * 1000.0
        own = result.timing
        if own is not None:
            timing = replace(
                own,
                queue_wait_ms=round(own.queue_wait_ms + wait_ms, 1),
                engine=own.engine or engine,
            )
        else:
            run_ms = (time.monotonic() - taken_s) * 1000.0
            timing = SttTiming(round(wait_ms, 1), round(run_ms, 1), 1, 1, engine)
        return replace(result, timing=timing)

    return run


@dataclass(frozen=True, slots=True)
class SttResult:
    text: str
    confidence: float | None
    """0..1 where the engine gives one (Whisper: exp(mean token log-prob); Vosk: mean
    word confidence); None when unknown (e.g. no words)."""
    timing: SttTiming | None = field(default=None, compare=False)  # not part of the result
    held_to: str | None = field(default=None, compare=False)
    """What the transcript's decode was held to (``speech/expect.label``: "digits",
    "date+postcode"); None for a free decode."""
    alternatives: tuple[str, ...] = field(default=(), compare=False)
    """Other readings of a number the dialogue asked for with its count of digits (as
    digits, likeliest first; ``speech/digit_beam.py``): the dialogue may check them against
    its records when the one heard is not there."""


class SttStream(Protocol):
    def accept(self, pcm: bytes) -> str | None:
        """Feed int16 mono PCM at the stream's rate; a new partial transcript or None."""
        ...

    def finish(self) -> SttResult:
        """Final result for the audio fed since the last finish; resets for the next one."""
        ...

    def close(self) -> None: ...


class BatchTranscriber(Protocol):
    """Transcribes a whole utterance at once, blocking the calling worker thread."""

    def transcribe(self, pcm: bytes, rate_hz: int) -> SttResult: ...


class BufferedStream:
    """The stream of an engine without partials (Whisper, Moonshine): buffers one
    utterance and transcribes it whole at ``finish`` (``accept`` returns None)."""

    def __init__(self, engine: BatchTranscriber, rate_hz: int) -> None:
        self._engine = engine
        self.rate_hz = rate_hz
        self._pcm = bytearray()

    @property
    def buffered_s(self) -> float:
        return len(self._pcm) / (2 * self.rate_hz)

    def accept(self, pcm: bytes) -> str | None:
        self._pcm += pcm
        return None

    def finish(self) -> SttResult:
        pcm = bytes(self._pcm)
        self._pcm.clear()
        return self._engine.transcribe(pcm, self.rate_hz)

    def close(self) -> None:
        self._pcm.clear()


class QueuedTranscriber(BatchTranscriber, Protocol):
    """A batch transcriber with its own inference thread, awaited from the event loop
    (Whisper: decodes from several calls go together; ``urgent`` ones first)."""

    async def transcribe_async(
        self, pcm: bytes, rate_hz: int, *, urgent: bool = False
    ) -> SttResult: ...


class ExpectingTranscriber(Protocol):
    """A batch transcriber that can hold a decode to what the caller is expected to say
    (``speech/expect.py``): it decodes both freely and held, and returns the better."""

    def transcribe_expecting(
        self,
        pcm: bytes,
        rate_hz: int,
        expected: Expected,
        known: Sequence[KnownAnswer] = (),
        digits: int | None = None,
    ) -> SttResult:
        """Blocking, on the calling worker thread. ``known``: answers the dialogue knows
        (``speech/verify.py``): one the audio says is the transcript, written plainly.
        ``digits``: how many digits complete an expected number (the dialogue's count)."""
        ...


class VocabularyUser(Protocol):
    """Takes the words the deployment's callers are expected to use (the dialogue's examples,
    the knowledge files), to weigh decodes against (``speech/stt_split.py``)."""

    def use_vocabulary(self, words: frozenset[str]) -> None: ...


@dataclass(frozen=True, slots=True)
class SttCapabilities:
    """What an engine can do, declared by the engine (``SttEngine.capabilities``).

    ``batch``: it transcribes whole utterances, so the session hands it each utterance and
    decodes speculatively at pauses; ``queued``: it does so on its own inference thread,
    awaited (else the session runs ``batch.transcribe`` in the shared pool). An engine with
    neither is fed continuously through ``new_stream`` (Vosk: one recognizer per call).
    ``expecting``: it can hold a decode to an expected answer (Moonshine), which the session
    asks for after the dialogue asked for digits. ``vocabulary``: it weighs its decodes
    against the deployment's words (the length split's second opinion), given at start-up."""

    batch: BatchTranscriber | None = None
    queued: QueuedTranscriber | None = None
    expecting: ExpectingTranscriber | None = None
    vocabulary: VocabularyUser | None = None


class SttEngine(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def capabilities(self) -> SttCapabilities: ...

    def new_stream(self, rate_hz: int) -> SttStream: ...

    def close(self) -> None:
        """Release what the engine holds beyond its models (Whisper: its batching thread)."""
        ...
