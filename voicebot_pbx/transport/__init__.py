"""Transports: how a call's audio and control reach the bot.

Every transport gives the session a ``CallMedia``: a stream of inbound events, the call's
``Speaker`` (the one owner of outgoing audio) and ``hangup``. The session never sees wire
formats.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

from voicebot_pbx.speaker import Speaker


@dataclass(frozen=True, slots=True)
class AudioIn:
    pcm: bytes
    rate_hz: int
    at_s: float


@dataclass(frozen=True, slots=True)
class DtmfIn:
    digit: str
    at_s: float


@dataclass(frozen=True, slots=True)
class CallEnded:
    """The media side is gone (caller hung up, bad input, write stall ...)."""

    reason: str
    at_s: float


InboundEvent = AudioIn | DtmfIn | CallEnded


class CallMedia(Protocol):
    call_id: str
    pbx: str
    peer: str
    speaker: Speaker
    inbound: asyncio.Queue[InboundEvent]

    @property
    def rate_hz(self) -> int: ...

    async def wait_for_rate(self, timeout_s: float) -> int: ...

    async def hangup(self, reason: str) -> None:
        """End the bot's side: the PBX continues its dialplan (AudioSocket: send 0x00)."""
        ...


class CallControl(Protocol):
    """Call control beside the media (AMI / ESL): transfer. Optional for a transport."""

    async def transfer(self, call_id: str, target: str) -> bool: ...
