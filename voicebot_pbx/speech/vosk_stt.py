"""Speech-to-text with Vosk (Kaldi): the streaming engine, for any Vosk model.

Owns :class:`VoskEngine` (one model loaded for the process) and :class:`VoskStream` (one
recognizer per call, fed continuously and used by one worker thread at a time; blocking).
The vosk package is imported in the engine's constructor (optional, heavy), so importing this
module is cheap. Named ``vosk_stt`` so it does not shadow the ``vosk`` package.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import structlog

from voicebot_pbx.speech.stt import SttCapabilities, SttResult

log = structlog.get_logger(__name__)


class VoskEngine:
    """Vosk/Kaldi with one model loaded for the process; one recognizer per stream (call),
    fed continuously (a fresh recognizer per utterance costs ~3x the CPU)."""

    name = "vosk"

    def __init__(self, model_dir: Path) -> None:
        import vosk  # lazy: optional engine, heavy to import

        vosk.SetLogLevel(-1)
        self.model_dir = Path(model_dir)
        if not (self.model_dir / "am").is_dir() and not (self.model_dir / "conf").is_dir():
            raise FileNotFoundError(f"{self.model_dir} does not look like a Vosk model folder")
        self._vosk = vosk
        self._model = vosk.Model(str(self.model_dir))
        log.debug("stt.vosk.loaded", model=str(self.model_dir))

    @property
    def capabilities(self) -> SttCapabilities:
        return SttCapabilities()  # streaming only

    def new_stream(self, rate_hz: int) -> VoskStream:
        recognizer = self._vosk.KaldiRecognizer(self._model, float(rate_hz))
        recognizer.SetWords(True)
        return VoskStream(recognizer, rate_hz)

    def close(self) -> None:
        """Nothing to release: each call's recognizer goes with its stream."""


class VoskStream:
    def __init__(self, recognizer: Any, rate_hz: int) -> None:
        self._rec: Any = recognizer
        self.rate_hz = rate_hz
        self._texts: list[str] = []
        self._confs: list[float] = []
        self._last_partial = ""

    def _take_result(self, raw: str) -> None:
        result = json.loads(raw)
        text = str(result.get("text", "")).strip()
        if text:
            self._texts.append(text)
        for word in result.get("result", []):
            if "conf" in word:
                self._confs.append(float(word["conf"]))

    def accept(self, pcm: bytes) -> str | None:
        if self._rec is None:
            raise RuntimeError("stream is closed")
        if self._rec.AcceptWaveform(pcm):
            # Kaldi's own endpointer closed a segment inside our utterance: keep it.
            self._take_result(self._rec.Result())
            partial = ""
        else:
            partial = str(json.loads(self._rec.PartialResult()).get("partial", "")).strip()
        combined = " ".join([*self._texts, partial]).strip()
        if combined and combined != self._last_partial:
            self._last_partial = combined
            return combined
        return None

    def finish(self) -> SttResult:
        if self._rec is None:
            raise RuntimeError("stream is closed")
        self._take_result(self._rec.FinalResult())  # also resets the recognizer
        text = " ".join(self._texts)
        confidence = sum(self._confs) / len(self._confs) if self._confs else None
        self._texts = []
        self._confs = []
        self._last_partial = ""
        return SttResult(text=text, confidence=confidence)

    def close(self) -> None:
        self._rec = None
