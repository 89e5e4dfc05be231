"""FreeSWITCH transport: outbound event socket (ESL) for control, "unicast" L16/UDP for media.

FreeSWITCH's ``socket`` application (``<action application="socket" data="host:port async
full"/>``) connects to the bot, one TCP connection per call (``mod_event_socket.c``,
``socket_function``). The bot then sends, as ``listener_run``/``parse_command`` expect:

1. ``connect``: the reply is the channel (UUID, caller id, read codec and its rate) as a
   serialized CHANNEL_DATA event. In async mode ``socket_function`` waits for this command
   before parking the channel, so even a rejected call gets ``connect`` first.
2. ``myevents``: this channel's events (DTMF, CHANNEL_HANGUP, CHANNEL_UNPARK ...).
3. ``linger``: after a hang-up FreeSWITCH keeps the socket open (a ``text/disconnect-notice``
   with ``Content-Disposition: linger``) so the last events are not lost.
4. ``sendmsg`` / ``call-command: unicast``: FreeSWITCH exchanges the channel's audio as raw
   L16 datagrams with the bot's UDP port (see ``unicast.py``).

Control: ``sendmsg``/``call-command: hangup`` (``switch_ivr_parse_event``), ``api
uuid_transfer`` and ``api uuid_break`` (``mod_commands``; ``api`` needs ``full``),
``resume`` (the dialplan continues after ``socket`` when the socket closes), ``exit``.

ESL runs on greenswitch (gevent) in one dedicated thread with its own hub and no
monkey-patching: greenswitch uses ``gevent.socket`` directly, so nothing else in the process
is touched. Commands cross into that thread with the hub loop's ``run_callback_threadsafe``;
results and events come back with ``loop.call_soon_threadsafe``. greenswitch 0.0.19 is used
for what it does well (the outbound session's command/reply correlation, event dispatch by
name, lingering, the server's call bookkeeping) and patched where it cannot run a service:
its reader crashes its greenlet on a malformed header or a missing Content-Length and spins
forever on EOF inside a body (``_read_socket``), ``send`` waits forever for a reply, and
``OutboundESLServer.listen`` calls ``sys.exit()`` when it cannot bind (port 0 included) and
polls ``accept`` every 100 ms. The subclasses below replace exactly those parts, framing
with ``voicebot_pbx.pbx.esl_codec``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ipaddress
import re
import socket
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import gevent
import gevent.event
import gevent.socket as gsocket
import structlog
from greenswitch.esl import (
    ESLEvent,
    NotConnectedError,
    OutboundESLServer,
    OutboundSession,
    OutboundSessionHasGoneAway,
)

from voicebot_pbx.config import FreeswitchConfig as FreeswitchConfig
from voicebot_pbx.pbx import esl_codec as esl
from voicebot_pbx.pbx.allow import parse_cidrs, peer_allowed
from voicebot_pbx.pbx.media import (
    AudioIn,
    CallMedia,
    CallState,
    DtmfIn,
    finish_connections,
    put_dropping_oldest,
    run_call_handler,
)
from voicebot_pbx.pbx.unicast import (
    NoPortAvailable,
    RateAdapter,
    UnicastEndpoint,
    bind_udp,
    next_port_index,
    session_rate_for,
)

log = structlog.get_logger("voicebot_pbx.freeswitch")

T = TypeVar("T")
CallHandler = Callable[[CallMedia], Awaitable[None]]

HANDLER_GRACE_S = 5.0
_ESL_QUEUE_ITEMS = 256
_READ_CHUNK_BYTES = 65536
_EXIT_TIMEOUT_S = 1.0
# The channel rates FreeSWITCH codecs run at (L16 follows the read codec's actual rate).
_RATES_HZ = frozenset({8000, 12000, 16000, 24000, 32000, 44100, 48000})
_DTMF_DIGITS = frozenset("0123456789*#ABCD")
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}")
_CLOSED_SENTINEL = "_VOICEBOT_ESL_CLOSED"
_FORWARDED_EVENTS = (
    "DTMF",
    "CHANNEL_HANGUP",
    "CHANNEL_HANGUP_COMPLETE",
    "CHANNEL_UNPARK",
    "CHANNEL_EXECUTE",
    "CHANNEL_EXECUTE_COMPLETE",
)
# Applications that play audio on the channel from FreeSWITCH's side (a uuid_broadcast, a
# playback sent by another controller ...): while one runs, a barge-in sends uuid_break.
_PLAYBACK_APPS = frozenset(
    {
        "playback",
        "endless_playback",
        "speak",
        "say",
        "phrase",
        "gentones",
        "play_and_get_digits",
        "play_and_detect_speech",
        "read",
    }
)


class EslError(Exception):
    """A command did not get its reply. ``reason``: ``timeout``, ``gone``, ``hub_stopped``,
    ``error``; ``closed`` says how the connection ended when that is why."""

    def __init__(self, reason: str, detail: str = "", closed: EslClosed | None = None) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.closed = closed


@dataclass(frozen=True, slots=True)
class EslEvent:
    """A ``text/event-plain`` event of the controlled channel (values URL-decoded)."""

    event: esl.Message


@dataclass(frozen=True, slots=True)
class EslNotice:
    """``text/disconnect-notice``: ``linger`` (the channel hung up) or ``disconnect``."""

    disposition: str
    message: esl.Message


@dataclass(frozen=True, slots=True)
class EslClosed:
    """The ESL connection is gone: ``eof``, ``connection_error`` or bad input."""

    reason: str
    detail: str = ""
    bad_input: bool = False


EslItem = EslEvent | EslNotice | EslClosed


# --- the gevent side (runs only in the hub thread) ----------------------------------------------


class _EslSession(OutboundSession):  # type: ignore[misc]
    """greenswitch's outbound session with a reader that survives any input.

    Replies still resolve greenswitch's FIFO of ``AsyncResult``s, events still go through its
    queue to ``process_events`` and its handlers (``register_handle``), disconnect notices still
    set ``_lingering``/``connected`` and fail pending commands as greenswitch does.
    """

    # Set by greenswitch's ESLProtocol/OutboundSession.__init__ (declared for mypy).
    _run: bool
    _commands_sent: list[Any]
    _lingering: bool
    connected: bool
    sock: Any

    def __init__(
        self,
        client_address: Any,
        sock: Any,
        *,
        link: _Link,
        command_timeout_s: float,
    ) -> None:
        self._parser = esl.Parser()
        self._link = link
        self.command_timeout_s = command_timeout_s
        self._stopped = False
        self.closed_item: EslClosed | None = None
        self._closed_forwarded = False
        super().__init__(client_address, sock)
        self.session_data: dict[str, str] = {}  # greenswitch reads it in logs before connect
        for name in _FORWARDED_EVENTS:
            self.register_handle(name, self._forward_event)
        self.register_handle("DISCONNECT", self._forward_notice)
        self.register_handle(_CLOSED_SENTINEL, self._forward_closed)

    # -- reading (replaces ESLProtocol.receive_events / handle_event / _read_socket) --

    def receive_events(self) -> None:
        closed = EslClosed("eof")
        try:
            while self._run:
                try:
                    data = self.sock.recv(_READ_CHUNK_BYTES)
                except OSError as exc:
                    closed = EslClosed("connection_error", f"{type(exc).__name__}: {exc}")
                    break
                if not data:
                    self._parser.check_eof()
                    break
                for message in self._parser.feed(data):
                    self._dispatch(message)
        except esl.ProtocolError as exc:
            closed = EslClosed(exc.reason, exc.detail, bad_input=True)
        except Exception as exc:  # a bug here must end the call, not kill the hub quietly
            closed = EslClosed("reader_error", f"{type(exc).__name__}: {exc}", bad_input=True)
        finally:
            self.connected = False
            pending, self._commands_sent = self._commands_sent, []
            waiting = [result for result in pending if not result.ready()]
            if waiting and closed.reason == "eof" and not self._stopped:
                closed = EslClosed(
                    "disconnected_mid_command", f"{len(waiting)} command(s) unanswered", True
                )
            self.closed_item = closed
            # No reply can come any more: release every waiting command now (greenswitch's
            # own reader leaves them waiting forever on EOF).
            for result in waiting:
                result.set_exception(OutboundSessionHasGoneAway())
            # Through the event queue, so the events read before the end are handled first.
            sentinel = ESLEvent("")
            sentinel.headers = {"Event-Name": _CLOSED_SENTINEL}
            self._esl_event_queue.put(sentinel)

    def _dispatch(self, message: esl.Message) -> None:
        content_type = message.content_type
        event = ESLEvent("")
        event.headers = dict(message.headers)
        event.message = message
        if content_type in ("command/reply", "api/response"):
            if not self._commands_sent:
                raise esl.ProtocolError("unexpected_reply", content_type)
            event.data = message.reply_text if content_type == "command/reply" else message.text
            self._commands_sent.pop(0).set(event)
        elif content_type == "text/event-plain":
            parsed = esl.parse_event(message)
            event.headers = dict(parsed.headers)
            event.message = parsed
            self._esl_event_queue.put(event)
        elif content_type == "text/disconnect-notice":
            if message.get("Content-Disposition") == "linger":
                self._lingering = True
            else:
                self.connected = False
            self._esl_event_queue.put(event)
        elif content_type == "text/rude-rejection":
            raise esl.ProtocolError("rude_rejection", message.text.strip())
        elif content_type == "auth/request":
            # An inbound-ESL port answered: the socket app is pointed at the wrong place.
            raise esl.ProtocolError("auth_request", "peer is an inbound event socket")
        # Anything else (log/data, event-json we never asked for) is ignored.

    # -- writing (replaces ESLProtocol.send: bounded wait, whole writes) --

    def send(self, data: str | bytes) -> Any:
        if not self.connected:
            raise NotConnectedError()
        raw = data if isinstance(data, bytes) else (data + "\n\n").encode("utf-8")
        result = gevent.event.AsyncResult()
        self._commands_sent.append(result)
        try:
            self.sock.sendall(raw)
        except OSError as exc:
            with contextlib.suppress(ValueError):
                self._commands_sent.remove(result)
            raise OutboundSessionHasGoneAway() from exc
        # A reply that comes after the timeout still pops this (stale) result: the FIFO
        # of replies stays aligned with the commands.
        return result.get(timeout=self.command_timeout_s)

    # -- bridging to asyncio --

    def _forward_event(self, event: Any) -> None:
        self._link.deliver(EslEvent(event.message))

    def _forward_notice(self, event: Any) -> None:
        message: esl.Message = event.message
        self._link.deliver(EslNotice(message.get("Content-Disposition"), message))

    def _forward_closed(self, _event: Any = None) -> None:
        if self.closed_item is not None and not self._closed_forwarded:
            self._closed_forwarded = True
            self._link.deliver(self.closed_item)

    def stop(self) -> None:
        """``exit`` (bounded), close, and end the reader and processor greenlets."""
        if self._stopped:
            return
        self._stopped = True
        if self.connected:
            timeout_s, self.command_timeout_s = self.command_timeout_s, _EXIT_TIMEOUT_S
            try:
                self.send("exit")
            except (gevent.Timeout, NotConnectedError, OutboundSessionHasGoneAway, OSError):
                pass
            finally:
                self.command_timeout_s = timeout_s
        self._run = False
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        wake = ESLEvent("")
        wake.headers = {}
        self._esl_event_queue.put(wake)  # process_events waits on this queue up to 1 s
        greenlets = [g for g in (self._receive_events_greenlet, self._process_events_greenlet) if g]
        gevent.joinall(greenlets, timeout=_EXIT_TIMEOUT_S)
        gevent.killall([g for g in greenlets if not g.dead], block=False)
        with contextlib.suppress(OSError):
            self.sock.close()
        with contextlib.suppress(OSError):
            self.sock_file.close()
        # The processor may have stopped before it got to the reader's end-of-connection.
        self._forward_closed()


class _Link:
    """One ESL connection as both threads see it. Created in the hub thread; ``deliver`` is
    called there, everything else in the asyncio thread."""

    def __init__(self, hub: _GeventHub, loop: asyncio.AbstractEventLoop, peer: tuple[str, int]):
        self.hub = hub
        self.loop = loop
        self.peer_ip, self.peer_port = peer[0], peer[1]
        self.peer = f"{peer[0]}:{peer[1]}"
        self.events: asyncio.Queue[EslItem] = asyncio.Queue(_ESL_QUEUE_ITEMS)
        self.events_dropped = 0
        self.session: _EslSession | None = None
        self.released = gevent.event.Event()  # set in the hub: the call is over
        self.call_id: str | None = None
        self._finished = False

    # hub thread
    def deliver(self, item: EslItem) -> None:
        with contextlib.suppress(RuntimeError):  # the asyncio loop is closed: nobody listens
            self.loop.call_soon_threadsafe(self._enqueue, item)

    # asyncio thread
    def _enqueue(self, item: EslItem) -> None:
        if isinstance(item, EslClosed) and item.bad_input:
            # Logged here, once, whichever task learns of the end first (this callback
            # carries no call context: the call id goes explicitly).
            fields = {"call_id": self.call_id} if self.call_id else {}
            log.warning(
                "bad_input", reason=item.reason, detail=item.detail, peer=self.peer, **fields
            )
        if put_dropping_oldest(self.events, item):
            self.events_dropped += 1

    async def call(self, fn: Callable[[], T], timeout_s: float) -> T:
        """Run ``fn`` in a greenlet of the hub; its result or error comes back here."""
        future: asyncio.Future[T] = self.loop.create_future()

        def settle(value: Any, error: BaseException | None) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(value)

        def work() -> None:
            try:
                value = fn()
            except gevent.Timeout:
                outcome: tuple[Any, BaseException | None] = (None, EslError("timeout"))
            except (NotConnectedError, OutboundSessionHasGoneAway) as exc:
                closed = self.session.closed_item if self.session is not None else None
                outcome = (None, EslError("gone", type(exc).__name__, closed))
            except OSError as exc:
                outcome = (None, EslError("gone", f"{type(exc).__name__}: {exc}"))
            except Exception as exc:
                outcome = (None, EslError("error", f"{type(exc).__name__}: {exc}"))
            else:
                outcome = (value, None)
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(settle, *outcome)

        if not self.hub.spawn(work):
            raise EslError("hub_stopped")
        try:
            async with asyncio.timeout(timeout_s + 1.0):
                return await future
        except TimeoutError:
            raise EslError("timeout", "the ESL thread did not answer") from None

    async def command(self, raw: bytes, timeout_s: float) -> esl.Message:
        session = self.session
        if session is None:
            raise EslError("gone", "no session")
        return await self.call(lambda: session.send(raw).message, timeout_s)

    async def connect(self, timeout_s: float) -> esl.Message:
        """greenswitch's ``connect()`` (it keeps the channel data as ``session_data``)."""
        session = self.session
        if session is None:
            raise EslError("gone", "no session")

        def run() -> esl.Message:
            session.connect()
            return esl.Message.of(session.session_data.items())

        return await self.call(run, timeout_s)

    async def finish(self) -> None:
        """``exit``, close the socket, release the call's greenlet. Idempotent, bounded."""
        if self._finished:
            return
        self._finished = True
        session = self.session

        def run() -> None:
            try:
                if session is not None:
                    session.stop()
            finally:
                self.released.set()

        with contextlib.suppress(EslError):
            await self.call(run, _EXIT_TIMEOUT_S * 3)


