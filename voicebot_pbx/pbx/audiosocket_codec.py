"""AudioSocket wire codec, pure (no I/O).

Framing as in Asterisk's ``include/asterisk/res_audiosocket.h`` and ``res/res_audiosocket.c``:
kind (1 byte) + payload length (2 bytes, network order) + payload. Audio payloads are signed
16-bit little-endian mono PCM.

``Decoder.feed`` is incremental: it yields the same messages whatever way the byte stream is
split, and raises ``ProtocolError`` (with a reason a log line can carry) on bad input.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass
from enum import IntEnum

from voicebot_pbx.pbx.wire import WireError

HEADER_BYTES = 3
MAX_PAYLOAD_BYTES = 0xFFFF


class Kind(IntEnum):
    HANGUP = 0x00
    UUID = 0x01
    DTMF = 0x03
    SLIN_8K = 0x10
    SLIN_12K = 0x11
    SLIN_16K = 0x12
    SLIN_24K = 0x13
    SLIN_32K = 0x14
    SLIN_44K = 0x15
    SLIN_48K = 0x16
    SLIN_96K = 0x17
    SLIN_192K = 0x18
    ERROR = 0xFF


AUDIO_RATES_HZ: dict[Kind, int] = {
    Kind.SLIN_8K: 8000,
    Kind.SLIN_12K: 12000,
    Kind.SLIN_16K: 16000,
    Kind.SLIN_24K: 24000,
    Kind.SLIN_32K: 32000,
    Kind.SLIN_44K: 44100,
    Kind.SLIN_48K: 48000,
    Kind.SLIN_96K: 96000,
    Kind.SLIN_192K: 192000,
}
AUDIO_KIND_FOR_RATE: dict[int, Kind] = {rate: kind for kind, rate in AUDIO_RATES_HZ.items()}


class ProtocolError(WireError):
    """The peer sent something AudioSocket does not allow. ``reason`` is a short slug."""


@dataclass(frozen=True, slots=True)
class Hangup:
    pass


@dataclass(frozen=True, slots=True)
class Uuid:
    value: uuid.UUID


@dataclass(frozen=True, slots=True)
class Dtmf:
    digit: str


@dataclass(frozen=True, slots=True)
class Audio:
    rate_hz: int
    pcm: bytes


@dataclass(frozen=True, slots=True)
class Error:
    """Kind 0xff. Asterisk sends it with a 1-byte cause code (res_audiosocket.h)."""

    code: int | None


Message = Hangup | Uuid | Dtmf | Audio | Error

# DTMF digits Asterisk can send (ast_frame subclass integer is the ASCII digit).
_DTMF_DIGITS = frozenset("0123456789*#ABCDabcd")


def encode(kind: Kind | int, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    return struct.pack("!BH", int(kind), len(payload)) + payload


def encode_hangup() -> bytes:
    return encode(Kind.HANGUP)


def encode_uuid(value: uuid.UUID) -> bytes:
    return encode(Kind.UUID, value.bytes)


def encode_dtmf(digit: str) -> bytes:
    if digit not in _DTMF_DIGITS or len(digit) != 1:
        raise ValueError(f"not a DTMF digit: {digit!r}")
    return encode(Kind.DTMF, digit.encode("ascii"))


def encode_audio(pcm: bytes, rate_hz: int = 8000) -> bytes:
    kind = AUDIO_KIND_FOR_RATE.get(rate_hz)
    if kind is None:
        raise ValueError(f"AudioSocket has no audio kind for {rate_hz} Hz")
    if not pcm or len(pcm) % 2:
        raise ValueError(f"audio payload must be a non-empty even number of bytes, got {len(pcm)}")
    return encode(kind, pcm)


def encode_message(message: Message) -> bytes:
    match message:
        case Hangup():
            return encode_hangup()
        case Uuid(value):
            return encode_uuid(value)
        case Dtmf(digit):
            return encode_dtmf(digit)
        case Audio(rate_hz, pcm):
            return encode_audio(pcm, rate_hz)
        case Error(code):
            return encode(Kind.ERROR, b"" if code is None else bytes([code]))


def _parse(kind_byte: int, payload: bytes, max_audio_bytes: int) -> Message:
    try:
        kind = Kind(kind_byte)
    except ValueError:
        raise ProtocolError("unknown_kind", f"kind 0x{kind_byte:02x}") from None
    match kind:
        case Kind.HANGUP:
            return Hangup()
        case Kind.UUID:
            if len(payload) != 16:
                raise ProtocolError("bad_uuid", f"UUID payload of {len(payload)} bytes, want 16")
            return Uuid(uuid.UUID(bytes=payload))
        case Kind.DTMF:
            digit = payload[:1].decode("ascii", "replace")
            if len(payload) != 1 or digit not in _DTMF_DIGITS:
                raise ProtocolError("bad_dtmf", f"DTMF payload {payload!r}")
            return Dtmf(digit)
        case Kind.ERROR:
            return Error(payload[0] if payload else None)
        case _:
            rate_hz = AUDIO_RATES_HZ[kind]
            if not payload:
                raise ProtocolError("empty_audio", f"zero-length audio of kind 0x{kind_byte:02x}")
            if len(payload) % 2:
                raise ProtocolError("odd_audio", f"audio payload of {len(payload)} bytes")
            if len(payload) > max_audio_bytes:
                raise ProtocolError(
                    "oversized_audio", f"{len(payload)} bytes > limit {max_audio_bytes}"
                )
            return Audio(rate_hz, payload)


class Decoder:
    """Incremental decoder: ``feed`` any split of the stream, get whole messages back.

    ``max_audio_bytes`` bounds one audio payload (Asterisk sends 20 ms frames; the default
    allows 100 ms at 192 kHz). After a ``ProtocolError`` the decoder is unusable.
    """

    def __init__(self, max_audio_bytes: int = 38_400) -> None:
        self._buffer = bytearray()
        self._max_audio_bytes = max_audio_bytes
        self._failed = False

    @property
    def pending_bytes(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Message]:
        if self._failed:
            raise ProtocolError("decoder_failed", "decoder already saw bad input")
        self._buffer += data
        messages: list[Message] = []
        while len(self._buffer) >= HEADER_BYTES:
            kind_byte, length = struct.unpack_from("!BH", self._buffer)
            if kind_byte not in Kind._value2member_map_:
                self._failed = True
                raise ProtocolError("unknown_kind", f"kind 0x{kind_byte:02x}")
            if kind_byte in AUDIO_RATES_HZ and length > self._max_audio_bytes:
                # Reject before buffering a huge payload.
                self._failed = True
                raise ProtocolError(
                    "oversized_audio", f"{length} bytes > limit {self._max_audio_bytes}"
                )
            # Fixed-size kinds: a wrong length is known from the header alone; waiting for
            # up to 64 KiB of a payload that can never be valid would hide the error.
            if kind_byte == Kind.UUID and length != 16:
                self._failed = True
                raise ProtocolError("bad_uuid", f"UUID payload of {length} bytes, want 16")
            if kind_byte == Kind.DTMF and length != 1:
                self._failed = True
                raise ProtocolError("bad_dtmf", f"DTMF payload of {length} bytes, want 1")
            if len(self._buffer) < HEADER_BYTES + length:
                break
            payload = bytes(self._buffer[HEADER_BYTES : HEADER_BYTES + length])
            del self._buffer[: HEADER_BYTES + length]
            try:
                messages.append(_parse(kind_byte, payload, self._max_audio_bytes))
            except ProtocolError:
                self._failed = True
                raise
        return messages

    def check_eof(self) -> None:
        """At end of stream: a partial message left over is a truncation error."""
        if self._buffer:
            raise ProtocolError("truncated", f"{len(self._buffer)} bytes of a partial message")
