"""STT engines with the real packaged models (Whisper tiny.en, Vosk Korean) + pure helpers."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from tests.speech import espeak_pcm, frames, silence
from voicebot_pbx.config import SttConfig
from voicebot_pbx.models import VOSK_KO, model_path
from voicebot_pbx.speech.stt import SttResult
from voicebot_pbx.speech.stt_load import load_stt
from voicebot_pbx.speech.vosk_stt import VoskEngine
from voicebot_pbx.speech.whisper import WhisperEngine, _Decode
from voicebot_pbx.speech.whisper_guard import compression_ratio, degenerate_reason

# (what the caller says, words the transcript must contain)
# (tiny.en hears espeak's "hours" as "hours", "hour" or "our room" from run to run, so
# only words it gets reliably are required.)
UTTERANCES = [
    ("what are your opening hours", {"opening"}),
    ("I want to speak to an agent", {"speak", "agent"}),
    ("my account number is four five six seven two", {"number", "4", "5", "6", "7", "2"}),
]
_DIGITS = {"zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5"}
_DIGITS |= {"six": "6", "seven": "7", "eight": "8", "nine": "9"}


def words(text: str) -> set[str]:
    """Lower-case words, digits as digits ("4.5.6" and "four five six" -> 4, 5, 6)."""
    return {_DIGITS.get(t, t) for t in re.findall(r"[a-z']+|\d", text.lower())}


def caller(text: str, rate_hz: int = 8000) -> bytes:
    # VAD hands STT the speech plus ~300 ms of lookback and the trailing silence.
    return (
        silence(300, rate_hz)
        + espeak_pcm(text, rate_hz, voice="en-gb", speed=140)
        + silence(300, rate_hz)
    )


@pytest.fixture(scope="module")
def whisper() -> WhisperEngine:
    engine = load_stt("whisper", None)  # None: the packaged tiny.en
    assert isinstance(engine, WhisperEngine)
    return engine


@pytest.fixture
def full_window(whisper: WhisperEngine) -> Iterator[WhisperEngine]:
    whisper.short_input = False
    try:
        yield whisper
    finally:
        whisper.short_input = True


def transcribe_streamed(engine: WhisperEngine, pcm: bytes, rate_hz: int) -> SttResult:
    stream = engine.new_stream(rate_hz)
    for frame in frames(pcm, rate_hz):
        assert stream.accept(frame) is None  # Whisper gives no partials
    result = stream.finish()
    stream.close()
    return result


# --- Whisper -------------------------------------------------------------------------------


@pytest.mark.models
@pytest.mark.parametrize(("text", "expected"), UTTERANCES, ids=[u[0] for u in UTTERANCES])
def test_whisper_short_input(whisper: WhisperEngine, text: str, expected: set[str]) -> None:
    before = whisper.stats.short_decodes
    result = transcribe_streamed(whisper, caller(text), 8000)
    assert whisper.stats.short_decodes == before + 1
    assert expected <= words(result.text), result.text
    assert result.confidence is not None and 0.0 < result.confidence <= 1.0


@pytest.mark.models
@pytest.mark.slow
@pytest.mark.parametrize(("text", "expected"), UTTERANCES, ids=[u[0] for u in UTTERANCES])
def test_whisper_full_window(full_window: WhisperEngine, text: str, expected: set[str]) -> None:
    before = (full_window.stats.short_decodes, full_window.stats.full_decodes)
    result = transcribe_streamed(full_window, caller(text), 8000)
    assert (full_window.stats.short_decodes, full_window.stats.full_decodes) == (
        before[0],
        before[1] + 1,
    )
    assert expected <= words(result.text), result.text


@pytest.mark.models
def test_whisper_16k_stream(whisper: WhisperEngine) -> None:
    result = transcribe_streamed(whisper, caller("I want to speak to an agent", 16000), 16000)
    assert {"speak", "agent"} <= words(result.text), result.text


@pytest.mark.models
def test_whisper_silence_and_tiny_input_give_empty_text(whisper: WhisperEngine) -> None:
    assert transcribe_streamed(whisper, silence(1500), 8000) == SttResult("", None)
    assert transcribe_streamed(whisper, caller("yes")[:800], 8000) == SttResult("", None)


@pytest.mark.models
def test_whisper_stream_resets_after_finish(whisper: WhisperEngine) -> None:
    stream = whisper.new_stream(8000)
    stream.accept(caller("I want to speak to an agent"))
    assert stream.buffered_s > 2.0
    assert "agent" in words(stream.finish().text)
    assert stream.buffered_s == 0.0
    assert stream.finish() == SttResult("", None)


@pytest.mark.models
def test_whisper_degenerate_short_decode_falls_back_to_full_window(
    whisper: WhisperEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    looping = _Decode(
        text="I want to I want to I want to I want to",
        n_tokens=24,
        avg_logprob=-0.2,
        no_speech_prob=0.0,
    )
    monkeypatch.setattr(whisper, "_decode_short", lambda audio: (looping, 25))
    before = (whisper.stats.fallbacks, whisper.stats.full_decodes)
    result = whisper.new_stream(8000)
    result.accept(caller("I want to speak to an agent"))
    final = result.finish()
    assert (whisper.stats.fallbacks, whisper.stats.full_decodes) == (before[0] + 1, before[1] + 1)
    assert {"speak", "agent"} <= words(final.text), final.text


@pytest.mark.models
def test_whisper_sane_short_decode_is_kept(
    whisper: WhisperEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    sane = _Decode(text="Sentinel text.", n_tokens=5, avg_logprob=-0.1, no_speech_prob=0.0)
    monkeypatch.setattr(whisper, "_decode_short", lambda audio: (sane, 25))
    before = whisper.stats.fallbacks
    result = whisper.transcribe(caller("I want to speak to an agent"), 8000)
    assert result.text == "Sentinel text."
    assert whisper.stats.fallbacks == before


PROMPT = (  # as bench/bench_stt.py's MEASURED_PROMPT
    "Energy supplier's customer line. Balance, bill, account number, postcode, date of "
    "birth, power cut, meter reading, direct debit, tariff, engineer appointment, agent."
)


@pytest.fixture(scope="module")
def prompted() -> WhisperEngine:
    engine = load_stt("whisper", None, initial_prompt=PROMPT)
    assert isinstance(engine, WhisperEngine)
    return engine


@pytest.mark.models
def test_whisper_prompt_is_the_decoders_earlier_text_and_never_heard(
    prompted: WhisperEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """[stt] prompt reaches every short decode as <|startofprev|> text; the caller's words
    come out, the prompt's own words do not, and silence and a DTMF tone stay empty."""
    seen: list[list[int]] = []

    class Spy:  # CTranslate2's model: read-only attributes, so a stand-in that forwards
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        def generate(self, features: object, prompts: list[list[int]], **options: Any) -> Any:
            seen.extend(prompts)
            return self.inner.generate(features, prompts, **options)

    monkeypatch.setattr(prompted._model, "model", Spy(prompted._model.model))
    result = transcribe_streamed(prompted, caller("I want to speak to an agent"), 8000)
    assert {"speak", "agent"} <= words(result.text), result.text
    tokenizer = prompted._tokenizer
    context = tokenizer.encode(" " + PROMPT)
    assert seen and seen[0][: len(context) + 1] == [tokenizer.sot_prev, *context]
    assert seen[0][len(context) + 1 :][:3] == list(tokenizer.sot_sequence)[:3]
    for said in (caller("yes please"), caller("what time do you open")):
        heard = words(prompted.transcribe(said, 8000).text)
        assert not heard & {"supplier", "postcode", "tariff", "engineer", "appointment"}, heard
    assert transcribe_streamed(prompted, silence(1500), 8000) == SttResult("", None)
    t = np.arange(12000) / 8000
    key_1 = (4000 * (np.sin(2 * np.pi * 697 * t) + np.sin(2 * np.pi * 1209 * t))).astype("<i2")
    assert prompted.transcribe(key_1.tobytes(), 8000).text.strip(" .") == ""


