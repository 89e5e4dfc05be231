"""The end-of-turn model: smart-turn v3 (audio only) on plain onnxruntime.

At a pause in the caller's speech, :meth:`SmartTurn.score` rates the
utterance's last 8 s of audio (8 kHz calls are upsampled to the model's 16 kHz): close to 1
when the caller sounds finished ("agent, please."), close to 0 when they sound mid-sentence
("my account number is ..."). It hears intonation and rhythm, so it needs no transcript.
One ONNX session per process, shared by every call (``InferenceSession.run`` is
thread-safe); the session calls it from the shared inference pool, never on the event loop.
Cost: about 0.03-0.06 CPU-s per pause on one thread (bench/bench_turn_end.py measures it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import soxr

from voicebot_pbx.audio import pcm_to_float32
from voicebot_pbx.speech.log_mel import FRAMES, N_MELS, RATE_HZ, last_window, log_mel
from voicebot_pbx.speech.vad import import_onnxruntime

if TYPE_CHECKING:
    import onnxruntime

_INPUT = "input_features"


class TurnModelError(Exception):
    """The end-of-turn model file is missing or not a usable smart-turn model."""


@dataclass(frozen=True, slots=True)
class TurnScore:
    complete: float  # P(the caller has finished the turn)
    cpu_s: float  # CPU time of this scoring (features + model) on the scoring thread


class TurnModel(Protocol):
    """Scores whether the caller has finished their turn (the session's view of the model)."""

    def score(self, pcm: bytes, rate_hz: int) -> TurnScore:
        """Score an utterance's audio up to now (16-bit mono PCM)."""
        ...


class SmartTurn:
    def __init__(self, model_path: Path, *, threads: int = 1) -> None:
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise TurnModelError(f"end-of-turn model {self.model_path}: no such file")
        ort = import_onnxruntime()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        try:
            self._session: onnxruntime.InferenceSession = ort.InferenceSession(
                str(self.model_path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise TurnModelError(
                f"end-of-turn model {self.model_path}: not a loadable ONNX model ({exc})"
            ) from None
        inputs = {i.name: i.shape for i in self._session.get_inputs()}
        shape = inputs.get(_INPUT)
        if shape is None or list(shape)[1:] != [N_MELS, FRAMES]:
            raise TurnModelError(
                f"end-of-turn model {self.model_path}: expected input {_INPUT!r} of shape "
                f"[batch, {N_MELS}, {FRAMES}], got {inputs}"
            )

    def score(self, pcm: bytes, rate_hz: int) -> TurnScore:
        started = time.thread_time()
        samples = pcm_to_float32(pcm)
        if rate_hz != RATE_HZ:
            # In float, as the model's own front end does (int16 rounding flips verdicts).
            samples = np.asarray(soxr.resample(samples, rate_hz, RATE_HZ), dtype=np.float32)
        features = log_mel(last_window(samples))
        (out,) = self._session.run(None, {_INPUT: features[None, :, :]})
        complete = float(np.asarray(out, dtype=np.float32).reshape(-1)[0])
        return TurnScore(complete, time.thread_time() - started)
