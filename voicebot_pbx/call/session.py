"""One call: the brain loop that owns all of the call's state.

Inbound audio runs through VAD and the pure ``TurnTaker``; STT runs in a per-call worker
task (blocking inference in the shared pool); replies come from the dialogue and are
played through the call's ``Speaker`` (the one owner of outgoing audio): cached/clip audio
at once, otherwise Piper sentence by sentence. Every result carries the turn it belongs to;
stale ones are dropped. Barge-in is ``speaker.interrupt()`` (synchronous) plus cancelling
the reply task, so no frame of the old reply can be written afterwards.

Worker tasks call back into the session only through synchronous methods, so all state
changes happen on the event loop without interleaving.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from voicebot_pbx.answers import factory
from voicebot_pbx.answers.dialogue import BotReply, CallInfo, Dialogue, DialogueTurn
from voicebot_pbx.call import policy
from voicebot_pbx.call.handover import handover_vars
from voicebot_pbx.call.listener import Listener, TranscriptTrace
from voicebot_pbx.call.outbound import OutboundOpening
from voicebot_pbx.call.prompts import ClipLibrary, TtsCache
from voicebot_pbx.call.responder import Responder, SpeechSynth
from voicebot_pbx.campaign.opt_out import is_opt_out, opt_out
from voicebot_pbx.config import Config, ProfileConfig, profile_named
from voicebot_pbx.ops.analytics_open import recordings_dir
from voicebot_pbx.ops.recording import CallRecording
from voicebot_pbx.ops.records import CallRecord, Recorder, TurnRecord
from voicebot_pbx.ops.redaction import Redactor
from voicebot_pbx.pbx.media import AudioIn, CallControl, CallEnded, CallMedia, DtmfIn
from voicebot_pbx.speech.engines import Engines
from voicebot_pbx.speech.turns import (
    TurnTaker,
)

if TYPE_CHECKING:
    from voicebot_pbx.answers.llm import LlmAnswerer
    from voicebot_pbx.ops.profiles import ProfileKit

log = structlog.get_logger("voicebot_pbx.call.session")
T = TypeVar("T")


@dataclass(slots=True)
class Shared:
    """What every call of the process shares."""

    config: Config
    engines: Engines
    dialogue: Dialogue
    tts_cache: TtsCache
    clips: ClipLibrary
    recorder: Recorder | None = None
    control: CallControl | None = None
    llm: LlmAnswerer | None = None
    # Profiles with their own dialogue, voice or knowledge base (voicebot_pbx.ops.profiles).
    profiles: dict[str, ProfileKit] = field(default_factory=dict)


class CallSession:
    def __init__(self, media: CallMedia, shared: Shared) -> None:
        self.media = media
        self.shared = shared
        self.config = shared.config
        self.engines = shared.engines
        self.speaker = media.speaker
        caller_id = media.caller_id
        self.call = CallInfo(call_id=media.call_id, pbx=media.pbx, caller_id=caller_id)
        self.record = CallRecord(
            call_id=media.call_id, pbx=media.pbx, peer=media.peer, caller_id=caller_id
        )
        self._group: asyncio.TaskGroup | None = None
        self.listener = Listener(self.config, self.engines, self.speaker, self, self.record.errors)
        self._brain = factory.answering(shared.dialogue, shared.llm, shared.config.knowledge)
        self.responder = Responder(
            self.config,
            self.engines,
            self.speaker,
            shared.clips,
            self.engines.tts,
            shared.tts_cache,
            self.record.errors,
        )
        self._reply_task: asyncio.Task[None] | None = None
        self._reply_seq = 0
        self._reply_started = False
        self._reply_first_frame_at: float | None = None
        self._reply_turn: TurnRecord | None = None
        self._ending = False
        # What the dialogue collected over the call (Rasa entities), for a transfer's context.
        self._entities: dict[str, str] = {}
        self._dtmf = policy.DtmfEntry()
        self._dtmf_task: asyncio.Task[None] | None = None
        self.fallbacks = shared.config.fallbacks
        self._backchannels = policy.backchannel_set(self.fallbacks)
        self._paused_turn: TurnRecord | None = None
        # Paused at a caller's first sound over the reply (vad.barge_in_pause_at_onset),
        # not yet a barge-in: resumed if the sound stops short.
        self._onset_paused = False
        self.profile: ProfileConfig | None = None
        self.kit: ProfileKit | None = None
        self.recording: CallRecording | None = None
        self._not_understood = 0
        self._no_input_count = 0
        self._no_input_task: asyncio.Task[None] | None = None
        self.rate_hz = media.rate_hz
        # Outbound calls of a profile with ``amd``: who answered, before the opening
        # (call/outbound.py).
        self._outbound: OutboundOpening | None = None
        # The transcript the dialogue was given before the caller went on (carried into
        # the next turn): taken back from the dialogue before that turn is answered.
        self._unfinished: str | None = None

    # --- lifecycle -------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        structlog.contextvars.bind_contextvars(call_id=self.media.call_id)
        self.rate_hz = await self.media.wait_for_rate(0.3)
        self.record.rate_hz = self.rate_hz
        self.listener.start(self.rate_hz)
        await self._choose_profile()
        self.responder.use_voice(self.tts, self.tts_cache, self.rate_hz)
        analytics = self.config.analytics
        if analytics.record_audio:
            self.recording = CallRecording.start(
                recordings_dir(analytics, self.config.state_dir), self.media.call_id, self.rate_hz
            )
            self.record.recording_path = str(self.recording.path)
            self.speaker.tap = self.recording.bot
        log.info(
            "session_started",
            rate_hz=self.rate_hz,
            dialogue=self.dialogue.name,
            profile=self.call.profile,
        )
        if self.shared.recorder is not None:
            try:
                async with asyncio.timeout(5.0):
                    await self.shared.recorder.call_started(self.record)
            except Exception as exc:
                log.error("record_write_failed", error=str(exc))
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                stt_worker = group.create_task(self.listener.run_stt())
                verdicts = group.create_task(self.listener.run_verdicts())
                text_reads = group.create_task(self.listener.run_text_reads())
                wrap_up = group.create_task(self._wrap_up_timer())
                greeting = TurnRecord(turn_id=0, kind="greeting")
                if self.profile is not None and self.profile.amd:
                    self._outbound = OutboundOpening(
                        self.config,
                        self.rate_hz,
                        self.profile,
                        self.shared.control,
                        self.media.call_id,
                        self,
                        self.listener.transcribe_clip,
                    )
                    self.listener.audio_tap = self._outbound.gate.feed
                    self._start_reply(greeting, self._outbound.greeting(greeting), loop.time())
                else:
                    self._start_reply(greeting, self._greeting(), loop.time())
                try:
                    await self._main_loop()
                finally:
                    self._cancel_reply()
                    self._cancel_no_input()
                    stt_worker.cancel()
                    verdicts.cancel()
                    text_reads.cancel()
                    wrap_up.cancel()
                    if self._dtmf_task is not None:
                        self._dtmf_task.cancel()
        except Exception as exc:
            # Anything unexpected: never a silent socket. Apologise, then hand over.
            log.exception("session_error")
            self.record.errors.append(f"{type(exc).__name__}: {exc}")
            self.record.end_reason = "error"
            await self._apologise_and_leave()
        finally:
            self._group = None
            self.record.ended_at = time.time()
            if not self.record.end_reason:
                self.record.end_reason = "error"
            with contextlib.suppress(Exception):
                self.listener.close()
            if self.recording is not None:
                self.speaker.tap = None
                await self.recording.close()
            await self._write_record()
            with contextlib.suppress(Exception):
                await self.dialogue.end(self.call)

    @property
    def turns(self) -> TurnTaker:
        return self.listener.turns

    @property
    def speculations_dropped(self) -> int:
        return self.listener.speculations_dropped

    @property
    def dialogue(self) -> Dialogue:
        """The call's brain: the profile's (or the default) dialogue, with its LLM."""
        return self._brain

    @property
    def tts(self) -> SpeechSynth:
        return (self.kit and self.kit.tts) or self.engines.tts

    @property
    def tts_cache(self) -> TtsCache:
        return (self.kit and self.kit.tts_cache) or self.shared.tts_cache

    @property
    def llm(self) -> LlmAnswerer | None:
        return (self.kit and self.kit.llm) or self.shared.llm

    async def _choose_profile(self) -> None:
        """The call's profile: from its listener, else the dialplan's VOICEBOT_PROFILE
        channel variable (over AMI), else the default."""
        name = self.media.profile
        control = self.shared.control
        if name is None and control is not None and self.config.profiles:
            try:
                async with asyncio.timeout(0.5):
                    name = await control.get_var(self.media.call_id, "VOICEBOT_PROFILE")
            except Exception as exc:
                log.info("profile_lookup_failed", error=f"{type(exc).__name__}: {exc}")
        self.profile = profile_named(self.config, name)
        if name and self.profile is None:
            log.warning("unknown_profile", profile=name)
        if self.profile is not None:
            self.kit = self.shared.profiles.get(self.profile.name)
            self.call = dataclasses.replace(self.call, profile=self.profile.name)
            self.record.profile = self.profile.name
        dialogue = (self.kit and self.kit.dialogue) or self.shared.dialogue
        self._brain = factory.answering(dialogue, self.llm, self.config.knowledge)

    async def _greeting(self) -> DialogueTurn:
        profile = self.profile
        if profile is not None and (profile.greeting_clip or profile.greeting):
            clip_ok = bool(profile.greeting_clip) and (
                self.shared.clips.get(profile.greeting_clip, self.rate_hz) is not None
            )
            reply = (
                BotReply(clip=profile.greeting_clip) if clip_ok else BotReply(text=profile.greeting)
            )
            return DialogueTurn(replies=(reply,), intent="greet", source="profile")
        return await self.dialogue.start(self.call)

    # --- what the outbound opening asks of the call (call/outbound.py, OpeningHost) -----

    @property
    def turn_id(self) -> int:
        return self.turns.turn_id

    def start_reply(self, turn: TurnRecord, make_turn: Awaitable[DialogueTurn], now: float) -> None:
        self._start_reply(turn, make_turn, now)

    def interrupt(self) -> None:
        self._interrupt()

    def opening(self) -> Awaitable[DialogueTurn]:
        return self._greeting()

    def drop_paused_reply(self) -> None:
        message, self._paused_turn = self._paused_turn, None
        if message is not None:
            message.barged_in = True
            self._turn_finished(message)

    def spawn(self, job: Coroutine[Any, Any, None]) -> None:
        if self._group is None:
            job.close()  # the call is over: never started
            return
        self._group.create_task(job)

    def _detectors_turn(self, turn_id: int) -> bool:
        """The callee's turn began before the answering-machine verdict."""
        return self._outbound is not None and self._outbound.owns(turn_id)

    async def _write_record(self) -> None:
        if self.shared.recorder is None:
            return
        try:
            async with asyncio.timeout(5.0):
                await asyncio.shield(self.shared.recorder.call_ended(self.record))
        except Exception as exc:  # the record must never take the call down
            log.error("record_write_failed", error=str(exc))

    def _add_turn(self, turn: TurnRecord) -> None:
        turn.seq = len(self.record.turns)
        self.record.turns.append(turn)

    def _turn_finished(self, turn: TurnRecord) -> None:
        """Write a completed turn now (a crash later loses nothing of it)."""
        recorder = self.shared.recorder
        if recorder is None or self._group is None:
            return
        self._group.create_task(self._write_turn(recorder, turn))

    async def _write_turn(self, recorder: Recorder, turn: TurnRecord) -> None:
        try:
            async with asyncio.timeout(5.0):
                await recorder.turn_finished(self.record, turn)
        except Exception as exc:
            log.error("record_write_failed", error=str(exc), turn=turn.seq)

    async def _main_loop(self) -> None:
        loop = asyncio.get_running_loop()
        inbound = self.media.inbound
        while True:
            if inbound.empty():
                # A caller who sends no frames while silent: the missing time is silence.
                due_s = self.listener.clock.due_in_s(loop.time())
                try:
                    async with asyncio.timeout(due_s):
                        event = await inbound.get()
                except TimeoutError:
                    if inbound.empty():
                        self.listener.fill_silence(loop.time())
                    # else: frames came in as the wait timed out (the loop ran late and the
                    # reader queued them first): they are the caller's audio, not a gap.
                    continue
            else:
                event = inbound.get_nowait()
            match event:
                case AudioIn(pcm, _rate_hz, at_s):
                    if self.recording is not None:
                        self.recording.caller(pcm, at_s)
                    self.listener.on_frame(event)
                case DtmfIn(digit, at_s):
                    self._on_dtmf(digit, at_s)
                case CallEnded(reason, _at_s):
                    if not self.record.end_reason:
                        self.record.end_reason = reason
                    log.info(
                        "session_ended",
                        reason=self.record.end_reason,
                        speculations_dropped=self.listener.speculations_dropped,
                        turn_scores=self.listener.turn_scores,
                        turn_model_cpu_ms=round(self.listener.turn_model_cpu_s * 1000.0, 1),
                        text_reads=self.listener.text_reads,
                        text_model_cpu_ms=round(self.listener.text_model_cpu_s * 1000.0, 1),
                    )
                    return

    # --- audio in ----------------------------------------------------------------------

    # --- what the listener reports (ListenerHooks) ----------------------------------------

    def utterance_started(self, turn_id: int) -> None:
        if self._outbound is not None and self._outbound.utterance_started(turn_id):
            return  # "hello?" before the verdict is the detector's, not the dialogue's
        self._cancel_no_input()
        self._no_input_count = 0
        if self._reply_task is not None and not self._reply_started:
            # The caller went on talking before we answered: answer the whole thing, and
            # the dialogue forgets the part it was given (``Dialogue.retract``).
            unfinished = self._reply_turn
            self.listener.carry(unfinished.transcript if unfinished else "")
            if unfinished is not None and unfinished.kind == "speech" and unfinished.transcript:
                self._unfinished = unfinished.transcript
            self._cancel_reply()

    @property
    def _amd_hears_callee(self) -> bool:
        """The callee's sounds are the answering-machine detector's: no barge-in
        (``OutboundOpening.hears_callee``)."""
        return self._outbound is not None and self._outbound.hears_callee

    def barge_in_onset(self) -> None:
        if self._amd_hears_callee:
            return
        if self._reply_turn is None or not self._reply_started or self.speaker.paused:
            return
        self.speaker.pause()
        self._onset_paused = True

    def barge_in_cancelled(self) -> None:
        if not self._onset_paused:
            return
        self._onset_paused = False
        if self.speaker.paused and self._paused_turn is None:
            log.debug("barge_in_onset_resumed")
            self.speaker.resume()
            if self._reply_turn is not None:
                self._reply_turn.fallbacks.append("paused_for_noise")

    def barge_in(self, turn_id: int, onset_to_decision_ms: float, lag_ms: float) -> None:
        self._onset_paused = False
        if self._amd_hears_callee:
            return
        interrupted = self._reply_turn
        if interrupted is None or not self._reply_started:
            return
        # Go silent now, but keep the reply: if the caller only said "uh-huh" (or
        # coughed), it goes on; real words discard it when the transcript comes.
        log.info(
            "barge_in",
            turn_id=turn_id,
            onset_to_decision_ms=onset_to_decision_ms,
            lag_ms=lag_ms,
        )
        if not self.speaker.paused:
            self.speaker.pause()
        self.turns.set_bot_speaking(False)
        self._paused_turn = interrupted
        if self._reply_first_frame_at is not None:
            played_s = self.listener.last_frame_at - self._reply_first_frame_at
            interrupted.played_ms = round(played_s * 1000.0, 1)

    def heard_so_far(self, turn_id: int, text: str) -> None:
        """The dialogue may prepare the answer to ``text`` while the end of the turn is
        still being waited for (``Dialogue.prepare``: no side effects)."""
        if self._group is None or self._ending or self._detectors_turn(turn_id):
            return
        self._group.create_task(self._prepare(text))

    async def _prepare(self, text: str) -> None:
        try:
            async with asyncio.timeout(self.config.dialogue.timeout_s):
                await self.dialogue.prepare(self.call, text)
        except Exception as exc:  # respond works it out itself, and reports what fails
            log.debug("dialogue_prepare_failed", error=f"{type(exc).__name__}: {exc}")

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
        if self._detectors_turn(turn_id):
            assert self._outbound is not None
            if self._outbound.talked_back(turn_id, text, now):
                return
            log.info("amd_turn_ignored", turn_id=turn_id)
            if self._paused_turn is not None:  # the message, paused by the callee's sound
                self._paused_turn = None
                self.speaker.resume()
                self.turns.set_bot_speaking(True)
            return
        # What the dialogue was given before the caller went on (only this turn takes it
        # back; the dialogue checks it is still its last message).
        unfinished, self._unfinished = self._unfinished, None
        turn = TurnRecord(
            turn_id=turn_id,
            transcript=text,
            stt_confidence=confidence,
            end_of_speech_to_stt_ms=round((now - speech_end_at) * 1000.0, 1),
        )
        redactor = Redactor.from_config(self.config.analytics)
        log.info(
            "transcript",
            turn_id=turn_id,
            text=redactor.text(text) if redactor is not None else text,
            stt_ms=turn.end_of_speech_to_stt_ms,
            **trace.fields(),
        )
        paused = self._paused_turn
        if paused is not None:
            self._paused_turn = None
            if not text or policy.normalise(text) in self._backchannels:
                # A backchannel, a cough, line noise: the bot goes on where it stopped.
                self.speaker.resume()
                self.turns.set_bot_speaking(True)
                turn.kind = "backchannel"
                turn.fallbacks.append("backchannel_ignored" if text else "false_interruption")
                self._add_turn(turn)
                self._turn_finished(turn)
                return
            paused.barged_in = True
            self._turn_finished(paused)
            self._interrupt()
            if self._went_on(paused, trace.after_silence_s):
                # The turn ended inside the caller's sentence: the whole of it is the
                # question, the part answered is taken back (as when the caller goes on
                # before the answer is heard).
                log.info(
                    "caller_went_on",
                    turn_id=turn_id,
                    after_silence_ms=round(trace.after_silence_s * 1000.0),
                )
                unfinished = paused.transcript
                text = f"{paused.transcript} {text}"
                alternatives = ()  # readings of the last part alone
                turn.transcript = text
                turn.fallbacks.append("went_on_over_reply")
        low_confidence = confidence is not None and confidence < self.fallbacks.min_stt_confidence
        if not text or low_confidence:
            turn.fallbacks.append("stt_low_confidence" if text else "stt_empty")
            self._start_reply(
                turn, _ready(policy.not_understood_turn(self.fallbacks)), speech_end_at
            )
            return
        if self.shared.control is not None and is_opt_out(text):
            self._start_reply(turn, self._opt_out_or_respond(text), speech_end_at)
            return
        self._start_reply(
            turn,
            self._respond(text, unfinished, alternatives),
            speech_end_at,
            dead_air_from=speech_end_at + trace.waited_for_digits_s + trace.waited_unfinished_s,
        )

    def _went_on(self, interrupted: TurnRecord, after_silence_s: float) -> bool:
        """Whether speech over the reply to ``interrupted`` goes on with its words: a speech
        turn, and the words over the reply began within ``turn.went_on_within_ms`` of silence
        after the caller's (``after_silence_s``: ``TranscriptTrace.after_silence_s``)."""
        within_ms = self.config.turn.went_on_within_ms
        return (
            within_ms > 0
            and interrupted.kind == "speech"
            and bool(interrupted.transcript)
            and after_silence_s * 1000.0 <= within_ms
        )

    async def _respond(
        self, text: str, unfinished: str | None, alternatives: tuple[str, ...] = ()
    ) -> DialogueTurn:
        """The dialogue's answer to ``text`` (with the recogniser's ``alternatives`` for a
        number asked for); first, the part of it the dialogue was given before the caller
        went on (``unfinished``) is taken back."""
        if unfinished is not None:
            try:
                await self.dialogue.retract(self.call, unfinished)
            except Exception as exc:  # the answer matters more than a clean tracker
                log.warning("dialogue_retract_failed", error=f"{type(exc).__name__}: {exc}")
        return await self.dialogue.respond(self.call, text, alternatives)

    async def _opt_out_or_respond(self, text: str) -> DialogueTurn:
        """ "Stop calling me" on a campaign call: listed, confirmed, goodbye (issue #23)."""
        outcome = await opt_out(self.config, self.shared.control, self.media.call_id)
        if outcome == "not_campaign":
            return await self.dialogue.respond(self.call, text)
        log.info("opt_out", outcome=outcome)
        cfg = self.config.campaign
        if outcome == "failed":
            self.record.errors.append("opt_out: the do-not-call list could not be updated")
        reply = cfg.opt_out_failed_reply if outcome == "failed" else cfg.opt_out_reply
        return DialogueTurn(
            replies=(BotReply(text=reply),),
            end="hangup",
            intent="opt_out",
            source="campaign",
            fallbacks=(f"opt_out_{outcome}",),
        )

    def _give_up_turn(self, reason: str) -> DialogueTurn:
        target = self.profile.transfer_target if self.profile else ""
        return policy.give_up_turn(self.fallbacks, target, reason)

    # --- timers ------------------------------------------------------------------------

    def _cancel_no_input(self) -> None:
        if self._no_input_task is not None:
            self._no_input_task.cancel()
            self._no_input_task = None

    def _start_no_input(self) -> None:
        self._cancel_no_input()
        if self._group is not None and self.fallbacks.no_input_s > 0 and not self._ending:
            self._no_input_task = self._group.create_task(self._no_input_wait())

    async def _no_input_wait(self) -> None:
        await asyncio.sleep(self.fallbacks.no_input_s)
        self._no_input_task = None
        if self.turns.caller_speaking or self.listener.utterance_open:
            return
        self._no_input_count += 1
        loop = asyncio.get_running_loop()
        turn = TurnRecord(turn_id=self.turns.turn_id, kind="no_input")
        answer, fallback = policy.no_input_turn(self.fallbacks, self._no_input_count)
        turn.fallbacks.append(fallback)
        self._start_reply(turn, _ready(answer), loop.time(), keep_no_input_count=True)

    async def _wrap_up_timer(self) -> None:
        limit_s = self.config.server.max_call_duration_s - self.fallbacks.wrap_up_before_s
        if limit_s <= 0:
            return
        await asyncio.sleep(limit_s)
        log.info("call_wrap_up", after_s=limit_s)
        target = self.profile.transfer_target if self.profile else ""
        answer = policy.wrap_up_turn(self.fallbacks, target)
        loop = asyncio.get_running_loop()
        turn = TurnRecord(turn_id=self.turns.turn_id, kind="wrap_up")
        self._interrupt()
        self._start_reply(turn, _ready(answer), loop.time())

    async def _apologise_and_leave(self) -> None:
        """After an unexpected error: say sorry (cached audio, no engine needed), then
        transfer or hang up. Bounded in time; never raises."""
        try:
            self.speaker.interrupt()
            generation = self.speaker.generation
            give_up = self._give_up_turn("error")
            for text in (self.fallbacks.apology, *(r.text for r in give_up.replies)):
                pcm = self.tts_cache.get(text, self.rate_hz)
                if pcm is not None:
                    self.speaker.enqueue(pcm, generation, trim_lead_in=True)
            played = asyncio.Event()
            self.speaker.mark(lambda _at: played.set(), generation)
            async with asyncio.timeout(15.0):
                await played.wait()
            await self._end_call(give_up)
        except Exception as exc:
            log.error("apology_failed", error=str(exc))
            with contextlib.suppress(Exception):
                await self.media.hangup("error")

    # --- DTMF ------------------------------------------------------------------------

    def _on_dtmf(self, digit: str, at_s: float) -> None:
        log.info("dtmf", digit=digit)
        self._cancel_no_input()
        self._no_input_count = 0
        if self.turns.bot_speaking or self.speaker.paused:
            self._paused_turn = None
            self._interrupt()
        digits, collecting = self._dtmf.key(digit)
        if digits:
            self._send_dtmf(digits, at_s)
        if self._dtmf_task is not None:
            self._dtmf_task.cancel()
            self._dtmf_task = None
        if collecting and self._group is not None:
            self._dtmf_task = self._group.create_task(self._dtmf_timeout(at_s))

    async def _dtmf_timeout(self, at_s: float) -> None:
        await asyncio.sleep(policy.DTMF_ENTRY_TIMEOUT_S)
        self._dtmf_task = None
        digits = self._dtmf.flush()
        if digits:
            self._send_dtmf(digits, at_s)

    def _send_dtmf(self, digits: str, at_s: float) -> None:
        turn = TurnRecord(turn_id=self.turns.turn_id, kind="dtmf", transcript=digits)
        self._start_reply(turn, self.dialogue.dtmf(self.call, digits), at_s)

    # --- replies -----------------------------------------------------------------------

    def _start_reply(
        self,
        turn: TurnRecord,
        make_turn: Awaitable[DialogueTurn],
        origin_at: float,
        *,
        keep_no_input_count: bool = False,
        dead_air_from: float | None = None,
    ) -> None:
        """Answer ``turn``. ``origin_at`` is the caller's end of speech (latency is measured
        from it); the line counts as dead air from ``dead_air_from`` (default the same; later
        when the bot chose to wait longer for the caller, as for digits)."""
        self._cancel_reply()
        self._cancel_no_input()
        if not keep_no_input_count:
            self._no_input_count = 0
        if self._group is None or self._ending:
            if asyncio.iscoroutine(make_turn):
                make_turn.close()
            return
        self._reply_seq += 1
        self._reply_started = False
        self._reply_first_frame_at = None
        self._reply_turn = turn
        self._add_turn(turn)
        self._reply_task = self._group.create_task(
            self._reply(self._reply_seq, turn, make_turn, origin_at, dead_air_from or origin_at)
        )
        # Cancelled before it ran (the call ended at once): the dialogue's coroutine was
        # never awaited; close it, or Python warns about it on stderr.
        self._reply_task.add_done_callback(lambda _task: _close_unstarted(make_turn))

    def _cancel_reply(self) -> None:
        self.responder.stop_synthesis()
        if self._reply_task is not None and not self._reply_task.done():
            self._reply_task.cancel()
        self._reply_task = None

    def _interrupt(self) -> None:
        """Barge-in: silence the bot now and drop the reply being produced."""
        self._onset_paused = False
        self.speaker.interrupt()
        self._cancel_reply()
        self.turns.set_bot_speaking(False)

    async def _answer_with_hold(
        self, make_turn: Awaitable[DialogueTurn], turn: TurnRecord, dead_air_from: float
    ) -> DialogueTurn:
        """The dialogue's answer; if it is late (a back-end lookup), the hold line plays
        while it is worked out, and past the hold line's ``max_dead_air_s`` it counts as a
        dialogue timeout (TimeoutError)."""
        cfg = self.config.dialogue
        if cfg.hold_after_s <= 0 or turn.kind in ("greeting", "voicemail"):
            return await make_turn
        pending = asyncio.ensure_future(make_turn)
        try:
            in_time = await self.responder.wait_audible(
                pending,
                turn=turn,
                dead_air_from=dead_air_from,
                quiet_from=asyncio.get_running_loop().time(),
                generation=self.speaker.generation,
                hold_after_s=cfg.hold_after_s,
                hold_text=cfg.hold_reply,
                limit_s=cfg.timeout_s,
                tag="dialogue",
            )
            if not in_time:
                raise TimeoutError
            return pending.result()
        finally:
            if not pending.done():
                pending.cancel()

    async def _reply(
        self,
        seq: int,
        turn: TurnRecord,
        make_turn: Awaitable[DialogueTurn],
        origin_at: float,
        dead_air_from: float,
    ) -> None:
        loop = asyncio.get_running_loop()
        dialogue_started = loop.time()
        timeout_s = self.config.dialogue.timeout_s
        if self._outbound is not None and turn.kind in ("greeting", "voicemail"):
            # The opening waits for the verdict, a voicemail message for the beep.
            amd = self.config.amd
            timeout_s += (amd.total_analysis_ms + amd.drop_wait_max_ms) / 1000.0 + 4.0
        try:
            async with asyncio.timeout(timeout_s):
                answer = await self._answer_with_hold(make_turn, turn, dead_air_from)
        except TimeoutError:
            log.warning("dialogue_timeout", timeout_s=timeout_s)
            turn.fallbacks.append("dialogue_timeout")
            answer = DialogueTurn(replies=(BotReply(text=self.config.dialogue.reprompt),))
        except Exception as exc:
            log.exception("dialogue_error")
            self.record.errors.append(f"dialogue: {type(exc).__name__}: {exc}")
            give_up = self._give_up_turn("dialogue_error")
            answer = dataclasses.replace(
                give_up, replies=(BotReply(text=self.fallbacks.apology), *give_up.replies)
            )
        composed = answer.composed
        if turn.kind in ("speech", "dtmf") and composed is None:
            if answer.needs_fallback:
                self._not_understood += 1
                if self._not_understood >= self.fallbacks.not_understood_max:
                    answer = self._give_up_turn("not_understood")
            else:
                self._not_understood = 0
        turn.stt_to_dialogue_ms = round((loop.time() - dialogue_started) * 1000.0, 1)
        if answer.source == "rasa":
            turn.nlu_ms = turn.stt_to_dialogue_ms
        turn.fallbacks.extend(answer.fallbacks)
        self._entities.update(answer.entities)
        turn.intent = answer.intent
        turn.confidence = answer.confidence
        turn.dialogue = answer.source
        turn.reply_text = " ".join(r.text for r in answer.replies if r.text)
        if answer.collect_dtmf_digits:
            self._dtmf.expect(answer.collect_dtmf_digits)
        expected = policy.expected_answer(answer, self.listener.expect)
        known = policy.known_answers_after(answer, self.listener.known)
        if expected is not self.listener.expect or known != self.listener.known:
            self.listener.expect_answer(expected, answer.collect_dtmf_digits, known)
        generation = self.speaker.generation

        def on_first_frame(written_at: float) -> None:
            if seq != self._reply_seq:
                return
            self._reply_started = True
            self._reply_first_frame_at = written_at
            self.turns.set_bot_speaking(True)
            if turn.kind != "greeting":
                turn.end_of_speech_to_first_frame_ms = round((written_at - origin_at) * 1000.0, 1)
            log.info(
                "reply_started",
                turn_id=turn.turn_id,
                latency_ms=turn.end_of_speech_to_first_frame_ms,
                source=turn.reply_source,
            )

        def on_done(written_at: float) -> None:
            if seq != self._reply_seq:
                return
            self.turns.set_bot_speaking(False)
            if self._reply_first_frame_at is not None:
                turn.played_ms = round((written_at - self._reply_first_frame_at) * 1000.0, 1)
            self._turn_finished(turn)
            if answer.end is not None and self._group is not None:
                self._group.create_task(self._end_call(answer))
            else:
                self._start_no_input()

        self.speaker.mark(on_first_frame, generation, with_audio=True)
        sources: list[str] = []
        if composed is not None:
            answered = await self.responder.compose(
                composed, turn, generation, dead_air_from, sources
            )
            if answered:
                self._not_understood = 0
            else:
                self._not_understood += 1
                if self._not_understood >= self.fallbacks.not_understood_max:
                    answer = self._give_up_turn("not_understood")
                    for reply in answer.replies:
                        sources.append(
                            await self.responder.play(reply, generation, turn, dead_air_from)
                        )
        else:
            for reply in answer.replies:
                source = await self.responder.play(reply, generation, turn, dead_air_from)
                if source:
                    sources.append(source)
        if answer.replies and not sources:
            # Not a word could be produced (TTS down, no clip): hand over, using the
            # give-up line that was cached at start-up.
            answer = self._give_up_turn("tts_unavailable")
            turn.fallbacks.append("tts_unavailable")
            for reply in answer.replies:
                cached = self.tts_cache.get(reply.text, self.rate_hz)
                if cached is not None:
                    self.speaker.enqueue(cached, generation, trim_lead_in=True)
                    sources.append("cache")
        turn.reply_source = "+".join(dict.fromkeys(sources))
        if not self.speaker.mark(on_done, generation):
            return
        if not answer.replies and answer.end is not None:
            await self._end_call(answer)

    async def _end_call(self, answer: DialogueTurn) -> None:
        if self._ending:
            return
        self._ending = True
        if answer.end == "transfer":
            target = answer.transfer_target or "agents"
            self.record.transfer_target = target
            self.record.end_reason = "transferred"
            log.info("transfer", target=target)
            control = self.shared.control
            transferred = False
            if control is not None:
                await self._tell_pbx(
                    control,
                    handover_vars(
                        self.record,
                        self._entities,
                        conversation=self.config.knowledge.keep_intents,
                        account=self.config.handover.account,
                    ),
                )
                with contextlib.suppress(Exception):
                    transferred = await control.transfer(self.media.call_id, target)
            if not transferred:
                # Without call control, 0x00 lets the dialplan continue (e.g. to the queue).
                await self.media.hangup("transferred")
        else:
            self.record.end_reason = "voicemail" if answer.intent == "voicemail" else "bot_hangup"
            if self.shared.control is not None:
                await self._tell_pbx(self.shared.control, {"VOICEBOT_DONE": "1"})
            await self.media.hangup("bot_hangup")

    async def _tell_pbx(self, control: CallControl, variables: dict[str, str]) -> None:
        """Set the call's channel variables before it leaves the bot ([handover]); a PBX
        that does not take them costs one log line and an error in the record, never the
        transfer or the hang-up."""
        if not self.config.handover.enabled:
            return
        ok = False
        try:
            async with asyncio.timeout(self.config.handover.timeout_s):
                ok = await control.set_vars(self.media.call_id, variables)
        except Exception as exc:  # a timeout, a lost AMI/ESL link
            log.warning("handover_vars_failed", error=f"{type(exc).__name__}: {exc}")
        else:
            if ok:
                log.info("handover_vars", variables=sorted(variables))
            else:
                log.warning("handover_vars_failed", error="refused by the PBX")
        if not ok:
            self.record.errors.append("handover_vars_failed")


def _close_unstarted(awaitable: Awaitable[DialogueTurn]) -> None:
    if inspect.iscoroutine(awaitable) and (
        inspect.getcoroutinestate(awaitable) == inspect.CORO_CREATED
    ):
        awaitable.close()


async def _ready(answer: DialogueTurn) -> DialogueTurn:
    return answer


def make_handler(shared: Shared) -> Callable[[CallMedia], Awaitable[None]]:
    async def handle(media: CallMedia) -> None:
        await CallSession(media, shared).run()

    return handle
