"""What every PBX-facing call server does the same way, whatever the protocol.

``CallServer`` is the shared base of ``AudioSocketServer`` and ``FreeswitchServer``: the
calls in progress (``calls``, counters, ``wait_idle``), the peer allow-list (loopback only
unless configured), running the session for one call until the media side closes (then a
grace period, then cancel), and the graceful finish (every call handed back to its
dialplan, connections given ``grace_s``). A subclass accepts connections its own way,
registers each call with ``serving()`` and ends its listener in ``stop_accepting`` /
``_listener_closed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import Awaitable, Callable, Collection, Coroutine, Iterator
from typing import Any, Generic, Protocol, TypeVar

import structlog

from voicebot_pbx.pbx.allow import parse_cidrs, peer_allowed
from voicebot_pbx.pbx.media import CallMedia, finish_connections, run_call_handler

log = structlog.get_logger("voicebot_pbx.pbx.server")

CallHandler = Callable[[CallMedia], Awaitable[None]]
# After the media side is gone (caller hang-up, bad input, stuck peer) the session gets
# ``CallEnded``; if it has not returned this long after, it is cancelled so a stuck session
# cannot keep a dead call (and its ``max_calls`` slot) alive.
HANDLER_GRACE_S = 5.0


class ServedCall(CallMedia, Protocol):
    peer: str  # "host:port"
    frames_in: int
    connected_at_s: float  # loop time

    @property
    def closed(self) -> bool: ...

    async def wait_closed(self) -> None: ...

    async def run_pacer(self) -> None: ...


C = TypeVar("C", bound=ServedCall)


class CallServer(Generic[C]):
    def __init__(
        self,
        handler: CallHandler,
        *,
        allow: Collection[str],
        max_call_duration_s: float,
        handler_grace_s: float = HANDLER_GRACE_S,
        profile: str | None = None,
    ) -> None:
        self._handler = handler
        self._allow = parse_cidrs(allow) if allow else ()
        self._max_call_duration_s = max_call_duration_s
        self._handler_grace_s = handler_grace_s
        self.profile = profile  # the bot profile of every call this listener takes
        self.calls: dict[str, C] = {}
        self._connections: set[asyncio.Task[Any]] = set()
        self.calls_total = 0
        self.calls_rejected = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def wait_idle(self) -> None:
        """Until no call is in progress."""
        await self._idle.wait()

    async def stop_accepting(self) -> None:
        raise NotImplementedError

    async def _listener_closed(self) -> None:
        """After the calls are finished: release the listener (socket, thread)."""
        raise NotImplementedError

    async def close(self, grace_s: float = 2.0, reason: str = "shutdown") -> None:
        """Stop accepting; hand every call back to its dialplan; wait ``grace_s``."""
        await self.stop_accepting()
        # Concurrently: one peer that does not read must not hold up the others' hang-up.
        await asyncio.gather(*(call.hangup(reason) for call in list(self.calls.values())))
        await finish_connections(self._connections, grace_s)
        await self._listener_closed()

    async def make_room(
        self, peer: str, *, max_calls: int, per_peer: int, evict_silent_after_s: float
    ) -> str | None:
        """May a new call from ``peer`` ("host:port") start? None if so, else the refusal
        reason (``max_calls_per_peer`` counts calls from the same host).

        Calls already closed (finishing their record) do not count. When every slot is
        taken, the oldest call that has sent no audio frame for ``evict_silent_after_s``
        since it connected (a broken or hostile PBX holding UUID-only connections) is hung
        up to make room, with one ``call_evicted`` line."""
        live = {call_id: call for call_id, call in self.calls.items() if not call.closed}
        host = _host_of(peer)
        if per_peer and sum(_host_of(c.peer) == host for c in live.values()) >= per_peer:
            return "max_calls_per_peer"
        if len(live) < max_calls:
            return None
        if evict_silent_after_s > 0:
            now_s = asyncio.get_running_loop().time()
            silent = [
                (call.connected_at_s, call_id)
                for call_id, call in live.items()
                if call.frames_in == 0 and now_s - call.connected_at_s >= evict_silent_after_s
            ]
            if silent:
                _at, victim_id = min(silent)
                victim = live[victim_id]
                log.warning(
                    "call_evicted",
                    reason="no_audio",
                    evicted_call_id=victim_id,
                    evicted_peer=victim.peer,
                    silent_s=round(now_s - victim.connected_at_s, 1),
                )
                await victim.hangup("evicted_no_audio")
                return None
        return "max_calls"

    def _peer_allowed(self, address: str, *, unix_peer: bool = False) -> bool:
        """Loopback only by default; the configured CIDRs when the PBX is elsewhere.
        ``unix_peer``: an empty address (a Unix socket) counts as local."""
        if not self._allow:
            try:
                return ipaddress.ip_address(address.split("%")[0]).is_loopback
            except ValueError:
                return unix_peer and address == ""
        return peer_allowed(address, self._allow)

    @contextlib.contextmanager
    def serving(self, call_id: str, call: C) -> Iterator[None]:
        """The call is in progress for the duration of the block (log lines bound to it)."""
        self.calls[call_id] = call
        self._idle.clear()
        self.calls_total += 1
        structlog.contextvars.bind_contextvars(call_id=call_id)
        try:
            yield
        finally:
            self.calls.pop(call_id, None)
            if not self.calls:
                self._idle.set()
            structlog.contextvars.unbind_contextvars("call_id")

    async def run_paced(self, call: C, reader: Coroutine[Any, Any, None]) -> None:
        """A call whose transport reads in ``reader`` and writes through the paced speaker:
        both run beside the session and stop with it."""
        async with asyncio.TaskGroup() as group:
            reader_task = group.create_task(reader)
            pacer_task = group.create_task(call.run_pacer())
            try:
                await self.run_session(group, call)
            finally:
                reader_task.cancel()
                pacer_task.cancel()

    async def run_session(self, group: asyncio.TaskGroup, call: C) -> None:
        """The session for ``call`` until it ends or the media side closes; then it gets
        ``handler_grace_s`` to finish (it has its ``CallEnded``) before it is cancelled."""
        handler_task = group.create_task(
            run_call_handler(self._handler, call, self._max_call_duration_s)
        )
        closed_task = group.create_task(call.wait_closed())
        try:
            await asyncio.wait((handler_task, closed_task), return_when=asyncio.FIRST_COMPLETED)
            if not handler_task.done():
                await asyncio.wait((handler_task,), timeout=self._handler_grace_s)
                if not handler_task.done():
                    log.warning("session_overran", grace_s=self._handler_grace_s)
                    handler_task.cancel()
        finally:
            closed_task.cancel()


def _host_of(peer: str) -> str:
    """The address part of a "host:port" peer (IPv6 hosts contain colons themselves)."""
    return peer.rsplit(":", 1)[0]
