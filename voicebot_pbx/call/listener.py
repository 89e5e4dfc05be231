"""The recognition half of a call: caller audio in, turn events and transcripts out.

``Listener`` owns everything between the caller's frames and a finished transcript: the
inbound clock (missing frames count as silence), echo gating, VAD and the pure
``TurnTaker``, the look-back before an onset, the evidence at each pause for the
end-of-turn rules of ``call/turn_end.py`` (the smart-turn model scored by the per-call
verdict worker, the text reader, the speculative decode), and the per-call STT worker with
its speculative decodes at pauses. It tells the session what happened through
``ListenerHooks`` (synchronous calls on the event loop): an utterance started, the caller
barged in, a turn's transcript is ready. It never touches replies or records beyond
appending engine errors.
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol, TypeVar

import structlog

from voicebot_pbx.audio import Resampler
from voicebot_pbx.call.turn_end import (
    FINISHED,
    NOTHING_EXPECTED,
    PauseEvidence,
    TurnRules,
    answer_expected,
    end_after,
    longest_silence_ms,
    waited_for_answer_s,
    waited_unfinished_s,
)
from voicebot_pbx.config import Config
from voicebot_pbx.pbx.media import AudioIn
from voicebot_pbx.pbx.speaker import Speaker
from voicebot_pbx.speech.echo import is_line_echo
from voicebot_pbx.speech.engines import Engines, EngineTimeout
from voicebot_pbx.speech.expect import Expected
from voicebot_pbx.speech.inbound_clock import InboundClock
from voicebot_pbx.speech.log_mel import WINDOW_S as MODEL_WINDOW_S  # what the model hears
from voicebot_pbx.speech.stt import (
    BatchTranscriber,
    SttCapabilities,
    SttResult,
    SttStream,
    SttTiming,
    timed,
)
from voicebot_pbx.speech.turn_model import TurnModel, TurnScore
from voicebot_pbx.speech.turn_text import (
    TextTurnScorer,
    TextVerdict,
    text_verdict,
    word_list_verdict,
)
from voicebot_pbx.speech.turns import (
    BargeIn,
    BargeInCancelled,
    BargeInOnset,
    PauseStarted,
    TurnAction,
    TurnTaker,
    UtteranceEnded,
    UtteranceStarted,
)
from voicebot_pbx.speech.vad import WINDOW_MS
from voicebot_pbx.speech.verify import KnownAnswer

log = structlog.get_logger("voicebot_pbx.call.listener")
T = TypeVar("T")

_STT_QUEUE_ITEMS = 512
# Utterances whose silence before them is kept until their transcript comes (turn ids).
_SILENCES_KEPT = 8
WINDOW_S = WINDOW_MS / 1000.0


class _OfAPause(Protocol):
    @property
    def turn_id(self) -> int: ...
    @property
    def pause_id(self) -> int: ...


# A verdict, decode or reading that belongs to one pause of one turn.
_PauseItem = TypeVar("_PauseItem", bound=_OfAPause)


class ListenerHooks(Protocol):
    def utterance_started(self, turn_id: int) -> None:
        """The caller started speaking (turn ``turn_id``)."""

    def barge_in_onset(self) -> None:
        """The first window of caller speech over the bot (``vad.barge_in_pause_at_onset``):
        the bot may go quiet now; a ``barge_in`` or ``barge_in_cancelled`` follows."""

    def barge_in_cancelled(self) -> None:
        """The sound of the last ``barge_in_onset`` ended before it was a barge-in."""

    def barge_in(self, turn_id: int, onset_to_decision_ms: float, lag_ms: float) -> None:
        """The caller spoke over the bot long enough to be an interruption:
        ``onset_to_decision_ms`` of caller audio (VAD onset to decision, stream time) and
        ``lag_ms`` from the deciding frame's arrival to now (event-loop delay)."""

    def heard_so_far(self, turn_id: int, text: str) -> None:
        """A decode of the utterance so far, at or just before a pause: the turn may end
        with these words (its answer may be prepared; nothing may act on them yet)."""

    def transcript(
        self,
        turn_id: int,
        text: str,
        confidence: float | None,
        speech_end_at: float,
        now: float,
        trace: TranscriptTrace,
        alternatives: tuple[str, ...] = (),
    ) -> None:
        """The turn's words (joined with any carried over), ``speech_end_at`` in loop time;
        ``trace`` says where the time went; ``alternatives``: other readings of the number
        the dialogue asked for (``SttResult.alternatives``; none when words were carried
        over)."""


