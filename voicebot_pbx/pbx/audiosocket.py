"""AudioSocket server: Asterisk connects (it is the TCP client), one call per connection.

Behaviour follows Asterisk's ``res/res_audiosocket.c`` and ``apps/app_audiosocket.c``:
the UUID is the first message; audio arrives as 20 ms slin frames (0x10 at 8 kHz from the
``AudioSocket()`` app, 0x12 at 16 kHz from ``Dial(AudioSocket/.../c(slin16))``); a caller
hang-up is plain EOF. Asterisk neither paces nor buffers what we send, and drops the call
after 2 s with nothing sent either way, so the ``Speaker`` writes one frame per 20 ms from
the UUID on (silence when idle). We send only audio kinds and 0x00 (hangup): anything
else makes Asterisk tear the call down.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import Callable

import structlog

from voicebot_pbx.config import ServerConfig
from voicebot_pbx.pbx import audiosocket_codec as wire
from voicebot_pbx.pbx.media import (
    AudioIn,
    CallState,
    DtmfIn,
)
from voicebot_pbx.pbx.server import HANDLER_GRACE_S, CallHandler, CallServer
from voicebot_pbx.pbx.throttle import LogThrottle

log = structlog.get_logger("voicebot_pbx.audiosocket")
_THROTTLE = LogThrottle()


def _warn(event: str, *, reason: str, **fields: object) -> None:
    """A warning about a peer, at most ``LogThrottle.burst`` per reason every 10 s; the
    next line that passes says how many were held back (``suppressed``)."""
    held = _THROTTLE.check((event, reason))
    if held is None:
        return
    if held:
        fields["suppressed"] = held
    log.warning(event, reason=reason, **fields)


_READ_CHUNK_BYTES = 4096
_SEND_BUFFER_BYTES = 64 * 1024


class AudioSocketCall(CallState):
    """One connected call: decoder + inbound queue + paced speaker over one TCP stream."""

    pbx = "asterisk"
    _log = log

    def __init__(
        self,
        call_uuid: uuid.UUID,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        decoder: wire.Decoder,
        config: ServerConfig,
        peer: str,
    ) -> None:
        super().__init__(peer, config.default_rate_hz)
        self.call_id = str(call_uuid)
        self._reader = reader
        self._writer = writer
        self._decoder = decoder
        self._config = config
        self._rate_known = asyncio.Event()
        self._inbound_rate_hz: int | None = None  # from the first inbound audio frame
        # Once ``wait_for_rate`` has answered, the session works at that rate: the outbound
        # rate must not change under it any more.
        self._rate_committed = False
        self.profile: str | None = None
        self.caller_id: str | None = None  # AudioSocket carries none (AMI could)
        self.dtmf_filter: Callable[[str, str], bool] | None = None
        self.bytes_in = 0

    async def wait_for_rate(self, timeout_s: float) -> int:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._rate_known.wait()
        self._rate_committed = True
        return self._rate_hz

    # --- inbound ---------------------------------------------------------------------

    async def read_loop(self, pending: list[wire.Message]) -> None:
        """Read until EOF or bad input; ``pending`` came in the same read as the UUID."""
        reason = "caller_hangup"
        try:
            ended = self._dispatch(pending)
            while ended is None:
                async with asyncio.timeout(self._config.read_timeout_s):
                    data = await self._reader.read(_READ_CHUNK_BYTES)
                if not data:
                    self._decoder.check_eof()
                    break
                self.bytes_in += len(data)
                ended = self._dispatch(self._decoder.feed(data))
            if ended is not None:
                reason = ended
        except wire.ProtocolError as exc:
            reason = exc.reason
            _warn("bad_input", reason=exc.reason, detail=exc.detail, peer=self.peer)
        except TimeoutError:
            reason = "read_timeout"
        except ConnectionResetError:
            reason = "caller_hangup"  # a peer closing with unread data resets the connection
        except (ConnectionError, OSError) as exc:
            reason = f"connection_error:{type(exc).__name__}"
        finally:
            self._mark_closed(reason)
        # Not cancelled: the peer hung up or broke the protocol. Free the socket now rather
        # than when the session returns (Asterisk's dialplan continues on close).
        self._writer.close()

    def _dispatch(self, messages: list[wire.Message]) -> str | None:
        """Queue inbound events; returns an end reason when the peer ended the call."""
        now_s = asyncio.get_running_loop().time()
        for message in messages:
            match message:
                case wire.Audio(rate_hz, pcm):
                    self.frames_in += 1
                    if self._inbound_rate_hz is None:
                        self._learn_rate(rate_hz)
                    elif rate_hz != self._inbound_rate_hz:
                        raise wire.ProtocolError(
                            "rate_changed", f"{self._inbound_rate_hz} Hz -> {rate_hz} Hz"
                        )
                    self._put(AudioIn(pcm, rate_hz, now_s))
                case wire.Dtmf(digit):
                    if self.dtmf_filter is None or self.dtmf_filter(self.call_id, digit):
                        self._put(DtmfIn(digit, now_s))
                case wire.Hangup():
                    return "peer_hangup"
                case wire.Error(code):
                    return f"peer_error_{code if code is not None else 'none'}"
                case wire.Uuid():
                    raise wire.ProtocolError("repeated_uuid", "a second UUID message")
        return None

    def _learn_rate(self, rate_hz: int) -> None:
        if rate_hz not in (8000, 16000):
            raise wire.ProtocolError("unsupported_rate", f"{rate_hz} Hz")
        self._inbound_rate_hz = rate_hz
        if rate_hz != self._rate_hz:
            if self._rate_committed or self.speaker.busy:
                # The caller was silent (Asterisk sent nothing) until after the session
                # started at the default rate. Keep speaking at that rate: Asterisk accepts
                # any slin kind and converts; AudioIn.rate_hz tells the session the truth.
                log.info("rate_mismatch", inbound_hz=rate_hz, outbound_hz=self._rate_hz)
            else:
                self.speaker.set_rate(rate_hz)
                self._rate_hz = rate_hz
        self._rate_known.set()

    # --- outbound --------------------------------------------------------------------

    async def write_frame(self, pcm: bytes, is_silence: bool) -> None:
        if self._closed.is_set():
            return
        try:
            self._writer.write(wire.encode_audio(pcm, self._rate_hz))
            async with asyncio.timeout(self._config.write_timeout_s):
                await self._writer.drain()
        except TimeoutError:
            _warn("bad_input", reason="peer_not_reading", peer=self.peer)
            self._mark_closed("peer_not_reading")
            self._writer.transport.abort()
        except (ConnectionError, OSError) as exc:
            self._mark_closed(f"connection_error:{type(exc).__name__}")

    async def hangup(self, reason: str) -> None:
        """Send 0x00 (the dialplan continues at its next priority) and close."""
        if self._closed.is_set():
            return
        self._mark_closed(reason)
        with contextlib.suppress(ConnectionError, OSError, TimeoutError):
            self._writer.write(wire.encode_hangup())
            async with asyncio.timeout(self._config.write_timeout_s):
                await self._writer.drain()

    async def close(self) -> None:
        self._mark_closed(self.end_reason or "closed")
        await _close_writer(self._writer)


async def _close_writer(writer: asyncio.StreamWriter, timeout_s: float = 1.0) -> None:
    """Close, flushing what is buffered; abort if the peer does not take it in time (a
    transport closed with unsent data otherwise stays open as long as the peer never reads)."""
    writer.close()
    try:
        async with asyncio.timeout(timeout_s):
            await writer.wait_closed()
    except TimeoutError:
        writer.transport.abort()
    except (ConnectionError, OSError):
        pass


class AudioSocketServer(CallServer[AudioSocketCall]):
    def __init__(
        self,
        config: ServerConfig,
        handler: CallHandler,
        *,
        handler_grace_s: float = HANDLER_GRACE_S,
        port: int | None = None,
        profile: str | None = None,
        dtmf_filter: Callable[[str, str], bool] | None = None,
    ) -> None:
        """``port``/``profile``: an extra listener whose calls get that bot profile.
        ``dtmf_filter(call_id, digit)`` may drop a digit (already delivered over AMI)."""
        super().__init__(
            handler,
            allow=config.allow,
            max_call_duration_s=config.max_call_duration_s,
            handler_grace_s=handler_grace_s,
            profile=profile,
        )
        self._config = config
        self._listen_port = config.port if port is None else port
        self._dtmf_filter = dtmf_filter
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            raise RuntimeError("server not started")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._on_connect, host=self._config.host, port=self._listen_port, reuse_address=True
        )
        log.info("audiosocket_listening", host=self._config.host, port=self.port)

    async def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _listener_closed(self) -> None:
        if self._server is not None:
            await self._server.wait_closed()

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._serve_connection(reader, writer)
        finally:
            self._connections.discard(task)

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        peername = writer.get_extra_info("peername")
        peer = f"{peername[0]}:{peername[1]}" if peername else "?"
        if not self._peer_allowed(peername[0] if peername else "", unix_peer=True):
            self.calls_rejected += 1
            _warn("call_rejected", reason="peer_not_allowed", peer=peer)
            await _close_writer(writer)
            return
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SEND_BUFFER_BYTES)
        writer.transport.set_write_buffer_limits(high=16 * 1024)
        decoder = wire.Decoder()
        try:
            call_uuid, pending = await self._read_uuid(reader, decoder)
        except wire.ProtocolError as exc:
            _warn("bad_input", reason=exc.reason, detail=exc.detail, peer=peer)
            await _close_writer(writer)
            return
        call_id = str(call_uuid)
        refused = await self.make_room(
            peer,
            max_calls=self._config.max_calls,
            per_peer=self._config.max_calls_per_peer,
            evict_silent_after_s=self._config.evict_silent_after_s,
        )
        if refused is not None:
            self.calls_rejected += 1
            _warn(
                "call_rejected",
                reason=refused,
                call_id=call_id,
                peer=peer,
                max_calls=self._config.max_calls,
            )
            with contextlib.suppress(ConnectionError, OSError):
                writer.write(wire.encode_hangup())
            await _close_writer(writer)
            return
        call = AudioSocketCall(call_uuid, reader, writer, decoder, self._config, peer)
        call.profile = self.profile
        call.dtmf_filter = self._dtmf_filter
        with self.serving(call_id, call):
            log.info("call_started", peer=peer, pbx="asterisk")
            try:
                await self.run_paced(call, call.read_loop(pending))
            finally:
                await call.close()
                log.info(
                    "call_closed",
                    reason=call.end_reason,
                    frames_in=call.frames_in,
                    frames_out=call.speaker.frames_written,
                    stalls=call.speaker.stalls,
                )

    async def _read_uuid(
        self, reader: asyncio.StreamReader, decoder: wire.Decoder
    ) -> tuple[uuid.UUID, list[wire.Message]]:
        try:
            async with asyncio.timeout(self._config.first_message_timeout_s):
                while True:
                    data = await reader.read(_READ_CHUNK_BYTES)
                    if not data:
                        decoder.check_eof()
                        raise wire.ProtocolError("eof_before_uuid", "peer closed before a UUID")
                    messages = decoder.feed(data)
                    if messages:
                        break
        except TimeoutError:
            raise wire.ProtocolError("no_uuid", "no first message in time") from None
        except (ConnectionError, OSError) as exc:
            raise wire.ProtocolError("connection_error", type(exc).__name__) from None
        first = messages[0]
        if not isinstance(first, wire.Uuid):
            raise wire.ProtocolError("first_message_not_uuid", type(first).__name__)
        if first.value.variant != uuid.RFC_4122 or first.value.int == 0:
            raise wire.ProtocolError("malformed_uuid", str(first.value))
        return first.value, messages[1:]
