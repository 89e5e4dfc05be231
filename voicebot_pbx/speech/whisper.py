"""Speech-to-text with faster-whisper (CTranslate2): the default engine (English).

Owns :class:`WhisperEngine` (one model loaded for the process; short encoder windows with a
full-window fallback), its cross-call :class:`WhisperBatcher` (one inference thread that
decodes utterances from different calls together: ``WhisperEngine.transcribe_async`` from the
event loop, ``transcribe`` from a worker thread), the per-call buffer (``stt.BufferedStream``)
and the decode counters (:class:`WhisperStats`). The degenerate-decode guard and token budget
are in ``speech/whisper_guard.py``. faster-whisper and ctranslate2 are imported where they are
used (heavy), so importing this module is cheap. Measured trade-offs: ``bench/bench_stt.py``
and ``bench/README-stt.md``.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from voicebot_pbx.audio import pcm_to_float32, resample
from voicebot_pbx.speech.cpu import limit_blas_threads, lower_thread_priority
from voicebot_pbx.speech.stt import BufferedStream, SttCapabilities, SttResult, SttTiming
from voicebot_pbx.speech.whisper_guard import degenerate_reason, token_budget

log = structlog.get_logger(__name__)

WHISPER_RATE_HZ = 16000
_WHISPER_FULL_FRAMES = 3000  # 30 s of 10 ms mel frames: what Whisper was trained on
_FRAMES_PER_S = 100
_SAMPLES_PER_FRAME = WHISPER_RATE_HZ // _FRAMES_PER_S
# The initial prompt's length cap: Whisper takes up to 223 tokens of previous text ([stt]
# prompt is held to 60 words, well under it, by the config).
MAX_PROMPT_TOKENS = 200


@dataclass(slots=True)
class WhisperStats:
    short_decodes: int = 0
    full_decodes: int = 0
    fallbacks: int = 0
    """Short decodes that looked degenerate (retried on a longer or the full window)."""
    retries: int = 0
    """Decodes on the ``retry_min_input_s`` window after a degenerate shorter one."""
    batches: int = 0
    """Inference rounds of the batcher (each encodes/decodes 1..max_batch utterances)."""
    batched_utterances: int = 0
    """Utterances decoded in a round together with at least one other."""
    max_batch_seen: int = 0


@dataclass(frozen=True, slots=True)
class _Decode:
    text: str
    n_tokens: int
    avg_logprob: float
    no_speech_prob: float


@dataclass(slots=True)
class _Request:
    pcm: bytes
    rate_hz: int
    future: Future[SttResult]
    submitted_at: float
    audio: npt.NDArray[np.float32] | None = None
    features: npt.NDArray[np.float32] | None = None  # mel frames of the content, no padding
    taken_at: float = 0.0  # when the inference thread took it
    batch: int = 0  # utterances in its first decode round
    windows: int = 0  # encoder windows tried so far

    def resolve(self, result: SttResult) -> None:
        """Set the result with where its time went (see ``SttTiming``)."""
        now = time.monotonic()
        timing = SttTiming(
            queue_wait_ms=round((self.taken_at - self.submitted_at) * 1000.0, 1),
            decode_ms=round((now - self.taken_at) * 1000.0, 1),
            batch=self.batch,
            windows=self.windows,
            engine="whisper",
        )
        self.future.set_result(replace(result, timing=timing))

    @property
    def duration_s(self) -> float:
        return 0.0 if self.audio is None else self.audio.size / WHISPER_RATE_HZ


class WhisperBatcher:
    """One dedicated inference thread for a Whisper model, batching across calls.

    ``submit`` never blocks: it queues the utterance and returns a
    :class:`concurrent.futures.Future`. The thread takes every request queued meanwhile (up
    to ``max_batch``, oldest first, of similar length) and runs them as one batch: one
    ``encode`` on features padded to the longest input, one ``generate`` (so the decoder's
    weights are read once per token step for the whole batch, which is where batching saves
    most). Nothing waits for a batch to fill unless ``batch_wait_s`` > 0: under light load
    every request is decoded at once, alone; under load the requests that queued during the
    previous round go together. A cancelled future (the caller timed out, or a speculative
    decode went stale because the caller spoke on) is skipped if it has not started.
    ``urgent`` requests (a turn has ended: a caller is waiting for the answer) are taken
    before speculative ones (decodes at a pause that may yet be discarded), each kind
    oldest first.

    The event loop only ever appends to a deque under a lock: resampling, feature
    extraction and inference all happen on this thread, so a burst of utterances from many
    calls cannot block the loop (or the frame pacing of other calls); CTranslate2 releases
    the GIL while it computes.
    """

    def __init__(
        self,
        run_batch: Callable[[list[_Request]], None],
        *,
        max_batch: int = 8,
        batch_wait_s: float = 0.0,
        name: str = "stt-batcher",
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._run_batch = run_batch
        self.max_batch = max_batch
        self.batch_wait_s = batch_wait_s
        self._name = name
        self._urgent: deque[_Request] = deque()
        self._speculative: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def pending(self) -> int:
        with self._cond:
            return self._queued()

    def submit(self, pcm: bytes, rate_hz: int, *, urgent: bool = False) -> Future[SttResult]:
        future: Future[SttResult] = Future()
        request = _Request(pcm, rate_hz, future, time.monotonic())
        with self._cond:
            if self._closed:
                raise RuntimeError("the STT batcher is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()
            (self._urgent if urgent else self._speculative).append(request)
            self._cond.notify()
        return future

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the thread; requests still queued fail with ``RuntimeError``."""
        with self._cond:
            self._closed = True
            left = [*self._urgent, *self._speculative]
            self._urgent.clear()
            self._speculative.clear()
            self._cond.notify_all()
            thread = self._thread
        for request in left:
            if request.future.set_running_or_notify_cancel():
                request.future.set_exception(RuntimeError("the STT batcher is closed"))
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)

    def _queued(self) -> int:
        return len(self._urgent) + len(self._speculative)

    def _take(self) -> list[_Request] | None:
        with self._cond:
            while not self._queued() and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            if self.batch_wait_s > 0 and self._queued() < self.max_batch:
                oldest = min(q[0].submitted_at for q in (self._urgent, self._speculative) if q)
                deadline = oldest + self.batch_wait_s
                while self._queued() < self.max_batch and not self._closed:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            batch: list[_Request] = []
            for queue in (self._urgent, self._speculative):
                while queue and len(batch) < self.max_batch:
                    request = queue.popleft()
                    if request.future.set_running_or_notify_cancel():  # False: cancelled
                        request.taken_at = time.monotonic()
                        batch.append(request)
            return batch

    def _loop(self) -> None:
        lower_thread_priority()  # decoding must never delay the event loop's pacing
        while (batch := self._take()) is not None:
            if not batch:
                continue
            try:
                self._run_batch(batch)
            except BaseException as exc:  # never kill the thread: fail this batch only
                log.exception("stt.batch_failed", size=len(batch))
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(exc)


