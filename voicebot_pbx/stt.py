"""Speech-to-text engines: faster-whisper (default, English) and Vosk (streaming, any model).

Everything here is blocking and meant to run in a worker thread. One engine (one loaded
model) per process, one :class:`SttStream` per call; a stream is used by one thread at a
time. Heavy imports happen in the constructors, so importing this module is cheap.
"""

from __future__ import annotations

import json
import math
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import structlog

from voicebot_pbx.audio import pcm_to_float32, resample

log = structlog.get_logger(__name__)

WHISPER_RATE_HZ = 16000
_WHISPER_FULL_FRAMES = 3000  # 30 s of 10 ms mel frames: what Whisper was trained on
_FRAMES_PER_S = 100


@dataclass(frozen=True, slots=True)
class SttResult:
    text: str
    confidence: float | None
    """0..1 where the engine gives one (Whisper: exp(mean token log-prob); Vosk: mean
    word confidence); None when unknown (e.g. no words)."""


class SttStream(Protocol):
    def accept(self, pcm: bytes) -> str | None:
        """Feed int16 mono PCM at the stream's rate; a new partial transcript or None."""
        ...

    def finish(self) -> SttResult:
        """Final result for the audio fed since the last finish; resets for the next one."""
        ...

    def close(self) -> None: ...


class SttEngine(Protocol):
    @property
    def name(self) -> str: ...

    def new_stream(self, rate_hz: int) -> SttStream: ...


# --- Whisper -----------------------------------------------------------------------------


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def _longest_repeat_run(words: Sequence[str], max_ngram: int = 4) -> tuple[int, int]:
    """Longest run of an n-gram repeated back to back: (n, count), count >= 1."""
    best = (1, 1 if words else 0)
    for n in range(1, max_ngram + 1):
        for start in range(len(words) - 2 * n + 1):
            gram = words[start : start + n]
            count = 1
            pos = start + n
            while words[pos : pos + n] == gram:
                count += 1
                pos += n
            if count > best[1]:
                best = (n, count)
    return best


def degenerate_reason(
    text: str, *, n_tokens: int, max_new_tokens: int, duration_s: float
) -> str | None:
    """Why a Whisper decode looks degenerate (looping/hallucinated), or None if it looks sane.

    Pure. ``n_tokens`` counts the generated tokens including timestamp tokens;
    ``max_new_tokens`` is the budget the decode was given (CTranslate2 returns at most
    ``max_new_tokens - 1`` tokens when it hits the limit).
    """
    if n_tokens >= max_new_tokens - 1:
        return "token_limit"
    words = [w.strip(".,!?;:\"'").lower() for w in text.split()]
    words = [w for w in words if w]
    if len(words) > 5.0 * duration_s + 4:
        return "too_many_words"
    n, count = _longest_repeat_run(words)
    if (n == 1 and count >= 4) or (n > 1 and count >= 3):
        return "repetition"
    if compression_ratio(text) > 2.4:
        return "compression_ratio"
    return None


@dataclass(slots=True)
class WhisperStats:
    short_decodes: int = 0
    full_decodes: int = 0
    fallbacks: int = 0


@dataclass(frozen=True, slots=True)
class _Decode:
    text: str
    n_tokens: int
    avg_logprob: float
    no_speech_prob: float


