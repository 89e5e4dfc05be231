"""Who answered an outbound call (issue #23 item 2): the async side of ``call.amd``.

``AmdGate`` holds one call's :class:`~voicebot_pbx.call.amd.AmdDetector`, fed from the
listener's audio tap (the caller's audio at the session's rate, silence filled in for frames
that never came), re-framed to 20 ms. Its first verdict and the voicemail drop cue are
futures the session awaits before the opening; a late beep that revises a verdict to
"machine" is passed to ``on_revised``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from voicebot_pbx.call.amd import AmdConfig, AmdDetector, AmdResult, DropCue


class AmdGate:
    def __init__(
        self, config: AmdConfig, rate_hz: int, on_revised: Callable[[AmdResult], None]
    ) -> None:
        self.detector = AmdDetector(config, rate_hz)
        loop = asyncio.get_running_loop()
        self.verdict: asyncio.Future[AmdResult] = loop.create_future()
        self.drop: asyncio.Future[DropCue] = loop.create_future()
        self._on_revised = on_revised
        self._pending = bytearray()
        self._machine = False  # a late beep revised the verdict

    @property
    def listening(self) -> bool:
        """No verdict yet, or a machine (its beep, its recording): the callee's audio is
        the detector's, not the dialogue's (no turns, no barge-in)."""
        return not self.verdict.done() or self.machine

    @property
    def machine(self) -> bool:
        return self._machine or (self.verdict.done() and self.verdict.result().verdict == "machine")

    def feed(self, pcm: bytes) -> None:
        if self.detector.finished:
            return
        self._pending += pcm
        size = self.detector.frame_bytes
        while len(self._pending) >= size and not self.detector.finished:
            frame = bytes(self._pending[:size])
            del self._pending[:size]
            for event in self.detector.feed(frame):
                if isinstance(event, DropCue):
                    if not self.drop.done():
                        self.drop.set_result(event)
                elif not self.verdict.done():
                    self.verdict.set_result(event)
                elif event.revises is not None:
                    self._machine = True
                    self._on_revised(event)
