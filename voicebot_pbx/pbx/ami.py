"""Asterisk call control over AMI (panoramisk 1.4, wrapped).

The media of a call flows over AudioSocket; this module is the control beside it:

* **UUID -> channel.** The dialplan runs ``AudioSocket(<uuid>,host:port)`` (or
  ``Dial(AudioSocket/host:port/<uuid>/c(slin16))``). Asterisk announces every dialplan step
  with a ``Newexten`` event (``Application``/``AppData``, main/manager_channels.c), so the
  UUID the bot receives as its call id maps to the caller's channel name. ``Hangup`` events
  remove the entry; after every (re)connect ``CoreShowChannels`` rebuilds the map, so calls
  that started while AMI was down can still be transferred.
* **Transfer** = ``Redirect`` of the caller's channel to ``transfer_context``/exten (an agent
  queue): Asterisk pulls the channel out of AudioSocket (the bot sees EOF) and runs the
  dialplan there. **Hang-up** = ``Hangup`` of that channel.
* **DTMF** from ``DTMFEnd`` events, for Asterisk versions whose AudioSocket does not forward
  DTMF (before 20.14/21.9/22.4 app_audiosocket.c forwards voice frames only).
  ``DtmfDeduper`` drops the AMI copy when the AudioSocket copy also arrives.
* **Outbound calls**: ``originate()`` sends an async ``Originate`` and waits for its
  ``OriginateResponse`` (a list response: the ack, then the event with the same ActionID).

panoramisk is used for the wire protocol (``AMIProtocol``: framing, ActionIDs, list responses)
and event dispatch, but not for connection management: its futures never time out, it
re-queues unanswered actions on reconnect (a Redirect replayed minutes later would move a
stranger's call), it reconnects at a fixed interval and fires coroutine callbacks with
``ensure_future``. Here every action runs under ``asyncio.timeout``, actions pending when the
connection drops fail at once with ``AmiNotConnected``, reconnects back off exponentially
(with jitter) up to ``reconnect_max_s``, and event callbacks run in a task this client owns.
Calls in progress never depend on AMI: without it only transfer/hang-up degrade (logged).
"""

from __future__ import annotations

import asyncio
import inspect
import random
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from panoramisk.actions import Action

from voicebot_pbx.config import AmiConfig as AmiConfig
from voicebot_pbx.pbx.ami_codec import (
    AmiActionFailed,
    AmiAuthFailed,
    AmiError,
    AmiEvent,
    AmiMessage,
    AmiNotConnected,
    AmiTimeout,
    CoreShowChannelEvent,
    DialBeginEvent,
    DtmfDeduper,
    DtmfEndEvent,
    HangupEvent,
    NewextenEvent,
    VarSetEvent,
    audiosocket_uuid,
    canonical_uuid,
    parse_event,
)
from voicebot_pbx.pbx.ami_wire import WireManager, WireProtocol, load_secret

log = structlog.get_logger("voicebot_pbx.ami")


# ---------------------------------------------------------------------------------------------
# The client

DtmfCallback = Callable[[str, str], Awaitable[None] | None]
EventCallback = Callable[[AmiEvent], Awaitable[None] | None]

# Event classes requested at login (manager.c set_eventmask): Hangup and OriginateResponse
# are "call", Newexten "dialplan", DTMFEnd "dtmf".
EVENT_MASK = "call,dialplan,dtmf"
_BACKOFF_BASE_S = 0.5
_RELOG_EVERY = 50
_EVENT_QUEUE_SIZE = 1000
_MAX_MAPPED_CALLS = 10_000
# A lookup at a call's start waits this long for the Newexten event naming its channel.
CHANNEL_WAIT_S = 0.3
_HANDLED = frozenset({"newexten", "hangup", "dtmfend", "dialbegin", "varset"})
# Set by chan_websocket on a Dial(WebSocket/INCOMING/...) channel: the id under which
# Asterisk's HTTP server waits for the application's connection (/media/<id>).
MEDIA_CONNECTION_VARIABLE = "MEDIA_WEBSOCKET_CONNECTION_ID"
_SAFE_VALUE = re.compile(r"^[^\x00-\x1f\x7f]*$")
_SAFE_DIALPLAN_NAME = re.compile(r"^[^\x00-\x1f\x7f,]+$")


@dataclass(frozen=True, slots=True)
class _DtmfItem:
    call_id: str
    digit: str


