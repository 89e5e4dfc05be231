"""Two STT engines split by utterance length (speech/stt_split.py): the routing rule on
scripted engines, the config checks, and the real Whisper tiny.en + Moonshine base pair."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from tests.speech import silence
from tests.test_stt import caller, words
from voicebot_pbx.config import Config, SttConfig
from voicebot_pbx.speech.engines import load_engines
from voicebot_pbx.speech.expect import Expectation, Expected, label
from voicebot_pbx.speech.stt import BufferedStream, SttCapabilities, SttResult, SttTiming, timed
from voicebot_pbx.speech.stt_split import (
    EMPTY_SECOND_OPINION_MIN_S,
    LONG_SECOND_OPINION_BELOW_S,
    LengthSplitEngine,
    known_and_unknown,
    second_opinion_wins,
    speech_span_s,
    vocabulary_words,
)
from voicebot_pbx.speech.verify import KnownAnswer

RATE_HZ = 8000


def tone(seconds: float, rate_hz: int = RATE_HZ) -> bytes:
    t = np.arange(int(seconds * rate_hz)) / rate_hz
    return (0.3 * 32767 * np.sin(2 * np.pi * 300 * t)).astype("<i2").tobytes()


@dataclass
class Recorder:
    """A whole-utterance engine that names itself in its transcript and notes where it ran."""

    name: str
    queued_path: bool = False  # declare its own inference thread (as Whisper does)
    threads: list[str] = field(default_factory=list)
    urgent: list[bool] = field(default_factory=list)
    closed: bool = False

    def transcribe(self, pcm: bytes, rate_hz: int) -> SttResult:
        self.threads.append(threading.current_thread().name)
        return SttResult(self.name, 1.0)

    async def transcribe_async(
        self, pcm: bytes, rate_hz: int, *, urgent: bool = False
    ) -> SttResult:
        self.urgent.append(urgent)
        return SttResult(self.name + " (queued)", 1.0)

    @property
    def capabilities(self) -> SttCapabilities:
        return SttCapabilities(batch=self, queued=self if self.queued_path else None)

    def new_stream(self, rate_hz: int) -> BufferedStream:
        return BufferedStream(self, rate_hz)

    def close(self) -> None:
        self.closed = True


@dataclass
class Streaming:
    name: str = "streaming"

    @property
    def capabilities(self) -> SttCapabilities:
        return SttCapabilities()

    def new_stream(self, rate_hz: int) -> BufferedStream:
        raise NotImplementedError

    def close(self) -> None:
        pass


@pytest.fixture
def pool() -> ThreadPoolExecutor:
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
    yield executor  # type: ignore[misc]
    executor.shutdown()


def test_speech_span_leaves_out_quiet_head_and_tail() -> None:
    assert speech_span_s(b"", RATE_HZ) == 0.0
    padded = silence(300) + tone(1.0) + silence(700)
    assert 0.96 <= speech_span_s(padded, RATE_HZ) <= 1.04
    noise = np.random.default_rng(1).normal(0, 30, len(padded) // 2).astype("<i2").tobytes()
    noisy = (np.frombuffer(padded, "<i2").astype(np.int32) + np.frombuffer(noise, "<i2")).astype(
        "<i2"
    )
    assert 0.96 <= speech_span_s(noisy.tobytes(), RATE_HZ) <= 1.04  # above the line's floor
    assert speech_span_s(silence(500), RATE_HZ) == 0.0


def test_utterances_go_to_the_engine_for_their_length(pool: ThreadPoolExecutor) -> None:
    short, long = Recorder("short"), Recorder("long")
    split = LengthSplitEngine(short, long, long_from_s=1.5, pool=pool)
    assert split.name == "short+long"
    # One second of speech padded like a real turn (look-back + end-of-turn silence) stays
    # short although the whole buffer is 2 s long; 2.5 s of speech is long.
    assert split.transcribe(silence(300) + tone(1.0) + silence(700), RATE_HZ).text == "short"
    assert split.transcribe(silence(300) + tone(2.5) + silence(700), RATE_HZ).text == "long"
    assert split.routed == {"short": 1, "long": 1, "held": 0, "second": 0, "second_kept": 0}
    split.close()
    assert short.closed and long.closed


def test_async_path_uses_each_engines_own_thread_or_the_shared_pool(
    pool: ThreadPoolExecutor,
) -> None:
    whisper_like = Recorder("short", queued_path=True)
    moonshine_like = Recorder("long")  # no thread of its own
    split = LengthSplitEngine(whisper_like, moonshine_like, long_from_s=1.5, pool=pool)
    assert split.capabilities.queued is split and split.capabilities.batch is split

    async def both() -> tuple[SttResult, SttResult]:
        short = await split.transcribe_async(tone(0.6), RATE_HZ, urgent=True)
        long = await split.transcribe_async(tone(3.0), RATE_HZ, urgent=True)
        return short, long

    short, long = asyncio.run(both())
    assert short.text == "short (queued)" and whisper_like.urgent == [True]
    assert long.text == "long" and moonshine_like.threads[0].startswith("inference")
    assert whisper_like.threads == []  # never run blocking for the queued engine


def test_a_decode_in_the_shared_pool_says_how_long_it_waited_and_ran(
    pool: ThreadPoolExecutor,
) -> None:
    """A long turn's decode queued behind other work in the shared pool: its result says so
    (the wait, the run, the engine), as Whisper's batcher does for its own decodes."""
    slow = Recorder("long")
    slow_transcribe = slow.transcribe

    def transcribe(pcm: bytes, rate_hz: int) -> SttResult:
        time.sleep(0.05)
        return slow_transcribe(pcm, rate_hz)

    slow.transcribe = transcribe  # type: ignore[method-assign]
    split = LengthSplitEngine(Recorder("short", queued_path=True), slow, long_from_s=1.5, pool=pool)

    async def behind_other_work() -> SttResult:
        busy = asyncio.get_running_loop().run_in_executor(pool, time.sleep, 0.1)
        result = await split.transcribe_async(tone(3.0), RATE_HZ, urgent=True)
        await busy
        return result

    result = asyncio.run(behind_other_work())
    assert result.text == "long" and result.timing is not None
    assert result.timing.engine == "long" and result.timing.batch == 1
    assert result.timing.windows == 1
    assert result.timing.queue_wait_ms >= 80.0  # behind the 100 ms job
    assert 40.0 <= result.timing.decode_ms < result.timing.queue_wait_ms


