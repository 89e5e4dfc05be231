"""Who answered an outbound call (issue #23 item 2): the async side of ``call.amd``.

``AmdGate`` holds one call's :class:`~voicebot_pbx.call.amd.AmdDetector`, fed from the
listener's audio tap (the caller's audio at the session's rate, silence filled in for frames
that never came), re-framed to 20 ms. :meth:`AmdGate.settle` gives the verdict the session
acts on before the opening: the detector's first, combined with Asterisk's ``AMD()`` result
when the dialplan ran it, and a greeting the length rule took for a machine's read for its
words (``GreetingEnd``; the greeting's audio is kept for that: ``call/amd_words.py``). A
person ``AMD()`` already heard is the verdict at once (:meth:`AmdGate.asterisk_person`).
:meth:`AmdGate.wait_drop` waits for the moment to leave the voicemail message; a late beep
that revises a verdict to "machine" is passed to ``on_revised``. :meth:`AmdGate.likely_first`
says whether a short greeting's pause made a person likely before any verdict
(``LikelyHuman``): the session then starts the opening at once and cuts it if the verdict
comes out machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from voicebot_pbx.audio import SAMPLE_WIDTH_BYTES
from voicebot_pbx.call.amd import (
    CHECKABLE_REASONS,
    AmdConfig,
    AmdDetector,
    AmdResult,
    AsteriskAmd,
    DropCue,
    GreetingEnd,
    LikelyHuman,
    combine_asterisk,
)
from voicebot_pbx.call.amd_words import WordsVerdict, greeting_words
from voicebot_pbx.pbx.media import CallControl
from voicebot_pbx.speech.stt_split import spoken_words

log = structlog.get_logger(__name__)

# A clip of the callee's audio -> its transcript (None: none to be had).
Transcribe = Callable[[bytes], Awaitable[str | None]]


class AmdGate:
    def __init__(
        self, config: AmdConfig, rate_hz: int, on_revised: Callable[[AmdResult], None]
    ) -> None:
        self.detector = AmdDetector(config, rate_hz)
        loop = asyncio.get_running_loop()
        self.verdict: asyncio.Future[AmdResult] = loop.create_future()
        self.drop: asyncio.Future[DropCue] = loop.create_future()
        self.greeting_end: asyncio.Future[GreetingEnd] = loop.create_future()
        self.likely: asyncio.Future[LikelyHuman] = loop.create_future()
        self._on_revised = on_revised
        self._pending = bytearray()
        self._machine = False  # a late beep revised the verdict
        # Asterisk's AMD() outcome, read over AMI once (None: the dialplan ran none)
        self._asterisk: AsteriskAmd | None = None
        self._asterisk_read = False
        # The greeting's audio from the answer, for its words (bounded: the longest wait for
        # a first word, the longest greeting the words check reads, its silence, a second).
        self._audio = bytearray()
        audio_max_ms = (
            config.initial_silence_ms
            + config.words_check_max_ms
            + config.after_greeting_silence_ms
            + 1000
        )
        self._audio_max = audio_max_ms * rate_hz // 1000 * SAMPLE_WIDTH_BYTES

    @property
    def listening(self) -> bool:
        """No verdict yet, or a machine (its beep, its recording): the callee's audio is
        the detector's, not the dialogue's (no turns, no barge-in)."""
        return not self.verdict.done() or self.machine

    @property
    def machine(self) -> bool:
        if self._machine:
            return True
        result = self.detector.result
        return self.verdict.done() and result is not None and result.verdict == "machine"

    def greeting_audio(self) -> bytes:
        """The callee's audio from the answer (up to the words check's bound)."""
        return bytes(self._audio)

    def human_by_words(self, reason: str) -> AmdResult:
        """The session took the greeting's words for a person's: the callee's audio is the
        dialogue's from now on, and a beep after all still turns the call into a drop
        (``AmdDetector.overrule``)."""
        if self.drop.done():  # the greeting's silence cue: a beep gives the next one
            self.drop = asyncio.get_running_loop().create_future()
        return self.detector.overrule(reason)

    @property
    def message_to_a_recording(self) -> bool:
        """The voicemail message is being left on what was taken for a machine by its
        greeting's length or words (not a beep), whose greeting went quiet without a beep
        (drop cue "silence"): a recording, which does not talk back (``talk_back_is_person``)."""
        result = self.detector.result
        return (
            self.detector.config.talk_back_is_person
            and not self._machine
            and result is not None
            and result.verdict == "machine"
            and result.reason.split("|", 1)[0] in CHECKABLE_REASONS
            and self.drop.done()
            and self.drop.result().cause == "silence"
        )

    def talked_back(self, text: str, message: str = "") -> AmdResult | None:
        """The callee talked over the voicemail message (``text``: what they said, in a turn
        that began while :attr:`message_to_a_recording`): words, none of them a machine's
        (``call/amd_words.py``), are a person's. The verdict becomes human, the callee's audio
        the dialogue's; a beep within ``late_beep_ms`` still makes the call a voicemail.
        None: no such words, words that are mostly the ``message``'s own (its line echo, if
        the echo gate let any through), or the message is not (or no longer) to a recording."""
        if not self.message_to_a_recording or not any(c.isalnum() for c in text):
            return None
        if greeting_words(text) == "machine" or _echoes(text, message):
            return None
        return self.human_by_words("talked_over_message")

    async def settle(
        self, control: CallControl | None, call_id: str, transcribe: Transcribe
    ) -> AmdResult:
        """The verdict the bot acts on: the detector's first, combined with Asterisk's
        ``AMD()`` when the dialplan ran it, and a machine by length taken back when the
        greeting's words are a person's (``words_check``)."""
        cfg = self.detector.config
        result = await self._with_asterisk(await self.first_verdict(), control, call_id)
        own_reason = result.reason.split("|", 1)[0]
        if result.verdict == "machine" and own_reason in CHECKABLE_REASONS and cfg.words_check:
            # Too long for a "hello": the greeting's words may still show a person.
            if await self._words(transcribe) == "human":
                reason = f"{result.reason}|words_human"
                self.human_by_words(reason)
                result = dataclasses.replace(result, verdict="human", reason=reason)
        return result

    async def asterisk_person(self, control: CallControl | None, call_id: str) -> AmdResult | None:
        """A person already heard by Asterisk's ``AMD()``, which the dialplan ran before it
        handed the call over: the callee's hello and pause are behind the call, so the
        detector would hear only their silence (and wait ``initial_silence_ms``). Taken at
        once, unless ``asterisk_prefer = "own"``: the verdict, from which the callee's audio
        is the dialogue's (a beep within ``late_beep_ms`` still makes it a machine)."""
        if self.detector.config.asterisk_prefer == "own" or self.verdict.done():
            return None
        theirs = await self._asterisk_amd(control, call_id)
        if theirs is None or theirs.verdict != "human" or self.verdict.done():
            return None
        result = self.detector.overrule(f"asterisk:{theirs.label}")
        self.verdict.set_result(result)
        return result

    async def likely_first(self) -> bool:
        """Whether a person became likely (``LikelyHuman``) before any verdict; waits for
        the first of the two (at most ``total_analysis_ms`` and 2 s)."""
        cfg = self.detector.config
        if cfg.likely_human_silence_ms <= 0:
            return False
        pending: tuple[asyncio.Future[Any], ...] = (self.likely, self.verdict)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(cfg.total_analysis_ms / 1000.0 + 2.0):
                await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        return self.likely.done() and not self.verdict.done()

    async def first_verdict(self) -> AmdResult:
        """The detector's own first verdict (before Asterisk's and the words check)."""
        cfg = self.detector.config
        try:
            async with asyncio.timeout(cfg.total_analysis_ms / 1000.0 + 2.0):
                return await asyncio.shield(self.verdict)
        except TimeoutError:  # no audio at all reached the detector
            return AmdResult(verdict="undecided", decided_at_s=0.0, reason="no_audio")

    async def wait_drop(self) -> None:
        """Until the moment to leave the voicemail message (at most ``drop_wait_max_ms``)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.detector.config.drop_wait_max_ms / 1000.0 + 2.0):
                await asyncio.shield(self.drop)

    async def _words(self, transcribe: Transcribe) -> WordsVerdict | None:
        """Once the greeting ends (``GreetingEnd``; not after a beep or past
        ``words_check_max_ms``): what its words say (``call/amd_words.py``)."""
        cfg = self.detector.config
        wait_s = (cfg.words_check_max_ms + cfg.after_greeting_silence_ms) / 1000.0 + 0.5
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                ended: asyncio.Future[Any] = self.greeting_end
                dropped: asyncio.Future[Any] = self.drop
                await asyncio.wait((ended, dropped), return_when=asyncio.FIRST_COMPLETED)
        if not self.greeting_end.done():
            return None
        text = await transcribe(self.greeting_audio()) or ""
        verdict = greeting_words(text)
        log.info("amd_words", words=verdict or "neither", heard_words=len(text.split()))
        return verdict

    async def _with_asterisk(
        self, own: AmdResult, control: CallControl | None, call_id: str
    ) -> AmdResult:
        """When the dialplan ran Asterisk's ``AMD()`` before handing the call over, its
        AMDSTATUS/AMDCAUSE are combined with the detector's verdict (``combine_asterisk``)."""
        theirs = await self._asterisk_amd(control, call_id)
        if theirs is None:
            return own
        return combine_asterisk(
            own, theirs, at_s=own.decided_at_s, prefer=self.detector.config.asterisk_prefer
        )

    async def _asterisk_amd(self, control: CallControl | None, call_id: str) -> AsteriskAmd | None:
        """AMDSTATUS/AMDCAUSE of the call's channel over AMI, read once per call (None: no
        ``AMD()`` ran, no AMI, or an unusable answer: the detector alone decides)."""
        if control is not None and not self._asterisk_read:
            self._asterisk = await _read_asterisk_amd(control, call_id)
            self._asterisk_read = True
        return self._asterisk

    def feed(self, pcm: bytes, echo: bool = False) -> None:
        """The callee's audio; ``echo``: it is the line echo of the bot's own voice (the
        listener's echo gate), which is silence to the detector, not a greeting going on."""
        if self.detector.finished:
            return
        if len(self._audio) < self._audio_max:
            self._audio += pcm[: self._audio_max - len(self._audio)]
        self._pending += pcm
        size = self.detector.frame_bytes
        while len(self._pending) >= size and not self.detector.finished:
            frame = bytes(self._pending[:size])
            del self._pending[:size]
            for event in self.detector.feed(frame, 0.0 if echo else None):
                if isinstance(event, LikelyHuman):
                    if not self.likely.done() and not self.verdict.done():
                        self.likely.set_result(event)
                elif isinstance(event, GreetingEnd):
                    if not self.greeting_end.done():
                        self.greeting_end.set_result(event)
                elif isinstance(event, DropCue):
                    if not self.drop.done():
                        self.drop.set_result(event)
                elif not self.verdict.done():
                    self.verdict.set_result(event)
                elif event.revises is not None:
                    self._machine = True
                    self._on_revised(event)


def _echoes(text: str, message: str) -> bool:
    """Three words or more, at least three quarters of them the message's own."""
    heard = spoken_words(text)
    own = set(spoken_words(message))
    return len(heard) >= 3 and sum(word in own for word in heard) >= 0.75 * len(heard)


async def _read_asterisk_amd(control: CallControl, call_id: str) -> AsteriskAmd | None:
    try:
        async with asyncio.timeout(0.5):
            status = await control.get_var(call_id, "AMDSTATUS")
            if not status:
                return None
            cause = await control.get_var(call_id, "AMDCAUSE") or ""
        return AsteriskAmd.parse(status, cause)
    except Exception as exc:  # unreadable or malformed: the detector alone decides
        log.info("asterisk_amd_unusable", error=f"{type(exc).__name__}: {exc}")
        return None
