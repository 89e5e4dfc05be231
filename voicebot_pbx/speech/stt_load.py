"""Loading the configured speech-to-text engine: :func:`load_stt` picks Whisper, Moonshine or
Vosk by its config name (the one place that knows every engine).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from voicebot_pbx.models import (
    MOONSHINE_BASE_EN,
    MOONSHINE_TINY_EN,
    MOONSHINE_TOKENIZER,
    WHISPER_TINY_EN,
    model_path,
)
from voicebot_pbx.speech.moonshine import MoonshineEngine
from voicebot_pbx.speech.stt import SttEngine
from voicebot_pbx.speech.vosk_stt import VoskEngine
from voicebot_pbx.speech.whisper import WhisperEngine


def load_stt(engine: str, model_dir: Path | None, model: str = "", **opts: Any) -> SttEngine:
    """Load an engine by config name; ``model_dir=None`` means the packaged ``model``
    ("tiny", or Moonshine's "base"; empty: Whisper tiny, Moonshine base)."""
    match engine:
        case "whisper":
            return WhisperEngine(model_dir or model_path(WHISPER_TINY_EN), **opts)
        case "moonshine":
            if model_dir is None:  # packaged; the tokenizer is packaged apart
                return MoonshineEngine(
                    model_path(MOONSHINE_TINY_EN if model == "tiny" else MOONSHINE_BASE_EN),
                    tokenizer_path=model_path(MOONSHINE_TOKENIZER),
                    **opts,
                )
            return MoonshineEngine(model_dir, **opts)  # tokenizer.json inside the folder
        case "vosk":
            if model_dir is None:
                raise ValueError(
                    "the vosk engine needs a model folder (no English Vosk model is packaged; "
                    "see models/README.md)"
                )
            return VoskEngine(model_dir, **opts)
        case _:
            raise ValueError(
                f"unknown STT engine {engine!r} (expected 'whisper', 'moonshine' or 'vosk')"
            )