def test_timed_keeps_the_decodes_and_the_name_the_engine_gave() -> None:
    retried = SttResult("hello", 0.9, timing=SttTiming(0.0, 12.0, 1, 2, "moonshine"))
    result = timed(lambda: retried, "long")()
    assert result.timing is not None
    assert (result.timing.windows, result.timing.engine) == (2, "moonshine")
    assert result.text == "hello" and result.confidence == 0.9
    plain = timed(lambda: SttResult("hi", None), "long")()
    assert plain.timing is not None and (plain.timing.windows, plain.timing.engine) == (1, "long")


DIGITS = frozenset({Expectation.DIGITS})


@dataclass
class Holding(Recorder):
    """A Recorder that can hold a decode to an expectation (as Moonshine does)."""

    held: list[Expected] = field(default_factory=list)

    known: list[tuple[KnownAnswer, ...]] = field(default_factory=list)
    digits: list[int | None] = field(default_factory=list)
    nothing: bool = False  # its held decodes come out empty (Moonshine's token limit)

    def transcribe_expecting(
        self,
        pcm: bytes,
        rate_hz: int,
        expected: Expected,
        known: Sequence[KnownAnswer] = (),
        digits: int | None = None,
    ) -> SttResult:
        self.held.append(expected)
        self.known.append(tuple(known))
        self.digits.append(digits)
        if self.nothing:
            return SttResult("", None)
        return SttResult(self.name + " (held)", 1.0, held_to=label(expected))

    @property
    def capabilities(self) -> SttCapabilities:
        return SttCapabilities(batch=self, expecting=self)