class _CallGreenlet:
    """greenswitch's "application": one per connection. It hands the connection to the
    asyncio side and lives until that side is done with it; greenswitch's server then calls
    ``session.stop()`` (``_handle_call_finish``)."""

    def __init__(self, session: _EslSession, announce: Callable[[_Link], None]) -> None:
        self.session = session
        self._announce = announce

    def run(self) -> None:
        link = self.session._link
        self._announce(link)
        link.released.wait()


class _EslServer(OutboundESLServer):  # type: ignore[misc]
    """greenswitch's outbound server with a listener that can run in a service."""

    def __init__(
        self,
        hub: _GeventHub,
        loop: asyncio.AbstractEventLoop,
        host: str,
        port: int,
        command_timeout_s: float,
        announce: Callable[[_Link], None],
        listening: concurrent.futures.Future[int],
    ) -> None:
        super().__init__(
            bind_address=host,
            bind_port=port,
            application=lambda session: _CallGreenlet(session, announce),
            max_connections=1 << 30,  # max_calls is enforced on the asyncio side, with logs
        )
        self._hub = hub
        self._loop = loop
        self._command_timeout_s = command_timeout_s
        self._listening = listening

    def listen(self) -> None:
        # Replaces OutboundESLServer.listen: binds port 0, reports bind errors instead of
        # sys.exit(), accepts cooperatively instead of polling every 100 ms.
        try:
            family = socket.AF_INET6 if ":" in self.bind_address else socket.AF_INET
            server = gsocket.socket(family, socket.SOCK_STREAM)
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind((self.bind_address, self.bind_port[0]))
            server.listen(128)
        except OSError as exc:
            self._listening.set_exception(exc)
            return
        self.server = server
        self.bound_port = int(server.getsockname()[1])
        self._running = True
        self._listening.set_result(self.bound_port)
        while self._running:
            try:
                sock, address = server.accept()
            except OSError:
                if not self._running:
                    break
                gevent.sleep(0.05)
                continue
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link = _Link(self._hub, self._loop, (str(address[0]), int(address[1])))
            session = _EslSession(
                address, sock, link=link, command_timeout_s=self._command_timeout_s
            )
            link.session = session
            gevent.spawn(self._accept_call, session)
        with contextlib.suppress(OSError):
            server.close()

    def _handle_call(self, session: _EslSession) -> None:
        # As greenswitch's, minus its session.connect() (no timeout there): the asyncio
        # side sends connect with one.
        app = self.application(session)
        handler = gevent.spawn(app.run)
        self._greenlets.add(handler)
        handler.session = session
        handler.link(self._handle_call_finish)
        self.connection_count += 1

    def stop(self) -> None:
        self._running = False
        if self.server is not None:
            with contextlib.suppress(OSError):
                self.server.close()

    def shutdown(self) -> None:
        """Hub thread: stop listening, close every session (bounded)."""
        self.stop()
        handlers = list(self._greenlets)
        stoppers = [gevent.spawn(handler.session.stop) for handler in handlers]
        gevent.joinall(stoppers, timeout=_EXIT_TIMEOUT_S * 2)
        for handler in handlers:
            handler.session._link.released.set()
        gevent.joinall(handlers, timeout=_EXIT_TIMEOUT_S)
        gevent.killall([h for h in handlers if not h.dead], block=False)