@dataclass(frozen=True, slots=True)
class TranscriptTrace:
    """Why a turn's transcript came when it did: logged with it, so a slow turn explains
    itself (end of turn at the short or the long silence, the decode at the pause used or
    a new one after the turn ended, the decode's queue wait / run time / batch / retries,
    speculative decodes thrown away because the caller spoke on)."""

    # "detector" (short silence) | "text" (short silence: the text model read it finished)
    # | "tiebreak" (turn.tiebreak_silence_ms) | "silence" (vad.end_silence_max_ms or a rule's
    # longer wait) | "digits" (all digits asked for heard) | "known" (a date the dialogue
    # knows confirmed whole at the pause: speech/verify.py)
    ended_by: str
    # "speculative" (decoded at the pause), "early" (decoded in the quiet run before it),
    # "final", "stream" (Vosk) or "none" (STT failed)
    source: str
    stt: SttTiming | None
    speculations_dropped: int
    held_to: str | None = None  # the expectation the decode was held to (speech/expect.py)
    # Silence waited beyond vad.end_silence_max_ms for digits still to come (not dead air).
    waited_for_digits_s: float = 0.0
    # The text model's reading of the decode at the last pause (speech/turn_text.py), and
    # the silence waited beyond vad.end_silence_max_ms because it read "unfinished".
    text_verdict: str | None = None
    waited_unfinished_s: float = 0.0
    # The silence before the transcript's first words began, after the caller's previous
    # utterance (inf: none before them); for words carried over from a turn decoded late,
    # the silence before those.
    after_silence_s: float = math.inf
    # The end-of-turn model's verdict on the pause that ended the turn: asked -> known (its
    # wait in the shared inference pool and the score); None: no verdict for that pause.
    verdict_ms: float | None = None

    def fields(self) -> dict[str, object]:
        out: dict[str, object] = {
            "ended_by": self.ended_by,
            "stt_source": self.source,
            "speculations_dropped": self.speculations_dropped,
        }
        if self.held_to is not None:
            out["stt_held_to"] = self.held_to
        if self.waited_for_digits_s:
            out["waited_for_digits_ms"] = round(self.waited_for_digits_s * 1000.0)
        if self.text_verdict is not None:
            out["text_verdict"] = self.text_verdict
        if self.waited_unfinished_s:
            out["waited_unfinished_ms"] = round(self.waited_unfinished_s * 1000.0)
        if self.verdict_ms is not None:
            out["turn_verdict_ms"] = self.verdict_ms
        if self.stt is not None:
            if self.stt.engine:
                out["stt_engine"] = self.stt.engine
            out.update(
                stt_queue_ms=self.stt.queue_wait_ms,
                stt_decode_ms=self.stt.decode_ms,
                stt_batch=self.stt.batch,
                stt_windows=self.stt.windows,
            )
        return out


@dataclass(frozen=True, slots=True)
class _Audio:
    pcm: bytes


@dataclass(frozen=True, slots=True)
class _Finish:
    turn_id: int
    pause_id: int
    speech_end_at: float  # loop time
    pcm: bytes  # the whole utterance (batch engines): the next one may start meanwhile
    ended_by: str  # TranscriptTrace.ended_by
    verdict_ms: float | None  # TranscriptTrace.verdict_ms


@dataclass(slots=True)
class _EarlyDecode:
    """A decode started before the pause it is for (``vad.speculate_after_quiet_ms`` into a
    quiet run, before the VAD probability falls)."""

    turn_id: int
    pause_id: int  # the coming pause's id
    quiet_since_s: float  # the quiet run it was started in
    adopted: bool = False  # the pause began at that quiet run: it is the pause's decode
    dropped: bool = False  # the caller went on before the pause: its transcript is stale
    decoded: bool = False  # its decode came back (a transcript or none) before the pause


@dataclass(frozen=True, slots=True)
class _Speculate:
    turn_id: int
    pause_id: int
    pcm: bytes
    early: _EarlyDecode | None = None  # None: started at the pause


@dataclass(frozen=True, slots=True)
class _ScoreRequest:
    turn_id: int
    pause_id: int
    pcm: bytes
    requested_at: float  # loop time


@dataclass(frozen=True, slots=True)
class _Verdict:
    turn_id: int
    pause_id: int
    complete: bool
    wait_ms: float  # requested -> verdict (the wait in the shared pool and the score)


@dataclass(frozen=True, slots=True)
class _Speculation:
    turn_id: int
    pause_id: int
    result: SttResult
    early: bool = False  # decoded before the pause (_EarlyDecode)


@dataclass(frozen=True, slots=True)
class _TextRead:
    """The text model's verdict on the decode at one pause."""

    turn_id: int
    pause_id: int
    verdict: TextVerdict


