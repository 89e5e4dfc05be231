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

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Sequence

    from voicebot_pbx.speech.expect import Expected
    from voicebot_pbx.speech.verify import KnownAnswer


@dataclass(frozen=True, slots=True)
class SttTiming:
    """Where a queued decode's time went (Whisper), so a slow turn explains itself."""

    queue_wait_ms: float  # submitted -> taken by the inference thread
    decode_ms: float  # taken -> result (all windows tried)
    batch: int  # utterances decoded together in its first round
    windows: int  # encoder windows tried: 1, or more after a degenerate decode (retry)


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
    ) -> SttResult:
        """Blocking, on the calling worker thread. ``known``: answers the dialogue knows
        (``speech/verify.py``): one the audio says is the transcript, written plainly."""
        ...


@dataclass(frozen=True, slots=True)
class SttCapabilities:
    """What an engine can do, declared by the engine (``SttEngine.capabilities``).

    ``batch``: it transcribes whole utterances, so the session hands it each utterance and
    decodes speculatively at pauses; ``queued``: it does so on its own inference thread,
    awaited (else the session runs ``batch.transcribe`` in the shared pool). An engine with
    neither is fed continuously through ``new_stream`` (Vosk: one recognizer per call).
    ``expecting``: it can hold a decode to an expected answer (Moonshine), which the session
    asks for after the dialogue asked for digits."""

    batch: BatchTranscriber | None = None
    queued: QueuedTranscriber | None = None
    expecting: ExpectingTranscriber | None = None


class SttEngine(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def capabilities(self) -> SttCapabilities: ...

    def new_stream(self, rate_hz: int) -> SttStream: ...

    def close(self) -> None:
        """Release what the engine holds beyond its models (Whisper: its batching thread)."""
        ...
