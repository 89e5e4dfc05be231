"""Speech-to-text with Moonshine (tiny, English) on plain onnxruntime: an optional engine.

Owns :class:`MoonshineEngine` (one encoder and one merged decoder session for the process,
a greedy decode with a KV cache, one utterance per decode; the per-call buffer is
``stt.BufferedStream``). Selected with ``[stt] engine = "moonshine"``; Whisper stays the
default. The packaged model is ``moonshine-tiny-en`` + ``moonshine-tokenizer`` (models
manifest); an admin's folder holds ``encoder_model.ort|.onnx``,
``decoder_model_merged.ort|.onnx`` and ``tokenizer.json``.

The graphs (Hugging Face / Optimum export of Moonshine):

* encoder: ``input_values`` float [batch, samples] (16 kHz, -1..1) and ``attention_mask``
  int64 [batch, samples] -> ``last_hidden_state`` [batch, frames, d_model];
* merged decoder: ``input_ids`` int64 [batch, n], ``encoder_hidden_states``,
  ``encoder_attention_mask`` int64, ``use_cache_branch`` bool [1] and
  ``past_key_values.{layer}.{decoder|encoder}.{key|value}`` [batch, heads, len, head_dim]
  (``encoder_attention_mask`` is per audio sample, as the encoder's: the graph downsamples
  it)
  -> ``logits`` [batch, n, vocab] and ``present.*`` in the same order. The first step runs
  without the cache branch (empty past tensors) and computes the cross-attention keys and
  values (``present.*.encoder.*``), which are then kept for every later step; the
  self-attention cache (``present.*.decoder.*``) is replaced at every step.

Moonshine has no fixed window and no no-speech score, so unlike Whisper there is no
longer-window retry: a decode that reaches its token budget (a loop, e.g. on a tone or
noise) returns no text, and a transcript without a letter or digit (music notes on
silence) counts as no speech. onnxruntime is imported in the engine's constructor.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import soxr
import structlog

from voicebot_pbx.audio import pcm_to_float32
from voicebot_pbx.speech.stt import BufferedStream, SttCapabilities, SttResult
from voicebot_pbx.speech.vad import import_onnxruntime
from voicebot_pbx.speech.whisper_guard import degenerate_reason

log = structlog.get_logger(__name__)

MOONSHINE_RATE_HZ = 16000
ENCODER_NAMES = ("encoder_model.ort", "encoder_model.onnx")
DECODER_NAMES = ("decoder_model_merged.ort", "decoder_model_merged.onnx")
TOKENIZER_NAME = "tokenizer.json"
_MIN_SAMPLES = MOONSHINE_RATE_HZ // 10  # < 100 ms: nothing to recognise
_PAST = re.compile(r"^past_key_values\.(\d+)\.(decoder|encoder)\.(key|value)$")
_SPOKEN = re.compile(r"[^\W_]")  # a letter or digit in any script


class MoonshineModelError(RuntimeError):
    """A Moonshine model file is missing, unreadable or not the expected graph."""


def token_budget(duration_s: float) -> int:
    """Most tokens a sane transcript of ``duration_s`` may take (end-of-text not counted):
    ``6/s * duration + 10``, well above speech (~3 tokens/s, one per digit for numbers)
    and low enough that a looping decode stops after a few seconds' worth."""
    return int(6 * duration_s + 10)


def find_model_file(folder: Path, names: tuple[str, ...]) -> Path:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise MoonshineModelError(
        f"Moonshine model folder {folder}: no {' or '.join(names)} (missing file)"
    )