class Listener:
    def __init__(
        self,
        config: Config,
        engines: Engines,
        speaker: Speaker,
        hooks: ListenerHooks,
        errors: list[str],
    ) -> None:
        self.config = config
        self.engines = engines
        self.speaker = speaker  # read only: what the bot just said, for echo gating
        self.hooks = hooks
        self.errors = errors
        self.turns = TurnTaker(config.vad)
        self.clock = InboundClock()
        # Sees all caller audio (real and filled silence) at the session's rate.
        # (the caller's audio, whether it is the echo of the bot's own voice)
        self.audio_tap: Callable[[bytes, bool], None] | None = None
        self.rate_hz = 8000
        self._stt_queue: asyncio.Queue[_Audio | _Finish | _Speculate] = asyncio.Queue(
            _STT_QUEUE_ITEMS
        )
        self.utterance_open = False
        # The utterance so far (for speculative transcription at pauses).
        self._utterance_pcm = bytearray()
        self._speculation: _Speculation | None = None
        # The speculative decode in flight: cancelled when the caller speaks on (dropped
        # unstarted from the engine's queue, so a busy engine does not decode stale audio).
        self._speculating: (
            tuple[int, asyncio.Future[SttResult | None], _EarlyDecode | None] | None
        ) = None
        # The decode started in the current quiet run for the coming pause (not yet adopted).
        self._early: _EarlyDecode | None = None
        self.speculations_dropped = 0
        self._turn_dropped_at = 0  # speculations_dropped when the current turn began
        capabilities: SttCapabilities = engines.stt.capabilities
        self._batch: BatchTranscriber | None = capabilities.batch
        self._queued = capabilities.queued
        self._expecting = capabilities.expecting
        # What the caller is expected to say next (the session sets it with each answer:
        # digits after the dialogue asked for an account number); decodes are held to it
        # where the engine can (SttCapabilities.expecting) and stt.hold_expected is on.
        self.expect: Expected | None = None
        self.known: tuple[KnownAnswer, ...] = ()  # speech/verify.py; never logged
        self.expect_digits: int | None = None  # how many digits complete the expected answer
        # The end-of-turn rules' view of it (call/turn_end.py): digits to count, a postcode
        # or a date of birth read out with pauses inside it ("N W 5, [pause] 6 P L").
        self._answer_expected = NOTHING_EXPECTED
        self.stt: SttStream | None = None
        # (stream time at the frame's end, pcm) of recent frames, for STT look-back.
        self._recent: deque[tuple[float, bytes]] = deque(maxlen=100)
        self._fed_s = 0.0
        # Where the last utterance's speech ended (VAD stream time): the next utterance's
        # lookback stops there, so its transcript never repeats the previous words.
        self._last_speech_end_s = -math.inf
        self._last_window_s = 0.0
        self.last_frame_at = 0.0
        self._carry_text = ""
        # The silence before each utterance began, by turn id, until its transcript comes
        # (bounded: a turn that never gets one is dropped later); for the carried words of a
        # late transcript, the silence before them (None: no words carried that way).
        self._silence_before_s: dict[int, float] = {}
        self._carry_silence_s: float | None = None
        self._inbound_resampler: Resampler | None = None
        # End of turn: the detector's verdict on the current pause (None: none yet).
        self._detector = config.turn.detector
        self._turn_model: TurnModel | None = (
            engines.turn_model if self._detector == "smart-turn" else None
        )
        if self._detector == "smart-turn" and self._turn_model is None:
            raise ValueError("[turn] detector = smart-turn but no end-of-turn model is loaded")
        self._verdict: _Verdict | None = None
        self._score_request: _ScoreRequest | None = None
        self._scored_pause: tuple[int, int] | None = None
        self._score_wakeup = asyncio.Event()
        self.turn_scores = 0
        self.turn_model_cpu_s = 0.0
        self._turn_model_failed = False
        # The text model, or the word list (turn.text_reader), reads the decode at each
        # pause (needs whole-utterance decodes).
        reading = config.turn.unfinished_max_silence_ms > 0 and self._batch is not None
        self._text_model: TextTurnScorer | None = (
            engines.text_model if reading and config.turn.text_reader == "model" else None
        )
        self._reading = self._text_model is not None or (
            reading and config.turn.text_reader == "words"
        )
        self._rules = TurnRules.from_config(config, reading=self._reading)
        self._text_read: _TextRead | None = None
        self._text_request: tuple[int, int, str] | None = None  # the newest decode to read
        self._text_wakeup = asyncio.Event()
        self._text_model_failed = False
        self.text_reads = 0
        self.text_model_cpu_s = 0.0
        self.turns.set_max_silence_ms(longest_silence_ms(self._rules, self._answer_expected))

    def start(self, rate_hz: int) -> None:
        """The call's rate is known: make the per-call VAD (and STT stream) state."""
        self.rate_hz = rate_hz
        self.vad = self.engines.vad.new_stream(rate_hz)
        # Batch engines (Whisper) get the utterance from the session; streaming engines
        # (Vosk) get a stream per call, fed continuously.
        self.stt = None if self._batch is not None else self.engines.stt.new_stream(rate_hz)

    def close(self) -> None:
        if self.stt is not None:
            self.stt.close()

    def carry(self, text: str) -> None:
        """Words already heard that were never answered: they open the next transcript."""
        self._carry_text = text
        self._carry_silence_s = None

    # --- audio in ----------------------------------------------------------------------

    def on_frame(self, event: AudioIn) -> None:
        """A real inbound frame (keeps the call's clock)."""
        self.clock.on_frame(event.at_s, len(event.pcm) / (2 * event.rate_hz))
        self._on_audio(event)

    def fill_silence(self, now: float) -> None:
        """Feed the silence of frames that did not come (``InboundClock``)."""
        missing_s = self.clock.missing_s(now)
        if missing_s > 0:
            samples = round(missing_s * self.rate_hz)
            self._on_audio(AudioIn(bytes(2 * samples), self.rate_hz, now))

    def _on_audio(self, event: AudioIn) -> None:
        pcm = event.pcm
        if event.rate_hz != self.rate_hz:
            # The caller's first audio came after the session had to pick a rate: convert.
            if self._inbound_resampler is None:
                self._inbound_resampler = Resampler(event.rate_hz, self.rate_hz)
            pcm = self._inbound_resampler.process(pcm)
            if not pcm:
                return
        self._fed_s += len(pcm) / (2 * self.rate_hz)
        self._recent.append((self._fed_s, pcm))
        echo = self._looks_like_echo(pcm)
        if self.audio_tap is not None:
            self.audio_tap(pcm, echo)  # answering-machine detection (outbound calls)
        if self.utterance_open:
            self._feed_stt(pcm)
        for window in self.vad.process_windows(pcm):
            window_start_s = window.start_s
            prob = 0.0 if echo else window.prob
            self._last_window_s = window_start_s
            self.last_frame_at = event.at_s
            for action in self.turns.on_vad(
                prob, window_start_s, window.level_dbfs, echo=echo, pcm=window.pcm
            ):
                self._apply(action, event.at_s)
            self._drop_stale_speculation()
            self._maybe_speculate_early()
            self._maybe_request_score()
            self._maybe_end_early()

    def _drop_stale_speculation(self) -> None:
        """The caller spoke on after the pause the speculative decode is for: its transcript
        can only be discarded, so stop waiting for it."""
        self._check_early()
        if self._speculating is None:
            return
        turn_id, decode, early = self._speculating
        if early is not None and not early.adopted:
            if early.dropped:
                decode.cancel()
            return
        # Only while its turn is open: once the turn has ended, its _Finish will use it.
        if turn_id == self.turns.turn_id and self.utterance_open and not self.turns.in_pause:
            decode.cancel()

    def _check_early(self) -> None:
        """The caller made a sound before the probability fell (the quiet run the early
        decode was started in is broken): that decode and its transcript are stale."""
        early = self._early
        if early is None or self.turns.in_pause:
            return  # none, or the pause decides (PauseStarted)
        if (
            early.turn_id == self.turns.turn_id
            and self.utterance_open
            and self.turns.quiet_since_s == early.quiet_since_s
        ):
            return
        self._drop_early()

    def _drop_early(self) -> None:
        early = self._early
        if early is None:
            return
        early.dropped = True
        self._early = None
        spec = self._speculation
        if spec is not None and (spec.turn_id, spec.pause_id) == (early.turn_id, early.pause_id):
            self._speculation = None  # no pause with that id has begun: it is the early one

    def _maybe_speculate_early(self) -> None:
        """``vad.speculate_after_quiet_ms`` into a quiet run inside an utterance: decode the
        utterance so far for the pause that may come (a whole-utterance engine)."""
        after_ms = self.config.vad.speculate_after_quiet_ms
        if self._batch is None or after_ms <= 0 or not self.utterance_open:
            return
        quiet_since_s = self.turns.quiet_since_s
        if quiet_since_s is None or self._early is not None:
            return
        if self._last_window_s + WINDOW_S - quiet_since_s + 1e-6 < after_ms / 1000.0:
            return
        turn_id = self.turns.turn_id
        early = _EarlyDecode(turn_id, self.turns.pause_id + 1, quiet_since_s)
        self._early = early
        self._put_stt(_Speculate(turn_id, early.pause_id, bytes(self._utterance_pcm), early=early))

    def _adopt_early(self, turn_id: int, pause_id: int) -> bool:
        """The pause that began: if it began at the early decode's quiet run, that decode is
        the pause's (True); else it is dropped."""
        early = self._early
        if early is None:
            return False
        if (early.turn_id, early.pause_id) != (turn_id, pause_id) or (
            early.quiet_since_s != self.turns.last_sound_s
        ):
            self._drop_early()
            return False
        self._early = None
        early.adopted = True
        if early.decoded:  # the text model reads it now, as a decode at the pause's start
            spec = self._speculation
            same = spec is not None and (spec.turn_id, spec.pause_id) == (turn_id, pause_id)
            self._request_text_read(turn_id, pause_id, spec.result if spec and same else None)
        return True

    def _request_text_read(self, turn_id: int, pause_id: int, result: SttResult | None) -> None:
        if self._reading and self._text_model is None:
            # The word list reads it at once (no model, no CPU to speak of).
            text = result.text if result is not None else ""
            self._text_read = _TextRead(turn_id, pause_id, word_list_verdict(text))
        elif self._text_model is not None:
            # The text worker reads it; the STT worker goes on (a _Finish need not wait).
            self._text_request = (turn_id, pause_id, result.text if result is not None else "")
            self._text_wakeup.set()

    def _looks_like_echo(self, pcm: bytes) -> bool:
        """While the bot talks: audio well below its own level that matches what it said
        (or is quieter still) is the line echo of it (voicebot_pbx.speech.echo)."""
        vad = self.config.vad
        if vad.echo_margin_db <= 0 or not self.turns.bot_speaking:
            return False
        return is_line_echo(
            pcm,
            self.speaker.recent_output,
            bot_peak_dbfs=self.speaker.recent_peak_dbfs,
            margin_db=vad.echo_margin_db,
            min_correlation=vad.echo_min_correlation,
            residual_db=vad.echo_residual_db,
            caller_context_pcm=self._caller_context(),
        )

    def _caller_context(self) -> bytes:
        """The 40 ms before the newest caller frame (the last one in ``_recent``)."""
        recent = self._recent
        return b"".join(recent[i][1] for i in range(max(0, len(recent) - 3), len(recent) - 1))

    def expect_answer(
        self,
        expected: Expected | None,
        digits: int | None,
        known: tuple[KnownAnswer, ...] = (),
    ) -> None:
        """What the caller's next turn is expected to be (``expect``; the session sets it
        with each answer), the answers the dialogue knows to it (``known``) and, for digits,
        how many complete it: the end-of-turn rules hold such an answer
        (``call/turn_end.py``: until the digits are all there, a pause ends the turn only
        after ``turn.digits_max_silence_ms``; so does a pause in a postcode or a date)."""
        self.expect = expected
        self.known = known if expected else ()
        self.expect_digits = digits if expected else None
        self._answer_expected = answer_expected(
            self._rules, expected or frozenset(), digits, bool(self._known_checked)
        )
        self.turns.set_max_silence_ms(longest_silence_ms(self._rules, self._answer_expected))

    @property
    def _known_checked(self) -> tuple[KnownAnswer, ...]:
        """The answers the dialogue knows that this turn's decodes check (speech/verify.py):
        only a held decode checks them (an answer expected, an engine that holds decodes,
        ``stt.hold_expected``), and only with ``stt.verify_known``."""
        stt = self.config.stt
        held = bool(self.expect) and self._expecting is not None and stt.hold_expected
        return self.known if held and stt.verify_known else ()

    def _pause_evidence(self) -> PauseEvidence:
        """What is known of the current pause: its speculative decode, the text reader's
        verdict on it, the smart-turn verdict (each None until it is back)."""
        spec = self._of_this_pause(self._speculation)
        read = self._of_this_pause(self._text_read)
        verdict = self._of_this_pause(self._verdict)
        return PauseEvidence(
            decode=spec.result if spec is not None else None,
            text_read=read.verdict if read is not None else None,
            model_complete=verdict.complete if verdict is not None else None,
        )

    def _of_this_pause(self, item: _PauseItem | None) -> _PauseItem | None:
        """``item`` if it belongs to the current pause, else None."""
        if item is None or self._is_stale_pause(item.turn_id, item.pause_id):
            return None
        return item

    def _maybe_end_early(self) -> None:
        """End the turn at the short silence (vad.end_silence_ms) if the caller sounds
        finished, at turn.tiebreak_silence_ms if only the transcript says so; otherwise the
        endpointer ends it at vad.end_silence_max_ms."""
        if not self.utterance_open:
            return
        finished = end_after(self._rules, self._answer_expected, self._pause_evidence())
        if finished is None:
            return
        silence_ms, ended_by = finished
        ended = self.turns.end_turn_early(
            self._last_window_s,
            silence_ms,
            tiebreak=ended_by == "tiebreak",
            finished=ended_by in FINISHED,
        )
        if ended is not None:
            self._apply(ended, self.last_frame_at, ended_by=ended_by)

    # --- end of turn: the model's verdict at each pause ------------------------------------

    def _maybe_request_score(self) -> None:
        """Once per pause, ``turn.score_after_ms`` into it: ask the verdict worker to score
        the utterance so far (the newest request replaces an unstarted older one)."""
        if self._turn_model is None or not self.utterance_open:
            return
        since_s = self.turns.pause_since_s
        pause = (self.turns.turn_id, self.turns.pause_id)
        if since_s is None or self._scored_pause == pause:
            return
        heard_s = self._last_window_s + WINDOW_S - since_s  # silence heard so far
        if heard_s + 1e-6 < self.config.turn.score_after_ms / 1000.0:
            return
        self._scored_pause = pause
        # Asked as the frame that reached it arrived.
        self._score_request = _ScoreRequest(*pause, bytes(self._utterance_pcm), self.last_frame_at)
        self._score_wakeup.set()

    async def run_verdicts(self) -> None:
        """The call's end-of-turn worker (a task of the session's group): scores each
        requested pause in the shared inference pool, bounded by ``turn.timeout_ms``."""
        model = self._turn_model
        if model is None:
            return
        timeout_s = self.config.turn.timeout_ms / 1000.0
        while True:
            await self._score_wakeup.wait()
            self._score_wakeup.clear()
            request, self._score_request = self._score_request, None
            if request is None or self._is_stale_pause(request.turn_id, request.pause_id):
                continue
            fn = functools.partial(model.score, request.pcm, self.rate_hz)
            try:
                score: TurnScore = await self.engines.run("turn", timeout_s, fn)
            except Exception as exc:  # the model failed: silence-only rule for this pause
                if not self._turn_model_failed:
                    self._turn_model_failed = True
                    log.warning("turn_model_failed", error=f"{type(exc).__name__}: {exc}")
                    self.errors.append("turn_model_failed")
                continue
            self.turn_scores += 1
            self.turn_model_cpu_s += score.cpu_s
            complete = score.complete >= self.config.turn.threshold
            log.debug(
                "turn_verdict",
                turn_id=request.turn_id,
                complete=complete,
                p=round(score.complete, 3),
                cpu_ms=round(score.cpu_s * 1000.0, 1),
            )
            wait_ms = round((asyncio.get_running_loop().time() - request.requested_at) * 1000.0, 1)
            self._verdict = _Verdict(request.turn_id, request.pause_id, complete, wait_ms)
            self._maybe_end_early()

    def _to_loop_time(self, stream_s: float, frame_at: float) -> float:
        """Map VAD stream time to loop time using the frame that just arrived."""
        return frame_at - (self._fed_s - stream_s)

    def _apply(self, action: TurnAction, frame_at: float, *, ended_by: str = "silence") -> None:
        match action:
            case UtteranceStarted(turn_id, onset_s):
                self._drop_early()
                self.utterance_open = True
                self._utterance_pcm.clear()
                self._speculation = None
                self._verdict = None
                self._turn_dropped_at = self.speculations_dropped
                lookback_s = self.config.vad.lookback_ms / 1000.0
                start_s = max(onset_s - lookback_s, self._last_speech_end_s)
                heard = self._heard_since(start_s)
                # Frames that never came (a caller who sent none before speaking) were
                # silence: Whisper hears nothing in speech that starts at its first sample.
                missing = round((self._fed_s - start_s) * self.rate_hz) - len(heard) // 2
                self._feed_stt(bytes(2 * missing) + heard if missing > 0 else heard)
                log.debug("utterance_started", turn_id=turn_id)
                self._silence_before_s[turn_id] = onset_s - self._last_speech_end_s
                for old in [t for t in self._silence_before_s if t <= turn_id - _SILENCES_KEPT]:
                    del self._silence_before_s[old]
                self.hooks.utterance_started(turn_id)
            case UtteranceEnded(turn_id, speech_end_s, _decided_s):
                self._drop_early()
                self.utterance_open = False
                self._last_speech_end_s = speech_end_s
                speech_end_at = self._to_loop_time(speech_end_s, frame_at)
                pcm = bytes(self._utterance_pcm)
                self._utterance_pcm.clear()
                verdict = self._verdict
                verdict_ms = (
                    verdict.wait_ms
                    if verdict is not None
                    and (verdict.turn_id, verdict.pause_id) == (turn_id, self.turns.pause_id)
                    else None
                )
                self._put_stt(
                    _Finish(turn_id, self.turns.pause_id, speech_end_at, pcm, ended_by, verdict_ms)
                )
            case PauseStarted(turn_id, pause_id, _since_s):
                if self._batch is not None and not self._adopt_early(turn_id, pause_id):
                    self._put_stt(_Speculate(turn_id, pause_id, bytes(self._utterance_pcm)))
            case BargeInOnset():
                self.hooks.barge_in_onset()
            case BargeInCancelled():
                self.hooks.barge_in_cancelled()
            case BargeIn(turn_id, onset_s, decided_s):
                lag_s = asyncio.get_running_loop().time() - frame_at
                self.hooks.barge_in(
                    turn_id,
                    round((decided_s + WINDOW_S - onset_s) * 1000.0, 1),
                    round(lag_s * 1000.0, 1),
                )

    def _heard_since(self, start_s: float) -> bytes:
        """The recent caller audio from stream time ``start_s`` on, cut to the sample."""
        pieces: list[bytes] = []
        for end_s, pcm in self._recent:
            # Whole samples after start_s (rounded: frame times are sums of 0.02 s).
            keep = round((end_s - start_s) * self.rate_hz)
            if keep > 0:
                pieces.append(pcm[-2 * keep :] if 2 * keep < len(pcm) else pcm)
        return b"".join(pieces)

    # --- speech to text ----------------------------------------------------------------

    def _feed_stt(self, pcm: bytes) -> None:
        if not pcm:
            return
        self._utterance_pcm += pcm
        if self._batch is None:
            # A streaming engine is fed as the audio comes; the end-of-turn model needs
            # only the utterance's last 8 s.
            self._put_stt(_Audio(pcm))
            excess = len(self._utterance_pcm) - 2 * self.rate_hz * MODEL_WINDOW_S
            if excess > 0:
                del self._utterance_pcm[:excess]

    def _put_stt(self, item: _Audio | _Finish | _Speculate) -> None:
        try:
            self._stt_queue.put_nowait(item)
        except asyncio.QueueFull:
            log.warning("stt_queue_full")

    async def run_stt(self) -> None:
        """The call's STT worker (a task of the session's group)."""
        loop = asyncio.get_running_loop()
        while True:
            items = [await self._stt_queue.get()]
            while not self._stt_queue.empty():
                items.append(self._stt_queue.get_nowait())
            audio: list[bytes] = []
            for item in items:
                if isinstance(item, _Audio):
                    # Streaming engine: one call for whatever audio queued up.
                    audio.append(item.pcm)
                    continue
                if audio and self.stt is not None:
                    await self._stt_call(functools.partial(self.stt.accept, b"".join(audio)))
                audio = []
                await self._stt_command(item, loop)
            if audio and self.stt is not None:
                await self._stt_call(functools.partial(self.stt.accept, b"".join(audio)))

    async def _stt_command(
        self, item: _Finish | _Speculate, loop: asyncio.AbstractEventLoop
    ) -> None:
        match item:
            case _Speculate(turn_id, pause_id, pcm, early):
                if early is not None and not early.adopted:
                    if early.dropped:
                        return  # the caller went on before the pause came
                elif self._is_stale_pause(turn_id, pause_id) or not self.turns.in_pause:
                    return
                assert self._batch is not None
                decode = asyncio.ensure_future(self._batch_transcribe(self._batch, pcm))
                self._speculating = (turn_id, decode, early)
                try:
                    await asyncio.wait({decode})
                finally:
                    self._speculating = None
                    decode.cancel()  # a no-op once done; else this worker is being cancelled
                if decode.cancelled() or (early is not None and early.dropped):
                    self.speculations_dropped += 1
                    return
                result = decode.result()
                if result is not None:
                    self._speculation = _Speculation(turn_id, pause_id, result, early is not None)
                    if result.text.strip():
                        self.hooks.heard_so_far(turn_id, result.text)
                if early is None or early.adopted:
                    self._request_text_read(turn_id, pause_id, result)
                else:
                    early.decoded = True  # read once the pause begins (_adopt_early)
                if result is not None:
                    self._maybe_end_early()
            case _Finish(turn_id, pause_id, speech_end_at, pcm, ended_by, verdict_ms):
                spec = self._speculation
                read = self._text_read
                text_verdict = (
                    read.verdict
                    if read is not None and (read.turn_id, read.pause_id) == (turn_id, pause_id)
                    else None
                )
                if spec is not None and (spec.turn_id, spec.pause_id) == (turn_id, pause_id):
                    result, source = spec.result, "early" if spec.early else "speculative"
                elif self._batch is not None:
                    result = await self._batch_transcribe(self._batch, pcm, urgent=True)
                    source = "final"
                elif self.stt is not None:
                    result = await self._stt_call(self.stt.finish)
                    source = "stream"
                else:
                    result = None
                self._speculation = None
                trace = TranscriptTrace(
                    ended_by=ended_by,
                    source=source if result is not None else "none",
                    stt=result.timing if result is not None else None,
                    speculations_dropped=self.speculations_dropped - self._turn_dropped_at,
                    held_to=result.held_to if result is not None else None,
                    waited_for_digits_s=waited_for_answer_s(
                        self._rules, self._answer_expected, ended_by
                    ),
                    text_verdict=text_verdict,
                    waited_unfinished_s=waited_unfinished_s(
                        self._rules, self._answer_expected, ended_by, text_verdict
                    ),
                    verdict_ms=verdict_ms,
                )
                self._on_transcript(
                    turn_id, result or SttResult("", None), speech_end_at, loop.time(), trace
                )

    async def run_text_reads(self) -> None:
        """The call's text-model worker (a task of the session's group): reads the decode at
        each pause (the newest request replaces an unstarted older one)."""
        model = self._text_model
        if model is None:
            return
        while True:
            await self._text_wakeup.wait()
            self._text_wakeup.clear()
            request, self._text_request = self._text_request, None
            if request is None or self._is_stale_pause(request[0], request[1]):
                continue
            turn_id, pause_id, text = request
            verdict = await self._read_text(model, text)
            self._text_read = _TextRead(turn_id, pause_id, verdict)
            self._maybe_end_early()

    async def _read_text(self, model: TextTurnScorer, text: str) -> TextVerdict:
        """The text model's verdict on a decode at a pause, in the shared pool under
        turn.timeout_ms; "unsure" (the detectors decide) when it fails, logged once a call."""
        turn = self.config.turn
        try:
            score = await self.engines.run(
                "turn_text", turn.timeout_ms / 1000.0, functools.partial(model.score, text)
            )
        except Exception as exc:
            if not self._text_model_failed:
                self._text_model_failed = True
                log.warning("text_turn_model_failed", error=f"{type(exc).__name__}: {exc}")
                self.errors.append("text_turn_model_failed")
            return "unsure"
        self.text_reads += 1
        self.text_model_cpu_s += score.cpu_s
        verdict = text_verdict(
            score,
            unfinished_below=turn.text_unfinished_below,
            finished_from=turn.text_finished_from,
        )
        log.debug(
            "text_turn_verdict",
            verdict=verdict,
            finished_log10=round(score.finished_log10, 2),
            cpu_ms=round(score.cpu_s * 1000.0, 1),
        )
        return verdict

    def _is_stale_pause(self, turn_id: int, pause_id: int) -> bool:
        return (turn_id, pause_id) != (self.turns.turn_id, self.turns.pause_id)

    async def transcribe_clip(self, pcm: bytes) -> str | None:
        """A clip outside the turn-taking (an answering machine's greeting, for its words),
        at the call's rate. None: the engine only streams (Vosk), or the decode timed out."""
        if self._batch is None:
            return None
        result = await self._batch_transcribe(self._batch, pcm, urgent=True)
        return None if result is None else result.text

    async def _batch_transcribe(
        self, batch: BatchTranscriber, pcm: bytes, *, urgent: bool = False
    ) -> SttResult | None:
        """A whole utterance: awaited from the engine's own batching inference thread when it
        has one (``SttCapabilities.queued``: Whisper), else run in the shared pool.
        ``urgent``: the turn has ended (decoded before other calls' speculative requests).
        While an answer is expected (``expect``) and the engine can hold a decode to it, the
        decode runs held, in the shared pool."""
        if self.expect and self._expecting is not None and self.config.stt.hold_expected:
            held = functools.partial(
                self._expecting.transcribe_expecting,
                pcm,
                self.rate_hz,
                self.expect,
                self._known_checked,
                self.expect_digits,
            )
            return await self._stt_call(timed(held))
        if self._queued is None:
            return await self._stt_call(
                timed(functools.partial(batch.transcribe, pcm, self.rate_hz))
            )
        try:
            async with asyncio.timeout(self.config.stt.timeout_s):
                return await self._queued.transcribe_async(pcm, self.rate_hz, urgent=urgent)
        except TimeoutError:
            log.warning("stt_timeout", timeout_s=self.config.stt.timeout_s)
            self.errors.append("stt_timeout")
            return None

    async def _stt_call(self, fn: Callable[[], T]) -> T | None:
        try:
            return await self.engines.run("stt", self.config.stt.timeout_s, fn)
        except EngineTimeout as exc:
            log.warning("stt_timeout", timeout_s=exc.timeout_s)
            self.errors.append("stt_timeout")
            return None

    def _on_transcript(
        self,
        turn_id: int,
        result: SttResult,
        speech_end_at: float,
        now: float,
        trace: TranscriptTrace,
    ) -> None:
        carried = bool(self._carry_text)
        text = " ".join(part for part in (self._carry_text, result.text.strip()) if part)
        silence_s = self._silence_before_s.pop(turn_id, math.inf)
        if self._carry_text and self._carry_silence_s is not None:
            silence_s = self._carry_silence_s  # the words carried over came first
        if turn_id != self.turns.turn_id or self.utterance_open:
            # The caller spoke again before this turn's words were transcribed: nothing was
            # answered yet, so they open the next turn's transcript instead of being lost.
            self._carry_text = text
            self._carry_silence_s = silence_s if text else None
            log.debug("late_transcript_carried", turn_id=turn_id, carried=bool(result.text.strip()))
            return
        self._carry_text = ""
        self._carry_silence_s = None
        trace = replace(trace, after_silence_s=silence_s)
        alternatives = () if carried else result.alternatives
        self.hooks.transcript(
            turn_id, text, result.confidence, speech_end_at, now, trace, alternatives
        )
