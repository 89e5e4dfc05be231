"""Piper TTS with the packaged en_US-joe-medium voice, and the pure sentence splitter."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from voicebot_pbx.audio import rms_dbfs
from voicebot_pbx.models import PIPER_JOE, WHISPER_TINY_EN, model_path
from voicebot_pbx.speech.tts import PiperTts, pop_complete_sentences, split_sentences
from voicebot_pbx.speech.whisper import WhisperEngine

THREE_SENTENCES = (
    "Thank you for calling. Our opening hours are nine to five. How can I help you today?"
)
LONG_SENTENCE = (
    "This is a rather long sentence that goes on and on, describing all of the many "
    "different options that are available to you as a valued customer of our company, "
    "including billing, payments, technical support, moving house, and account changes."
)


@pytest.fixture(scope="module")
def voice_path() -> Path:
    return model_path(PIPER_JOE)


@pytest.fixture(scope="module")
def tts(voice_path: Path) -> PiperTts:
    return PiperTts(voice_path, voice_path.with_name(voice_path.name + ".json"))


def peak(pcm: bytes) -> int:
    return int(np.max(np.abs(np.frombuffer(pcm, dtype="<i2").astype(np.int32))))


@pytest.mark.models
@pytest.mark.parametrize("rate_hz", [8000, 16000])
def test_synthesizes_a_sentence(tts: PiperTts, rate_hz: int) -> None:
    chunks = list(tts.synthesize("Thank you for calling, how can I help you?", rate_hz))
    assert len(chunks) == 1
    pcm = chunks[0]
    assert len(pcm) % 2 == 0
    duration_s = len(pcm) / 2 / rate_hz
    assert 1.2 < duration_s < 5.0
    assert rms_dbfs(pcm) > -30.0
    # volume 0.8: normalised to 80 % of full scale, so no clipping before µ-law
    assert 0.5 * 32767 < peak(pcm) < 0.95 * 32767


@pytest.mark.models
def test_one_chunk_per_sentence(tts: PiperTts) -> None:
    chunks = list(tts.synthesize(THREE_SENTENCES, 8000))
    assert len(chunks) == 3
    assert all(rms_dbfs(c) > -35.0 for c in chunks)
    # the second sentence is the longest
    assert len(chunks[1]) > len(chunks[0])


@pytest.mark.models
def test_cancel_between_sentences(tts: PiperTts) -> None:
    cancel = threading.Event()
    got: list[bytes] = []
    before = tts.stats.cancelled_between
    for chunk in tts.synthesize(THREE_SENTENCES, 8000, cancel):
        got.append(chunk)
        cancel.set()  # e.g. the caller barged in while the first sentence played
    assert len(got) == 1
    assert tts.stats.cancelled_between == before + 1


@pytest.mark.models
def test_cancel_already_set_yields_nothing(tts: PiperTts) -> None:
    cancel = threading.Event()
    cancel.set()
    assert list(tts.synthesize(THREE_SENTENCES, 8000, cancel)) == []


@pytest.mark.models
def test_cancel_inside_a_sentence_terminates_inference(tts: PiperTts) -> None:
    # The long sentence takes ~1 s of CPU; cancel 30 ms into it.
    cancel = threading.Event()
    timer = threading.Timer(0.03, cancel.set)
    before = tts.stats.cancelled_inside
    timer.start()
    started = time.monotonic()
    chunks = list(tts.synthesize(LONG_SENTENCE, 8000, cancel))
    timer.join()
    assert chunks == []
    assert tts.stats.cancelled_inside == before + 1, (
        f"inference was not terminated (returned after {time.monotonic() - started:.3f} s)"
    )
    # the session is still usable afterwards
    assert len(list(tts.synthesize("Still here.", 8000, threading.Event()))) == 1


@pytest.mark.models
def test_voice_id_names_file_and_settings(voice_path: Path, tts: PiperTts) -> None:
    assert tts.voice_id.startswith("en_US-joe-medium.onnx")
    assert "volume=0.8" in tts.voice_id
    assert tts.sample_rate_hz == 22050
    assert PiperTts(voice_path, volume=0.5).voice_id != tts.voice_id


@pytest.mark.models
@pytest.mark.slow
def test_whisper_recovers_piper_text(tts: PiperTts) -> None:
    whisper = WhisperEngine(model_path(WHISPER_TINY_EN))
    for text, expected in [
        ("Our opening hours are nine to five.", {"opening", "hours", "nine", "five"}),
        ("Please hold while I transfer you to an agent.", {"hold", "transfer", "agent"}),
    ]:
        pcm = tts.synthesize_all(text, 8000)
        heard = whisper.transcribe(pcm, 8000).text
        normalised = heard.lower().replace("9", "nine").replace("5", "five")
        assert expected <= set(normalised.replace(".", " ").replace(",", " ").split()), heard


# --- sentence splitting: pure --------------------------------------------------------------


def test_split_sentences_basic() -> None:
    assert split_sentences(THREE_SENTENCES) == [
        "Thank you for calling.",
        "Our opening hours are nine to five.",
        "How can I help you today?",
    ]
    assert split_sentences("Really?! Yes. Great…  Bye") == ["Really?!", "Yes.", "Great…", "Bye"]
    assert split_sentences("  ") == []
    assert split_sentences("No punctuation at all") == ["No punctuation at all"]


def test_split_sentences_keeps_abbreviations_numbers_and_lowercase_continuations() -> None:
    assert split_sentences("Dr. Smith sees you at 3.30 today. Ask for room No. 5 please.") == [
        "Dr. Smith sees you at 3.30 today.",
        "Ask for room No. 5 please.",
    ]
    assert split_sentences("We open at 9 a.m. tomorrow. See you!") == [
        "We open at 9 a.m. tomorrow.",
        "See you!",
    ]
    assert split_sentences('He said "stop." Then he left.') == ['He said "stop."', "Then he left."]


def test_split_sentences_on_newlines() -> None:
    assert split_sentences("First line\nsecond line") == ["First line\nsecond line"]
    assert split_sentences("First line.\nsecond line") == ["First line.", "second line"]


def test_pop_complete_sentences_for_streamed_text() -> None:
    done, rest = pop_complete_sentences("Sure. Your balance is")
    assert (done, rest) == (["Sure."], "Your balance is")
    done, rest = pop_complete_sentences(rest + " twelve pounds. Anything")
    assert (done, rest) == (["Your balance is twelve pounds."], "Anything")
    # a final period without following whitespace may still be "3.5": wait for more text
    assert pop_complete_sentences("It costs 3.") == ([], "It costs 3.")
