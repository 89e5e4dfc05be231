"""FreeSWITCH event socket (ESL) wire codec, pure (no I/O).

Framing as FreeSWITCH writes it (``src/mod/event_handlers/mod_event_socket/mod_event_socket.c``)
and libesl reads it: a message is header lines ``Name: value\\n`` closed by an empty line;
``Content-Length`` counts the body bytes after that empty line. What FreeSWITCH sends:

- ``command/reply``: ``Content-Type: command/reply\\nReply-Text: <text>\\n\\n``, no body
  (``listener_run``). The reply to ``connect`` is the whole channel as a serialized
  ``CHANNEL_DATA`` event with ``Content-Type: command/reply`` and ``Reply-Text: +OK`` among
  its (URL-encoded) headers (``parse_command``, ``"connect"``).
- ``api/response``: ``Content-Length: N`` and the command's output as the body (``api_exec``).
- ``text/event-plain``: ``Content-Length: N\\nContent-Type: text/event-plain\\n\\n`` and the
  event serialized by ``switch_event_serialize(event, &buf, SWITCH_TRUE)`` (``read_packet``):
  ``Name: url-encoded value\\n`` lines, an empty line, or ``Content-Length: M\\n\\n<body>``
  when the event has a body (``switch_event.c``).
- ``text/disconnect-notice``: ``Content-Disposition: linger`` when the channel hung up and
  we asked to linger, ``disconnect`` when the socket is about to close; always with a
  ``Content-Length`` (``read_packet``, ``send_disconnect``).

Header values are URL-decoded on the way in (as libesl does); a message or event that
cannot be framed raises ``ProtocolError`` with a short ``reason`` a log line can carry.
``Parser.feed`` is incremental and returns the same messages whatever way the stream is
split.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote

from voicebot_pbx.pbx.wire import WireError

# Types FreeSWITCH always sends with a Content-Length (see the module docstring).
BODY_CONTENT_TYPES = frozenset(
    {
        "api/response",
        "text/event-plain",
        "text/event-json",
        "text/event-xml",
        "log/data",
        "text/disconnect-notice",
        "text/rude-rejection",
    }
)
MAX_HEADER_BYTES = 256 * 1024  # one header block; a channel's CHANNEL_DATA is ~10-20 KB
MAX_BODY_BYTES = 8 * 1024 * 1024

# switch_utils.h: #define SWITCH_URL_UNSAFE "\r\n #%&+:;<=>?@[\\]^`{|}\""; switch_url_encode
# also escapes every byte outside ' '..'~'.
URL_UNSAFE = frozenset('\r\n #%&+:;<=>?@[\\]^`{|}"')

_HEADER_END = re.compile(rb"\n\r?\n")
_CONTENT_LENGTH = re.compile(r"[0-9]{1,10}")


class ProtocolError(WireError):
    """The peer sent something that cannot be ESL. ``reason`` is a short slug."""


@dataclass(frozen=True, slots=True)
class Message:
    """One ESL message (or one event): headers in arrival order, names as sent, values
    URL-decoded; lookups are case-insensitive (FreeSWITCH compares header names so)."""

    headers: Mapping[str, str]
    body: bytes = b""
    _index: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def of(cls, headers: Iterable[tuple[str, str]], body: bytes = b"") -> Message:
        ordered: dict[str, str] = {}
        index: dict[str, str] = {}
        for name, value in headers:
            key = name.lower()
            if key not in index:  # the first of duplicate headers wins (as libesl's get)
                index[key] = value
                ordered[name] = value
        return cls(ordered, body, index)

    def get(self, name: str, default: str = "") -> str:
        return self._index.get(name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._index

    @property
    def content_type(self) -> str:
        return self.get("Content-Type")

    @property
    def reply_text(self) -> str:
        """``Reply-Text`` of a command/reply, trailing newline removed (connect's is "+OK\\n")."""
        return self.get("Reply-Text").strip()

    @property
    def text(self) -> str:
        """The body as text (api/response output, disconnect notice ...)."""
        return self.body.decode("utf-8", "replace")

    @property
    def event_name(self) -> str:
        return self.get("Event-Name")


# --- parsing ---------------------------------------------------------------------------------


def _parse_header_block(block: bytes) -> list[tuple[str, str]]:
    headers: list[tuple[str, str]] = []
    for raw in block.split(b"\n"):
        line = raw.decode("utf-8", "replace").rstrip("\r")
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip() or any(ord(c) < 32 for c in name):
            raise ProtocolError("malformed_header", repr(line[:80]))
        # mod_event_socket skips the spaces after the colon; libesl URL-decodes the value.
        headers.append((name, unquote(value.lstrip(" \t"), errors="replace")))
    return headers


def _content_length(message_headers: Message) -> int | None:
    raw = message_headers.get("Content-Length", "")
    if "Content-Length" not in message_headers:
        return None
    raw = raw.strip()
    if not _CONTENT_LENGTH.fullmatch(raw):
        raise ProtocolError("bad_content_length", repr(raw[:40]))
    return int(raw)


class Parser:
    """Incremental ESL reader: ``feed`` any split of the stream, get whole messages back.

    Stray empty lines between messages are skipped (FreeSWITCH's own ``read_packet`` does
    the same). After a ``ProtocolError`` the stream cannot be re-synchronised: the parser
    refuses further input and the connection must be closed.
    """

    def __init__(
        self, max_header_bytes: int = MAX_HEADER_BYTES, max_body_bytes: int = MAX_BODY_BYTES
    ) -> None:
        self._buffer = bytearray()
        self._pending: tuple[Message, int] | None = None  # headers waiting for their body
        self._max_header_bytes = max_header_bytes
        self._max_body_bytes = max_body_bytes
        self._failed = False

    @property
    def pending_bytes(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Message]:
        if self._failed:
            raise ProtocolError("parser_failed", "parser already saw bad input")
        self._buffer += data
        try:
            return self._drain()
        except ProtocolError:
            self._failed = True
            raise

    def check_eof(self) -> None:
        """At EOF: raise if the stream stopped inside a message."""
        if self._pending is not None:
            headers, length = self._pending
            raise ProtocolError(
                "truncated_body",
                f"{headers.content_type or '?'}: {len(self._buffer)} of {length} body bytes",
            )
        if self._buffer.strip(b"\r\n"):
            raise ProtocolError("truncated_headers", f"{len(self._buffer)} bytes of headers")

    def _drain(self) -> list[Message]:
        out: list[Message] = []
        while True:
            if self._pending is None:
                skip = len(self._buffer) - len(self._buffer.lstrip(b"\r\n"))
                if skip:
                    del self._buffer[:skip]
                match = _HEADER_END.search(self._buffer)
                if match is None:
                    if len(self._buffer) > self._max_header_bytes:
                        raise ProtocolError("header_too_large", f"{len(self._buffer)} bytes")
                    return out
                if match.start() > self._max_header_bytes:
                    raise ProtocolError("header_too_large", f"{match.start()} bytes")
                block = bytes(self._buffer[: match.start()])
                del self._buffer[: match.end()]
                headers = Message.of(_parse_header_block(block))
                content_type = headers.content_type
                if not content_type:
                    raise ProtocolError("missing_content_type", repr(block[:80]))
                length = _content_length(headers)
                if length is None and content_type in BODY_CONTENT_TYPES:
                    raise ProtocolError("missing_content_length", content_type)
                if not length:
                    out.append(headers)
                    continue
                if length > self._max_body_bytes:
                    raise ProtocolError("body_too_large", f"{length} bytes")
                self._pending = (headers, length)
            headers, length = self._pending
            if len(self._buffer) < length:
                return out
            body = bytes(self._buffer[:length])
            del self._buffer[:length]
            self._pending = None
            out.append(Message(headers.headers, body, headers._index))


def parse_event(message: Message) -> Message:
    """The event carried by a ``text/event-plain`` message (values URL-decoded).

    ``switch_event_serialize``: header lines, then an empty line, or ``Content-Length: M``,
    an empty line and M bytes of body (BACKGROUND_JOB output, for instance).
    """
    data = message.body
    match = _HEADER_END.search(data)
    if match is None:
        if not data.endswith(b"\n"):
            raise ProtocolError("malformed_event", "no end of headers")
        block, rest = data, b""
    else:
        block, rest = data[: match.start()], data[match.end() :]
    try:
        headers = Message.of(_parse_header_block(block))
        length = _content_length(headers)
    except ProtocolError as exc:
        raise ProtocolError("malformed_event", f"{exc.reason}: {exc.detail}") from None
    if length is None:
        if rest.strip(b"\r\n"):
            raise ProtocolError("malformed_event", f"{len(rest)} bytes after the headers")
        body = b""
    else:
        if len(rest) < length:
            raise ProtocolError("malformed_event", f"body of {len(rest)} bytes, want {length}")
        body = rest[:length]
    if not headers.event_name:
        raise ProtocolError("malformed_event", "no Event-Name")
    return Message(headers.headers, body, headers._index)


# --- building (what the bot sends) -------------------------------------------------------


def _check_line(text: str, what: str) -> None:
    if "\n" in text or "\r" in text:
        raise ValueError(f"{what} must be one line: {text!r}")


def encode_command(
    command: str, headers: Mapping[str, str] | None = None, body: bytes = b""
) -> bytes:
    """A command as mod_event_socket's ``read_packet`` reads it: the command line, header
    lines, an empty line; ``Content-Length`` announces a body. Values go as they are
    (FreeSWITCH does not URL-decode them), so none may hold a line break."""
    _check_line(command, "command")
    lines = [command]
    for name, value in (headers or {}).items():
        _check_line(name, "header name")
        _check_line(value, "header value")
        if not name or ":" in name:
            raise ValueError(f"bad header name {name!r}")
        lines.append(f"{name}: {value}")
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\n".join(lines) + "\n\n").encode("utf-8") + body


def encode_sendmsg(call_command: str, headers: Mapping[str, str] | None = None) -> bytes:
    """``sendmsg`` to the controlled channel (no UUID: the outbound socket's own channel)."""
    return encode_command("sendmsg", {"call-command": call_command, **(headers or {})})


def encode_api(command: str) -> bytes:
    return encode_command(f"api {command}")


# --- serializing (what FreeSWITCH sends; used by the fake peer and by tests) ---------------


def url_encode(value: str) -> str:
    """``switch_url_encode``: %XX for the SWITCH_URL_UNSAFE characters and every byte
    outside printable ASCII (UTF-8 bytes one by one)."""
    out: list[str] = []
    for byte in value.encode("utf-8"):
        char = chr(byte)
        if byte < 0x20 or byte > 0x7E or char in URL_UNSAFE:
            out.append(f"%{byte:02X}")
        else:
            out.append(char)
    return "".join(out)


def encode_message(headers: Iterable[tuple[str, str]], body: bytes = b"") -> bytes:
    """Headers as given (no encoding), ``Content-Length`` when there is a body."""
    lines = [f"{name}: {value}" for name, value in headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\n".join(lines) + "\n\n").encode("utf-8") + body


def encode_reply(reply_text: str) -> bytes:
    """``listener_run``: "Content-Type: command/reply\\nReply-Text: %s\\n\\n"."""
    return f"Content-Type: command/reply\nReply-Text: {reply_text}\n\n".encode()


def encode_api_response(output: str) -> bytes:
    """``api_exec``: an empty output is replaced by "-ERR no reply\\n"."""
    data = (output or "-ERR no reply\n").encode("utf-8")
    return b"Content-Type: api/response\nContent-Length: %d\n\n" % len(data) + data


def serialize_event(headers: Iterable[tuple[str, str]], body: str = "") -> bytes:
    """``switch_event_serialize(event, &str, SWITCH_TRUE)``: "%s: %s\\n" per header with the
    value URL-encoded ("_undef_" when empty), then "Content-Length: %d\\n\\n%s" for a body
    or "\\n"."""
    lines = "".join(f"{name}: {url_encode(value) or '_undef_'}\n" for name, value in headers)
    tail = f"Content-Length: {len(body.encode('utf-8'))}\n\n{body}" if body else "\n"
    return (lines + tail).encode("utf-8")


def encode_event_plain(headers: Iterable[tuple[str, str]], body: str = "") -> bytes:
    """``read_packet``: "Content-Length: %d\\nContent-Type: text/event-plain\\n\\n" + event."""
    event = serialize_event(headers, body)
    return b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % len(event) + event


def encode_connect_reply(channel_headers: Iterable[tuple[str, str]]) -> bytes:
    """``parse_command`` for "connect": the CHANNEL_DATA event, serialized URL-encoded, with
    Content-Type/Reply-Text/Socket-Mode/Control added at the bottom; no outer framing."""
    return serialize_event(list(channel_headers))


def encode_disconnect_notice(
    session_uuid: str,
    message: str = "Disconnected, goodbye.\n",
    *,
    linger_s: int | None = None,
    channel_name: str = "",
) -> bytes:
    """``send_disconnect`` (Content-Disposition: disconnect, the message as the body) or the
    linger notice of ``read_packet`` (Content-Disposition: linger, Content-Length: 0)."""
    if linger_s is not None:
        return (
            "Content-Type: text/disconnect-notice\n"
            f"Controlled-Session-UUID: {session_uuid}\n"
            "Content-Disposition: linger\n"
            f"Channel-Name: {channel_name}\n"
            f"Linger-Time: {linger_s}\n"
            "Content-Length: 0\n\n"
        ).encode()
    data = message.encode("utf-8")
    return (
        "Content-Type: text/disconnect-notice\n"
        f"Controlled-Session-UUID: {session_uuid}\n"
        "Content-Disposition: disconnect\n"
        f"Content-Length: {len(data)}\n\n"
    ).encode() + data


# --- the channel, from the ``connect`` reply ----------------------------------------------

# The channel rates FreeSWITCH codecs run at (L16 follows the read codec's actual rate).
CHANNEL_RATES_HZ = frozenset({8000, 12000, 16000, 24000, 32000, 44100, 48000})
# A UUID or a dialplan target safe to put on an ESL command line.
TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}")


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
    def from_connect(cls, reply: Message) -> ChannelInfo:
        """Raises ``ProtocolError`` when the channel cannot be served."""
        uuid = reply.get("Unique-ID") or reply.get("Channel-Unique-ID")
        if not TOKEN.fullmatch(uuid):
            raise ProtocolError("bad_channel_data", f"Unique-ID {uuid[:80]!r}")
        raw_rate = reply.get("Channel-Read-Codec-Rate")
        if not raw_rate:
            # Set only once the channel has media: the dialplan must answer before socket.
            raise ProtocolError("no_codec", "no Channel-Read-Codec-Rate (not answered?)")
        if not raw_rate.isdigit() or int(raw_rate) not in CHANNEL_RATES_HZ:
            raise ProtocolError("unsupported_rate", raw_rate[:40])
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
