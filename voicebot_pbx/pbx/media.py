"""Transports: how a call's audio and control reach the bot.

Every transport gives the session a ``CallMedia``: a stream of inbound events, the call's
``Speaker`` (the one owner of outgoing audio) and ``hangup``. The session never sees wire
formats.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from voicebot_pbx.pbx.speaker import Speaker

log = structlog.get_logger("voicebot_pbx.pbx.media")


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
    # What the PBX told about the call with its media (None: not known this way):
    caller_id: str | None  # FreeSWITCH channel data
    profile: str | None  # the listener's profile port, or FreeSWITCH's VOICEBOT_PROFILE

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


INBOUND_QUEUE_FRAMES = 500  # 10 s of 20 ms frames


class CallState:
    """What every transport's call keeps the same way: the paced speaker, the bounded
    inbound queue that never blocks its reader, and the one-way "closed" state whose
    reason reaches the session as a ``CallEnded``. A subclass writes the frames
    (``write_frame``) and logs with its own logger (``_log``)."""

    _log: Any = log

    def __init__(self, peer: str, rate_hz: int) -> None:
        self.peer = peer
        self._rate_hz = rate_hz  # outbound (the speaker's) rate
        self.speaker = Speaker(rate_hz)
        self.inbound: asyncio.Queue[InboundEvent] = asyncio.Queue(INBOUND_QUEUE_FRAMES)
        self._closed = asyncio.Event()
        self.end_reason: str | None = None
        self.inbound_dropped = 0
        self.frames_in = 0  # inbound audio frames (a call that sent none may be evicted)
        self.connected_at_s = asyncio.get_running_loop().time()

    @property
    def rate_hz(self) -> int:
        return self._rate_hz

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def write_frame(self, pcm: bytes, is_silence: bool) -> None:
        raise NotImplementedError

    async def run_pacer(self) -> None:
        await self.speaker.run(self.write_frame)

    def _put(self, event: InboundEvent) -> None:
        """Queue without ever blocking the reader: if the session is 10 s behind, drop the
        oldest event. A blocked reader would miss the caller's hang-up and stall the PBX."""
        if put_dropping_oldest(self.inbound, event):
            if self.inbound_dropped == 0:
                self._log.warning(
                    "inbound_overflow", queue_frames=self.inbound.maxsize, peer=self.peer
                )
            self.inbound_dropped += 1

    def _mark_closed(self, reason: str) -> None:
        if self._closed.is_set():
            return
        self.end_reason = reason
        self._closed.set()
        self.speaker.interrupt()
        event = CallEnded(reason, asyncio.get_running_loop().time())
        # The session may be behind: the end matters more than old audio.
        put_dropping_oldest(self.inbound, event)


async def finish_connections(tasks: Collection[asyncio.Task[Any]], grace_s: float) -> None:
    """Give the connection tasks ``grace_s`` to end, then cancel the rest (1 s to unwind)."""
    if not tasks:
        return
    _done, pending = await asyncio.wait(tasks, timeout=grace_s)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=1.0)


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

    async def set_vars(self, call_id: str, variables: Mapping[str, str]) -> bool:
        """Set channel variables of the call (AMI Setvar / ESL uuid_setvar); False when
        any of them was not set."""
        ...

    async def get_var(self, call_id: str, name: str) -> str | None:
        """A channel variable of the call (AMI Getvar); None when unavailable."""
        ...