@dataclass(slots=True)
class _Connection:
    manager: WireManager
    protocol: WireProtocol | None = None
    logged_in: bool = False
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    inflight: set[asyncio.Future[Any]] = field(default_factory=set)


class AmiClient:
    """Call control over AMI; implements ``CallControl`` (``transfer``) and more.

    ``start()`` returns at once; the client connects in the background and keeps
    reconnecting. ``connected`` says whether actions can be sent right now.
    """

    pbx = "asterisk"

    def __init__(
        self,
        config: AmiConfig,
        *,
        on_dtmf: DtmfCallback | None = None,
        secret: str | None = None,
        environ: Mapping[str, str] | None = None,
        ping_interval_s: float = 20.0,
        callback_timeout_s: float = 2.0,
    ) -> None:
        self.config = config
        # Called with the connection id of each Dial(WebSocket/INCOMING/...) Asterisk makes
        # (its VarSet event): the WebSocket server connects to it ([websocket] incoming_url).
        self.on_incoming_media: Callable[[str], None] | None = None
        self._secret = secret
        self._environ = environ
        self._on_dtmf = on_dtmf
        self._listeners: list[EventCallback] = []
        self._ping_interval_s = ping_interval_s
        self._callback_timeout_s = callback_timeout_s
        self._channels: dict[str, str] = {}  # call_id -> caller's channel name
        self._calls: dict[str, str] = {}  # channel name -> call_id
        self._awaited: dict[str, asyncio.Event] = {}  # call_id -> set when its channel is known
        self._resync_hangups: set[str] | None = None
        self.dtmf = DtmfDeduper()
        self._conn: _Connection | None = None
        self._events: asyncio.Queue[AmiEvent | _DtmfItem] = asyncio.Queue(_EVENT_QUEUE_SIZE)
        self._connected_evt = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._closing = False
        self.ami_version = ""
        # Why the last connect attempt failed ("" once connected): for messages such as the
        # originate command's, which otherwise could only say "not connected".
        self.last_error = ""
        self.connects = 0
        self.dropped_events = 0

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        conn = self._conn
        return (
            conn is not None
            and conn.logged_in
            and conn.protocol is not None
            and not conn.protocol.closed
        )

    @property
    def action_timeout_s(self) -> float:
        return self.config.action_timeout_s

    async def start(self) -> None:
        """Load the secret (``AmiConfigError`` if missing) and connect in the background."""
        if self._runner is not None:
            return
        if self._secret is None:
            self._secret = load_secret(self.config, self._environ)
        self._closing = False
        self._dispatcher = asyncio.create_task(self._dispatch_loop(), name="ami-dispatch")
        self._runner = asyncio.create_task(self._run(), name="ami-connect")

    async def wait_connected(self, timeout_s: float) -> bool:
        try:
            async with asyncio.timeout(timeout_s):
                await self._connected_evt.wait()
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        self._closing = True
        if self.connected:
            try:
                await self._send({"Action": "Logoff"}, timeout_s=min(1.0, self.action_timeout_s))
            except AmiError:
                pass
        tasks = [task for task in (self._runner, self._dispatcher) if task is not None]
        for task in tasks:
            task.cancel()
        self._drop_connection(AmiNotConnected("AMI client closed"))
        # return_exceptions: the tasks' own CancelledError is collected, while a cancellation
        # of close() itself still propagates.
        await asyncio.gather(*tasks, return_exceptions=True)
        self._runner = self._dispatcher = None

    def add_listener(self, callback: EventCallback) -> None:
        """Receive every typed event (run in the client's dispatch task, under a timeout)."""
        self._listeners.append(callback)

    # -- call control (CallControl) --------------------------------------------------------

    def channel_for(self, call_id: str) -> str | None:
        return self._channels.get(canonical_uuid(call_id) or call_id)

    def mapped_calls(self) -> dict[str, str]:
        """call_id -> channel for every call currently known (diagnostics)."""
        return dict(self._channels)

    def forget(self, call_id: str) -> None:
        """Drop what is known about a finished call (Hangup events do this too)."""
        key = canonical_uuid(call_id) or call_id
        channel = self._channels.pop(key, None)
        if channel is not None and self._calls.get(channel) == key:
            del self._calls[channel]
        self.dtmf.forget(key)

    def transfer_destination(self, target: str) -> tuple[str, str]:
        """``"exten"`` -> (transfer_context, exten); ``"ctx,exten"``; ``""`` -> the default."""
        target = target.strip()
        if not target:
            return self.config.transfer_context, self.config.transfer_exten
        if "," in target:
            context, exten = (part.strip() for part in target.split(",", 1))
        else:
            context, exten = self.config.transfer_context, target
        for name in (context, exten):
            if not _SAFE_DIALPLAN_NAME.match(name):
                raise ValueError(f"invalid transfer target {target!r}")
        return context, exten

    async def transfer(self, call_id: str, target: str) -> bool:
        """Redirect the caller's channel to the target; False when that did not happen."""
        try:
            context, exten = self.transfer_destination(target)
        except ValueError as exc:
            log.warning("ami_transfer_invalid", call_id=call_id, error=str(exc))
            return False
        channel = self._ready_channel("transfer", call_id)
        if channel is None:
            return False
        action = {
            "Action": "Redirect",
            "Channel": channel,
            "Context": context,
            "Exten": exten,
            "Priority": str(self.config.transfer_priority),
        }
        ok = await self._simple_action("transfer", call_id, action)
        if ok:
            log.info("ami_transfer", call_id=call_id, channel=channel, context=context, exten=exten)
        return ok

    async def hangup(self, call_id: str, cause: int = 16) -> bool:
        """Hang up the caller's channel (cause 16 = normal clearing)."""
        channel = self._ready_channel("hangup", call_id)
        if channel is None:
            return False
        action = {"Action": "Hangup", "Channel": channel, "Cause": str(cause)}
        ok = await self._simple_action("hangup", call_id, action)
        if ok:
            log.info("ami_hangup", call_id=call_id, channel=channel)
        return ok

    async def get_var(self, call_id: str, name: str) -> str | None:
        """A channel variable or function of the caller's channel (None if unavailable).
        Asked at a call's start (its profile, Asterisk's AMD() result), the channel may not
        be known yet: the AudioSocket connection can come before the ``Newexten`` event
        that names it, so the lookup waits for it up to ``CHANNEL_WAIT_S``."""
        await self._channel_soon(call_id)
        channel = self._ready_channel("get_var", call_id)
        if channel is None:
            return None
        try:
            result = _single(
                await self.send_action({"Action": "Getvar", "Channel": channel, "Variable": name})
            )
        except (AmiError, ValueError) as exc:
            log.warning("ami_getvar_failed", call_id=call_id, variable=name, error=str(exc))
            return None
        if not result.success:
            log.warning("ami_getvar_failed", call_id=call_id, variable=name, error=result.message)
            return None
        return result.get("Value")

    async def set_var(self, call_id: str, name: str, value: str) -> bool:
        channel = self._ready_channel("set_var", call_id)
        if channel is None:
            return False
        action = {"Action": "Setvar", "Channel": channel, "Variable": name, "Value": value}
        return await self._simple_action("set_var", call_id, action)

    async def set_vars(self, call_id: str, variables: Mapping[str, str]) -> bool:
        """One Setvar per variable, in order; False when any was refused."""
        ok = True
        for name, value in variables.items():
            ok = await self.set_var(call_id, name, value) and ok
        return ok

    def accept_media_dtmf(self, call_id: str, digit: str) -> bool:
        """For the AudioSocket path: False if this digit already came via AMI."""
        at_s = asyncio.get_running_loop().time()
        return self.dtmf.accept(canonical_uuid(call_id) or call_id, digit, "media", at_s)

    async def core_show_channels(self) -> list[CoreShowChannelEvent]:
        """All channels (a list response ending with ``EventList: Complete``)."""
        messages = _as_list(await self.send_action({"Action": "CoreShowChannels"}))
        if not messages[0].success:
            raise AmiActionFailed(messages[0].message or "CoreShowChannels refused")
        events = [parse_event(m) for m in messages if m.event.lower() == "coreshowchannel"]
        return [e for e in events if isinstance(e, CoreShowChannelEvent)]

    async def send_action(
        self, action: Mapping[str, str | Sequence[str]], *, timeout_s: float | None = None
    ) -> AmiMessage | list[AmiMessage]:
        """Send any action; one message, or a list for list responses (and async Originate).

        Raises ``AmiNotConnected``, ``AmiTimeout`` (after ``timeout_s``, default
        ``action_timeout_s``) or ``ValueError`` for a header value with a line break.
        """
        if not self.connected:
            raise AmiNotConnected("AMI is not connected")
        return await self._send(action, timeout_s=timeout_s)

    # -- internals: actions ----------------------------------------------------------------

    async def _channel_soon(self, call_id: str) -> None:
        """Until the call's channel is known (its ``Newexten`` event), at most
        ``CHANNEL_WAIT_S``; at once when AMI is down."""
        key = canonical_uuid(call_id) or call_id
        if key in self._channels or not self.connected:
            return
        bound = self._awaited.setdefault(key, asyncio.Event())
        try:
            async with asyncio.timeout(CHANNEL_WAIT_S):
                await bound.wait()
        except TimeoutError:
            pass
        finally:
            if self._awaited.get(key) is bound and not bound.is_set():
                del self._awaited[key]

    def _ready_channel(self, op: str, call_id: str) -> str | None:
        channel = self.channel_for(call_id)
        if not self.connected:
            log.warning(
                "ami_degraded",
                op=op,
                call_id=call_id,
                reason="AMI not connected; the call continues without it",
            )
            return None
        if channel is None:
            log.warning("ami_no_channel", op=op, call_id=call_id)
            return None
        return channel

    async def _simple_action(self, op: str, call_id: str, action: Mapping[str, str]) -> bool:
        try:
            result = _single(await self.send_action(action))
        except (AmiError, ValueError) as exc:
            log.warning(f"ami_{op}_failed", call_id=call_id, error=str(exc))
            return False
        if not result.success:
            log.warning(f"ami_{op}_failed", call_id=call_id, error=result.message)
            return False
        return True

    async def _send(
        self, action: Mapping[str, str | Sequence[str]], *, timeout_s: float | None
    ) -> AmiMessage | list[AmiMessage]:
        conn = self._conn
        if conn is None or conn.protocol is None or conn.protocol.closed:
            raise AmiNotConnected("AMI is not connected")
        fields: dict[str, str | list[str]] = {}
        for key, value in action.items():
            values = [value] if isinstance(value, str) else list(value)
            for item in (key, *values):
                if not _SAFE_VALUE.match(item):
                    raise ValueError(f"AMI header {key!r} contains a control character")
            fields[key] = value if isinstance(value, str) else values
        name = str(fields.get("Action", "?"))
        packet = Action(fields)
        # as_list=None lets panoramisk detect list responses (EventList: start, "will
        # follow", async Originate); AMIProtocol.send's default False would turn that off.
        future: asyncio.Future[Any] = conn.protocol.send(packet, as_list=None)
        conn.inflight.add(future)
        limit_s = self.action_timeout_s if timeout_s is None else timeout_s
        try:
            async with asyncio.timeout(limit_s):
                result = await future
        except TimeoutError:
            conn.protocol.responses.pop(packet.id, None)
            raise AmiTimeout(f"AMI {name}: no response within {limit_s:g} s") from None
        finally:
            conn.inflight.discard(future)
        if isinstance(result, list):
            return [AmiMessage.from_panoramisk(m) for m in result]
        return AmiMessage.from_panoramisk(result)

    # -- internals: connection -------------------------------------------------------------

    def _backoff_s(self, attempt: int) -> float:
        ceiling = min(self.config.reconnect_max_s, _BACKOFF_BASE_S * 2.0 ** min(attempt, 16))
        return ceiling * random.uniform(0.5, 1.0)

    async def _run(self) -> None:
        attempt = 0
        logged_error = ""
        while not self._closing:
            try:
                await self._connect_once(failed_attempts=attempt)
            except Exception as exc:  # the supervisor must survive anything but cancellation
                self._drop_connection(AmiNotConnected("AMI connect failed"))
                if not isinstance(exc, OSError | TimeoutError | AmiError):
                    log.exception("ami_connect_error")
                delay = self._backoff_s(attempt)
                attempt += 1
                error = self.last_error = _describe(exc)
                # One line per reason: a refused login or a PBX that is down would otherwise
                # log every retry (found with a real Asterisk: a wrong secret costs a 1 s
                # sleep in action_login and then one line per back-off, for hours). The
                # same error is repeated only every _RELOG_EVERY attempts.
                if error != logged_error or attempt % _RELOG_EVERY == 0:
                    logged_error = error
                    log.warning(
                        "ami_connect_failed",
                        host=self.config.host,
                        port=self.config.port,
                        user=self.config.username,
                        error=error,
                        attempt=attempt,
                        retry_in_s=round(delay, 2),
                        repeats="not logged until the error changes or AMI connects",
                    )
                await asyncio.sleep(delay)
                continue
            attempt = 0
            logged_error = ""
            self.last_error = ""
            await self._hold_connection()
            self._drop_connection(AmiNotConnected("AMI connection lost"))
            if self._closing:
                return
            delay = self._backoff_s(0)
            log.warning(
                "ami_disconnected",
                host=self.config.host,
                port=self.config.port,
                retry_in_s=round(delay, 2),
                effect="calls continue; AMI transfer and hang-up unavailable until reconnected",
            )
            await asyncio.sleep(delay)

    async def _connect_once(self, failed_attempts: int = 0) -> None:
        loop = asyncio.get_running_loop()
        conn = _Connection(WireManager(self, self.config.host, self.config.port))
        self._conn = conn
        async with asyncio.timeout(self.action_timeout_s):
            _transport, protocol = await loop.create_connection(
                lambda: WireProtocol(conn.manager), self.config.host, self.config.port
            )
        conn.protocol = protocol
        assert self._secret is not None
        reply = await self._send(
            {
                "Action": "Login",
                "Username": self.config.username,
                "Secret": self._secret,
                "Events": EVENT_MASK,
            },
            timeout_s=self.action_timeout_s,
        )
        login = _single(reply)
        if not login.success:
            raise AmiAuthFailed(login.message or "login refused")
        conn.logged_in = True
        self.ami_version = str(protocol.version or "")
        self.connects += 1
        self._connected_evt.set()
        log.info(
            "ami_connected",
            host=self.config.host,
            port=self.config.port,
            user=self.config.username,
            ami_version=self.ami_version,
            failed_attempts=failed_attempts,
        )
        await self._resync()

    async def _hold_connection(self) -> None:
        """Return when the connection is gone; Ping it when idle (half-open TCP, stuck PBX)."""
        conn = self._conn
        if conn is None:
            return
        while not conn.lost.is_set():
            try:
                async with asyncio.timeout(self._ping_interval_s):
                    await conn.lost.wait()
                return
            except TimeoutError:
                pass
            try:
                await self._send({"Action": "Ping"}, timeout_s=self.action_timeout_s)
            except AmiTimeout:
                log.warning("ami_ping_timeout", timeout_s=self.action_timeout_s)
                return
            except AmiNotConnected:
                return

    def _drop_connection(self, error: AmiError) -> None:
        conn, self._conn = self._conn, None
        self._connected_evt.clear()
        if conn is None:
            return
        conn.logged_in = False
        conn.lost.set()
        for future in conn.inflight:
            if not future.done():
                future.set_exception(error)
        conn.inflight.clear()
        if conn.protocol is not None and conn.protocol.transport is not None:
            conn.protocol.transport.close()

    def on_connection_lost(self, manager: WireManager, exc: object) -> None:
        conn = self._conn
        if conn is None or conn.manager is not manager:
            return  # an older connection finishing its close
        conn.logged_in = False
        self._connected_evt.clear()
        conn.lost.set()
        error = AmiNotConnected("AMI connection lost")
        for future in conn.inflight:
            if not future.done():
                future.set_exception(error)
        conn.inflight.clear()

    async def _resync(self) -> None:
        """Rebuild UUID -> channel from CoreShowChannels (calls seen while AMI was away)."""
        before = dict(self._channels)
        self._resync_hangups = set()
        try:
            channels = await self.core_show_channels()
        except AmiError as exc:
            log.warning("ami_resync_failed", error=str(exc))
            return
        finally:
            hung_up, self._resync_hangups = self._resync_hangups, None
        listed: dict[str, str] = {}
        for chan in channels:
            call_id = audiosocket_uuid(chan.application, chan.application_data)
            if call_id is not None:
                listed[call_id] = chan.channel
        for call_id, channel in before.items():
            if call_id not in listed and self._channels.get(call_id) == channel:
                self._unbind(channel)
        for call_id, channel in listed.items():
            if channel not in hung_up:
                self._bind(call_id, channel)
        log.info("ami_resync", channels=len(channels), calls=len(listed))

    # -- internals: events -----------------------------------------------------------------

    def on_wire_event(self, manager: WireManager, message: Any) -> None:
        conn = self._conn
        if conn is None or conn.manager is not manager:
            return
        if not self._listeners and str(message.get("Event", "")).lower() not in _HANDLED:
            return
        event = parse_event(AmiMessage.from_panoramisk(message))
        if isinstance(event, NewextenEvent):
            call_id = audiosocket_uuid(event.application, event.app_data)
            if call_id is not None:
                self._bind(call_id, event.channel)
        elif isinstance(event, DialBeginEvent):
            # Dial(WebSocket/...): the bot's call id is the WebSocket channel's uniqueid
            # (MEDIA_START channel_id); control acts on the channel that dialled it.
            if event.dest_channel.startswith("WebSocket/") and event.dest_uniqueid:
                self._bind(event.dest_uniqueid, event.channel)
        elif isinstance(event, VarSetEvent):
            if (
                event.variable == MEDIA_CONNECTION_VARIABLE
                and event.channel.startswith("WebSocket/INCOMING/")
                and event.value
                and self.on_incoming_media is not None
            ):
                self.on_incoming_media(event.value)
        elif isinstance(event, HangupEvent):
            if self._resync_hangups is not None:
                self._resync_hangups.add(event.channel)
            call_id = self._unbind(event.channel)
            if call_id is not None:
                self.dtmf.forget(call_id)
        elif isinstance(event, DtmfEndEvent):
            self._on_dtmf_event(event)
        if self._listeners:
            self._enqueue(event)

    def _on_dtmf_event(self, event: DtmfEndEvent) -> None:
        if event.direction.lower() != "received" or self._on_dtmf is None:
            return
        call_id = self._calls.get(event.channel)
        if call_id is None or not event.digit:
            return
        at_s = asyncio.get_running_loop().time()
        if self.dtmf.accept(call_id, event.digit, "ami", at_s):
            self._enqueue(_DtmfItem(call_id, event.digit))

    def _enqueue(self, item: AmiEvent | _DtmfItem) -> None:
        try:
            self._events.put_nowait(item)
        except asyncio.QueueFull:
            self.dropped_events += 1
            if self.dropped_events in (1, 10, 100) or self.dropped_events % 1000 == 0:
                log.warning("ami_events_dropped", dropped=self.dropped_events)

    async def _dispatch_loop(self) -> None:
        while True:
            item = await self._events.get()
            if isinstance(item, _DtmfItem):
                if self._on_dtmf is not None:
                    await self._run_callback(self._on_dtmf, item.call_id, item.digit)
            else:
                for listener in list(self._listeners):
                    await self._run_callback(listener, item)

    async def _run_callback(
        self, callback: Callable[..., Awaitable[None] | None], *args: Any
    ) -> None:
        try:
            result = callback(*args)
            if inspect.isawaitable(result):
                async with asyncio.timeout(self._callback_timeout_s):
                    await result
        except TimeoutError:
            log.warning("ami_callback_timeout", callback=getattr(callback, "__name__", "?"))
        except Exception:
            log.exception("ami_callback_failed", callback=getattr(callback, "__name__", "?"))

    def _bind(self, call_id: str, channel: str) -> None:
        old = self._channels.get(call_id)
        if old is not None and old != channel:
            self._calls.pop(old, None)
        previous_call = self._calls.get(channel)
        if previous_call is not None and previous_call != call_id:
            self._channels.pop(previous_call, None)
        if call_id not in self._channels and len(self._channels) >= _MAX_MAPPED_CALLS:
            oldest = next(iter(self._channels))
            self._calls.pop(self._channels.pop(oldest), None)
        self._channels[call_id] = channel
        self._calls[channel] = call_id
        awaited = self._awaited.pop(call_id, None)
        if awaited is not None:
            awaited.set()

    def _unbind(self, channel: str) -> str | None:
        call_id = self._calls.pop(channel, None)
        if call_id is not None and self._channels.get(call_id) == channel:
            del self._channels[call_id]
        return call_id


def _single(result: AmiMessage | list[AmiMessage]) -> AmiMessage:
    return result[0] if isinstance(result, list) else result


def _as_list(result: AmiMessage | list[AmiMessage]) -> list[AmiMessage]:
    return result if isinstance(result, list) else [result]


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