class WhisperEngine:
    """faster-whisper (CTranslate2) with one model loaded for the process.

    ``short_input=True`` (default) encodes the utterance padded to
    ``max(short_min_input_s, duration + short_pad_s)`` instead of Whisper's fixed 30 s
    (about 3x less CPU, see MODELS.md), decodes greedily with a token budget of
    ``6 tokens/s * duration + 12`` and ``no_repeat_ngram_size=4``, and falls back to the
    full 30 s window when :func:`degenerate_reason` flags the output or the utterance is
    longer than ~28 s. With ``short_min_input_s`` below ``retry_min_input_s`` (e.g. 5 s for
    capacity), a degenerate decode is first retried on the ``retry_min_input_s`` window,
    which rarely loops, before the full window. ``short_input=False`` always uses the full window
    (``WhisperModel.transcribe``, greedy at temperature 0, no prompt conditioning).

    ``timestamps=False`` prompts the short-input decodes with ``<|notimestamps|>`` (after the
    start-of-transcript sequence): Whisper then emits only the text tokens, ~30% fewer
    decoder steps per utterance, and the token budget shrinks to ``5 tokens/s * duration +
    10`` (see :func:`token_budget`) so the loop guard still trips on a runaway decode. The
    full-window fallback is unchanged (it always decodes with timestamps).

    All inference runs on one :class:`WhisperBatcher` thread: utterances from different
    calls that are queued at the same time are decoded as one batch (padded to the longest
    input of the batch; at most ``max_batch``, and only inputs within ``batch_max_ratio`` of
    each other's padded length go together). In a batch the encoder runs on
    ``encoder_batch`` utterances at a time (default 1: one by one, back to back, while its
    weights are hot in the cache; a batch of 8 in one encoder call cost ~50 % more CPU per
    utterance, its activations no longer fit in the cache) and only ``generate`` takes
    the whole batch at once. :meth:`transcribe_async` awaits the result from the event
    loop; :meth:`transcribe` blocks a worker thread on it.
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
        retry_min_input_s: float = 10.0,
        short_pad_s: float = 2.0,
        timestamps: bool = True,
        no_speech_threshold: float = 0.6,
        log_prob_threshold: float = -1.0,
        max_batch: int = 8,
        batch_wait_ms: float = 0.0,
        batch_max_ratio: float = 1.5,
        encoder_batch: int = 1,
        initial_prompt: str = "",
    ) -> None:
        if encoder_batch < 1:
            raise ValueError("encoder_batch must be at least 1")
        # Lazy: faster-whisper (and CTranslate2 under it) is heavy to import.
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        # The mel features' matrix product otherwise wakes numpy's OpenBLAS threads, whose
        # spinning then costs ~0.1 CPU-s per utterance during the encoder call.
        limit_blas_threads()

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
        self.timestamps = timestamps
        self.initial_prompt = initial_prompt.strip()
        self._prompt = []
        if self.initial_prompt:
            context = self._tokenizer.encode(" " + self.initial_prompt)
            if len(context) > MAX_PROMPT_TOKENS:
                raise ValueError(
                    f"the STT prompt is {len(context)} tokens long; at most {MAX_PROMPT_TOKENS}"
                )
            self._prompt = [self._tokenizer.sot_prev, *context]
        self._prompt.extend(self._tokenizer.sot_sequence)
        if not timestamps:
            self._prompt.append(self._tokenizer.no_timestamps)
        self.compute_type = compute_type
        self.cpu_threads = cpu_threads
        self.beam_size = beam_size
        self.short_input = short_input
        self.short_min_input_s = short_min_input_s
        self.retry_min_input_s = retry_min_input_s
        self.short_pad_s = short_pad_s
        self.no_speech_threshold = no_speech_threshold
        self.log_prob_threshold = log_prob_threshold
        self.batch_max_ratio = batch_max_ratio
        self.encoder_batch = encoder_batch
        self.stats = WhisperStats()
        self._stats_lock = threading.Lock()
        self.batcher = WhisperBatcher(
            self._run_batch, max_batch=max_batch, batch_wait_s=batch_wait_ms / 1000.0
        )
        log.debug(
            "stt.whisper.loaded",
            model=str(self.model_dir),
            compute_type=compute_type,
            cpu_threads=cpu_threads,
            max_batch=max_batch,
        )

    @property
    def capabilities(self) -> SttCapabilities:
        return SttCapabilities(batch=self, queued=self)

    def new_stream(self, rate_hz: int) -> BufferedStream:
        return BufferedStream(self, rate_hz)

    def submit(self, pcm: bytes, rate_hz: int, *, urgent: bool = False) -> Future[SttResult]:
        """Queue one whole utterance (int16 mono PCM at ``rate_hz``); never blocks.
        ``urgent``: a caller waits for it (decoded before speculative requests)."""
        return self.batcher.submit(pcm, rate_hz, urgent=urgent)

    def transcribe(self, pcm: bytes, rate_hz: int) -> SttResult:
        """Transcribe one whole utterance, blocking the calling thread (not the loop's!)."""
        return self.submit(pcm, rate_hz).result()

    async def transcribe_async(
        self, pcm: bytes, rate_hz: int, *, urgent: bool = False
    ) -> SttResult:
        """Transcribe one whole utterance without blocking the event loop. Cancelling the
        await (a timeout, a stale speculation) drops the request if its batch has not
        started yet."""
        return await asyncio.wrap_future(self.submit(pcm, rate_hz, urgent=urgent))

    def close(self) -> None:
        self.batcher.close()

    # --- on the batcher thread ----------------------------------------------------------

    def _count(self, field: str, n: int = 1) -> None:
        with self._stats_lock:
            setattr(self.stats, field, getattr(self.stats, field) + n)

    def _frames_for(self, content_frames: int, min_input_s: float) -> int:
        """Encoder input length (mel frames) for an utterance of ``content_frames``."""
        return min(
            _WHISPER_FULL_FRAMES,
            max(
                round(min_input_s * _FRAMES_PER_S),
                content_frames + round(self.short_pad_s * _FRAMES_PER_S),
            ),
        )

    def _fits_short(self, duration_s: float) -> bool:
        return self.short_input and duration_s + self.short_pad_s < (
            _WHISPER_FULL_FRAMES / _FRAMES_PER_S
        )

    def _run_batch(self, batch: list[_Request]) -> None:
        """Decode ``batch`` and resolve every request's future (on the batcher thread).

        Inputs too different in length to share a padded window run as separate rounds.
        A degenerate short decode is retried on a ``retry_min_input_s`` window (when that
        is longer than ``short_min_input_s``), then on the full 30 s window; utterances too
        long for a short window go to the full window at once. Retries run after every
        other request of the batch has its result."""
        short: list[_Request] = []
        full: list[_Request] = []
        for request in batch:
            request.audio = pcm_to_float32(resample(request.pcm, request.rate_hz, WHISPER_RATE_HZ))
            if request.audio.size < WHISPER_RATE_HZ // 10:  # < 100 ms: nothing to recognise
                request.resolve(SttResult(text="", confidence=None))
            elif self._fits_short(request.duration_s):
                short.append(request)
            else:
                full.append(request)
        ladder = [self.short_min_input_s]
        if self.retry_min_input_s > self.short_min_input_s:
            ladder.append(self.retry_min_input_s)
        pending = short
        for rung, min_input_s in enumerate(ladder):
            flagged: list[_Request] = []
            for group in self._groups(pending, min_input_s):
                flagged += self._decode_group(group, min_input_s, first=rung == 0)
            pending = flagged
        for request in [*full, *pending]:
            self._resolve_full(request)

    def _decode_group(
        self, group: list[_Request], min_input_s: float, *, first: bool
    ) -> list[_Request]:
        """One batch on one short window: resolves the sane decodes, returns the others."""
        audios = [r.audio for r in group if r.audio is not None]
        for request in group:
            request.windows += 1
            request.batch = request.batch or len(group)
        self._count("batches")
        if len(group) > 1:
            self._count("batched_utterances", len(group))
        with self._stats_lock:
            self.stats.max_batch_seen = max(self.stats.max_batch_seen, len(group))
        if not first:
            decodes = self._decode_short_batch_at(audios, min_input_s)
            self._count("retries", len(group))
        elif len(group) == 1:
            decodes = [self._decode_short(audios[0])]
        else:
            decodes = self._decode_short_batch(audios)
        self._count("short_decodes", len(group))
        flagged: list[_Request] = []
        for request, (decode, max_new_tokens) in zip(group, decodes, strict=True):
            reason = degenerate_reason(
                decode.text,
                n_tokens=decode.n_tokens,
                max_new_tokens=max_new_tokens,
                duration_s=request.duration_s,
            )
            if reason is None:
                request.resolve(self._to_result(decode))
                continue
            if first:
                self._count("fallbacks")
            log.info(
                "stt.whisper.fallback",
                reason=reason,
                text=decode.text,
                duration_s=round(request.duration_s, 2),
                input_s=max(min_input_s, request.duration_s + self.short_pad_s),
                batch=len(group),
            )
            flagged.append(request)
        return flagged

    def _groups(self, requests: list[_Request], min_input_s: float) -> list[list[_Request]]:
        """Split into batches whose padded input lengths are within ``batch_max_ratio`` of
        each other (a 2 s "yes" is not padded to a 20 s utterance's window), keeping
        arrival order inside each group."""
        groups: list[list[tuple[int, _Request]]] = []
        for request in requests:
            assert request.audio is not None
            frames = self._frames_for(request.audio.size // _SAMPLES_PER_FRAME, min_input_s)
            for group in groups:
                sizes = [f for f, _ in group] + [frames]
                if max(sizes) <= self.batch_max_ratio * min(sizes):
                    group.append((frames, request))
                    break
            else:
                groups.append([(frames, request)])
        return [[request for _, request in group] for group in groups]

    def _resolve_full(self, request: _Request) -> None:
        assert request.audio is not None
        request.windows += 1
        request.batch = request.batch or 1
        try:
            result = self._to_result(self._decode_full(request.audio))
        except Exception as exc:
            request.future.set_exception(exc)
            return
        request.resolve(result)

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
        """One utterance on a short encoder input: (decode, its token budget)."""
        return self._decode_short_batch([audio])[0]

    def _decode_short_batch(
        self, audios: Sequence[npt.NDArray[np.float32]]
    ) -> list[tuple[_Decode, int]]:
        """Utterances padded to one short input length, encoded and decoded as one batch."""
        return self._decode_short_batch_at(audios, self.short_min_input_s)

    def _decode_short_batch_at(
        self, audios: Sequence[npt.NDArray[np.float32]], min_input_s: float
    ) -> list[tuple[_Decode, int]]:
        from faster_whisper.audio import pad_or_trim  # lazy: heavy optional engine

        features = []
        for audio in audios:
            mel = self._model.feature_extractor(audio)
            features.append(mel[:, : mel.shape[-1] - 1])
        n_frames = self._frames_for(max(f.shape[-1] for f in features), min_input_s)
        batch = np.stack([pad_or_trim(f, n_frames) for f in features])
        encoder_output = self._encode(batch)
        budgets = [
            token_budget(a.size / WHISPER_RATE_HZ, timestamps=self.timestamps) for a in audios
        ]
        options: dict[str, Any] = {}
        if self.timestamps:
            options["max_initial_timestamp_index"] = 50
        results = self._model.model.generate(
            encoder_output,
            [self._prompt] * len(audios),
            beam_size=self.beam_size,
            max_length=len(self._prompt) + max(budgets),
            no_repeat_ngram_size=4,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=self._suppress_tokens,
            **options,
        )
        timestamp_begin = self._tokenizer.timestamp_begin
        out: list[tuple[_Decode, int]] = []
        for result, budget in zip(results, budgets, strict=True):
            tokens: list[int] = list(result.sequences_ids[0])
            text = self._tokenizer.decode([t for t in tokens if t < timestamp_begin]).strip()
            # CTranslate2 returns the length-normalised score; recover the mean log-prob the
            # way faster-whisper does (cumulative / (tokens + 1)).
            avg_logprob = float(result.scores[0]) * len(tokens) / (len(tokens) + 1)
            decode = _Decode(
                text=text,
                # In a batch the shared max_length follows the longest utterance: a shorter
                # one that ran past its own budget counts as having hit it.
                n_tokens=min(len(tokens), budget),
                avg_logprob=avg_logprob,
                no_speech_prob=float(result.no_speech_prob),
            )
            out.append((decode, budget))
        return out

    def _encode(self, batch: npt.NDArray[np.float32]) -> Any:
        """Encoder output for a batch of padded features, ``encoder_batch`` utterances per
        encoder call, concatenated for the one batched ``generate``."""
        if len(batch) <= self.encoder_batch:
            return self._model.encode(batch)
        import ctranslate2  # lazy: heavy optional engine

        parts = [
            np.asarray(self._model.encode(batch[k : k + self.encoder_batch]))
            for k in range(0, len(batch), self.encoder_batch)
        ]
        return ctranslate2.StorageView.from_array(np.ascontiguousarray(np.concatenate(parts)))

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
            initial_prompt=self.initial_prompt or None,
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