def test_a_prompt_too_long_for_whisper_is_refused() -> None:
    with pytest.raises(ValueError, match="prompt has 61 words; at most 60"):
        SttConfig(prompt="word " * 61)
    assert SttConfig().prompt == ""  # off by default (README "Speech recognition")


# --- degenerate-output guard: pure ---------------------------------------------------------


def test_guard_accepts_normal_output() -> None:
    assert (
        degenerate_reason(
            " I want to speak to an agent.", n_tokens=10, max_new_tokens=25, duration_s=2.2
        )
        is None
    )
    assert degenerate_reason("No, no, no.", n_tokens=6, max_new_tokens=16, duration_s=1.0) is None
    assert degenerate_reason("", n_tokens=1, max_new_tokens=16, duration_s=1.0) is None


def test_guard_flags_token_limit() -> None:
    assert (
        degenerate_reason("a b c", n_tokens=24, max_new_tokens=25, duration_s=2.0) == "token_limit"
    )


def test_guard_flags_repetition() -> None:
    assert (
        degenerate_reason(
            "Thank you. Thank you. Thank you.", n_tokens=9, max_new_tokens=40, duration_s=4.0
        )
        == "repetition"
    )
    assert (
        degenerate_reason("the the the the", n_tokens=6, max_new_tokens=40, duration_s=4.0)
        == "repetition"
    )