class WhisperEngine:
    """faster-whisper (CTranslate2) with one model loaded for the process.

    ``short_input=True`` (default) encodes the utterance padded to
    ``max(short_min_input_s, duration + short_pad_s)`` instead of Whisper's fixed 30 s
    (about 3x less CPU, see MODELS.md), decodes greedily with a token budget of
    ``6 tokens/s * duration + 12`` and ``no_repeat_ngram_size=4``, and falls back to the
    full 30 s window when :func:`degenerate_reason` flags the output or the utterance is
    longer than ~28 s. ``short_input=False`` always uses the full window
    (``WhisperModel.transcribe``, greedy at temperature 0, no prompt conditioning).
    """

    name = "whisper"

    def __init__(
        self,
        model_dir: Path,
        *,
        compute_type: str = "int8",
        cpu_threads: int = 1,
        num_workers: int = 1,
        beam_size: int = 1,
        language: str = "en",
        short_input: bool = True,
        short_min_input_s: float = 10.0,
        short_pad_s: float = 2.0,
        no_speech_threshold: float = 0.6,
        log_prob_threshold: float = -1.0,
    ) -> None:
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        self.model_dir = Path(model_dir)
        self._model = WhisperModel(
            str(self.model_dir),
            device="cpu",
            compute_type=compute_type,
            cpu_threads=cpu_threads,
            num_workers=num_workers,
            local_files_only=True,
        )
        multilingual = bool(self._model.model.is_multilingual)
        if not multilingual:
            language = "en"
        self.language = language
        self._tokenizer = Tokenizer(
            self._model.hf_tokenizer, multilingual, task="transcribe", language=language
        )
        self._suppress_tokens = list(get_suppressed_tokens(self._tokenizer, [-1]))
        self._prompt = list(self._tokenizer.sot_sequence)
        self.beam_size = beam_size
        self.short_input = short_input
        self.short_min_input_s = short_min_input_s
        self.short_pad_s = short_pad_s
        self.no_speech_threshold = no_speech_threshold
        self.log_prob_threshold = log_prob_threshold
        self.stats = WhisperStats()
        self._stats_lock = threading.Lock()
        log.debug("stt.whisper.loaded", model=str(self.model_dir), compute_type=compute_type)

    def new_stream(self, rate_hz: int) -> WhisperStream:
        return WhisperStream(self, rate_hz)

    def transcribe(self, pcm: bytes, rate_hz: int) -> SttResult:
        """Transcribe one whole utterance (int16 mono PCM at ``rate_hz``)."""
        audio = pcm_to_float32(resample(pcm, rate_hz, WHISPER_RATE_HZ))
        if audio.size < WHISPER_RATE_HZ // 10:  # < 100 ms: nothing to recognise
            return SttResult(text="", confidence=None)
        duration_s = audio.size / WHISPER_RATE_HZ
        if (
            self.short_input
            and duration_s + self.short_pad_s < _WHISPER_FULL_FRAMES / _FRAMES_PER_S
        ):
            decode, max_new_tokens = self._decode_short(audio)
            self._count("short_decodes")
            reason = degenerate_reason(
                decode.text,
                n_tokens=decode.n_tokens,
                max_new_tokens=max_new_tokens,
                duration_s=duration_s,
            )
            if reason is None:
                return self._to_result(decode)
            self._count("fallbacks")
            log.info("stt.whisper.fallback", reason=reason, text=decode.text, duration_s=duration_s)
        return self._to_result(self._decode_full(audio))

    def _count(self, field: str) -> None:
        with self._stats_lock:
            setattr(self.stats, field, getattr(self.stats, field) + 1)

    def _to_result(self, decode: _Decode) -> SttResult:
        if (
            decode.no_speech_prob > self.no_speech_threshold
            and decode.avg_logprob < self.log_prob_threshold
        ):
            return SttResult(text="", confidence=None)
        if not decode.text:
            return SttResult(text="", confidence=None)
        return SttResult(text=decode.text, confidence=min(1.0, math.exp(decode.avg_logprob)))

    def _decode_short(self, audio: npt.NDArray[np.float32]) -> tuple[_Decode, int]:
        from faster_whisper.audio import pad_or_trim

        duration_s = audio.size / WHISPER_RATE_HZ
        features = self._model.feature_extractor(audio)
        content_frames = features.shape[-1] - 1
        n_frames = min(
            _WHISPER_FULL_FRAMES,
            max(
                round(self.short_min_input_s * _FRAMES_PER_S),
                content_frames + round(self.short_pad_s * _FRAMES_PER_S),
            ),
        )
        segment = pad_or_trim(features[:, :content_frames], n_frames)
        encoder_output = self._model.encode(segment)
        max_new_tokens = int(6 * duration_s + 12)
        result = self._model.model.generate(
            encoder_output,
            [self._prompt],
            beam_size=self.beam_size,
            max_length=len(self._prompt) + max_new_tokens,
            no_repeat_ngram_size=4,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=self._suppress_tokens,
            max_initial_timestamp_index=50,
        )[0]
        tokens: list[int] = list(result.sequences_ids[0])
        timestamp_begin = self._tokenizer.timestamp_begin
        text = self._tokenizer.decode([t for t in tokens if t < timestamp_begin]).strip()
        # CTranslate2 returns the length-normalised score; recover the mean log-prob the
        # way faster-whisper does (cumulative / (tokens + 1)).
        avg_logprob = float(result.scores[0]) * len(tokens) / (len(tokens) + 1)
        decode = _Decode(
            text=text,
            n_tokens=len(tokens),
            avg_logprob=avg_logprob,
            no_speech_prob=float(result.no_speech_prob),
        )
        return decode, max_new_tokens

    def _decode_full(self, audio: npt.NDArray[np.float32]) -> _Decode:
        self._count("full_decodes")
        segments, _info = self._model.transcribe(
            audio,
            language=self.language,
            beam_size=self.beam_size,
            temperature=0.0,
            condition_on_previous_text=False,
            without_timestamps=False,
            vad_filter=False,
        )
        texts: list[str] = []
        weighted_logprob = 0.0
        n_tokens = 0
        no_speech_prob = 0.0
        for segment in segments:
            texts.append(segment.text.strip())
            weighted_logprob += segment.avg_logprob * len(segment.tokens)
            n_tokens += len(segment.tokens)
            no_speech_prob = max(no_speech_prob, segment.no_speech_prob)
        if n_tokens == 0:
            # transcribe() already dropped the window as no speech
            return _Decode(text="", n_tokens=0, avg_logprob=0.0, no_speech_prob=1.0)
        return _Decode(
            text=" ".join(t for t in texts if t),
            n_tokens=n_tokens,
            avg_logprob=weighted_logprob / n_tokens,
            # segments that survived passed transcribe()'s own no-speech test
            no_speech_prob=0.0,
        )


