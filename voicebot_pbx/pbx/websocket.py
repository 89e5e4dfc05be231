"""Asterisk's WebSocket channel (chan_websocket): Asterisk connects, one call per connection.

``Dial(WebSocket/<stanza>/c(slin16))`` makes Asterisk 22.6+ (JSON control from 22.8) open a
WebSocket to the URI of its ``websocket_client.conf`` stanza with the subprotocol ``media``.
The first text message is ``MEDIA_START`` (the channel, its codec, the frame size Asterisk
wants); after it binary messages carry media in that codec both ways and text messages carry
control (``voicebot_pbx.pbx.websocket_codec``, plain or JSON: the bot answers in the form the
``MEDIA_START`` came in). Asterisk re-times what it is sent from its own queue and (22.8+)
neither pads short frames nor makes silence when the queue is empty: the ``Speaker`` sends
whole 20 ms frames of speech, keeping ``[websocket] send_ahead_ms`` of it in that queue ahead
of what is playing (a late tick of a busy bot is absorbed there, not heard as a gap), and
sends nothing while the bot is silent, so the queue is empty when a reply starts (silence
frames sent ahead would wait there as delay) and the caller hears silence. On barge-in
(``Speaker.interrupt`` / ``pause``) the bot sends ``FLUSH_MEDIA`` so nothing Asterisk already
holds is played (a pause takes what was sent ahead back into the speaker's queue). With
``[websocket] marks`` a ``MARK_MEDIA`` goes in the stream at each point the session marks
(a reply's first audio, its end), and Asterisk's ``MEDIA_MARK_PROCESSED`` says when the
caller heard it (``Speaker.mark_played``);
``MEDIA_XOFF`` holds the bot's writes until ``MEDIA_XON`` (a peer that never says XON is not
reading: the call ends after ``server.write_timeout_s``). ``DTMF_END`` is a key press; the
bot's hang-up is ``HANGUP`` then a normal close (with Dial's ``g`` the dialplan goes on); a
caller hang-up is the connection closing.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import os
import re
import ssl
from collections.abc import Callable, Mapping, Sequence

import structlog
from websockets.asyncio.client import connect
from websockets.asyncio.connection import Connection
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK, InvalidHandshake
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.typing import Subprotocol

from voicebot_pbx.config import ServerConfig, WebSocketConfig
from voicebot_pbx.pbx import websocket_codec as wire
from voicebot_pbx.pbx.media import AudioIn, CallState, DtmfIn
from voicebot_pbx.pbx.server import HANDLER_GRACE_S, CallHandler, CallServer

log = structlog.get_logger("voicebot_pbx.websocket")

SUBPROTOCOL = Subprotocol("media")
_MAX_MESSAGE_BYTES = 64 * 1024  # a 20 ms slin16 frame is 640 bytes; Asterisk never sends more
_CONNECTION_ID = re.compile(r"[A-Za-z0-9-]{1,64}\Z")  # chan_websocket's is a UUID


class WebSocketCall(CallState):
    """One call: the connection, its control format, the paced speaker, flow control."""

    pbx = "asterisk"
    _log = log

    def __init__(
        self,
        connection: Connection,
        start: wire.MediaStart,
        control_format: wire.ControlFormat,
        config: ServerConfig,
        peer: str,
    ) -> None:
        rate_hz = start.rate_hz
        assert rate_hz is not None
        super().__init__(peer, rate_hz)
        self.call_id = start.channel_id or start.connection_id
        self.channel = start.channel
        self.codec = start.format
        self.profile: str | None = None
        self.caller_id: str | None = None
        self.dtmf_filter: Callable[[str, str], bool] | None = None
        self._connection = connection
        self._format: wire.ControlFormat = control_format
        self._config = config
        self._xon = asyncio.Event()
        self._xon.set()
        self._flush_wanted = asyncio.Event()
        self.flushes = 0
        self.xoffs = 0
        self.speaker.on_flush = self._request_flush

    async def wait_for_rate(self, timeout_s: float) -> int:
        return self._rate_hz  # known from MEDIA_START, before any audio

    # --- inbound ---------------------------------------------------------------------

    async def read_loop(self) -> None:
        reason = "caller_hangup"
        try:
            while True:
                async with asyncio.timeout(self._config.read_timeout_s):
                    message = await self._connection.recv()
                now_s = asyncio.get_running_loop().time()
                if isinstance(message, bytes):
                    pcm = wire.decode_media(message, self.codec)
                    self.frames_in += 1
                    self._put(AudioIn(pcm, self._rate_hz, now_s))
                else:
                    self._on_control(wire.parse_control(message), now_s)
        except wire.ControlError as exc:
            reason = "bad_input"
            log.warning("bad_input", reason=str(exc), peer=self.peer)
        except TimeoutError:
            reason = "read_timeout"
        except ConnectionClosed:
            reason = "caller_hangup"
        except (ConnectionError, OSError) as exc:
            reason = f"connection_error:{type(exc).__name__}"
        finally:
            self._mark_closed(reason)

    def _on_control(self, event: wire.ControlEvent, now_s: float) -> None:
        match event:
            case wire.DtmfEnd(digit):
                if self.dtmf_filter is None or self.dtmf_filter(self.call_id, digit):
                    self._put(DtmfIn(digit, now_s))
            case wire.MediaXoff():
                self.xoffs += 1
                self._xon.clear()
            case wire.MediaXon():
                self._xon.set()
            case wire.MediaMarkProcessed(correlation_id):
                if correlation_id:
                    self.speaker.mark_played(correlation_id, now_s)
            case wire.MediaStart():
                raise wire.ControlError("a second MEDIA_START")
            case _:
                log.debug("websocket_control", event=type(event).__name__)

    # --- outbound --------------------------------------------------------------------

    def _request_flush(self) -> None:
        """Barge-in: tell Asterisk at once to drop what it holds (``run_flushes``), not at
        the pacer's next tick."""
        self._flush_wanted.set()

    async def run_pacer(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self.speaker.run(self.write_frame))
            group.create_task(self.run_flushes())

    async def run_flushes(self) -> None:
        """Send ``FLUSH_MEDIA`` as soon as one is asked for (frames of the dropped reply
        already written go before it, so Asterisk drops them too)."""
        while not self._closed.is_set():
            await self._flush_wanted.wait()
            self._flush_wanted.clear()
            if self._closed.is_set():
                return
            self.flushes += 1
            await self._write(wire.encode_command("FLUSH_MEDIA", self._format))

    async def _send(self, data: str | bytes) -> None:
        async with asyncio.timeout(self._config.write_timeout_s):
            await self._connection.send(data)

    async def write_mark(self, mark_id: str) -> None:
        """``MARK_MEDIA <id>`` after the frames sent so far: Asterisk reports it
        (``MEDIA_MARK_PROCESSED``) when those have been played."""
        await self._write(wire.encode_command("MARK_MEDIA", self._format, correlation_id=mark_id))

    async def write_frame(self, pcm: bytes, is_silence: bool) -> None:
        if self._closed.is_set() or is_silence:
            # Nothing to say: send nothing, so Asterisk's queue runs empty and the next
            # reply is played as it arrives (silence sent ahead would sit in that queue as
            # delay, and costs a send per 20 ms per call).
            return
        await self._write(wire.encode_media(pcm, self.codec), media=True)

    async def _write(self, data: str | bytes, *, media: bool = False) -> None:
        """One message to Asterisk (media waits for ``MEDIA_XON``); a peer that does not
        read, or a connection that closes, ends the call with its reason."""
        if self._closed.is_set():
            return
        try:
            if media and not self._xon.is_set():
                async with asyncio.timeout(self._config.write_timeout_s):
                    await self._xon.wait()
            await self._send(data)
        except TimeoutError:
            if self._connection.state is not State.OPEN:  # the caller's side is closing
                self._mark_closed("caller_hangup")
                return
            log.warning("bad_input", reason="peer_not_reading", peer=self.peer)
            self._mark_closed("peer_not_reading")
            self._connection.transport.abort()
        except ConnectionClosedOK:
            # Asterisk closed cleanly (the caller hung up) while a frame was going out,
            # before the reader saw the close.
            self._mark_closed("caller_hangup")
        except (ConnectionClosed, ConnectionError, OSError) as exc:
            self._mark_closed(f"connection_error:{type(exc).__name__}")

    async def hangup(self, reason: str) -> None:
        """``HANGUP`` (the channel ends; with Dial's ``g`` the dialplan goes on), then close."""
        if self._closed.is_set():
            return
        self._mark_closed(reason)
        with contextlib.suppress(ConnectionClosed, ConnectionError, OSError, TimeoutError):
            await self._send(wire.encode_command("HANGUP", self._format))
        await self.close()

    async def close(self) -> None:
        self._mark_closed(self.end_reason or "closed")
        with contextlib.suppress(ConnectionClosed, ConnectionError, OSError, TimeoutError):
            async with asyncio.timeout(self._config.write_timeout_s):
                await self._connection.close()


