"""Speech-to-text with Moonshine (tiny or base, English) on plain onnxruntime: an optional
engine.

Owns :class:`MoonshineEngine` (one encoder session and the decoder sessions for the
process, a greedy decode with a KV cache, one utterance per decode; the per-call buffer is
``stt.BufferedStream``). Selected with ``[stt] engine = "moonshine"``; Whisper stays the
default. The packaged model is ``moonshine-tiny-en`` + ``moonshine-tokenizer`` (models
manifest); a model folder holds ``encoder_model.ort|.onnx``, ``tokenizer.json`` (unless
given apart) and the decoder in one of two layouts:

* merged: ``decoder_model_merged.ort|.onnx`` (as shipped; tiny);
* split: ``decoder_first.onnx`` + ``decoder_with_past.onnx``, made at install time by
  ``speech/moonshine_convert.py`` (base: the shipped one expands its int8 weights at every
  step).

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
  self-attention cache (``present.*.decoder.*``) is replaced at every step;
* split decoder: the merged one's two branches as graphs of their own, without
  ``use_cache_branch``: ``decoder_first`` takes ``input_ids`` and
  ``encoder_hidden_states`` (no past) -> ``logits`` and every ``present.*``;
  ``decoder_with_past`` takes ``input_ids`` and every ``past_key_values.*`` ->
  ``logits`` and ``present.*.decoder.*`` (either may also take ``encoder_attention_mask``
  or, the second, ``encoder_hidden_states``: fed when declared).

Moonshine has no fixed window and no no-speech score, so unlike Whisper there is no
longer-window retry: a decode that reaches its token budget (a loop, e.g. on a tone or
noise) returns no text, and a transcript without a letter or digit (music notes on
silence) counts as no speech. onnxruntime is imported in the engine's constructor.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Collection, Sequence
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import soxr
import structlog

from voicebot_pbx.audio import (
    LEVEL_FRAME_S,
    SPEECH_ABOVE_FLOOR_DB,
    SPEECH_BELOW_PEAK_DB,
    frame_levels_db,
    pcm_to_float32,
)
from voicebot_pbx.config.speech import DIGITS_TEMPO, digits_tempo_problem
from voicebot_pbx.speech.digit_beam import (
    DEFAULT_BEAM,
    DIGITS_MIN_CONFIDENCE,
    MAX_ALTERNATIVES,
    Found,
    looping,
    merge_readings,
    numbers_read,
    search_digits,
)
from voicebot_pbx.speech.expect import (
    DEFAULT_MARGIN,
    WORDS,
    Expectation,
    Expected,
    HeldVocabulary,
    first_sentence,
    label,
    prefer,
    read_digits,
)
from voicebot_pbx.speech.logits import log_sum_exp
from voicebot_pbx.speech.stt import BufferedStream, SttCapabilities, SttResult, SttTiming
from voicebot_pbx.speech.vad import import_onnxruntime
from voicebot_pbx.speech.verify import (
    DEFAULT_FLOOR,
    DEFAULT_MIN_LEAD,
    FormScore,
    KnownAnswer,
    accepted,
    confirmed_label,
    rival_classes,
    spoken_forms,
    written,
)
from voicebot_pbx.speech.whisper_guard import degenerate_reason

log = structlog.get_logger(__name__)

MOONSHINE_RATE_HZ = 16000
ENCODER_NAMES = ("encoder_model.ort", "encoder_model.onnx")
DECODER_NAMES = ("decoder_model_merged.ort", "decoder_model_merged.onnx")
DECODER_FIRST_NAME = "decoder_first.onnx"  # the split layout (speech/moonshine_convert.py)
DECODER_WITH_PAST_NAME = "decoder_with_past.onnx"
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


_TRIM_MARGIN_S = 0.25  # kept around the first and last speech frame


def trim_quiet_ends(audio: npt.NDArray[np.float32], rate_hz: int) -> npt.NDArray[np.float32]:
    """``audio`` without its quiet head and tail (line noise, silence), keeping
    ``_TRIM_MARGIN_S`` around the speech. Moonshine base answers some clips with a second of
    noise around a short phrase with end-of-text at once (the shipped model as much as the
    converted one); cut to the speech, it gives the words. Measured (bench_stt set; margin
    chosen on the 200 synthetic utterances, 0.15-0.6 s within 1 point): a retry with the
    trimmed audio when the first decode gives nothing took base from 53.3 to 51.8 % WER
    there (empty transcripts 38 -> 21), and on the 150 recorded prompts from 7.6 to 4.7 %;
    trimming every input instead did worse on the synthetic set (54.8 %)."""
    energy_db, floor_db = frame_levels_db(audio, rate_hz)
    if energy_db.size < 3 or floor_db is None:
        return audio
    loud = np.flatnonzero(
        energy_db >= max(energy_db.max() - SPEECH_BELOW_PEAK_DB, floor_db + SPEECH_ABOVE_FLOOR_DB)
    )
    if loud.size == 0:
        return audio
    frame = int(rate_hz * LEVEL_FRAME_S)
    margin = int(_TRIM_MARGIN_S * rate_hz)
    start = max(0, int(loud[0]) * frame - margin)
    end = min(audio.size, (int(loud[-1]) + 1) * frame + margin)
    return audio[start:end]


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
    session computes on ``cpu_threads`` threads). Batch size 1 per decode.

    :meth:`transcribe_expecting` decodes an utterance twice on one encoder output, freely
    and held to the expected words (``speech/expect.py``: the logits of every other token
    set to -inf at each step, so its confidence is over the words it may say), and keeps
    the held one when :func:`expect.prefer` says so (``expect_margin``). Given the answers
    the dialogue knows (``speech/verify.py``), it first asks the decoder whether the audio
    says one of them (``verify_min_lead``, ``verify_floor``). A number whose count is known
    (``digits``) is searched for that many digits and heard a second time, played
    ``digits_tempo`` times faster, beside the first in ``pool`` when given
    (``speech/digit_beam.py``)."""

    name = "moonshine"

    def __init__(
        self,
        model_dir: Path,
        *,
        tokenizer_path: Path | None = None,
        cpu_threads: int = 1,
        retry_trimmed: bool = True,
        expect_margin: float = DEFAULT_MARGIN,
        verify_min_lead: float = DEFAULT_MIN_LEAD,
        verify_floor: float = DEFAULT_FLOOR,
        digits_beam: int = DEFAULT_BEAM,
        digits_tempo: float = DIGITS_TEMPO,
        pool: Executor | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        # Nothing recognised: decode the speech without its quiet ends once more.
        self.retry_trimmed = retry_trimmed
        if not self.model_dir.is_dir():
            raise MoonshineModelError(f"Moonshine model folder {self.model_dir} does not exist")
        self.encoder_path = find_model_file(self.model_dir, ENCODER_NAMES)
        # The split layout when either of its files is there (a missing twin is an error).
        first = self.model_dir / DECODER_FIRST_NAME
        with_past = self.model_dir / DECODER_WITH_PAST_NAME
        self.split_decoder = first.is_file() or with_past.is_file()
        if self.split_decoder:
            self.decoder_path = find_model_file(self.model_dir, (DECODER_FIRST_NAME,))
            self.decoder_with_past_path = find_model_file(self.model_dir, (DECODER_WITH_PAST_NAME,))
        else:
            self.decoder_path = find_model_file(self.model_dir, DECODER_NAMES)
            self.decoder_with_past_path = self.decoder_path  # one graph, both branches
        self.tokenizer_path = Path(tokenizer_path or self.model_dir / TOKENIZER_NAME)
        self.cpu_threads = cpu_threads
        self._tokenizer = _load_tokenizer(self.tokenizer_path)
        self._bos = _token_id(self._tokenizer, "<s>", 1)
        self._eos = _token_id(self._tokenizer, "</s>", 2)
        self.expect_margin = expect_margin
        self.verify_min_lead = verify_min_lead
        self.verify_floor = verify_floor
        # A held decode of digits with the wrong count is searched again (0: never).
        self.digits_beam = digits_beam
        # ... and searched once more played this much faster (1.0: not).
        problem = digits_tempo_problem(digits_tempo)
        if problem is not None:
            raise ValueError(problem)
        self.digits_tempo = digits_tempo
        # Where the second listen may run beside the first (the shared inference pool, whose
        # thread a decode already holds); None: after it.
        self._pool = pool
        size = int(self._tokenizer.get_vocab_size())
        self._pieces = [str(self._tokenizer.id_to_token(i) or "") for i in range(size)]
        self._held: dict[Expected, HeldVocabulary] = {}
        self._rivals = rival_classes(self._pieces)

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
        self._decoder_with_past = (
            _session(ort, self.decoder_with_past_path, opts)
            if self.split_decoder
            else self._decoder
        )
        self._check_graphs()

    def _check_graphs(self) -> None:
        enc_inputs = {i.name for i in self._encoder.get_inputs()}
        if "input_values" not in enc_inputs:
            raise MoonshineModelError(
                f"{self.encoder_path}: not a Moonshine encoder (inputs {sorted(enc_inputs)})"
            )
        self._encoder_mask = "attention_mask" in enc_inputs
        if self.split_decoder:
            self._check_split_decoder()
        else:
            self._check_merged_decoder()

    def _check_merged_decoder(self) -> None:
        path = self.decoder_path
        dec_inputs = {i.name: i for i in self._decoder.get_inputs()}
        needed = {"input_ids", "encoder_hidden_states", "use_cache_branch"}
        past = {name: spec for name, spec in dec_inputs.items() if _PAST.match(name)}
        if not needed <= dec_inputs.keys() or not past:
            raise MoonshineModelError(
                f"{path}: not a merged Moonshine decoder (inputs {sorted(dec_inputs)})"
            )
        self._first_mask = self._next_mask = "encoder_attention_mask" in dec_inputs
        self._next_hidden = True
        # Empty past tensors for the first step: [1, heads, 0, head_dim].
        self._empty_past: dict[str, npt.NDArray[np.float32]] = {}
        for name, spec in past.items():
            heads, head_dim = spec.shape[1], spec.shape[3]
            if not isinstance(heads, int) or not isinstance(head_dim, int):
                raise MoonshineModelError(f"{path}: {name} has shape {spec.shape}")
            self._empty_past[name] = np.zeros((1, heads, 0, head_dim), dtype=np.float32)
        # present.N.kind.key|value -> past_key_values.N.kind.key|value, by output position;
        # the same outputs on both branches.
        self._first_present = _present_to_past(self._decoder, path, past.keys())
        self._next_present = self._first_present
        self._next_past = frozenset(past)

    def _check_split_decoder(self) -> None:
        first, with_past = self.decoder_path, self.decoder_with_past_path
        first_inputs = {i.name for i in self._decoder.get_inputs()}
        optional = {"encoder_attention_mask"}
        if not {"input_ids", "encoder_hidden_states"} <= first_inputs or (
            first_inputs - {"input_ids", "encoder_hidden_states"} - optional
        ):
            raise MoonshineModelError(
                f"{first}: not a first-step Moonshine decoder (inputs {sorted(first_inputs)})"
            )
        next_inputs = {i.name for i in self._decoder_with_past.get_inputs()}
        past = {name for name in next_inputs if _PAST.match(name)}
        extra = next_inputs - past - {"input_ids", "encoder_hidden_states"} - optional
        if "input_ids" not in next_inputs or not past or extra:
            raise MoonshineModelError(
                f"{with_past}: not a Moonshine decoder with past (inputs {sorted(next_inputs)})"
            )
        self._first_mask = "encoder_attention_mask" in first_inputs
        self._next_mask = "encoder_attention_mask" in next_inputs
        self._next_hidden = "encoder_hidden_states" in next_inputs
        self._empty_past = {}
        self._first_present = _present_to_past(self._decoder, first, None)
        self._next_present = _present_to_past(self._decoder_with_past, with_past, None)
        self._next_past = frozenset(past)  # the first step's presents it takes
        # Every past the with-past graph takes is one the first step returns; it returns
        # the self-attention cache (the cross-attention one is the first step's).
        if not past <= set(self._first_present):
            raise MoonshineModelError(
                f"{with_past}: takes {sorted(past - set(self._first_present))}, which "
                f"{first.name} does not return"
            )
        if not set(self._next_present) <= past or any(
            ".decoder." not in name for name in self._next_present
        ):
            raise MoonshineModelError(
                f"{with_past}: its present.* outputs are not the past_key_values.*.decoder.* "
                "inputs it takes"
            )

    @property
    def capabilities(self) -> SttCapabilities:
        # Whole utterances, decoded in the session's shared worker pool (no own thread).
        return SttCapabilities(batch=self, expecting=self)

    def new_stream(self, rate_hz: int) -> BufferedStream:
        return BufferedStream(self, rate_hz)

    def close(self) -> None:
        """Nothing to release: no thread of its own (the sessions are freed with it)."""

    def transcribe(self, pcm: bytes, rate_hz: int) -> SttResult:
        """Transcribe one whole utterance (int16 mono at ``rate_hz``), blocking. When the
        model gives nothing, the speech cut from its quiet ends (:func:`trim_quiet_ends`) is
        decoded once more (``retry_trimmed``)."""
        return self._transcribe(pcm, rate_hz, None)

    def transcribe_expecting(
        self,
        pcm: bytes,
        rate_hz: int,
        expected: Expected,
        known: Sequence[KnownAnswer] = (),
        digits: int | None = None,
    ) -> SttResult:
        """As :meth:`transcribe`, also held to ``expected``; the better of the two. With
        ``known`` answers (``speech/verify.py``), one the audio is confirmed to say is the
        transcript, written plainly (and nothing else is decoded). ``digits``: how many
        digits complete an expected number (``speech/digit_beam.py``)."""
        return self._transcribe(pcm, rate_hz, expected, known, digits)

    def _transcribe(
        self,
        pcm: bytes,
        rate_hz: int,
        expected: Expected | None,
        known: Sequence[KnownAnswer] = (),
        digits: int | None = None,
    ) -> SttResult:
        started_s = time.monotonic()
        audio = pcm_to_float32(pcm)
        if rate_hz != MOONSHINE_RATE_HZ and audio.size:
            # In float (no int16 rounding of the resampled signal).
            audio = np.asarray(soxr.resample(audio, rate_hz, MOONSHINE_RATE_HZ), np.float32)
        result, decodes = self._decode(audio, expected, known, digits)
        # Its run time; the wait in the pool is added by stt.timed where it queued.
        timing = SttTiming(
            queue_wait_ms=0.0,
            decode_ms=round((time.monotonic() - started_s) * 1000.0, 1),
            batch=1,
            windows=max(decodes, 1),
            engine="moonshine",
        )
        return dataclasses.replace(result, timing=timing)

    def held_vocabulary(self, expected: Expected) -> HeldVocabulary:
        """The vocabulary a decode held to ``expected`` may use (built once per kind of
        answer; a race builds it twice, harmlessly)."""
        vocabulary = self._held.get(expected)
        if vocabulary is None:
            special = [
                i for i, p in enumerate(self._pieces) if p.startswith("<") and p.endswith(">")
            ]
            words = frozenset[str]().union(*(WORDS[e] for e in expected))
            vocabulary = HeldVocabulary(self._pieces, words, end_id=self._eos, special=special)
            self._held[expected] = vocabulary
        return vocabulary

    def _decode(
        self,
        audio: npt.NDArray[np.float32],
        expected: Expected | None,
        known: Sequence[KnownAnswer] = (),
        digits: int | None = None,
    ) -> tuple[SttResult, int]:
        """The transcript and how many times the audio was encoded. When the free decode
        gives nothing, the speech without its quiet ends is decoded once more
        (``retry_trimmed``), before any held decode: an empty free decode would hand the
        turn to the held one whatever was said ("no, that's the wrong number" held to a
        date: "November")."""
        if audio.size < _MIN_SAMPLES:
            return SttResult(text="", confidence=None), 0
        duration_s = audio.size / MOONSHINE_RATE_HZ
        hidden = self._encode(audio)
        encoded = 1
        if known:
            verified = self._verify(hidden, audio.size, known)
            if verified is not None:
                return verified, encoded
        free = self._result(hidden, audio.size, duration_s, None)
        if not free.text and self.retry_trimmed:
            trimmed = trim_quiet_ends(audio, MOONSHINE_RATE_HZ)
            if _MIN_SAMPLES <= trimmed.size < audio.size:
                audio, duration_s = trimmed, trimmed.size / MOONSHINE_RATE_HZ
                hidden = self._encode(audio)
                encoded = 2
                free = self._result(hidden, audio.size, duration_s, None)
        if not expected:
            return free, encoded
        vocabulary = self.held_vocabulary(expected)
        # The number's count when the digit search runs (an account number), else None.
        count = digits if Expectation.DIGITS in expected and self.digits_beam > 0 else None
        # ... and when it is heard a second time, faster (digits_tempo), else None.
        twice = count if count and self.digits_tempo != 1.0 else None
        second = self._second_listen(audio, vocabulary, twice)
        held = self._result(hidden, audio.size, duration_s, vocabulary)
        if count:
            held = self._counted(hidden, audio.size, duration_s, vocabulary, held, count)
        if prefer(free, held, margin=self.expect_margin):
            result = dataclasses.replace(held, held_to=label(expected))
        else:
            said = read_digits(free.text)
            others = tuple(a for a in held.alternatives if a != said)
            result = dataclasses.replace(free, alternatives=others)
        if twice:
            if second is not None and not second.cancel():
                faster = second.result()  # it is running on another of the pool's threads
            else:  # no pool, or still queued there (the pool is busy): here, now
                faster = self._faster_readings(audio, vocabulary, twice)
            encoded += 1
            merged = merge_readings(
                read_digits(result.text), result.alternatives, faster, 2 * MAX_ALTERNATIVES
            )
            result = dataclasses.replace(result, alternatives=merged)
        return result, encoded

    def _result(
        self,
        hidden: Any,
        n_samples: int,
        duration_s: float,
        held: HeldVocabulary | None,
    ) -> SttResult:
        budget = token_budget(duration_s)
        tokens, logprobs, ended = self._generate(hidden, n_samples, budget, held)
        if held is not None and not ended:
            # Held past the caller's words, it repeats itself: keep its first sentence.
            keep = first_sentence([self._pieces[t] for t in tokens])
            if keep < len(tokens):
                tokens, logprobs, ended = tokens[:keep], logprobs[:keep], True
        text = self._text(tokens)
        if not ended:
            log.info(
                "stt.moonshine.degenerate",
                reason="token_limit",
                text=text[:200],
                duration_s=round(duration_s, 2),
                held=held is not None,
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

    def _counted(
        self,
        hidden: Any,
        n_samples: int,
        duration_s: float,
        vocabulary: HeldVocabulary,
        held: SttResult,
        digits: int,
    ) -> SttResult:
        """``held`` when it reads ``digits`` digits, else the search's best decode that does
        (``speech/digit_beam.py``) when it is sure enough, else ``held``; with the search's
        other readings of that many digits as ``alternatives``."""
        searched = self._search(hidden, n_samples, duration_s, vocabulary, digits)
        greedy = read_digits(held.text)
        found: list[Found] = []
        readings: list[str] = []
        for f in searched:
            text = self._text(f.tokens)
            if not looping(read_digits(text), greedy):
                found.append(f)
                readings.append(text)
        greedy_count = len(greedy)
        best = found[0] if found else None
        kept = (
            greedy_count != digits and best is not None and best.confidence >= DIGITS_MIN_CONFIDENCE
        )
        result = held
        if kept:
            assert best is not None
            result = SttResult(text=readings[0], confidence=min(1.0, best.confidence))
        heard = read_digits(result.text)
        others = [n for n in numbers_read(readings, digits) if n != heard]
        # Counts and confidence only: the digits are the caller's account number.
        log.info(
            "stt.moonshine.digits_search",
            wanted=digits,
            greedy=greedy_count,
            found=best is not None,
            confidence=round(best.confidence, 3) if best is not None else None,
            kept=kept,
            alternatives=len(others[:MAX_ALTERNATIVES]),
            loops=len(searched) - len(found),
        )
        return dataclasses.replace(result, alternatives=tuple(others[:MAX_ALTERNATIVES]))

    def _search(
        self,
        hidden: Any,
        n_samples: int,
        duration_s: float,
        vocabulary: HeldVocabulary,
        digits: int,
    ) -> list[Found]:
        """The digit search's finished decodes of ``digits`` digits, likeliest first."""
        first_feed, next_feed = self._feeds(hidden, n_samples)

        def step(
            index: int, pasts: Sequence[dict[str, Any]], tokens: Sequence[int]
        ) -> tuple[npt.NDArray[np.float64], list[dict[str, Any]]]:
            return self._step_many(index, first_feed, pasts, tokens)

        return search_digits(
            step,
            next_feed,
            vocabulary,
            n_digits=digits,
            bos=self._bos,
            eos=self._eos,
            max_tokens=token_budget(duration_s),
            beam=self.digits_beam,
            keep=self.digits_beam,
        )

    def _text(self, tokens: Sequence[int]) -> str:
        """A search's decode as text."""
        return str(self._tokenizer.decode(list(tokens))).strip()

    def _second_listen(
        self, audio: npt.NDArray[np.float32], vocabulary: HeldVocabulary, twice: int | None
    ) -> Future[list[str]] | None:
        """The second listen of a number of ``twice`` digits (None: none) sent to the pool to
        run beside the first, when a pool takes it (not one shutting down); else None."""
        if twice is None or self._pool is None:
            return None
        try:
            return self._pool.submit(self._faster_readings, audio, vocabulary, twice)
        except RuntimeError:  # the pool is shutting down: the first listen's thread runs it
            return None

    def _faster_readings(
        self, audio: npt.NDArray[np.float32], vocabulary: HeldVocabulary, digits: int
    ) -> list[str]:
        """The second listen (``digits_tempo``, ``speech/digit_beam.py``): the readings of
        ``digits`` digits in the same speech played that much faster (resampled as if it had
        been recorded at that multiple of the rate: shorter, and higher): the greedy held
        decode's, then the search's."""
        faster = np.asarray(
            soxr.resample(audio, MOONSHINE_RATE_HZ * self.digits_tempo, MOONSHINE_RATE_HZ),
            np.float32,
        )
        if faster.size < _MIN_SAMPLES:
            return []
        hidden = self._encode(faster)
        duration_s = faster.size / MOONSHINE_RATE_HZ
        held = self._result(hidden, faster.size, duration_s, vocabulary)
        found = self._search(hidden, faster.size, duration_s, vocabulary, digits)
        greedy = read_digits(held.text)
        searched = [read_digits(self._text(f.tokens)) for f in found]
        readings = numbers_read([greedy, *(n for n in searched if not looping(n, greedy))], digits)
        # Counts only: the digits are the caller's account number.
        log.info("stt.moonshine.digits_faster", tempo=self.digits_tempo, readings=len(readings))
        return readings[: MAX_ALTERNATIVES + 1]

    def _encode(self, audio: npt.NDArray[np.float32]) -> Any:
        values = audio[np.newaxis, :]
        enc_feed: dict[str, Any] = {"input_values": values}
        if self._encoder_mask:
            enc_feed["attention_mask"] = np.ones(values.shape, dtype=np.int64)
        return self._encoder.run(["last_hidden_state"], enc_feed)[0]

    def _feeds(self, hidden: Any, n_samples: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """The decoder's inputs for step 0 (the first-step graph, or the merged one without
        its cache branch) and for later steps (the with-past graph, or the merged one with
        it, on the cache :meth:`_step` keeps in the second)."""
        mask = np.ones((1, n_samples), dtype=np.int64)
        first_feed: dict[str, Any] = {"encoder_hidden_states": hidden, **self._empty_past}
        next_feed: dict[str, Any] = {}
        if self._next_hidden:
            next_feed["encoder_hidden_states"] = hidden
        # The mask is per audio sample, like the encoder's (the graph downsamples it to
        # the hidden frames; a mask per frame breaks inputs over ~8 s).
        if self._first_mask:
            first_feed["encoder_attention_mask"] = mask
        if self._next_mask:
            next_feed["encoder_attention_mask"] = mask
        if not self.split_decoder:
            first_feed["use_cache_branch"] = np.array([False])
            next_feed["use_cache_branch"] = np.array([True])
        return first_feed, next_feed

    def _step(
        self, step: int, feeds: tuple[dict[str, Any], dict[str, Any]], token_id: int
    ) -> npt.NDArray[np.float64]:
        """One decoder step on ``token_id``: the next token's logits (the cache kept)."""
        first_feed, next_feed = feeds
        feed = first_feed if step == 0 else next_feed
        session = self._decoder if step == 0 else self._decoder_with_past
        present_names = self._first_present if step == 0 else self._next_present
        feed["input_ids"] = np.array([[token_id]], dtype=np.int64)
        logits, *present = session.run(None, feed)
        for name, value in zip(present_names, present, strict=True):
            # Cross-attention keys/values come from the first step only.
            if (step == 0 or ".decoder." in name) and name in self._next_past:
                next_feed[name] = value
        return np.asarray(logits[0, -1], dtype=np.float64)

    def _step_many(
        self,
        step: int,
        first_feed: dict[str, Any],
        pasts: Sequence[dict[str, Any]],
        tokens: Sequence[int],
    ) -> tuple[npt.NDArray[np.float64], list[dict[str, Any]]]:
        """One decoder step for several hypotheses on the same audio, each with its own
        cache (the with-past feed :meth:`_step` keeps), in one batch: their next-token
        logits (one row each) and each one's cache after its token. The caches given are
        not changed. Step 0 is the start, one hypothesis, as :meth:`_step` runs it."""
        if step == 0:
            rows, caches = [], []
            for past, token in zip(pasts, tokens, strict=True):
                own = dict(past)  # the step replaces its tensors
                rows.append(self._step(0, (first_feed, own), token))
                caches.append(own)
            return np.stack(rows), caches
        n = len(pasts)
        feed = dict(pasts[0])  # the static inputs, and the cross-attention cache, shared
        for name in self._next_past:
            if ".decoder." in name:  # self-attention: each hypothesis its own
                feed[name] = np.concatenate([p[name] for p in pasts], axis=0)
            else:
                feed[name] = np.repeat(feed[name], n, axis=0)
        for name in ("encoder_hidden_states", "encoder_attention_mask"):
            if name in feed:
                feed[name] = np.repeat(feed[name], n, axis=0)
        feed["input_ids"] = np.array([[t] for t in tokens], dtype=np.int64)
        logits, *present = self._decoder_with_past.run(None, feed)
        caches = []
        for b, past in enumerate(pasts):
            own = dict(past)
            for name, value in zip(self._next_present, present, strict=True):
                if ".decoder." in name and name in self._next_past:
                    own[name] = value[b : b + 1]
            caches.append(own)
        return np.asarray(logits[:, -1], dtype=np.float64), caches

    def _generate(
        self,
        hidden: Any,
        n_samples: int,
        max_tokens: int,
        held: HeldVocabulary | None = None,
    ) -> tuple[list[int], list[float], bool]:
        """Greedy decode on the encoder output ``hidden`` of ``n_samples`` of audio: (text
        tokens, log-probs of every chosen token including the end-of-text, whether
        end-of-text was reached within ``max_tokens``). ``held``: only the tokens it allows
        at each step may be chosen (the log-probs are then over those)."""
        feeds = self._feeds(hidden, n_samples)
        tokens: list[int] = []
        logprobs: list[float] = []
        next_id = self._bos
        word = ""  # the held decode's state: the word it is in the middle of
        for step in range(max_tokens + 1):
            row = self._step(step, feeds, next_id)
            if held is not None:
                allowed = held.allowed(word)
                # Not empty: a held decode that ends at once says nothing.
                allowed = allowed[(allowed < row.size) & ((step > 0) | (allowed != self._eos))]
                only = np.full(row.shape, -np.inf)
                only[allowed] = row[allowed]
                row = only
            next_id = int(row.argmax())
            if held is not None:
                word = held.advance(word, next_id)
            logprobs.append(float(row[next_id]) - log_sum_exp(row))
            if next_id == self._eos:
                return tokens, logprobs, True
            if step == max_tokens:
                break
            tokens.append(next_id)
        return tokens, logprobs, False

    def _score(self, hidden: Any, n_samples: int, text: str) -> FormScore:
        """How the audio takes ``text`` (each token fed to the decoder in turn, teacher
        forcing): ``speech/verify.py``'s :class:`FormScore`."""
        ids = [int(i) for i in self._tokenizer.encode(text, add_special_tokens=False).ids]
        feeds = self._feeds(hidden, n_samples)
        total = 0.0
        leads: list[float] = []
        end_gaps: list[float] = []  # each known token against the end of the text
        previous = self._bos
        for step, token in enumerate([*ids, self._eos]):
            row = self._step(step, feeds, previous)
            total += float(row[token]) - log_sum_exp(row)
            rivals = self._rivals.get(token)
            if rivals:
                leads.append(float(row[token] - row[list(rivals)].max()))
                end_gaps.append(float(row[token] - row[self._eos]))
            previous = token
        if not leads:
            return FormScore(total / (len(ids) + 1), math.inf, math.inf)
        return FormScore(
            total / (len(ids) + 1),
            sum(leads) / len(leads),
            min(leads),
            min(end_gaps[1:], default=math.inf),
        )

    def _verify(
        self, hidden: Any, n_samples: int, known: Sequence[KnownAnswer]
    ) -> SttResult | None:
        """The known answer the audio says, written plainly (``speech/verify.py``): of the
        answers whose likeliest written form passes :func:`verify.accepted`, the likeliest."""
        best: tuple[float, KnownAnswer] | None = None
        for answer in known:
            forms = [self._score(hidden, n_samples, form) for form in spoken_forms(answer)]
            score = max(forms, key=lambda f: f.mean)
            ok = accepted(score, answer.kind, self.verify_min_lead, self.verify_floor)
            # Never the answer itself: it is the caller's secret.
            log.info(
                "stt.moonshine.verify",
                kind=answer.kind.value,
                lead=round(score.lead, 3) if math.isfinite(score.lead) else None,
                worst=round(score.worst, 3) if math.isfinite(score.worst) else None,
                end_gap=round(score.end_gap, 3) if math.isfinite(score.end_gap) else None,
                accepted=ok,
            )
            if ok and (best is None or score.mean > best[0]):
                best = (score.mean, answer)
        if best is None:
            return None
        mean, answer = best
        return SttResult(
            text=written(answer),
            confidence=min(1.0, math.exp(mean)),
            held_to=confirmed_label(answer.kind),
        )


def _present_to_past(session: Any, path: Path, past: Collection[str] | None) -> list[str]:
    """The decoder's outputs after ``logits`` (``present.N.kind.key|value``) as the
    ``past_key_values.N.kind.key|value`` input names they feed, by output position; when
    ``past`` is given they must be exactly those names."""
    outputs = [o.name for o in session.get_outputs()]
    if not outputs or outputs[0] != "logits":
        raise MoonshineModelError(f"{path}: first output is not logits")
    names = [n.replace("present.", "past_key_values.", 1) for n in outputs[1:]]
    if not all(_PAST.match(n) for n in names) or (past is not None and set(names) != set(past)):
        raise MoonshineModelError(f"{path}: present/past outputs do not match")
    return names


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