class WhisperStream:
    """Buffers one utterance; Whisper gives no partials (``accept`` returns None)."""

    def __init__(self, engine: WhisperEngine, rate_hz: int) -> None:
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


# --- Vosk --------------------------------------------------------------------------------


class VoskEngine:
    """Vosk/Kaldi with one model loaded for the process; one recognizer per stream (call),
    fed continuously (a fresh recognizer per utterance costs ~3x the CPU)."""

    name = "vosk"

    def __init__(self, model_dir: Path) -> None:
        import vosk

        vosk.SetLogLevel(-1)
        self.model_dir = Path(model_dir)
        if not (self.model_dir / "am").is_dir() and not (self.model_dir / "conf").is_dir():
            raise FileNotFoundError(f"{self.model_dir} does not look like a Vosk model folder")
        self._vosk = vosk
        self._model = vosk.Model(str(self.model_dir))
        log.debug("stt.vosk.loaded", model=str(self.model_dir))

    def new_stream(self, rate_hz: int) -> VoskStream:
        recognizer = self._vosk.KaldiRecognizer(self._model, float(rate_hz))
        recognizer.SetWords(True)
        return VoskStream(recognizer, rate_hz)


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


# --- factory -----------------------------------------------------------------------------


def load_stt(engine: str, model_dir: Path | None, **opts: Any) -> SttEngine:
    """Load an engine by config name; ``model_dir=None`` means the packaged model."""
    from voicebot_pbx.models import WHISPER_TINY_EN, model_path

    match engine:
        case "whisper":
            return WhisperEngine(model_dir or model_path(WHISPER_TINY_EN), **opts)
        case "vosk":
            if model_dir is None:
                raise ValueError(
                    "the vosk engine needs a model folder (no English Vosk model is packaged; "
                    "see models/README.md)"
                )
            return VoskEngine(model_dir, **opts)
        case _:
            raise ValueError(f"unknown STT engine {engine!r} (expected 'whisper' or 'vosk')")