class MoonshineEngine:
    """Moonshine on onnxruntime: whole-utterance decodes run by the caller's worker thread
    (``InferenceSession.run`` is thread-safe, so several calls may decode at once; each
    session computes on ``cpu_threads`` threads). Batch size 1 per decode."""

    name = "moonshine"

    def __init__(
        self,
        model_dir: Path,
        *,
        tokenizer_path: Path | None = None,
        cpu_threads: int = 1,
    ) -> None:
        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise MoonshineModelError(f"Moonshine model folder {self.model_dir} does not exist")
        self.encoder_path = find_model_file(self.model_dir, ENCODER_NAMES)
        self.decoder_path = find_model_file(self.model_dir, DECODER_NAMES)
        self.tokenizer_path = Path(tokenizer_path or self.model_dir / TOKENIZER_NAME)
        self.cpu_threads = cpu_threads
        self._tokenizer = _load_tokenizer(self.tokenizer_path)
        self._bos = _token_id(self._tokenizer, "<s>", 1)
        self._eos = _token_id(self._tokenizer, "</s>", 2)

        ort = import_onnxruntime()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = cpu_threads
        opts.inter_op_num_threads = 1
        if cpu_threads > 1:
            # Spinning worker threads cost more than they save on this small model: 2
            # threads measured 0.11 CPU-s/utt spinning, 0.07 not, 0.04 on 1 thread (and
            # no faster in wall time); see bench/bench_stt.py moonshine-tiny-t2.
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._encoder = _session(ort, self.encoder_path, opts)
        self._decoder = _session(ort, self.decoder_path, opts)
        self._check_graphs()

    def _check_graphs(self) -> None:
        enc_inputs = {i.name for i in self._encoder.get_inputs()}
        if "input_values" not in enc_inputs:
            raise MoonshineModelError(
                f"{self.encoder_path}: not a Moonshine encoder (inputs {sorted(enc_inputs)})"
            )
        self._encoder_mask = "attention_mask" in enc_inputs
        dec_inputs = {i.name: i for i in self._decoder.get_inputs()}
        needed = {"input_ids", "encoder_hidden_states", "use_cache_branch"}
        past = {name: spec for name, spec in dec_inputs.items() if _PAST.match(name)}
        if not needed <= dec_inputs.keys() or not past:
            raise MoonshineModelError(
                f"{self.decoder_path}: not a merged Moonshine decoder (inputs {sorted(dec_inputs)})"
            )
        self._decoder_mask = "encoder_attention_mask" in dec_inputs
        # Empty past tensors for the first step: [1, heads, 0, head_dim].
        self._empty_past: dict[str, npt.NDArray[np.float32]] = {}
        for name, spec in past.items():
            heads, head_dim = spec.shape[1], spec.shape[3]
            if not isinstance(heads, int) or not isinstance(head_dim, int):
                raise MoonshineModelError(f"{self.decoder_path}: {name} has shape {spec.shape}")
            self._empty_past[name] = np.zeros((1, heads, 0, head_dim), dtype=np.float32)
        # present.N.kind.key|value -> past_key_values.N.kind.key|value, by output position.
        outputs = [o.name for o in self._decoder.get_outputs()]
        if outputs[0] != "logits":
            raise MoonshineModelError(f"{self.decoder_path}: first output is not logits")
        self._present_to_past = [n.replace("present.", "past_key_values.", 1) for n in outputs[1:]]
        if set(self._present_to_past) != past.keys():
            raise MoonshineModelError(f"{self.decoder_path}: present/past outputs do not match")

    @property
    def capabilities(self) -> SttCapabilities:
        # Whole utterances, decoded in the session's shared worker pool (no own thread).
        return SttCapabilities(batch=self)

    def new_stream(self, rate_hz: int) -> BufferedStream:
        return BufferedStream(self, rate_hz)

    def transcribe(self, pcm: bytes, rate_hz: int) -> SttResult:
        """Transcribe one whole utterance (int16 mono at ``rate_hz``), blocking."""
        audio = pcm_to_float32(pcm)
        if rate_hz != MOONSHINE_RATE_HZ and audio.size:
            # In float (no int16 rounding of the resampled signal).
            audio = np.asarray(soxr.resample(audio, rate_hz, MOONSHINE_RATE_HZ), np.float32)
        if audio.size < _MIN_SAMPLES:
            return SttResult(text="", confidence=None)
        duration_s = audio.size / MOONSHINE_RATE_HZ
        budget = token_budget(duration_s)
        tokens, logprobs, ended = self._generate(audio, budget)
        text = str(self._tokenizer.decode(tokens)).strip()
        if not ended:
            log.info(
                "stt.moonshine.degenerate",
                reason="token_limit",
                text=text[:200],
                duration_s=round(duration_s, 2),
            )
            return SttResult(text="", confidence=None)
        if not _SPOKEN.search(text):
            return SttResult(text="", confidence=None)
        # The decode ended by itself: keep it, but say when it looks odd (logs only).
        reason = degenerate_reason(
            text, n_tokens=len(tokens), max_new_tokens=budget + 2, duration_s=duration_s
        )
        if reason is not None:
            log.info(
                "stt.moonshine.suspect", reason=reason, text=text, duration_s=round(duration_s, 2)
            )
        confidence = math.exp(sum(logprobs) / len(logprobs))
        return SttResult(text=text, confidence=min(1.0, confidence))

    def _generate(
        self, audio: npt.NDArray[np.float32], max_tokens: int
    ) -> tuple[list[int], list[float], bool]:
        """Greedy decode: (text tokens, log-probs of every chosen token including the
        end-of-text, whether end-of-text was reached within ``max_tokens``)."""
        values = audio[np.newaxis, :]
        mask = np.ones(values.shape, dtype=np.int64)
        enc_feed: dict[str, Any] = {"input_values": values}
        if self._encoder_mask:
            enc_feed["attention_mask"] = mask
        hidden = self._encoder.run(["last_hidden_state"], enc_feed)[0]
        feed: dict[str, Any] = {"encoder_hidden_states": hidden, **self._empty_past}
        if self._decoder_mask:
            # Per audio sample, like the encoder's (the graph downsamples it to the
            # hidden frames; a mask per frame breaks inputs over ~8 s).
            feed["encoder_attention_mask"] = mask
        tokens: list[int] = []
        logprobs: list[float] = []
        next_id = self._bos
        for step in range(max_tokens + 1):
            feed["input_ids"] = np.array([[next_id]], dtype=np.int64)
            feed["use_cache_branch"] = np.array([step > 0])
            logits, *present = self._decoder.run(None, feed)
            row = logits[0, -1].astype(np.float64)
            next_id = int(row.argmax())
            top = row[next_id]
            logprobs.append(float(-math.log(np.exp(row - top).sum())))
            if next_id == self._eos:
                return tokens, logprobs, True
            if step == max_tokens:
                break
            tokens.append(next_id)
            for name, value in zip(self._present_to_past, present, strict=True):
                # Cross-attention keys/values come from the first step only.
                if step == 0 or ".decoder." in name:
                    feed[name] = value
        return tokens, logprobs, False


def _session(ort: Any, path: Path, opts: Any) -> Any:
    try:
        return ort.InferenceSession(
            str(path), sess_options=opts, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise MoonshineModelError(f"{path}: not a loadable ONNX/ORT model ({exc})") from None


def _load_tokenizer(path: Path) -> Any:
    if not path.is_file():
        raise MoonshineModelError(f"Moonshine tokenizer {path} does not exist (missing file)")
    from tokenizers import Tokenizer  # lazy: only this engine needs it

    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception on a bad file
        raise MoonshineModelError(f"Moonshine tokenizer {path}: unreadable ({exc})") from None


def _token_id(tokenizer: Any, token: str, default: int) -> int:
    found = tokenizer.token_to_id(token)
    return default if found is None else int(found)
