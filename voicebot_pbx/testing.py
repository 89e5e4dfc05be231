"""Scripted fakes for timeline tests: a virtual-time event loop, engines with set delays,
and in-memory call media. Shared by the tests; nothing here touches a model or a socket.

With ``VirtualTimeLoop`` a whole call (caller speech at t, STT delay, TTS first byte ...)
runs in a few milliseconds of real time and its latencies are exact, so tests can assert
them without depending on the machine's load.
"""

from __future__ import annotations

import asyncio
import math
import selectors
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from voicebot_pbx.answers.dialogue import Rejected, Sentence
from voicebot_pbx.audio import frame_bytes, rms_dbfs
from voicebot_pbx.config import LlmConfig
from voicebot_pbx.pbx.media import AudioIn, CallEnded, DtmfIn, InboundEvent
from voicebot_pbx.pbx.speaker import Speaker
from voicebot_pbx.speech.engines import Engines, EngineTimeout
from voicebot_pbx.speech.pool import PriorityPool
from voicebot_pbx.speech.stt import SttCapabilities, SttResult
from voicebot_pbx.speech.tts import split_sentences
from voicebot_pbx.speech.turn_model import TurnScore
from voicebot_pbx.speech.turn_text import TextTurnScore
from voicebot_pbx.speech.vad import VadWindow

T = TypeVar("T")


# --- virtual time ------------------------------------------------------------------------