def _select_media(
    connection: ServerConnection, offered: Sequence[Subprotocol]
) -> Subprotocol | None:
    return SUBPROTOCOL if SUBPROTOCOL in offered else None


def _peer_of(connection: Connection) -> tuple[str, str]:
    address = connection.remote_address
    if isinstance(address, tuple) and len(address) >= 2:
        return str(address[0]), f"{address[0]}:{address[1]}"
    return "", "?"


class WebSocketServer(CallServer[WebSocketCall]):
    def __init__(
        self,
        config: WebSocketConfig,
        server_config: ServerConfig,
        handler: CallHandler,
        *,
        handler_grace_s: float = HANDLER_GRACE_S,
        dtmf_filter: Callable[[str, str], bool] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(
            handler,
            allow=config.allow,
            max_call_duration_s=server_config.max_call_duration_s,
            handler_grace_s=handler_grace_s,
        )
        self._config = config
        self._server_config = server_config
        self._dtmf_filter = dtmf_filter
        self._server: Server | None = None
        self._closing = False
        # Basic auth: (username, password); a username without a password refuses everyone.
        self._credentials: tuple[str, str] | None = None
        if config.username:
            password = (environ if environ is not None else os.environ).get(config.password_env, "")
            if not password:
                log.error(
                    "websocket_auth_unset",
                    reason=f"websocket.username is set but ${config.password_env} is empty: "
                    "every connection is refused",
                )
            self._credentials = (config.username, password)

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("server not started")
        return int(next(iter(self._server.sockets)).getsockname()[1])

    def _tls(self) -> ssl.SSLContext | None:
        """The server's TLS context when a certificate is configured (wss://)."""
        if not self._config.tls_cert:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self._config.tls_cert, self._config.tls_key)
        return context

    async def start(self) -> None:
        self._server = await serve(
            self._on_connect,
            self._config.host,
            self._config.port,
            # Offered or not, the handshake completes: a peer without "media" is refused
            # by the handler with a log line (a failed handshake would log nothing of ours).
            select_subprotocol=_select_media,
            process_request=self._check_auth,
            compression=None,
            max_size=_MAX_MESSAGE_BYTES,
            ping_interval=None,  # Asterisk pings; a call's own read timeout covers the rest
            open_timeout=self._server_config.first_message_timeout_s,
            ssl=self._tls(),
        )
        log.info(
            "websocket_listening",
            host=self._config.host,
            port=self.port,
            tls=bool(self._config.tls_cert),
        )

    def _check_auth(self, connection: ServerConnection, request: Request) -> Response | None:
        """Basic auth when configured (a 401 and one log line otherwise)."""
        if self._credentials is None:
            return None
        user, password = self._credentials
        given = request.headers.get("Authorization", "")
        scheme, _, encoded = given.partition(" ")
        ok = False
        if password and scheme.lower() == "basic":
            try:
                name, _, secret = base64.b64decode(encoded, validate=True).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                name = secret = ""
            ok = hmac.compare_digest(name.encode(), user.encode()) & hmac.compare_digest(
                secret.encode(), password.encode()
            )
        if ok:
            return None
        self.calls_rejected += 1
        _host, peer = _peer_of(connection)
        reason = "auth_missing" if not given else "auth_failed"
        log.warning("call_rejected", reason=reason, peer=peer, pbx="asterisk-websocket")
        response = connection.respond(401, "authentication required\n")
        response.headers["WWW-Authenticate"] = 'Basic realm="voicebot"'
        return response

    async def stop_accepting(self) -> None:
        self._closing = True  # no more INCOMING connections either
        if self._server is not None:
            self._server.close(close_connections=False)

    async def _listener_closed(self) -> None:
        if self._server is not None:
            await self._server.wait_closed()

    async def _on_connect(self, connection: ServerConnection) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._serve_connection(connection)
        finally:
            self._connections.discard(task)

    async def _refuse(self, connection: Connection, peer: str, reason: str) -> None:
        self.calls_rejected += 1
        log.warning("call_rejected", reason=reason, peer=peer, pbx="asterisk-websocket")
        with contextlib.suppress(ConnectionClosed, ConnectionError, OSError, TimeoutError):
            async with asyncio.timeout(self._server_config.write_timeout_s):
                await connection.close(code=1008, reason=reason[:100])

    async def _serve_connection(self, connection: ServerConnection) -> None:
        host, peer = _peer_of(connection)
        if not self._peer_allowed(host):
            await self._refuse(connection, peer, "peer_not_allowed")
            return
        if connection.subprotocol != SUBPROTOCOL:
            await self._refuse(connection, peer, "subprotocol_not_media")
            return
        await self._serve_media(connection, peer)

    def dial_incoming(self, connection_id: str) -> None:
        """Asterisk made a ``Dial(WebSocket/INCOMING/...)`` channel waiting for us under
        ``connection_id`` (learnt from AMI): connect to ``[websocket] incoming_url`` and
        serve the call as one Asterisk dialled in."""
        if not self._config.incoming_url or self._closing:
            return
        task = asyncio.create_task(self._dial_incoming(connection_id))
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    async def _dial_incoming(self, connection_id: str) -> None:
        if not _CONNECTION_ID.match(connection_id):
            log.warning("bad_input", reason="incoming_media_bad_id", detail=connection_id[:80])
            return
        url = f"{self._config.incoming_url.rstrip('/')}/{connection_id}"
        peer = url.split("/")[2]
        try:
            connection = await connect(
                url,
                subprotocols=[SUBPROTOCOL],
                compression=None,
                max_size=_MAX_MESSAGE_BYTES,
                ping_interval=None,
                open_timeout=self._server_config.first_message_timeout_s,
            )
        except (InvalidHandshake, OSError, TimeoutError) as exc:
            self.calls_rejected += 1
            log.warning(
                "incoming_media_failed",
                reason=f"{type(exc).__name__}: {exc}"[:200],
                url=url,
                pbx="asterisk-websocket",
            )
            return
        async with connection:
            if connection.subprotocol != SUBPROTOCOL:
                await self._refuse(connection, peer, "subprotocol_not_media")
                return
            await self._serve_media(connection, peer)

    async def _serve_media(self, connection: Connection, peer: str) -> None:
        """One call over an open connection with the ``media`` subprotocol, whichever
        side opened it."""
        try:
            start, control_format = await self._media_start(connection)
        except (wire.ControlError, TimeoutError, ConnectionClosed) as exc:
            detail = "no MEDIA_START in time" if isinstance(exc, TimeoutError) else str(exc)
            log.warning("bad_input", reason="no_media_start", detail=detail[:200], peer=peer)
            await self._refuse(connection, peer, "no_media_start")
            return
        refused = await self.make_room(
            peer,
            max_calls=self._server_config.max_calls,
            per_peer=self._server_config.max_calls_per_peer,
            evict_silent_after_s=self._server_config.evict_silent_after_s,
        )
        if refused is not None:
            with contextlib.suppress(ConnectionClosed, ConnectionError, OSError, TimeoutError):
                async with asyncio.timeout(self._server_config.write_timeout_s):
                    await connection.send(wire.encode_command("HANGUP", control_format))
            await self._refuse(connection, peer, refused)
            return
        call = WebSocketCall(connection, start, control_format, self._server_config, peer)
        call.dtmf_filter = self._dtmf_filter
        call.speaker.send_ahead_s = self._config.send_ahead_ms / 1000.0
        if self._config.marks and call.speaker.send_ahead_s > 0:
            call.speaker.mark_writer = call.write_mark
        with self.serving(call.call_id, call):
            log.info(
                "call_started",
                peer=peer,
                pbx="asterisk-websocket",
                channel=start.channel,
                codec=start.format,
                rate_hz=call.rate_hz,
            )
            try:
                await self.run_paced(call, call.read_loop())
            finally:
                await call.close()
                log.info(
                    "call_closed",
                    reason=call.end_reason,
                    frames_in=call.frames_in,
                    frames_out=call.speaker.audio_frames_written,
                    flushes=call.flushes,
                    xoffs=call.xoffs,
                    stalls=call.speaker.stalls,
                    marks=call.speaker.marks_sent,
                    marks_unconfirmed=call.speaker.marks_unconfirmed,
                )

    async def _media_start(
        self, connection: Connection
    ) -> tuple[wire.MediaStart, wire.ControlFormat]:
        """The first control message must be MEDIA_START with a codec the bot can take."""
        async with asyncio.timeout(self._server_config.first_message_timeout_s):
            while True:
                message = await connection.recv()
                if isinstance(message, bytes):
                    continue  # media before MEDIA_START: nothing to decode it with yet
                event = wire.parse_control(message)
                if isinstance(event, wire.MediaStart):
                    break
        if not event.supported:
            raise wire.ControlError(f"codec {event.format!r} is not one the bot can take")
        return event, wire.message_format(message)