def test_guard_flags_too_many_words_for_the_audio() -> None:
    text = "one two three four five six seven eight nine ten eleven twelve"
    assert (
        degenerate_reason(text, n_tokens=14, max_new_tokens=40, duration_s=1.0) == "too_many_words"
    )
    assert degenerate_reason(text, n_tokens=14, max_new_tokens=40, duration_s=4.0) is None


def test_guard_flags_high_compression_ratio() -> None:
    text = "abcdefgh" * 20  # one "word", no spaces: only the compression test can see it
    assert compression_ratio(text) > 2.4
    assert (
        degenerate_reason(text, n_tokens=10, max_new_tokens=100, duration_s=10.0)
        == "compression_ratio"
    )


# --- Vosk ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vosk_engine() -> VoskEngine:
    engine = load_stt("vosk", model_path(VOSK_KO))
    assert isinstance(engine, VoskEngine)
    return engine


@pytest.mark.models
@pytest.mark.parametrize("rate_hz", [8000, 16000])
def test_vosk_streams_partials_and_final(vosk_engine: VoskEngine, rate_hz: int) -> None:
    assert vosk_engine.name == "vosk"
    stream = vosk_engine.new_stream(rate_hz)
    other = vosk_engine.new_stream(rate_hz)  # another call at the same time, hearing silence
    korean = espeak_pcm("안녕하세요", rate_hz, voice="ko", speed=160)
    pcm = silence(300, rate_hz) + korean + silence(500, rate_hz)
    partials: list[str] = []
    for i, frame in enumerate(frames(pcm, rate_hz)):
        partial = stream.accept(frame)
        if partial is not None:
            partials.append(partial)
        if i % 4 == 0:  # interleaved, but less of it: Vosk is not cheap even on silence
            assert other.accept(silence(80, rate_hz)) is None
    assert partials, "no partial result while speech was fed"
    assert all(isinstance(p, str) and p for p in partials)
    assert all(a != b for a, b in zip(partials, partials[1:], strict=False))  # changes only
    result = stream.finish()
    assert isinstance(result, SttResult)
    assert result.text  # the Korean model hears *something* Korean-ish
    assert result.confidence is not None and 0.0 <= result.confidence <= 1.0
    assert other.finish() == SttResult("", None)  # no leak between recognizers

    # the same recognizer carries on with the next utterance: silence -> nothing
    for frame in frames(silence(600, rate_hz), rate_hz):
        assert stream.accept(frame) is None
    assert stream.finish() == SttResult("", None)
    stream.close()
    other.close()
    with pytest.raises(RuntimeError):
        stream.accept(silence(20, rate_hz))


def test_load_stt_rejects_unknown_engine_and_vosk_without_model() -> None:
    with pytest.raises(ValueError, match="unknown STT engine"):
        load_stt("deepspeech", None)
    with pytest.raises(ValueError, match="model folder"):
        load_stt("vosk", None)
