"""Whisper's cheaper decode settings with the real tiny.en model: ``timestamps=False``
prompts with ``<|notimestamps|>`` (text tokens only, a smaller token budget) and still gets
the words of the fixed utterances right, alone and in a batch whose inputs are encoded in
chunks (``encoder_batch``) and decoded together."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from tests.test_stt import UTTERANCES, caller, words
from voicebot_pbx.speech.stt_load import load_stt
from voicebot_pbx.speech.whisper import WhisperEngine
from voicebot_pbx.speech.whisper_guard import token_budget


class _Recorder:
    """Stands in for ``WhisperModel`` (and its CTranslate2 ``model``): delegates everything,
    recording what ``model.generate`` was asked and what it returned."""

    def __init__(self, target: Any, calls: list[dict[str, Any]], *, inner: bool = False) -> None:
        self._target = target
        self._calls = calls
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if name == "model" and not self._inner:
            return _Recorder(value, self._calls, inner=True)
        if name == "generate" and self._inner:

            def generate(encoder_output: Any, prompts: Any, **kwargs: Any) -> Any:
                results = value(encoder_output, prompts, **kwargs)
                self._calls.append({"prompts": prompts, "kwargs": kwargs, "results": results})
                return results

            return generate
        return value


def _record(engine: WhisperEngine, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(engine, "_model", _Recorder(engine._model, calls))
    return calls


@pytest.fixture(scope="module")
def no_ts() -> Iterator[WhisperEngine]:
    # through load_stt, as the service builds it from config.stt.timestamps; the batch
    # window lets requests submitted together form one batch; two inputs per encoder call
    # so a batch of three is encoded in uneven chunks (2 + 1)
    engine = load_stt(
        "whisper", None, timestamps=False, encoder_batch=2, max_batch=8, batch_wait_ms=300.0
    )
    assert isinstance(engine, WhisperEngine)
    yield engine
    engine.close()


@pytest.mark.models
@pytest.mark.parametrize(("text", "expected"), UTTERANCES, ids=[u[0] for u in UTTERANCES])
def test_no_timestamps_decode_gets_the_words(
    no_ts: WhisperEngine, monkeypatch: pytest.MonkeyPatch, text: str, expected: set[str]
) -> None:
    calls = _record(no_ts, monkeypatch)
    before = (no_ts.stats.short_decodes, no_ts.stats.fallbacks, no_ts.stats.full_decodes)
    result = no_ts.transcribe(caller(text), 8000)
    assert expected <= words(result.text), result.text
    assert result.confidence is not None and 0.0 < result.confidence <= 1.0
    # decoded once on the short window, no fallback to the (timestamped) full window
    assert (no_ts.stats.short_decodes, no_ts.stats.fallbacks, no_ts.stats.full_decodes) == (
        before[0] + 1,
        before[1],
        before[2],
    )
    assert len(calls) == 1
    tokenizer = no_ts._tokenizer
    prompts = calls[0]["prompts"]
    assert prompts == [[*tokenizer.sot_sequence, tokenizer.no_timestamps]]
    assert "max_initial_timestamp_index" not in calls[0]["kwargs"]
    tokens = list(calls[0]["results"][0].sequences_ids[0])
    assert tokens, "nothing decoded"
    assert all(t < tokenizer.timestamp_begin for t in tokens), tokens  # text tokens only


@pytest.mark.models
def test_timestamps_default_still_decodes_timestamp_tokens(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The control for the test above: the default prompt yields timestamp tokens, so the
    check that none appear with ``timestamps=False`` can fail."""
    engine = load_stt("whisper", None)
    assert isinstance(engine, WhisperEngine) and engine.timestamps
    try:
        calls = _record(engine, monkeypatch)
        result = engine.transcribe(caller("I want to speak to an agent"), 8000)
        assert {"speak", "agent"} <= words(result.text), result.text
        tokenizer = engine._tokenizer
        assert calls[0]["prompts"] == [list(tokenizer.sot_sequence)]
        assert calls[0]["kwargs"]["max_initial_timestamp_index"] == 50
        tokens = list(calls[0]["results"][0].sequences_ids[0])
        assert any(t >= tokenizer.timestamp_begin for t in tokens), tokens
    finally:
        engine.close()


@pytest.mark.models
def test_no_timestamps_batch_gives_each_call_its_words(no_ts: WhisperEngine) -> None:
    pcms = [caller(text) for text, _ in UTTERANCES]
    before = (no_ts.stats.batches, no_ts.stats.batched_utterances, no_ts.stats.fallbacks)

    async def main() -> list[str]:
        results = await asyncio.gather(*(no_ts.transcribe_async(p, 8000) for p in pcms))
        return [r.text for r in results]

    texts = asyncio.run(main())
    assert (no_ts.stats.batches, no_ts.stats.batched_utterances, no_ts.stats.fallbacks) == (
        before[0] + 1,
        before[1] + len(pcms),
        before[2],
    )
    for (_text, expected), got in zip(UTTERANCES, texts, strict=True):
        assert expected <= words(got), got


def test_token_budget_without_timestamps_is_smaller_but_fits_fast_speech() -> None:
    for duration_s in (0.5, 2.0, 5.0, 15.0, 28.0):
        assert token_budget(duration_s, timestamps=False) < token_budget(duration_s)
    # the densest transcript of the benchmark set: 24 text tokens + end of text in 4.0 s
    # of speech; it must fit with room to spare
    assert token_budget(4.0, timestamps=False) >= 25 + 4


def test_encoder_batch_must_be_positive() -> None:
    with pytest.raises(ValueError, match="encoder_batch"):
        load_stt("whisper", None, encoder_batch=0)