def test_a_held_decode_goes_to_the_engine_that_can_hold_it_whatever_its_length(
    pool: ThreadPoolExecutor,
) -> None:
    short_turn = silence(300) + tone(1.0) + silence(700)
    for short, long in ((Recorder("short"), Holding("long")), (Holding("short"), Recorder("long"))):
        split = LengthSplitEngine(short, long, long_from_s=1.5, pool=pool)
        assert split.capabilities.expecting is split
        got = split.transcribe_expecting(short_turn, RATE_HZ, DIGITS)
        holder = long if isinstance(long, Holding) else short
        assert (got.text, got.held_to) == (holder.name + " (held)", "digits")
        assert split.routed == {"short": 0, "long": 0, "held": 1, "second": 0, "second_kept": 0}
        postcode = KnownAnswer(Expectation.POSTCODE, "NW9 4RQ")
        split.transcribe_expecting(short_turn, RATE_HZ, DIGITS, (postcode,), 8)
        assert holder.known == [(), (postcode,)]  # the known answers go along
        assert holder.digits == [None, 8]  # and the count of digits
    neither = LengthSplitEngine(Recorder("short"), Recorder("long"), long_from_s=1.5, pool=pool)
    assert neither.capabilities.expecting is None
    # Asked anyway, it decodes freely by length.
    assert neither.transcribe_expecting(short_turn, RATE_HZ, DIGITS).text == "short"


def test_a_held_decode_heard_as_nothing_gets_the_other_engines_free_decode(
    pool: ThreadPoolExecutor,
) -> None:
    """An expected answer held to nothing although the turn holds speech is decoded freely
    by the other engine, by the second opinion's rule (as a turn heard as nothing is); a
    click is not, and without the deployment's words (second opinions off) neither."""
    turn = silence(300) + tone(1.0) + silence(700)
    split = LengthSplitEngine(
        Recorder("short"), Holding("long", nothing=True), long_from_s=1.5, pool=pool
    )
    split.use_vocabulary(frozenset({"short"}))
    assert split.transcribe_expecting(turn, RATE_HZ, DIGITS).text == "short"
    assert (split.routed["second"], split.routed["second_kept"]) == (1, 1)
    click = silence(300) + tone(0.2) + silence(700)
    assert split.transcribe_expecting(click, RATE_HZ, DIGITS).text == ""
    off = LengthSplitEngine(
        Recorder("short"), Holding("long", nothing=True), long_from_s=1.5, pool=pool
    )
    assert off.transcribe_expecting(turn, RATE_HZ, DIGITS).text == ""
    assert off.routed["second"] == 0


def test_split_refuses_a_streaming_engine_and_a_bad_length(pool: ThreadPoolExecutor) -> None:
    with pytest.raises(ValueError, match="streaming engine streams"):
        LengthSplitEngine(Recorder("a"), Streaming(), long_from_s=1.5, pool=pool)
    with pytest.raises(ValueError, match="long_from_s"):
        LengthSplitEngine(Recorder("a"), Recorder("b"), long_from_s=0.0, pool=pool)


def test_config_checks_the_long_engine() -> None:
    # Default: Moonshine base for long turns beside the packaged Whisper, nothing otherwise.
    assert SttConfig().long_engine_name == "moonshine"
    assert SttConfig().long_from_s == 2.0
    assert SttConfig(engine="moonshine").long_engine_name == ""
    assert SttConfig(engine="vosk", model_dir="/m").long_engine_name == ""
    assert SttConfig(model_dir="/my/whisper-base").long_engine_name == ""
    assert SttConfig(long_engine="").long_engine_name == ""
    assert SttConfig(engine="moonshine", long_engine="whisper").long_engine_name == "whisper"
    with pytest.raises(ValueError, match="is the engine itself"):
        SttConfig(engine="moonshine", long_engine="moonshine")
    with pytest.raises(ValueError, match="not vosk"):
        SttConfig(engine="vosk", long_engine="moonshine")
    with pytest.raises(ValueError, match="long_from_s"):
        SttConfig(long_from_s=0.0)
    assert SttConfig.default_threads("whisper") == 2
    assert SttConfig.default_threads("moonshine") == 1