class _GeventHub:
    """One gevent hub in one dedicated thread. Thread-safe entry: ``spawn``."""

    def __init__(self, name: str = "freeswitch-esl") -> None:
        self._name = name
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._loop: Any = None  # the hub's libev loop
        self._stop: Any = None  # gevent Event, set in the hub to end the thread
        self._running = False

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def start(self, timeout_s: float = 5.0) -> None:
        self._thread = threading.Thread(target=self._main, name=self._name, daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise RuntimeError("the gevent hub thread did not start")

    def _main(self) -> None:
        hub = gevent.get_hub()
        self._stop = gevent.event.Event()
        # A ref'd async watcher keeps the loop alive while it has nothing else to wait on
        # (without it the hub's first wait raises LoopExit).
        keepalive = hub.loop.async_()
        keepalive.start(lambda: None)
        with self._lock:
            self._loop = hub.loop
            self._running = True
        self._ready.set()
        try:
            self._stop.wait()
        finally:
            with self._lock:
                self._running = False
            keepalive.close()
            hub.destroy(destroy_loop=True)

    def spawn(self, fn: Callable[..., Any], *args: Any) -> bool:
        """Run ``fn(*args)`` in a new greenlet of the hub (from any thread)."""
        with self._lock:
            if not self._running:
                return False
            self._loop.run_callback_threadsafe(gevent.spawn, fn, *args)
            return True

    async def stop(self, before: Callable[[], None] | None = None, timeout_s: float = 5.0) -> None:
        """Run ``before`` in the hub, then end the hub and join the thread (bounded)."""

        def finish() -> None:
            try:
                if before is not None:
                    before()
            finally:
                self._stop.set()

        if self._thread is None:
            return
        if self.spawn(finish):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await asyncio.to_thread(self._thread.join, timeout_s)
        if self._thread.is_alive():
            log.warning("esl_hub_stop_timeout", timeout_s=timeout_s)


# --- the asyncio side ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChannelInfo:
    """What the ``connect`` reply says about the channel."""

    uuid: str
    caller_id_number: str
    caller_id_name: str
    destination: str
    codec: str
    rate_hz: int
    socket_mode: str
    control: str
    variables: dict[str, str]

    @classmethod
    def from_connect(cls, reply: esl.Message) -> ChannelInfo:
        """Raises ``esl.ProtocolError`` when the channel cannot be served."""
        uuid = reply.get("Unique-ID") or reply.get("Channel-Unique-ID")
        if not _TOKEN.fullmatch(uuid):
            raise esl.ProtocolError("bad_channel_data", f"Unique-ID {uuid[:80]!r}")
        raw_rate = reply.get("Channel-Read-Codec-Rate")
        if not raw_rate:
            # Set only once the channel has media: the dialplan must answer before socket.
            raise esl.ProtocolError("no_codec", "no Channel-Read-Codec-Rate (not answered?)")
        if not raw_rate.isdigit() or int(raw_rate) not in _RATES_HZ:
            raise esl.ProtocolError("unsupported_rate", raw_rate[:40])
        variables = {
            name[len("variable_") :]: value
            for name, value in reply.headers.items()
            if name.startswith("variable_")
        }
        return cls(
            uuid=uuid,
            caller_id_number=reply.get("Caller-Caller-ID-Number"),
            caller_id_name=reply.get("Caller-Caller-ID-Name"),
            destination=reply.get("Caller-Destination-Number"),
            codec=reply.get("Channel-Read-Codec-Name"),
            rate_hz=int(raw_rate),
            socket_mode=reply.get("Socket-Mode"),
            control=reply.get("Control"),
            variables=variables,
        )


def _end_reason(closed: EslClosed) -> str:
    return f"bad_input:{closed.reason}" if closed.bad_input else "connection_lost"


class FreeswitchCall(CallState):
    """One call: ESL control + unicast UDP media + the paced speaker (a ``CallMedia``)."""

    pbx = "freeswitch"
    _log = log

    def __init__(
        self,
        info: ChannelInfo,
        link: _Link,
        config: FreeswitchConfig,
        *,
        profile: str | None = None,
    ) -> None:
        super().__init__(link.peer, session_rate_for(info.rate_hz))
        self.info = info
        self.call_id = info.uuid
        self.caller_id_number = info.caller_id_number
        self.caller_id_name = info.caller_id_name
        self.caller_id = info.caller_id_number or None  # for the call record
        self.channel_rate_hz = info.rate_hz
        self.profile = profile or info.variables.get("VOICEBOT_PROFILE") or None
        self._link = link
        self._config = config
        self._rates = RateAdapter(info.rate_hz, self._rate_hz)
        self.media: UnicastEndpoint | None = None
        self.frames_in = 0
        self.bad_inputs: dict[str, int] = {}
        self.hangup_sent = False
        self.resume_sent = False
        self.transferred_to: str | None = None
        self.breaks_sent = 0
        self.fs_playing = 0  # FreeSWITCH-side playback applications running
        self._transfer_pending = False
        self._background: set[asyncio.Task[Any]] = set()
        self._last_generation = self.speaker.generation
        self._last_voiced = False

    # --- CallMedia ------------------------------------------------------------------------

    async def wait_for_rate(self, timeout_s: float) -> int:
        return self._rate_hz  # known from the connect reply, before any audio

    async def hangup(self, reason: str) -> None:
        """``bot_hangup``: ``sendmsg``/``call-command: hangup`` (the caller is hung up).
        Any other reason (``transferred`` without call control, ``shutdown``, errors):
        ``resume``, so the dialplan continues after ``socket`` when the socket closes
        (``parse_command`` "resume" sets LFLAG_RESUME; ``socket_function`` then goes on)."""
        if self.closed:
            return
        self._mark_closed(reason)
        if reason == "bot_hangup":
            message = esl.encode_sendmsg("hangup", {"hangup-cause": "NORMAL_CLEARING"})
            self.hangup_sent = await self._try_command("hangup", message)
        else:
            self.resume_sent = await self._try_command("resume", esl.encode_command("resume"))

    # --- control ----------------------------------------------------------------------------

    async def transfer(self, target: str) -> bool:
        """``uuid_transfer <uuid> <target> <dialplan> <context>``: "+OK" or "-ERR ...". On
        success the channel leaves the socket app (its park loop ends, unicast stops)."""
        if self.closed or not _TOKEN.fullmatch(target):
            log.warning("transfer_refused", target=target[:80], closed=self.closed)
            return False
        command = (
            f"uuid_transfer {self.call_id} {target} "
            f"{self._config.transfer_dialplan} {self._config.transfer_context}"
        )
        self._transfer_pending = True
        try:
            reply = await self._link.command(
                esl.encode_api(command), self._config.command_timeout_s
            )
        except EslError as exc:
            log.warning("transfer_failed", target=target, error=exc.reason)
            return False
        finally:
            self._transfer_pending = False
        text = reply.text.strip() if reply.content_type == "api/response" else reply.reply_text
        if not text.startswith("+OK"):
            log.warning("transfer_failed", target=target, reply=text[:120])
            return False
        self.transferred_to = target
        self._mark_closed("transferred")
        log.info("transferred", target=target)
        return True

    async def break_playback(self) -> bool:
        """``uuid_break <uuid>``: stop what FreeSWITCH itself is playing to the caller.
        mod_commands' break_function writes nothing on success, and mod_event_socket's
        api_exec turns an empty output into "-ERR no reply": that is success too."""
        try:
            reply = await self._link.command(
                esl.encode_api(f"uuid_break {self.call_id}"), self._config.command_timeout_s
            )
        except EslError as exc:
            log.info("uuid_break_failed", error=exc.reason)
            return False
        text = reply.text.strip() if reply.content_type == "api/response" else reply.reply_text
        ok = text.startswith("+OK") or text == "-ERR no reply"
        if not ok:
            log.info("uuid_break_failed", reply=text[:120])
        return ok

    async def _try_command(self, what: str, raw: bytes) -> bool:
        try:
            reply = await self._link.command(raw, self._config.command_timeout_s)
        except EslError as exc:
            log.info("esl_command_failed", command=what, error=exc.reason)
            return False
        if not reply.reply_text.startswith("+OK"):
            log.info("esl_command_failed", command=what, reply=reply.reply_text[:120])
            return False
        return True

    # --- set-up -----------------------------------------------------------------------------

    async def setup(self, media_ip: str) -> bool:
        """myevents, linger, a UDP port, unicast, the first datagram. False: the call ended
        (back to the dialplan where FreeSWITCH still listens)."""
        config = self._config
        if await self._setup_command("myevents", esl.encode_command("myevents")) is None:
            return False
        # linger is refused without "full" (parse_command: outbound single-channel sockets
        # get only connect/getvar/myevents/sendmsg/resume/exit): go on without it.
        if (
            await self._setup_command("linger", esl.encode_command("linger"), required=False)
            is None
        ):
            if self.closed:
                return False
            log.warning("linger_refused", control=self.info.control)
        try:
            sock, port = bind_udp(
                config.rtp_host, config.udp_port_min, config.udp_port_max, next_port_index()
            )
        except NoPortAvailable:
            await self._give_back("no_udp_port", f"{config.udp_port_min}-{config.udp_port_max}")
            return False
        self.media = UnicastEndpoint(
            sock,
            rate_hz=self.channel_rate_hz,
            on_audio=self._on_audio,
            on_bad=self._bad_once,
            expect_ip=None if media_ip == "0.0.0.0" else media_ip,
            max_late_s=config.max_late_ms / 1000.0,
        )
        unicast = esl.encode_sendmsg(
            "unicast",
            {
                "local-ip": media_ip,
                "local-port": "0",  # FreeSWITCH binds an ephemeral port; we lock onto it
                "remote-ip": config.rtp_advertise_host or config.rtp_host,
                "remote-port": str(port),
                "transport": "udp",
            },
        )
        if await self._setup_command("unicast", unicast) is None:
            return False
        locked = asyncio.ensure_future(self.media.locked.wait())
        closed = asyncio.ensure_future(self._closed.wait())
        try:
            await asyncio.wait(
                (locked, closed),
                timeout=config.media_timeout_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            locked.cancel()
            closed.cancel()
        if self.closed:
            return False
        if not self.media.locked.is_set():
            await self._give_back("no_media", f"no datagram in {config.media_timeout_s} s")
            return False
        return True

    async def _setup_command(
        self, name: str, raw: bytes, *, required: bool = True
    ) -> esl.Message | None:
        try:
            reply = await self._link.command(raw, self._config.command_timeout_s)
        except EslError as exc:
            if exc.closed is not None:  # the connection ended; its reader logged why
                self._mark_closed(_end_reason(exc.closed))
            else:
                log.warning("bad_input", reason=f"esl_{exc.reason}", detail=name, peer=self.peer)
                self._mark_closed(f"esl_{exc.reason}")
            return None
        if self.closed:  # the caller hung up meanwhile
            return None
        if not reply.reply_text.startswith("+OK"):
            if required:
                await self._give_back("command_refused", f"{name}: {reply.reply_text[:120]}")
            return None
        return reply

    async def _give_back(self, reason: str, detail: str) -> None:
        """The call cannot be served: log, and hand it back to the dialplan."""
        if self.closed:
            return
        log.warning("bad_input", reason=reason, detail=detail, peer=self.peer)
        await self.hangup(reason)

    # --- ESL events ------------------------------------------------------------------------

    async def control_loop(self) -> None:
        """Events of the channel, in order, until the connection ends."""
        while True:
            item = await self._link.events.get()
            loop = asyncio.get_running_loop()
            match item:
                case EslEvent(event):
                    self._on_event(event, loop.time())
                case EslNotice(disposition, _message):
                    # linger: the channel hung up; disconnect: the socket is about to close.
                    self._mark_closed(
                        "caller_hangup" if disposition == "linger" else "disconnected"
                    )
                case EslClosed():
                    if item.bad_input:
                        self._count_bad(item.reason)  # logged by the link, once
                    self._mark_closed(_end_reason(item))
                    return

    def _on_event(self, event: esl.Message, now_s: float) -> None:
        name = event.event_name
        if name == "DTMF":
            digit = event.get("DTMF-Digit").upper()
            if len(digit) == 1 and digit in _DTMF_DIGITS:
                self._put(DtmfIn(digit, now_s))
            else:
                self._bad_once("bad_dtmf", repr(digit[:10]))
        elif name in ("CHANNEL_HANGUP", "CHANNEL_HANGUP_COMPLETE"):
            self._mark_closed("caller_hangup")
        elif name == "CHANNEL_UNPARK":
            # The channel left the socket app: our transfer (should its event overtake the
            # reply), or one from elsewhere.
            self._mark_closed("transferred" if self._transfer_pending else "unparked")
        elif name == "CHANNEL_EXECUTE" and event.get("Application") in _PLAYBACK_APPS:
            self.fs_playing += 1
        elif name == "CHANNEL_EXECUTE_COMPLETE" and event.get("Application") in _PLAYBACK_APPS:
            self.fs_playing = max(0, self.fs_playing - 1)

    # --- media -----------------------------------------------------------------------------

    def _on_audio(self, pcm: bytes, at_s: float) -> None:
        if self.closed:
            return
        self.frames_in += 1
        converted = self._rates.inbound(pcm)
        if converted:
            self._put(AudioIn(converted, self._rate_hz, at_s))

    def _count_bad(self, reason: str) -> int:
        count = self.bad_inputs.get(reason, 0) + 1
        self.bad_inputs[reason] = count
        return count

    def _bad_once(self, reason: str, detail: str) -> None:
        """Count every bad input; log the first of each kind per call."""
        if self._count_bad(reason) == 1:
            log.warning("bad_input", reason=reason, detail=detail, peer=self.peer)

    async def write_frame(self, pcm: bytes, is_silence: bool) -> None:
        if self.closed or self.media is None:
            return
        if self._config.break_on_barge_in:
            # The bot went silent mid-reply (barge-in: paused or interrupted). Only when
            # FreeSWITCH itself plays something: a stray uuid_break leaves CF_BREAK set on
            # the channel, and the next playback (after a transfer, say) would stop at once.
            # (FreeSWITCH runs such a playback inside the park loop, which reads no frames
            # for unicast meanwhile: the caller is not heard then, so this follows a stop
            # for another reason, never a spoken barge-in.)
            stopped = self.speaker.paused or self.speaker.generation != self._last_generation
            if self._last_voiced and is_silence and stopped and self.fs_playing:
                self._spawn(self._break_for_barge_in())
            self._last_generation = self.speaker.generation
            self._last_voiced = not is_silence
        for frame in self._rates.outbound(pcm):
            self.media.send(frame)

    async def _break_for_barge_in(self) -> None:
        self.breaks_sent += 1
        await self.break_playback()

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- state ------------------------------------------------------------------------------

    async def close(self) -> None:
        """Free the UDP port and end the ESL connection (``exit``). Idempotent."""
        self._mark_closed(self.end_reason or "closed")
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.wait(self._background, timeout=1.0)
        if self.media is not None:
            self.media.close()
        await self._link.finish()


class FreeswitchServer:
    """The outbound-ESL server: FreeSWITCH's socket app connects, one call per connection.

    Mirrors ``AudioSocketServer`` (``start``, ``port``, ``calls``, ``stop_accepting``,
    ``wait_idle``, ``close``) and is the ``CallControl`` for its calls (``transfer``).
    """

    def __init__(
        self,
        config: FreeswitchConfig,
        handler: CallHandler,
        *,
        handler_grace_s: float = HANDLER_GRACE_S,
        port: int | None = None,
        profile: str | None = None,
    ) -> None:
        self._config = config
        self._handler = handler
        self._handler_grace_s = handler_grace_s
        self._listen_port = config.port if port is None else port
        self.profile = profile
        self._allow = parse_cidrs(config.allow) if config.allow else ()
        self._hub = _GeventHub()
        self._esl: _EslServer | None = None
        self._port: int | None = None
        self._accepting = False
        self.calls: dict[str, FreeswitchCall] = {}
        self._connections: set[asyncio.Task[None]] = set()
        self.calls_total = 0
        self.calls_rejected = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("server not started")
        return self._port

    @property
    def hub_thread(self) -> threading.Thread | None:
        return self._hub.thread

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._hub.start()
        listening: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._esl = _EslServer(
            self._hub,
            loop,
            self._config.host,
            self._listen_port,
            self._config.command_timeout_s,
            self._announce,
            listening,
        )
        self._hub.spawn(self._esl.listen)
        try:
            async with asyncio.timeout(5.0):
                self._port = await asyncio.wrap_future(listening)
        except BaseException:
            await self._hub.stop()
            raise
        self._accepting = True
        log.info("freeswitch_listening", host=self._config.host, port=self._port)

    async def wait_idle(self) -> None:
        await self._idle.wait()

    async def stop_accepting(self) -> None:
        self._accepting = False
        esl_server = self._esl
        if esl_server is not None:
            self._hub.spawn(esl_server.stop)

    async def close(self, grace_s: float = 2.0, reason: str = "shutdown") -> None:
        """Stop accepting; hand every call back to its dialplan (``resume``); wait
        ``grace_s``; stop the ESL thread."""
        await self.stop_accepting()
        await asyncio.gather(*(call.hangup(reason) for call in list(self.calls.values())))
        await finish_connections(self._connections, grace_s)
        esl_server = self._esl
        await self._hub.stop(esl_server.shutdown if esl_server is not None else None)

    # --- CallControl ------------------------------------------------------------------------

    async def transfer(self, call_id: str, target: str) -> bool:
        call = self.calls.get(call_id)
        if call is None:
            return False
        return await call.transfer(target)

    async def get_var(self, call_id: str, name: str) -> str | None:
        """The channel's variables came with the call (``FreeswitchCall.profile``): no
        separate lookup is made."""
        return None

    async def break_playback(self, call_id: str) -> bool:
        call = self.calls.get(call_id)
        return False if call is None else await call.break_playback()

    # --- connections ------------------------------------------------------------------------

    def _announce(self, link: _Link) -> None:
        """Hub thread: a new connection."""
        with contextlib.suppress(RuntimeError):
            link.loop.call_soon_threadsafe(self._on_connection, link)

    def _on_connection(self, link: _Link) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(link))
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    def _media_ip(self, link: _Link) -> str | None:
        if self._config.freeswitch_media_host:
            return self._config.freeswitch_media_host
        try:
            address = ipaddress.ip_address(link.peer_ip.split("%")[0])
        except ValueError:
            return None
        if isinstance(address, ipaddress.IPv6Address):
            mapped = address.ipv4_mapped
            return None if mapped is None else str(mapped)
        return str(address)

    def _peer_allowed(self, address: str) -> bool:
        if not self._allow:
            try:
                return ipaddress.ip_address(address.split("%")[0]).is_loopback
            except ValueError:
                return False
        return peer_allowed(address, self._allow)

    async def _reject(
        self, link: _Link, reason: str, *, resume: bool = True, **fields: Any
    ) -> None:
        """Back to the dialplan: ``resume`` then ``exit`` (connect was sent: in async mode
        FreeSWITCH waits for it before parking the channel). ``resume=False`` for a
        static-mode socket: there the dialplan goes on after ``exit`` by itself, and a
        ``resume`` moves the channel to CS_RESET so the rest of the dialplan never runs
        (found with FreeSWITCH 1.10.12: the caller sat in dead air until hanging up)."""
        self.calls_rejected += 1
        log.warning("call_rejected", reason=reason, peer=link.peer, **fields)
        if resume:
            with contextlib.suppress(EslError):
                await link.command(esl.encode_command("resume"), self._config.command_timeout_s)
        await link.finish()

    async def _serve(self, link: _Link) -> None:
        config = self._config
        try:
            if not self._peer_allowed(link.peer_ip):
                self.calls_rejected += 1
                log.warning("call_rejected", reason="peer_not_allowed", peer=link.peer)
                await link.finish()
                return
            try:
                reply = await link.connect(config.command_timeout_s)
                info = ChannelInfo.from_connect(reply)
            except EslError as exc:
                if exc.closed is None or not exc.closed.bad_input:  # else the link logged it
                    reason = "eof_before_connect" if exc.closed else f"esl_{exc.reason}"
                    log.warning("bad_input", reason=reason, detail="connect", peer=link.peer)
                return
            except esl.ProtocolError as exc:
                log.warning("bad_input", reason=exc.reason, detail=exc.detail, peer=link.peer)
                await self._reject(link, exc.reason)
                return
            link.call_id = info.uuid
            if info.socket_mode != "async":
                # Static mode never parks the channel, so unicast would never run.
                await self._reject(link, "not_async", resume=False, socket_mode=info.socket_mode)
                return
            media_ip = self._media_ip(link)
            if media_ip is None:
                await self._reject(link, "no_ipv4_media_address")
                return
            if not self._accepting:
                await self._reject(link, "shutdown", call_id=info.uuid)
                return
            if info.uuid in self.calls:
                await self._reject(link, "duplicate_call_id", call_id=info.uuid)
                return
            if len(self.calls) >= config.max_calls:
                await self._reject(link, "max_calls", call_id=info.uuid, max_calls=config.max_calls)
                return
            await self._serve_call(
                FreeswitchCall(info, link, config, profile=self.profile), media_ip
            )
        finally:
            await link.finish()

    async def _serve_call(self, call: FreeswitchCall, media_ip: str) -> None:
        call_id = call.call_id
        self.calls[call_id] = call
        self._idle.clear()
        self.calls_total += 1
        structlog.contextvars.bind_contextvars(call_id=call_id)
        log.info(
            "call_started",
            peer=call.peer,
            pbx="freeswitch",
            codec=call.info.codec,
            channel_rate_hz=call.channel_rate_hz,
            rate_hz=call.rate_hz,
        )
        if call.info.control != "full":
            log.warning("esl_not_full", control=call.info.control)  # no api: no transfer
        try:
            async with asyncio.TaskGroup() as group:
                control_task = group.create_task(call.control_loop())
                tasks: list[asyncio.Task[Any]] = [control_task]
                try:
                    if await call.setup(media_ip):
                        tasks.append(group.create_task(call.run_pacer()))
                        handler_task = group.create_task(self._run_handler(call))
                        closed_task = group.create_task(call.wait_closed())
                        tasks.append(closed_task)
                        await asyncio.wait(
                            (handler_task, closed_task), return_when=asyncio.FIRST_COMPLETED
                        )
                        if not handler_task.done():
                            await asyncio.wait((handler_task,), timeout=self._handler_grace_s)
                            if not handler_task.done():
                                log.warning("session_overran", grace_s=self._handler_grace_s)
                                handler_task.cancel()
                finally:
                    for task in tasks:
                        task.cancel()
        finally:
            await call.close()
            self.calls.pop(call_id, None)
            if not self.calls:
                self._idle.set()
            media = call.media
            log.info(
                "call_closed",
                reason=call.end_reason,
                frames_in=call.frames_in,
                frames_out=call.speaker.frames_written,
                stalls=call.speaker.stalls,
                datagrams_in=media.stats.datagrams_in if media else 0,
                datagrams_out=media.stats.frames_out if media else 0,
                late_dropped=media.late_filter.late if media else 0,
                bad_input=dict(call.bad_inputs),
                esl_events_dropped=call._link.events_dropped,
            )
            structlog.contextvars.unbind_contextvars("call_id")

    async def _run_handler(self, call: FreeswitchCall) -> None:
        await run_call_handler(self._handler, call, self._config.max_call_duration_s)
