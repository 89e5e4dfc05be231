"""The end-of-turn model: features that match its training front end, the real smart-turn
model on real (synthetic) speech, and clear errors for a missing or wrong model file."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import structlog

from voicebot_pbx.cli import main
from voicebot_pbx.models import SILERO_VAD, SMART_TURN, model_path
from voicebot_pbx.speech.log_mel import FRAMES, N_MELS, WINDOW_SAMPLES, last_window, log_mel
from voicebot_pbx.speech.turn_model import SmartTurn, TurnModelError

from .speech import espeak_pcm, have_espeak, silence

needs_espeak = pytest.mark.skipif(not have_espeak(), reason="espeak-ng and sox are not installed")


def _reference_features() -> object:
    """pipecat's own feature code from the installed pipecat-ai wheel (the model's
    package): only numpy, loaded by path so pipecat itself is never imported."""
    root = model_path(SMART_TURN).parents[1]
    spec = importlib.util.spec_from_file_location("smart_turn_ref", root / "_whisper_features.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.compute_whisper_log_mel_features


def test_features_match_the_models_own_front_end() -> None:
    rng = np.random.default_rng(7)
    samples = (rng.standard_normal(16000 * 3) * 0.05).astype(np.float32)
    t = np.arange(16000 * 2) / 16000
    samples[: t.size] += (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    window = last_window(samples)
    ours = log_mel(window)
    assert ours.shape == (N_MELS, FRAMES) and ours.dtype == np.float32
    reference = _reference_features()(window)  # type: ignore[operator]
    np.testing.assert_allclose(ours, reference, atol=1e-4)


def test_last_window_keeps_the_end_and_pads_in_front() -> None:
    short = np.ones(100, dtype=np.float32)
    padded = last_window(short)
    assert padded.size == WINDOW_SAMPLES and padded[-100:].all() and not padded[:-100].any()
    long = np.arange(WINDOW_SAMPLES + 5, dtype=np.float32)
    assert last_window(long)[0] == 5.0


@pytest.fixture(scope="module")
def smart_turn() -> SmartTurn:
    return SmartTurn(model_path(SMART_TURN))


# A short finished answer the model hears clearly: a bare "yes." scores 0.07 at 8 kHz on an
# AVX2-only CPU and above 0.7 on an AVX-512 one (README: the model is sensitive).
FINISHED = ("no thank you.", "I would like to pay my bill.")
UNFINISHED = ("um,", "my account number is four five two,")


@needs_espeak
@pytest.mark.parametrize("rate_hz", [8000, 16000])
def test_the_model_tells_a_finished_turn_from_an_unfinished_one(
    smart_turn: SmartTurn, rate_hz: int
) -> None:
    """At 8 kHz (upsampled for the model) and at 16 kHz alike."""
    tail = silence(200, rate_hz)
    finished = [smart_turn.score(espeak_pcm(t, rate_hz) + tail, rate_hz) for t in FINISHED]
    unfinished = [smart_turn.score(espeak_pcm(t, rate_hz) + tail, rate_hz) for t in UNFINISHED]
    assert all(s.complete > 0.7 for s in finished), finished
    assert all(s.complete < 0.2 for s in unfinished), unfinished
    assert all(0 < s.cpu_s < 2.0 for s in finished + unfinished)


def test_a_missing_model_file_is_one_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.onnx"
    with pytest.raises(TurnModelError, match="no such file") as err:
        SmartTurn(missing)
    assert str(missing) in str(err.value)


def test_a_corrupt_model_file_is_one_clear_error(tmp_path: Path) -> None:
    corrupt = tmp_path / "turn.onnx"
    corrupt.write_bytes(b"\x08\x01garbage" * 100)
    with pytest.raises(TurnModelError, match="not a loadable ONNX model"):
        SmartTurn(corrupt)


def test_an_onnx_model_of_another_kind_is_refused() -> None:
    with pytest.raises(TurnModelError, match="expected input 'input_features'"):
        SmartTurn(model_path(SILERO_VAD))


@pytest.mark.parametrize(
    ("setting", "missing", "named"),
    [
        ("model_path", "missing.onnx", "end-of-turn model"),
        ("text_model_path", "missing.gguf", "end-of-turn text model"),  # speech/turn_text.py
    ],
)
def test_check_config_and_serve_refuse_a_missing_turn_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], setting: str, missing: str, named: str
) -> None:
    config = tmp_path / "voicebot.toml"
    config.write_text(
        f'state_dir = "{tmp_path / "state"}"\n'
        f'[turn]\nunfinished_max_silence_ms = 1500\ntext_reader = "model"\n'
        f'{setting} = "{tmp_path / missing}"\n'
        "[server]\nport = 0\n[health]\nenabled = false\n"
    )
    assert main(["check-config", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert f"{named} " in err and f"{missing}: no such file" in err
    saved = structlog.get_config()  # serve configures logging onto the captured stderr
    try:
        assert main(["serve", "--config", str(config)]) == 2
    finally:
        structlog.configure(**saved)
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert len(err_lines) == 1 and "model_unusable" in err_lines[0]
    assert f"{missing}: no such file" in err_lines[0]


def test_the_silence_detector_needs_no_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config"]) == 0
    capsys.readouterr()