class _InstantSelector(selectors.DefaultSelector):
    """Never blocks: a wait for ``timeout`` seconds advances the loop's virtual clock."""

    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualTimeLoop | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if self.loop is not None and timeout is not None and timeout > 0:
            self.loop.advance(timeout)
        return super().select(0)


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock only moves when every task is waiting for a timer."""

    def __init__(self) -> None:
        selector = _InstantSelector()
        super().__init__(selector)
        selector.loop = self
        self._virtual_now_s = 0.0

    def time(self) -> float:
        return self._virtual_now_s

    def advance(self, seconds: float) -> None:
        self._virtual_now_s += seconds


def run_virtual(coro: Any) -> Any:
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


# --- fake engines ---------------------------------------------------------------------------


def tone(duration_s: float, rate_hz: int, freq_hz: float = 440.0, level: float = 0.3) -> bytes:
    n = int(duration_s * rate_hz)
    samples = level * np.sin(2 * math.pi * freq_hz * np.arange(n) / rate_hz)
    return (samples * 32767).astype("<i2").tobytes()


class EnergyVad:
    """Stands in for silero: probability from the window's level (speech = loud).
    ``hangover_windows``: the probability stays up that many windows after the level falls,
    as silero's does for ~100-200 ms after a caller's last sound."""

    def __init__(self, speech_dbfs: float = -35.0, hangover_windows: int = 0) -> None:
        self.speech_dbfs = speech_dbfs
        self.hangover_windows = hangover_windows

    def new_stream(self, rate_hz: int) -> EnergyVadStream:
        return EnergyVadStream(rate_hz, self.speech_dbfs, self.hangover_windows)


class EnergyVadStream:
    def __init__(self, rate_hz: int, speech_dbfs: float, hangover_windows: int = 0) -> None:
        self.rate_hz = rate_hz
        self.window_s = (256 if rate_hz == 8000 else 512) / rate_hz
        self._window_bytes = (256 if rate_hz == 8000 else 512) * 2
        self._pending = bytearray()
        self._done = 0
        self.speech_dbfs = speech_dbfs
        self.hangover_windows = hangover_windows
        self._hangover_left = 0

    def process_timed(self, pcm: bytes) -> list[tuple[float, float]]:
        return [(w.start_s, w.prob) for w in self.process_windows(pcm)]

    def process_windows(self, pcm: bytes) -> list[VadWindow]:
        self._pending += pcm
        out: list[VadWindow] = []
        while len(self._pending) >= self._window_bytes:
            window = bytes(self._pending[: self._window_bytes])
            del self._pending[: self._window_bytes]
            level = rms_dbfs(window)
            # Level -> probability: ~0.02 for silence, ~0.98 for loud audio.
            if level >= self.speech_dbfs:
                self._hangover_left = self.hangover_windows
                prob = 0.98
            elif self._hangover_left > 0:
                self._hangover_left -= 1
                prob = 0.98
            else:
                prob = 0.02
            out.append(VadWindow(self._done * self.window_s, prob, level, window))
            self._done += 1
        return out


def voiced_runs(pcm: bytes, rate_hz: int) -> list[np.ndarray[Any, Any]]:
    """The voiced stretches of tone "speech" (20 ms frames with RMS over 300), in order."""
    samples = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").astype(np.float64)
    frame = rate_hz // 50
    runs: list[np.ndarray[Any, Any]] = []
    current: list[np.ndarray[Any, Any]] = []
    for start in range(0, len(samples), frame):
        chunk = samples[start : start + frame]
        if chunk.size and np.sqrt(np.mean(chunk * chunk)) > 300:
            current.append(chunk)
        elif current:
            runs.append(np.concatenate(current))
            current = []
    if current:
        runs.append(np.concatenate(current))
    return runs


def tone_hz(samples: np.ndarray[Any, Any], rate_hz: int) -> float:
    """The strongest frequency of a stretch of tone."""
    return float(np.argmax(np.abs(np.fft.rfft(samples)))) * rate_hz / samples.size


@dataclass
class ScriptedStt:
    """A transcriber for tone "speech": each voiced stretch of the audio is a tone whose
    frequency names a phrase (``phrases[freq_hz]``); the transcript joins the phrases of
    the stretches heard so far. Each decode takes ``delay_s`` (virtual) seconds."""

    phrases: dict[int, str]
    delay_s: float = 0.1
    decodes: int = 0
    name: str = "scripted"
    last_input: bytes = b""  # the audio of the latest decode

    def transcribe(self, pcm: bytes, rate_hz: int) -> SttResult:
        self.decodes += 1
        self.last_input = pcm
        words = [self._phrase(tone_hz(run, rate_hz)) for run in voiced_runs(pcm, rate_hz)]
        text = " ".join(w for w in words if w)
        return SttResult(text, 0.9 if text else None)

    def _phrase(self, peak_hz: float) -> str:
        best = min(self.phrases, key=lambda f: abs(f - peak_hz))
        return self.phrases[best] if abs(best - peak_hz) < 25 else ""

    @property
    def capabilities(self) -> SttCapabilities:
        return SttCapabilities(batch=self)  # run in the (fake, virtual-time) pool

    def new_stream(self, rate_hz: int) -> Any:
        raise NotImplementedError("the session uses transcribe() for batch engines")

    def close(self) -> None:
        pass


@dataclass
class ScriptedTurnModel:
    """An end-of-turn model for tone scripts: the caller sounds unfinished when the last
    tone heard is one of ``incomplete_hz`` (say, the tone standing for "my account number
    is"), finished otherwise. Each score takes ``delay_s`` (virtual) seconds."""

    incomplete_hz: frozenset[int] = frozenset()
    delay_s: float = 0.03
    scores: int = 0

    def score(self, pcm: bytes, rate_hz: int) -> TurnScore:
        self.scores += 1
        runs = voiced_runs(pcm, rate_hz)
        if not runs:
            return TurnScore(0.5, 0.0)
        last_tone_hz = tone_hz(runs[-1][-rate_hz // 10 :], rate_hz)  # its last 100 ms
        unfinished = any(abs(last_tone_hz - hz) < 25 for hz in self.incomplete_hz)
        return TurnScore(0.1 if unfinished else 0.9, 0.0)


@dataclass
class ScriptedTextModel:
    """An end-of-turn text model for scripts: a transcript in ``unfinished`` reads
    unfinished (log10 P(finished) -4), one in ``unsure`` unsure (-2), any other finished
    (-0.5); ``fail`` raises instead. Each read takes ``delay_s`` (virtual) seconds."""

    unfinished: frozenset[str] = frozenset()
    unsure: frozenset[str] = frozenset()
    delay_s: float = 0.03
    fail: bool = False
    reads: list[str] = field(default_factory=list)

    def score(self, text: str) -> TextTurnScore:
        self.reads.append(text)
        if self.fail:
            raise RuntimeError("llama.cpp: decode failed")
        words = len(text.split())
        if text in self.unfinished:
            return TextTurnScore(-4.0, words, 0.0)
        if text in self.unsure:
            return TextTurnScore(-2.0, words, 0.0)
        return TextTurnScore(-0.5, words, 0.0)


@dataclass
class ToneTts:
    """Each sentence becomes a tone of ``seconds_per_char`` per character, after
    ``first_audio_s`` (first sentence) / ``per_sentence_s`` (later ones)."""

    first_audio_s: float = 0.15
    per_sentence_s: float = 0.05
    seconds_per_char: float = 0.06
    voice_id: str = "tone"
    sentences_made: int = 0

    def synthesize(
        self, text: str, rate_hz: int, cancel: threading.Event | None = None
    ) -> Iterator[bytes]:

        for sentence in split_sentences(text):
            if cancel is not None and cancel.is_set():
                return
            self.sentences_made += 1
            yield tone(len(sentence) * self.seconds_per_char, rate_hz)

    def synthesize_all(self, text: str, rate_hz: int) -> bytes:
        return b"".join(self.synthesize(text, rate_hz))


class FakeEngines(Engines):
    """Engines whose blocking calls take a set (virtual) time instead of a thread."""

    def __init__(
        self,
        stt: ScriptedStt,
        tts: ToneTts,
        vad: EnergyVad | None = None,
        turn_model: ScriptedTurnModel | None = None,
        text_model: ScriptedTextModel | None = None,
    ) -> None:
        scripted_turns = turn_model or ScriptedTurnModel()
        super().__init__(
            vad=vad or EnergyVad(),  # type: ignore[arg-type]
            stt=stt,
            tts=tts,  # type: ignore[arg-type]
            pool=PriorityPool(1, thread_name_prefix="fake-inference"),
            turn_model=scripted_turns,
            text_model=text_model,  # None: the listener has no text model ([turn] off)
        )
        self.script_stt = stt
        self.script_tts = tts
        self.script_turns = scripted_turns
        self.script_text = text_model
        self._first_sentence = True

    async def run(self, stage: str, timeout_s: float, fn: Callable[[], T]) -> T:
        delay_s = 0.0
        if stage == "stt":
            delay_s = self.script_stt.delay_s
        elif stage == "turn":
            delay_s = self.script_turns.delay_s
        elif stage == "turn_text" and self.script_text is not None:
            delay_s = self.script_text.delay_s
        elif stage == "tts":
            delay_s = (
                self.script_tts.first_audio_s
                if self._first_sentence
                else self.script_tts.per_sentence_s
            )
        if delay_s > timeout_s:
            await asyncio.sleep(timeout_s)
            raise EngineTimeout(stage, timeout_s)
        await asyncio.sleep(delay_s)
        result = fn()
        if stage == "tts":
            self._first_sentence = result is None
        return result


# --- in-memory call media ---------------------------------------------------------------


@dataclass
class FakeMedia:
    """A call whose peer is a script: frames in at 20 ms, frames out recorded with times."""

    call_id: str = "00000000-0000-4000-8000-000000000001"
    pbx: str = "test"
    peer: str = "script"
    rate: int = 8000
    caller_id: str | None = None
    profile: str | None = None
    inbound: asyncio.Queue[InboundEvent] = field(default_factory=lambda: asyncio.Queue(1000))
    sent: list[tuple[float, bool]] = field(default_factory=list)  # (time, voiced)
    hangups: list[str] = field(default_factory=list)
    # Line echo: every bot frame comes back this many dB quieter in the next caller frame.
    echo_db: float | None = None
    # False: no frames at all while the caller is silent (silence suppression, a Local
    # channel in Wait()): only the script's audio is sent.
    send_silence: bool = True
    _echo: bytes = b""

    def __post_init__(self) -> None:
        self.speaker = Speaker(self.rate)

    @property
    def rate_hz(self) -> int:
        return self.rate

    async def wait_for_rate(self, timeout_s: float) -> int:
        return self.rate

    async def hangup(self, reason: str) -> None:
        self.hangups.append(reason)
        self.speaker.interrupt()
        loop = asyncio.get_running_loop()
        self.inbound.put_nowait(CallEnded(reason, loop.time()))

    async def write(self, pcm: bytes, is_silence: bool) -> None:
        loop = asyncio.get_running_loop()
        self.sent.append((loop.time(), not is_silence and rms_dbfs(pcm) > -50))
        if self.echo_db is not None:
            gain = 10 ** (-self.echo_db / 20)
            samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64) * gain
            self._echo = samples.astype("<i2").tobytes()

    async def play_caller(self, script: list[tuple[float, bytes | str]]) -> None:
        """Send caller audio (``bytes``) or a DTMF digit (``str``) starting at time ``t``,
        silence in between, one frame per 20 ms, like Asterisk."""
        loop = asyncio.get_running_loop()
        size = frame_bytes(self.rate)
        start = loop.time()
        tick = 0
        for at_s, item in script:
            while start + tick * 0.02 < at_s:
                if self.send_silence:
                    await self._frame(bytes(size), start + tick * 0.02)
                tick += 1
            if not self.send_silence and loop.time() < start + tick * 0.02:
                await asyncio.sleep(start + tick * 0.02 - loop.time())
            if isinstance(item, str):
                self.inbound.put_nowait(DtmfIn(item, loop.time()))
                continue
            for offset in range(0, len(item), size):
                chunk = item[offset : offset + size].ljust(size, b"\0")
                await self._frame(chunk, start + tick * 0.02)
                tick += 1

    async def silence_until(self, end_s: float) -> None:
        loop = asyncio.get_running_loop()
        size = frame_bytes(self.rate)
        if not self.send_silence:
            await asyncio.sleep(max(0.0, end_s - loop.time()))
            return
        while loop.time() < end_s:
            await self._frame(bytes(size), loop.time() + 0.02)

    async def _frame(self, pcm: bytes, at_s: float) -> None:
        loop = asyncio.get_running_loop()
        delay = at_s - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if self._echo and len(self._echo) == len(pcm):
            mixed = np.frombuffer(pcm, dtype="<i2").astype(np.int32) + np.frombuffer(
                self._echo, dtype="<i2"
            )
            pcm = np.clip(mixed, -32768, 32767).astype("<i2").tobytes()
            self._echo = b""
        await self.inbound.put(AudioIn(pcm, self.rate, loop.time()))

    def voiced_times(self) -> list[float]:
        return [t for t, voiced in self.sent if voiced]


@dataclass
class ScriptedLlm:
    """Stands in for ``LlmAnswerer``: yields ``script`` items, each after its delay (s):
    a str is a sentence, ("reject", reason) a rejection. Records whether generation was
    closed early (barge-in) and how many items it produced."""

    script: list[tuple[float, str | tuple[str, str]]]
    config: Any = None
    kb: Any = None  # a KnowledgeBase to route knowledge questions to (None: none)
    closed_early: bool = False
    produced: int = 0
    questions: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.config is None:
            self.config = LlmConfig(first_sentence_timeout_s=1.2, hard_timeout_s=4.0)

    async def answer(self, question: str) -> Any:
        self.questions.append(question)
        finished = False
        try:
            index = 0
            for delay_s, item in self.script:
                await asyncio.sleep(delay_s)
                self.produced += 1
                if isinstance(item, tuple):
                    yield Rejected(item[1], self.config.fallback_reply)  # type: ignore[arg-type]
                    finished = True
                    return
                yield Sentence(item, index)
                index += 1
            finished = True
        finally:
            if not finished:
                self.closed_early = True
