"""Piper text-to-speech: one voice loaded per process, audio streamed one sentence at a time.

``PiperTts.synthesize`` is a blocking generator meant to be iterated in a worker thread.
It yields int16 mono PCM at the caller's rate, one chunk per sentence, and honours a
``threading.Event`` for cancellation (barge-in): checked between sentences, and also
*inside* a sentence, where an onnxruntime ``RunOptions.terminate`` aborts the running
inference within a few milliseconds.
"""

from __future__ import annotations

import copy
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from voicebot_pbx.audio import resample
from voicebot_pbx.speech.vad import import_onnxruntime

log = structlog.get_logger(__name__)

_CANCEL_POLL_S = 0.005

# --- sentence splitting (pure) -------------------------------------------------------------

_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st sr jr no nr vs etc e.g i.e approx dept tel ext inc ltd co".split()
)
# End of sentence: terminal punctuation, optional closing quotes/brackets, whitespace.
_SENTENCE_END = re.compile(r"([.!?…]+[\"'”’)\]]*)(\s+)")


def split_sentences(text: str) -> list[str]:
    """Split text into sentences (whitespace-trimmed, empty ones dropped).

    A sentence ends at ``.``, ``!``, ``?`` or ``…`` followed by whitespace, unless the next
    word starts in lower case ("2 p.m. tomorrow") or the word before the period is a
    common abbreviation ("Dr. Smith", "No. 5"); a blank line or newline also ends one.
    Decimal numbers ("3.5") never split. With streaming text the last element may still be
    incomplete: see :func:`pop_complete_sentences`.
    """
    sentences, rest = _split(text)
    if rest.strip():
        sentences.append(rest.strip())
    return sentences


def pop_complete_sentences(buffer: str) -> tuple[list[str], str]:
    """For streamed text: the sentences known to be complete, and the text still pending."""
    return _split(buffer)


def _split(text: str) -> tuple[list[str], str]:
    sentences: list[str] = []
    start = 0
    for match in _SENTENCE_END.finditer(text):
        end = match.end(1)
        following = text[match.end() :]
        newline = "\n" in match.group(2)
        if not newline:
            if following[:1].islower():
                continue
            word = text[start:end].split()[-1] if text[start:end].split() else ""
            if word.rstrip(".").lower().lstrip("(\"'") in _ABBREVIATIONS:
                continue
        sentence = text[start:end].strip()
        if sentence:
            sentences.append(sentence)
        start = match.end()
    return sentences, text[start:]


# --- Piper -------------------------------------------------------------------------------


@dataclass(slots=True)
class TtsStats:
    sentences: int = 0
    cancelled_between: int = 0
    cancelled_inside: int = 0


class PiperTts:
    """A Piper voice (``piper-tts`` 1.8) with its own onnxruntime session.

    ``volume`` < 1 leaves headroom before µ-law (output peaks at ``volume`` of full scale);
    ``length_scale`` multiplies the voice's own length scale (> 1 speaks slower).
    ``config_path`` defaults to the model path + ``.json`` (Piper's convention).
    """

    def __init__(
        self,
        model_path: Path,
        config_path: Path | None = None,
        *,
        volume: float = 0.8,
        length_scale: float = 1.0,
        cpu_threads: int = 1,
    ) -> None:
        ort = import_onnxruntime()
        from piper import PiperConfig, PiperVoice  # heavy: loaded with the voice

        self.model_path = Path(model_path)
        self._model_size = self.model_path.stat().st_size
        self.config_path = (
            Path(config_path)
            if config_path
            else self.model_path.with_name(self.model_path.name + ".json")
        )
        with self.config_path.open(encoding="utf-8") as f:
            config = PiperConfig.from_dict(json.load(f))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = cpu_threads
        opts.inter_op_num_threads = 1
        session = ort.InferenceSession(
            str(self.model_path), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        self._ort = ort
        self._voice: Any = PiperVoice(session=session, config=config)
        self.volume = volume
        self.length_scale = length_scale
        self.sample_rate_hz: int = int(config.sample_rate)
        self.stats = TtsStats()
        log.debug("tts.piper.loaded", model=str(self.model_path), rate_hz=self.sample_rate_hz)

    def variant(self, *, volume: float, length_scale: float) -> PiperTts:
        """This loaded voice with other settings: shares the model and its onnxruntime
        session (thread-safe), so a profile's own speed or volume costs no memory."""
        other = copy.copy(self)
        other.volume = volume
        other.length_scale = length_scale
        other.stats = TtsStats()
        return other

    @property
    def voice_id(self) -> str:
        """Identifies the sound of this voice + settings (for audio cache keys): file name and
        size (a different voice saved under the same name almost surely differs in size)."""
        return (
            f"{self.model_path.name}|{self._model_size}|volume={self.volume:g}"
            f"|length_scale={self.length_scale:g}"
        )

    def synthesize(
        self, text: str, rate_hz: int, cancel: threading.Event | None = None
    ) -> Iterator[bytes]:
        """Yield int16 mono PCM at ``rate_hz``, one chunk per sentence.

        Stops without yielding more once ``cancel`` is set (between sentences, or by
        aborting the inference of the current sentence).
        """
        voice = self._voice
        for phonemes in voice.phonemize(text):
            if cancel is not None and cancel.is_set():
                self.stats.cancelled_between += 1
                return
            if not phonemes:
                continue
            audio = self._infer(voice.phonemes_to_ids(phonemes), cancel)
            if audio is None or (cancel is not None and cancel.is_set()):
                return
            self.stats.sentences += 1
            yield resample(self._to_pcm(audio), self.sample_rate_hz, rate_hz)

    def synthesize_all(self, text: str, rate_hz: int) -> bytes:
        return b"".join(self.synthesize(text, rate_hz))

    def _to_pcm(self, audio: npt.NDArray[np.float32]) -> bytes:
        # As piper's own synthesize(): normalise to full scale, then apply the volume.
        peak = float(np.max(np.abs(audio))) if audio.size else 0.0
        if peak < 1e-8:
            return bytes(2 * audio.size)
        scaled = np.clip(audio / peak * self.volume, -1.0, 1.0) * 32767.0
        pcm: bytes = scaled.astype("<i2").tobytes()
        return pcm

    def _infer(
        self, phoneme_ids: list[int], cancel: threading.Event | None
    ) -> npt.NDArray[np.float32] | None:
        config = self._voice.config
        args: dict[str, npt.NDArray[Any]] = {
            "input": np.array([phoneme_ids], dtype=np.int64),
            "input_lengths": np.array([len(phoneme_ids)], dtype=np.int64),
            "scales": np.array(
                [config.noise_scale, config.length_scale * self.length_scale, config.noise_w_scale],
                dtype=np.float32,
            ),
        }
        if config.num_speakers > 1:
            args["sid"] = np.array([config.default_speaker_id], dtype=np.int64)
        session = self._voice.session
        if cancel is None:
            return np.asarray(session.run(None, args)[0], dtype=np.float32).squeeze()

        run_options = self._ort.RunOptions()
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                if cancel.wait(_CANCEL_POLL_S):
                    run_options.terminate = True
                    return

        watcher = threading.Thread(target=watch, name="piper-cancel", daemon=True)
        watcher.start()
        try:
            out = session.run(None, args, run_options)
        except Exception:
            if cancel.is_set():
                self.stats.cancelled_inside += 1
                log.debug("tts.piper.terminated")
                return None
            raise
        finally:
            done.set()
            watcher.join()
        return np.asarray(out[0], dtype=np.float32).squeeze()
