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
from typing import Protocol

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
        self, reply: BotReply, generation: int, turn: TurnRecord, origin_at: float
    ) -> str:
        queued_before_s = self.speaker.queued_audio_s
        try:
            return await self._play_reply(reply, generation, turn, origin_at)
        finally:
            added_ms = (self.speaker.queued_audio_s - queued_before_s) * 1000.0
            turn.reply_audio_ms = round((turn.reply_audio_ms or 0.0) + added_ms, 1)

    async def _play_reply(
        self, reply: BotReply, generation: int, turn: TurnRecord, origin_at: float
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
            sources.append(await self._speak(reply.text, generation, turn, origin_at))
        self.speaker.end_segment(generation)
        return "+".join(sources)

    async def hold(self, text: str, generation: int, turn: TurnRecord, origin_at: float) -> str:
        """While an answer is late: the "hold" clip when there is one, else ``text``."""
        has_clip = self.clips.get("hold", self.rate_hz) is not None
        hold = BotReply(clip="hold") if has_clip else BotReply(text=text)
        return await self.play(hold, generation, turn, origin_at)

    async def speak_line(self, text: str, generation: int, turn: TurnRecord) -> str:
        """A fixed line (cached at start-up when possible)."""
        turn.reply_text = text
        return await self.play(BotReply(text=text), generation, turn, 0.0)

    async def _speak(self, text: str, generation: int, turn: TurnRecord, origin_at: float) -> str:
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
                await self._synthesize(voice, text, generation, turn)
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
        return ""

    async def _synthesize(
        self, voice: SpeechSynth, text: str, generation: int, turn: TurnRecord
    ) -> None:
        """Sentence by sentence into the speaker; raises if the voice fails before the
        first sentence (after that, what was said stays said)."""
        loop = asyncio.get_running_loop()
        cancel = threading.Event()
        self._cancel = cancel
        chunks: list[bytes] = []
        sentences = voice.synthesize(text, self.rate_hz, cancel)
        started = loop.time()
        complete = False
        try:
            while True:
                chunk = await self.engines.run(
                    "tts", self.config.tts.timeout_s, lambda: next(sentences, None)
                )
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
        origin_at: float,
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
                done, _ = await asyncio.wait({pending}, timeout=cfg.first_sentence_timeout_s)
                if not done:
                    turn.fallbacks.append("llm_hold")
                    sources.append(await self.hold(cfg.hold_reply, generation, turn, origin_at))
                    rest_s = max(0.0, cfg.hard_timeout_s - (loop.time() - started))
                    done, _ = await asyncio.wait({pending}, timeout=rest_s)
                    if not done:
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
                        await self._speak(item.text, generation, turn, origin_at)
                        sources.append("llm")
                    item = await anext(stream, None)
            finally:
                if not pending.done():
                    # The generator must be idle before aclosing() closes it.
                    pending.cancel()
                    await asyncio.wait({pending})
        if spoken:
            turn.reply_text = " ".join(spoken)
        return answered