@pytest.mark.models
def test_real_whisper_and_moonshine_base_share_the_turns() -> None:
    """The service's engines with Whisper for short turns and Moonshine base for long ones:
    a short answer decoded by Whisper tiny.en, a long question by Moonshine base, both
    right."""
    engines = load_engines(Config())  # the default: whisper, Moonshine base for long turns
    try:
        split = engines.stt
        assert isinstance(split, LengthSplitEngine)
        assert split.name == "whisper+moonshine"
        short = split.transcribe(caller("yes please"), RATE_HZ)
        assert split.routed == {"short": 1, "long": 0, "held": 0, "second": 0, "second_kept": 0}
        heard = words(short.text)
        assert "please" in heard and heard & {"yes", "yeah"}, short.text
        question = "my account number is four five six seven two"
        long_pcm = caller(question)
        assert speech_span_s(long_pcm, RATE_HZ) >= split.long_from_s
        long = asyncio.run(split.transcribe_async(long_pcm, RATE_HZ, urgent=True))
        assert split.routed == {"short": 1, "long": 1, "held": 0, "second": 0, "second_kept": 0}
        assert {"number", "4", "5", "6", "7", "2"} <= words(long.text), long.text
        # Where its time went, for the transcript event (stt_engine, queue, decode).
        assert long.timing is not None and long.timing.engine == "moonshine"
        assert long.timing.windows == 1 and long.timing.decode_ms > 0
    finally:
        engines.close()


@dataclass
class Saying:
    """A whole-utterance engine that hears what it is told to."""

    name: str
    text: str
    calls: int = 0

    def transcribe(self, pcm: bytes, rate_hz: int) -> SttResult:
        self.calls += 1
        return SttResult(self.text, 0.9)

    @property
    def capabilities(self) -> SttCapabilities:
        return SttCapabilities(batch=self)

    def new_stream(self, rate_hz: int) -> BufferedStream:
        return BufferedStream(self, rate_hz)

    def close(self) -> None:
        pass


def spoken_tone(split: LengthSplitEngine, speech_s: float, path: str) -> str:
    """The split's transcript of ``speech_s`` of tone between silences, decoded on the
    blocking or the async path."""
    pcm = silence(300) + tone(speech_s) + silence(300)
    if path == "blocking":
        return split.transcribe(pcm, RATE_HZ).text
    return asyncio.run(split.transcribe_async(pcm, RATE_HZ)).text


VOCABULARY = vocabulary_words(["what's my balance", "I want to check my balance", "goodbye"])


def test_the_vocabulary_weighs_two_transcripts() -> None:
    assert known_and_unknown("What's my madness?", VOCABULARY) == (2, 1)
    assert known_and_unknown("What’s my balance?", VOCABULARY) == (3, 0)
    assert second_opinion_wins("What's my madness?", "What's my balance?", VOCABULARY)
    assert not second_opinion_wins("What's my balance?", "What's my madness?", VOCABULARY)
    assert not second_opinion_wins("What's my madness?", "", VOCABULARY)  # heard nothing
    assert not second_opinion_wins("What's my madness?", "What's?", VOCABULARY)  # fewer known
    assert not second_opinion_wins("What's my madness?", "What's my sadness?", VOCABULARY)
    # The first heard nothing: the second's words, when as many are known as not.
    assert second_opinion_wins("", "What's my balance?", VOCABULARY)
    assert second_opinion_wins("", "What's my sadness?", VOCABULARY)  # 2 known, 1 not
    assert not second_opinion_wins("", "Thanks a lot.", VOCABULARY)  # none known
    assert not second_opinion_wins("", "", VOCABULARY)


