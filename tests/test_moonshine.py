"""The Moonshine STT engine with the real packaged tiny model and espeak-ng speech."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from tests.speech import espeak_pcm, frames, silence
from tests.test_stt import caller, words
from voicebot_pbx.config import SttConfig
from voicebot_pbx.models import MOONSHINE_TINY_EN, MOONSHINE_TOKENIZER, model_path
from voicebot_pbx.speech.moonshine import (
    MoonshineEngine,
    MoonshineModelError,
    token_budget,
)
from voicebot_pbx.speech.stt import SttResult
from voicebot_pbx.speech.stt_load import load_stt

UTTERANCES = [
    ("what are your opening hours", {"opening"}),
    ("my account number is four five six seven two", {"number", "4", "5", "6", "7", "2"}),
]


@pytest.fixture(scope="module")
def moonshine() -> MoonshineEngine:
    engine = load_stt("moonshine", None, cpu_threads=1)  # None: the packaged tiny model
    assert isinstance(engine, MoonshineEngine)
    return engine


def tone(hz: float, seconds: float, rate_hz: int = 8000, amp: float = 0.3) -> bytes:
    t = np.arange(int(seconds * rate_hz)) / rate_hz
    return (amp * 32767 * np.sin(2 * np.pi * hz * t)).astype("<i2").tobytes()


def dtmf(seconds: float, rate_hz: int = 8000) -> bytes:  # the "1" key: 697 + 1209 Hz
    t = np.arange(int(seconds * rate_hz)) / rate_hz
    both = np.sin(2 * np.pi * 697 * t) + np.sin(2 * np.pi * 1209 * t)
    return (0.2 * 32767 * both).astype("<i2").tobytes()


def test_moonshine_is_selectable_but_not_the_default() -> None:
    assert SttConfig().engine == "whisper"
    assert SttConfig(engine="moonshine").engine == "moonshine"
    assert token_budget(0.0) == 10 and token_budget(10.0) == 70


@pytest.mark.models
@pytest.mark.parametrize("rate_hz", [8000, 16000])
@pytest.mark.parametrize(("text", "expected"), UTTERANCES, ids=[u[0] for u in UTTERANCES])
def test_moonshine_transcribes_speech(
    moonshine: MoonshineEngine, text: str, expected: set[str], rate_hz: int
) -> None:
    assert moonshine.name == "moonshine"
    assert moonshine.capabilities.batch is moonshine
    assert moonshine.capabilities.queued is None  # decoded in the session's worker pool
    stream = moonshine.new_stream(rate_hz)
    for frame in frames(caller(text, rate_hz), rate_hz):
        assert stream.accept(frame) is None  # no partials
    result = stream.finish()
    stream.close()
    assert expected <= words(result.text), result.text
    assert result.confidence is not None and 0.0 < result.confidence <= 1.0


@pytest.mark.models
def test_moonshine_silence_and_tones_give_little_or_nothing(moonshine: MoonshineEngine) -> None:
    assert moonshine.transcribe(b"", 8000).text == ""
    assert moonshine.transcribe(silence(60, 8000), 8000).text == ""  # < 100 ms
    # Silence: nothing, or a word at most (the VAD does not hand silence to STT anyway).
    assert len(moonshine.transcribe(silence(2000, 8000), 8000).text.split()) <= 1
    for pcm in (tone(1000, 2.0), dtmf(1.5), tone(1000, 0.5)):
        started = time.process_time()
        result = moonshine.transcribe(pcm, 8000)
        assert time.process_time() - started < 2.0
        assert len(result.text.split()) <= 3, result.text


@pytest.mark.models
def test_moonshine_token_budget_bounds_long_input(moonshine: MoonshineEngine) -> None:
    sentence = silence(200, 8000) + espeak_pcm("I want to speak to an agent", 8000)
    speech = (sentence * 30)[: 30 * 16000]  # 30 s at 8 kHz
    budget = token_budget(30.0)
    for pcm in (speech, tone(1000, 30.0)):
        started = time.perf_counter()
        audio = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768.0
        tokens, _logprobs, _ended = moonshine._generate(
            moonshine._encode(audio), audio.size, budget
        )
        assert len(tokens) <= budget
        assert time.perf_counter() - started < 10.0
    # A loop that reaches the budget gives no text instead of the loop.
    pcm = silence(300, 8000) + espeak_pcm("I want to speak to an agent", 8000)
    audio = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768.0
    tokens, _logprobs, ended = moonshine._generate(moonshine._encode(audio), audio.size, 2)
    assert len(tokens) == 2 and not ended
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("voicebot_pbx.speech.moonshine.token_budget", lambda _s: 2)
        assert moonshine.transcribe(pcm, 8000) == SttResult("", None)


@pytest.mark.models
def test_moonshine_missing_or_corrupt_files_are_named(tmp_path: Path) -> None:
    packaged = model_path(MOONSHINE_TINY_EN)
    folder = tmp_path / "moonshine"
    folder.mkdir()
    with pytest.raises(MoonshineModelError, match="encoder_model.ort"):
        load_stt("moonshine", folder)
    shutil.copy(packaged / "encoder_model.ort", folder / "encoder_model.ort")
    with pytest.raises(MoonshineModelError, match="decoder_model_merged"):
        load_stt("moonshine", folder)
    (folder / "decoder_model_merged.onnx").write_bytes(b"not a model")
    with pytest.raises(MoonshineModelError, match="tokenizer.json"):
        load_stt("moonshine", folder)
    shutil.copy(model_path(MOONSHINE_TOKENIZER), folder / "tokenizer.json")
    with pytest.raises(MoonshineModelError, match=r"decoder_model_merged\.onnx.*not a loadable"):
        load_stt("moonshine", folder)
    with pytest.raises(RuntimeError, match="does not exist"):
        load_stt("moonshine", tmp_path / "nowhere")
