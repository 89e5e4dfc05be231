"""The Event Socket link to one FreeSWITCH channel, on greenswitch (gevent).

ESL runs on greenswitch in one dedicated thread (``GeventHub``) with its own hub and no
monkey-patching: greenswitch uses ``gevent.socket`` directly, so nothing else in the process
is touched. Commands cross into that thread with the hub loop's ``run_callback_threadsafe``;
results and events come back with ``loop.call_soon_threadsafe`` as ``EslItem``s. greenswitch
0.0.19 is used for what it does well (command/reply correlation, event dispatch by name,
lingering, the server's call bookkeeping) and patched where it cannot run a service: its
reader crashes its greenlet on a malformed header or a missing Content-Length and spins
forever on EOF inside a body, ``send`` waits forever for a reply, and
``OutboundESLServer.listen`` calls ``sys.exit()`` when it cannot bind and polls ``accept``
every 100 ms. The subclasses here replace exactly those parts, framing with
``voicebot_pbx.pbx.esl_codec``. ``voicebot_pbx.pbx.freeswitch`` drives it from asyncio.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import socket
import threading
from collections.abc import Callable
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
from voicebot_pbx.pbx.media import (
    put_dropping_oldest,
)

log = structlog.get_logger("voicebot_pbx.freeswitch")

T = TypeVar("T")

_ESL_QUEUE_ITEMS = 256
_READ_CHUNK_BYTES = 65536
_EXIT_TIMEOUT_S = 1.0
_CLOSED_SENTINEL = "_VOICEBOT_ESL_CLOSED"
_FORWARDED_EVENTS = (
    "DTMF",
    "CHANNEL_HANGUP",
    "CHANNEL_HANGUP_COMPLETE",
    "CHANNEL_UNPARK",
    "CHANNEL_EXECUTE",
    "CHANNEL_EXECUTE_COMPLETE",
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
        link: EslLink,
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


class EslLink:
    """One ESL connection as both threads see it. Created in the hub thread; ``deliver`` is
    called there, everything else in the asyncio thread."""

    def __init__(self, hub: GeventHub, loop: asyncio.AbstractEventLoop, peer: tuple[str, int]):
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

    def __init__(self, session: _EslSession, announce: Callable[[EslLink], None]) -> None:
        self.session = session
        self._announce = announce

    def run(self) -> None:
        link = self.session._link
        self._announce(link)
        link.released.wait()


class EslServer(OutboundESLServer):  # type: ignore[misc]
    """greenswitch's outbound server with a listener that can run in a service."""

    def __init__(
        self,
        hub: GeventHub,
        loop: asyncio.AbstractEventLoop,
        host: str,
        port: int,
        command_timeout_s: float,
        announce: Callable[[EslLink], None],
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
            link = EslLink(self._hub, self._loop, (str(address[0]), int(address[1])))
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


class GeventHub:
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