@pytest.mark.parametrize("path", ["blocking", "async"])
def test_a_short_turn_outside_the_vocabulary_gets_the_long_engines_opinion(
    pool: ThreadPoolExecutor, path: str
) -> None:
    def heard(
        short_says: str, long_says: str, vocabulary: frozenset[str], speech_s: float = 0.8
    ) -> tuple[str, int]:
        short, long = Saying("short", short_says), Saying("long", long_says)
        split = LengthSplitEngine(short, long, long_from_s=1.5, pool=pool)
        assert split.capabilities.vocabulary is split
        split.use_vocabulary(vocabulary)
        text = spoken_tone(split, speech_s, path)
        assert split.routed["second"] == long.calls
        return text, long.calls

    # Misheard outside the vocabulary, heard right by the long engine: its transcript.
    assert heard("What's my madness?", "What's my balance?", VOCABULARY) == (
        "What's my balance?",
        1,
    )
    # The long engine no better: the short engine's.
    assert heard("What's my madness?", "What's my man?", VOCABULARY) == ("What's my madness?", 1)
    # All in the vocabulary: no second decode at all.
    assert heard("Goodbye.", "Good bye.", VOCABULARY) == ("Goodbye.", 0)
    # Heard as nothing, though it holds speech: the long engine's words.
    assert heard("", "What's my balance?", VOCABULARY) == ("What's my balance?", 1)
    assert heard("", "Thanks a lot.", VOCABULARY) == ("", 1)  # no known word: still nothing
    # Nothing in a sound too short to be a question (a cough, a click): no second decode.
    short_s = EMPTY_SECOND_OPINION_MIN_S - 0.15
    assert heard("", "What's my balance?", VOCABULARY, speech_s=short_s) == ("", 0)
    # No vocabulary given ([stt] second_opinion = false): never.
    assert heard("What's my madness?", "What's my balance?", frozenset()) == (
        "What's my madness?",
        0,
    )


@pytest.mark.parametrize("path", ["blocking", "async"])
def test_a_long_engines_turn_under_two_seconds_gets_the_short_engines_opinion(
    pool: ThreadPoolExecutor, path: str
) -> None:
    """With the split set lower than LONG_SECOND_OPINION_BELOW_S, a turn between the two
    goes to the long engine first, and the short one checks it by the same rule."""

    def heard(long_says: str, short_says: str, speech_s: float) -> tuple[str, int, int]:
        short, long = Saying("short", short_says), Saying("long", long_says)
        split = LengthSplitEngine(short, long, long_from_s=1.0, pool=pool)
        split.use_vocabulary(VOCABULARY)
        text = spoken_tone(split, speech_s, path)
        assert split.routed["second"] == short.calls
        return text, long.calls, short.calls

    under_s = LONG_SECOND_OPINION_BELOW_S - 0.5
    # Misheard by the long engine, heard right by the short one: the short one's words.
    assert heard("What's my madness?", "What's my balance?", under_s) == (
        "What's my balance?",
        1,
        1,
    )
    # The short engine no better: the long engine's.
    assert heard("What's my madness?", "What's my man?", under_s) == ("What's my madness?", 1, 1)
    # Heard as nothing: the short engine's words, when enough of them are known.
    assert heard("", "What's my balance?", under_s) == ("What's my balance?", 1, 1)
    # In the vocabulary: no second decode.
    assert heard("What's my balance?", "What's my madness?", under_s) == (
        "What's my balance?",
        1,
        0,
    )
    # A longer turn is the long engine's alone, as with the default split.
    over_s = LONG_SECOND_OPINION_BELOW_S + 0.5
    assert heard("What's my madness?", "What's my balance?", over_s) == (
        "What's my madness?",
        1,
        0,
    )


def test_serve_gives_the_split_the_deployments_vocabulary() -> None:
    """The Rasa project's examples, the knowledge files and the rules' keywords."""
    from voicebot_pbx.answers.knowledge import KnowledgeBase
    from voicebot_pbx.ops.service import stt_vocabulary

    config = Config()
    words = stt_vocabulary(
        config, KnowledgeBase.load(Path(__file__).resolve().parents[1] / "knowledge")
    )
    assert {"balance", "appointment", "tariff", "ombudsman", "closing"} <= words
    assert "madness" not in words
    assert "ombudsman" not in stt_vocabulary(config, None)  # the knowledge files' own word
