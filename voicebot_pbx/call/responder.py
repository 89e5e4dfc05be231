"""The reply half of a call: a reply (text, clip, or a streamed LLM answer) into audio.

``Responder`` turns what the dialogue decided into frames queued on the call's ``Speaker``
(the one owner of outgoing audio): cached audio and clips at once, otherwise the voice
sentence by sentence (the backup voice, then an intent clip, when it fails), and a grounded
LLM answer streamed sentence by sentence with a hold line when the first one is late. It
records what it produced on the turn; what to say and when the call ends is the session's.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import Any, Protocol

import structlog

from voicebot_pbx.answers.dialogue import BotReply, ComposedReply, Rejected, Sentence
from voicebot_pbx.call.prompts import ClipLibrary, TtsCache
from voicebot_pbx.config import Config
from voicebot_pbx.ops.records import TurnRecord
from voicebot_pbx.pbx.speaker import Speaker
from voicebot_pbx.speech.engines import Engines, EngineTimeout

log = structlog.get_logger("voicebot_pbx.call.responder")

# Replies longer than this are not kept in the TTS cache (they are rarely repeated).
_CACHEABLE_TEXT_CHARS = 300


class SpeechSynth(Protocol):
    def synthesize(
        self, text: str, rate_hz: int, cancel: threading.Event | None = None
    ) -> Iterator[bytes]: ...


class Responder:
    def __init__(
        self,
        config: Config,
        engines: Engines,
        speaker: Speaker,
        clips: ClipLibrary,
        tts: SpeechSynth,
        tts_cache: TtsCache,
        errors: list[str],
    ) -> None:
        self.config = config
        self.engines = engines
        self.speaker = speaker
        self.clips = clips
        self.tts = tts
        self.tts_cache = tts_cache
        self.errors = errors
        self.rate_hz = 8000
        self._cancel: threading.Event | None = None

    def use_voice(self, tts: SpeechSynth, tts_cache: TtsCache, rate_hz: int) -> None:
        """The call's profile and rate are known."""
        self.tts, self.tts_cache, self.rate_hz = tts, tts_cache, rate_hz

    def stop_synthesis(self) -> None:
        """Barge-in / a new reply: the voice stops after its current sentence."""
        if self._cancel is not None:
            self._cancel.set()

    async def play(
        self, reply: BotReply, generation: int, turn: TurnRecord, dead_air_from: float
    ) -> str:
        queued_before_s = self.speaker.queued_audio_s
        try:
            return await self._play_reply(reply, generation, turn, dead_air_from)
        finally:
            added_ms = (self.speaker.queued_audio_s - queued_before_s) * 1000.0
            turn.reply_audio_ms = round((turn.reply_audio_ms or 0.0) + added_ms, 1)

    async def _play_reply(
        self, reply: BotReply, generation: int, turn: TurnRecord, dead_air_from: float
    ) -> str:
        sources: list[str] = []
        if reply.clip:
            pcm = self.clips.get(reply.clip, self.rate_hz)
            if pcm is not None:
                self.speaker.enqueue(pcm, generation, trim_lead_in=True)
                sources.append("clip")
            elif not reply.text:
                turn.fallbacks.append(f"clip_missing:{reply.clip}")
        if reply.text:
            sources.append(await self._speak(reply.text, generation, turn, dead_air_from))
        self.speaker.end_segment(generation)
        return "+".join(sources)

    async def hold(self, text: str, generation: int, turn: TurnRecord, dead_air_from: float) -> str:
        """While an answer is late: the "hold" clip when there is one, else ``text``."""
        hold = BotReply(clip="hold") if self._has_hold_clip() else BotReply(text=text)
        return await self.play(hold, generation, turn, dead_air_from)

    def _has_hold_clip(self) -> bool:
        return self.clips.get("hold", self.rate_hz) is not None

    def hold_ready(self, text: str) -> bool:
        """The hold line can play without the voice (a clip, or cached audio)."""
        return self._has_hold_clip() or self.tts_cache.get(text, self.rate_hz) is not None

    def _silent_since(self, quiet_from: float) -> float:
        """Loop time the caller's line goes (or went) quiet: the end of the audio still
        queued, else the later of the last audio frame written and ``quiet_from``."""
        if self.speaker.busy:
            return asyncio.get_running_loop().time() + self.speaker.buffered_s
        last = self.speaker.last_audio_at_s
        return quiet_from if last is None else max(quiet_from, last)

    async def wait_audible(
        self,
        pending: asyncio.Future[Any],
        *,
        turn: TurnRecord,
        dead_air_from: float,
        quiet_from: float,
        generation: int,
        hold_after_s: float,
        hold_text: str | None,
        limit_s: float,
        tag: str,
    ) -> bool:
        """Wait for ``pending`` (a dialogue answer, an LLM sentence, a voice's sentence)
        without leaving the caller in silence: once the line has been quiet for
        ``hold_after_s`` (counted from ``quiet_from`` at the earliest), or for
        ``[dialogue] max_dead_air_s`` since ``dead_air_from`` (the caller's end of speech,
        or later when the bot chose to wait longer for the caller, as for digits), the
        hold line plays (once per ``tag`` and turn; not when ``hold_text`` is None), and
        once it has been quiet ``max_dead_air_s`` after that, or at ``limit_s``, this gives
        up. True when ``pending`` is done."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit_s
        dead_air_s = self.config.dialogue.max_dead_air_s
        holding_stage = hold_after_s > 0
        while not pending.done():
            budget_s = hold_after_s if holding_stage else dead_air_s
            until = deadline
            if budget_s > 0:
                until = min(deadline, self._silent_since(quiet_from) + budget_s)
            if holding_stage and dead_air_s > 0:
                # However the stage counts, the caller waits no longer than this.
                until = min(until, self._silent_since(dead_air_from) + dead_air_s)
            now = loop.time()
            if until > now:
                await asyncio.wait({pending}, timeout=until - now)
                continue
            if now >= deadline or not holding_stage:
                break
            holding_stage = False
            quiet_from = now  # the dead-air allowance starts here (or when the hold ends)
            if hold_text is not None and f"{tag}_hold" not in turn.fallbacks:
                turn.fallbacks.append(f"{tag}_hold")
                await self.hold(hold_text, generation, turn, dead_air_from)
        return pending.done()

    async def speak_line(self, text: str, generation: int, turn: TurnRecord) -> str:
        """A fixed line (cached at start-up when possible)."""
        turn.reply_text = text
        return await self.play(BotReply(text=text), generation, turn, 0.0)

    async def _speak(
        self, text: str, generation: int, turn: TurnRecord, dead_air_from: float
    ) -> str:
        cached = self.tts_cache.get(text, self.rate_hz)
        if cached is not None:
            if turn.tts_first_audio_ms is None:
                turn.tts_first_audio_ms = 0.0
            self.speaker.enqueue(cached, generation, trim_lead_in=True)
            return "cache"
        voices: list[tuple[str, SpeechSynth]] = [("tts", self.tts)]
        if self.engines.tts_backup is not None:
            voices.append(("tts_backup", self.engines.tts_backup))
        for source, voice in voices:
            try:
                await self._synthesize(voice, text, generation, turn, dead_air_from)
                return source
            except EngineTimeout:
                turn.fallbacks.append(f"{source}_timeout")
                self.errors.append(f"{source}_timeout")
            except Exception as exc:
                log.error("tts_failed", source=source, error=f"{type(exc).__name__}: {exc}")
                turn.fallbacks.append(f"{source}_failed")
                self.errors.append(f"{source}: {type(exc).__name__}: {exc}")
        # No voice could say it: a recorded clip for this intent, if there is one.
        clip = self.clips.get(turn.intent, self.rate_hz) if turn.intent else None
        if clip is not None:
            self.speaker.enqueue(clip, generation, trim_lead_in=True)
            turn.fallbacks.append("tts_clip")
            return "clip"
        # Else the apology, cached at start-up: the caller is not left in silence.
        apology = self.tts_cache.get(self.config.fallbacks.apology, self.rate_hz)
        if apology is not None and text != self.config.fallbacks.apology:
            self.speaker.enqueue(apology, generation, trim_lead_in=True)
            turn.fallbacks.append("tts_apology")
            return "cache"
        return ""

    async def _synthesize(
        self, voice: SpeechSynth, text: str, generation: int, turn: TurnRecord, dead_air_from: float
    ) -> None:
        """Sentence by sentence into the speaker; raises if the voice fails before the
        first sentence (after that, what was said stays said). A late first sentence gets
        the hold line (when it can play without the voice) after ``max_dead_air_s``; a
        voice that leaves the line quiet for longer than that again is given up on."""
        loop = asyncio.get_running_loop()
        cancel = threading.Event()
        self._cancel = cancel
        chunks: list[bytes] = []
        sentences = voice.synthesize(text, self.rate_hz, cancel)
        started = loop.time()
        complete = False
        timeout_s = self.config.tts.timeout_s
        hold_text = self.config.dialogue.hold_reply
        try:
            while True:
                job = asyncio.ensure_future(
                    self.engines.run("tts", timeout_s, lambda: next(sentences, None))
                )
                try:
                    first = not chunks
                    in_time = await self.wait_audible(
                        job,
                        turn=turn,
                        dead_air_from=dead_air_from,
                        quiet_from=loop.time(),  # the voice's own lateness
                        generation=generation,
                        hold_after_s=self.config.dialogue.max_dead_air_s if first else 0.0,
                        hold_text=hold_text if first and self.hold_ready(hold_text) else None,
                        limit_s=timeout_s,
                        tag="tts",
                    )
                finally:
                    if not job.done():
                        job.cancel()
                if not in_time:
                    raise EngineTimeout("tts", self.config.dialogue.max_dead_air_s)
                chunk = job.result()
                if chunk is None:
                    complete = True
                    break
                if turn.tts_first_audio_ms is None:
                    turn.tts_first_audio_ms = round((loop.time() - started) * 1000.0, 1)
                if not self.speaker.enqueue(chunk, generation, trim_lead_in=True):
                    break
                chunks.append(chunk)
                await self.speaker.wait_for_room()
        except Exception:
            if not chunks:
                raise
            turn.fallbacks.append("tts_failed_midway")
        finally:
            cancel.set()
        if complete and chunks and len(text) <= _CACHEABLE_TEXT_CHARS:
            # memory only: a reply made during a call may carry the caller's data
            self.tts_cache.put(text, self.rate_hz, b"".join(chunks), persist=False)

    async def compose(
        self,
        composed: ComposedReply,
        turn: TurnRecord,
        generation: int,
        dead_air_from: float,
        sources: list[str],
    ) -> bool:
        """Stream a grounded LLM answer sentence by sentence into TTS. A hold line plays if
        the first sentence is late; past the hard limit, or if the answer is rejected, the
        fallback reply. Cancelling this (barge-in) closes the answer, which stops the model.
        True when the model answered."""
        llm = composed.composer
        cfg = llm.config
        loop = asyncio.get_running_loop()
        started = loop.time()
        turn.dialogue = "llm"
        spoken: list[str] = []
        answered = False
        async with contextlib.aclosing(llm.answer(composed.question)) as stream:
            pending = asyncio.ensure_future(anext(stream, None))
            try:
                held = len(turn.fallbacks)
                in_time = await self.wait_audible(
                    pending,
                    turn=turn,
                    dead_air_from=dead_air_from,
                    quiet_from=started,
                    generation=generation,
                    hold_after_s=cfg.first_sentence_timeout_s,
                    hold_text=cfg.hold_reply,
                    limit_s=cfg.hard_timeout_s,
                    tag="llm",
                )
                if "llm_hold" in turn.fallbacks[held:]:
                    sources.append("hold")
                if not in_time:
                    turn.fallbacks.append("llm_timeout")
                    pending.cancel()
                    sources.append(await self.speak_line(cfg.fallback_reply, generation, turn))
                    return False
                item = pending.result()
                while item is not None:
                    if isinstance(item, Rejected):
                        turn.fallbacks.append(f"llm_{item.reason}")
                        sources.append(await self.speak_line(item.reply, generation, turn))
                        break
                    if isinstance(item, Sentence):
                        if item.index == 0:
                            turn.llm_first_sentence_ms = round((loop.time() - started) * 1000, 1)
                        answered = True
                        spoken.append(item.text)
                        await self._speak(item.text, generation, turn, dead_air_from)
                        sources.append("llm")
                    pending = asyncio.ensure_future(anext(stream, None))
                    rest_s = max(0.0, cfg.hard_timeout_s - (loop.time() - started))
                    if not await self.wait_audible(
                        pending,
                        turn=turn,
                        dead_air_from=dead_air_from,
                        quiet_from=loop.time(),
                        generation=generation,
                        hold_after_s=0.0,
                        hold_text=None,
                        limit_s=rest_s,
                        tag="llm",
                    ):
                        turn.fallbacks.append("llm_stalled")  # what was said stays said
                        break
                    item = pending.result()
            finally:
                if not pending.done():
                    # The generator must be idle before aclosing() closes it.
                    pending.cancel()
                    await asyncio.wait({pending})
        if spoken:
            turn.reply_text = " ".join(spoken)
        return answered
