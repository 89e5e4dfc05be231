"""Who answered an outbound call (issue #23 item 2): the async side of ``call.amd``.

``AmdGate`` holds one call's :class:`~voicebot_pbx.call.amd.AmdDetector`, fed from the
listener's audio tap (the caller's audio at the session's rate, silence filled in for frames
that never came), re-framed to 20 ms. Its first verdict, the voicemail drop cue and the end
of a greeting the length rule took for a machine's (``GreetingEnd``, with the greeting's audio
kept for its words: ``call/amd_words.py``) are futures the session awaits before the opening;
a late beep that revises a verdict to "machine" is passed to ``on_revised``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from voicebot_pbx.audio import SAMPLE_WIDTH_BYTES
from voicebot_pbx.call.amd import AmdConfig, AmdDetector, AmdResult, DropCue, GreetingEnd


class AmdGate:
    def __init__(
        self, config: AmdConfig, rate_hz: int, on_revised: Callable[[AmdResult], None]
    ) -> None:
        self.detector = AmdDetector(config, rate_hz)
        loop = asyncio.get_running_loop()
        self.verdict: asyncio.Future[AmdResult] = loop.create_future()
        self.drop: asyncio.Future[DropCue] = loop.create_future()
        self.greeting_end: asyncio.Future[GreetingEnd] = loop.create_future()
        self._on_revised = on_revised
        self._pending = bytearray()
        self._machine = False  # a late beep revised the verdict
        # The greeting's audio from the answer, for its words (bounded: the longest greeting
        # the words check reads, and a second of silence after it).
        self._audio = bytearray()
        self._audio_max = (
            (config.words_check_max_ms + config.after_greeting_silence_ms + 1000)
            * rate_hz
            // 1000
            * SAMPLE_WIDTH_BYTES
        )
        self.rate_hz = rate_hz

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

    def feed(self, pcm: bytes) -> None:
        if self.detector.finished:
            return
        if len(self._audio) < self._audio_max:
            self._audio += pcm[: self._audio_max - len(self._audio)]
        self._pending += pcm
        size = self.detector.frame_bytes
        while len(self._pending) >= size and not self.detector.finished:
            frame = bytes(self._pending[:size])
            del self._pending[:size]
            for event in self.detector.feed(frame):
                if isinstance(event, GreetingEnd):
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
