"""Transports: how a call's audio and control reach the bot.

Every transport gives the session a ``CallMedia``: a stream of inbound events, the call's
``Speaker`` (the one owner of outgoing audio) and ``hangup``. The session never sees wire
formats.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from voicebot_pbx.speaker import Speaker

log = structlog.get_logger("voicebot_pbx.transport")


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


def put_dropping_oldest(queue: asyncio.Queue[Any], item: object) -> bool:
    """Queue ``item`` without ever blocking: when the queue is full, its oldest item goes
    (a reader that blocked would miss the caller's hang-up). True when one was dropped."""
    try:
        queue.put_nowait(item)
        return False
    except asyncio.QueueFull:
        with contextlib.suppress(asyncio.QueueEmpty):
            queue.get_nowait()
        queue.put_nowait(item)
        return True


class HangupMedia(Protocol):
    @property
    def closed(self) -> bool: ...

    async def hangup(self, reason: str) -> None: ...


async def run_call_handler(
    handler: Callable[[Any], Awaitable[None]], call: HangupMedia, max_duration_s: float
) -> None:
    """Run the session for one call, whatever the transport: a call over its maximum
    duration, or a session that crashed, is ended with a reason, and a call the session
    left open is ended by the bot (so the PBX always gets its hang-up / hand-back)."""
    try:
        async with asyncio.timeout(max_duration_s):
            await handler(call)
    except TimeoutError:
        log.warning("call_max_duration", limit_s=max_duration_s)
        await call.hangup("max_duration")
    except Exception:
        log.exception("session_crashed")
        await call.hangup("session_error")
    finally:
        if not call.closed:
            await call.hangup("bot_hangup")


class CallControl(Protocol):
    """Call control beside the media (AMI / ESL): transfer. Optional for a transport."""

    async def transfer(self, call_id: str, target: str) -> bool: ...
