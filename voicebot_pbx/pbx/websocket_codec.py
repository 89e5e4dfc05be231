"""Asterisk chan_websocket wire codec: control messages and media payloads, pure (no I/O).

Facts from Asterisk 22.10.1 (the protocol is unchanged in 22.11.0-rc1):
``channels/chan_websocket.c``, ``channels/chan_websocket_doc.xml``, ``main/codec_builtin.c``,
``main/json.c``.

- Binary messages are media in the channel's native format both ways (``webchan_write``
  sends the frame's bytes as they are). What the app sends is cut into
  ``optimal_frame_size`` frames; outside START/STOP_MEDIA_BUFFERING a trailing partial frame
  is dropped (``process_binary_message``). ``slin*`` is host-order signed 16-bit, i.e.
  little-endian on x86/ARM.
- Text messages are control, in one format per channel both ways: the dial option
  ``f(plain-text|json)`` or ``control_message_format`` in ``chan_websocket.conf``
  ``[global]`` (default ``plain-text``; ``webchan_request``, ``load_config``). Commands are
  parsed in the same format the events are written in (``handle_command``).
- Events (``_create_event_*``); JSON is written compact (``ast_json_dump_string_format``
  with ``AST_JSON_COMPACT``: no spaces, keys in the order below):

  ``MEDIA_START``: ``MEDIA_START connection_id:<id> channel:<name> channel_id:<uniqueid>
  format:<format> optimal_frame_size:<bytes> ptime:<ms>``; JSON ``{"event":"MEDIA_START",
  "connection_id":..,"channel":..,"channel_id":..,"format":..,"optimal_frame_size":<int>,
  "ptime":<int>,"channel_variables":{<name>:<string>,..}}`` (``ast_json_channel_vars``).
  Releases before channel_id/ptime were added send only ``connection_id channel format
  optimal_frame_size``.
  ``MEDIA_XON``, ``MEDIA_XOFF``, ``QUEUE_DRAINED`` (``_create_event_nodata``): the bare name;
  JSON ``{"event":..,"channel_id":..}``.
  ``MEDIA_MARK_PROCESSED``, ``MEDIA_BUFFERING_COMPLETED``: ``<NAME>`` or ``<NAME> <id>`` (the
  id as the app gave it, no key); JSON ``{"event":..,"channel_id":..,"correlation_id":..}``
  (``""`` without an id).
  ``DTMF_END`` (``webchan_send_dtmf_text``): ``DTMF_END digit:<d> channel_id:<uniqueid>``;
  JSON ``{"event":"DTMF_END","channel_id":..,"digit":"<d>"}``.
  ``STATUS`` (answers ``GET_STATUS``): ``STATUS channel_id:<uniqueid> queue_length:<n>
  xon_level:800 xoff_level:900 queue_full:<true|false> bulk_media:<..> media_paused:<..>``;
  JSON with integers and booleans.
  ``ERROR``: ``ERROR channel_id:<uniqueid> error_text:<text>`` (the text has spaces, some
  end in ``\\n``); JSON ``{"event":"ERROR","channel_id":..,"error_text":..}``.
  There is no hang-up event: Asterisk closes the WebSocket (``webchan_hangup``).
- Commands (``process_text_message``, ``handle_command``): at most 128 bytes
  (``MAX_TEXT_MESSAGE_LEN``; a longer one is dropped with only a log line), stripped of
  outer whitespace, names compared case-sensitively. Plain: ``<NAME>`` or ``<NAME> <arg>``,
  the argument everything after the first space (the correlation id of MARK_MEDIA and
  STOP_MEDIA_BUFFERING). JSON: an object with ``command``, ``correlation_id`` and
  ``direction``. ``SET_MEDIA_DIRECTION`` (``direction`` both/in/out) exists only in JSON.
  Asterisk's answers to errors are ERROR events: ``Unable to parse JSON command``,
  ``<CMD> not supported in passthrough mode``, ``<CMD> not supported while media direction
  is 'in'``, ``SET_MEDIA_DIRECTION only supports JSON format.``; an unknown command gets no
  answer at all (a warning in Asterisk's log).
- Format names (``codec_builtin.c``): ``slin`` (8 kHz), ``slin12`` .. ``slin192``, ``ulaw``,
  ``alaw``; ``optimal_frame_size`` = default_ms * minimum_bytes / minimum_ms (slin16: 640,
  ulaw/alaw: 160), 0 for codecs forced into passthrough (opus, g729, ...); ``ptime`` is the
  codec's default_ms (20).

``parse_control`` takes either format (a text starting with ``{`` is JSON) and raises
``ControlError`` (a ``ValueError`` with a short ``reason`` slug) on malformed input; events
it does not know come back as ``UnknownEvent``.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from voicebot_pbx.audio import pcm_to_ulaw, ulaw_to_pcm
from voicebot_pbx.pbx.wire import WireError

ControlFormat = Literal["plain", "json"]

MAX_CONTROL_CHARS = 4096  # what parse_control accepts by default
MAX_COMMAND_BYTES = 128  # chan_websocket.c MAX_TEXT_MESSAGE_LEN

# Format name (ast_format_get_name) -> sample rate, for the formats the bot can take.
CODEC_RATES_HZ: dict[str, int] = {
    "slin": 8000,
    "slin12": 12000,
    "slin16": 16000,
    "slin24": 24000,
    "slin32": 32000,
    "slin44": 44100,
    "slin48": 48000,
    "slin96": 96000,
    "slin192": 192000,
    "ulaw": 8000,
    "alaw": 8000,
}

COMMANDS = frozenset(
    {
        "ANSWER",
        "HANGUP",
        "START_MEDIA_BUFFERING",
        "STOP_MEDIA_BUFFERING",
        "MARK_MEDIA",
        "FLUSH_MEDIA",
        "REPORT_QUEUE_DRAINED",
        "GET_STATUS",
        "PAUSE_MEDIA",
        "CONTINUE_MEDIA",
        "SET_MEDIA_DIRECTION",
    }
)
_COMMAND_FIELDS: dict[str, frozenset[str]] = {
    "STOP_MEDIA_BUFFERING": frozenset({"correlation_id"}),
    "MARK_MEDIA": frozenset({"correlation_id"}),
    "SET_MEDIA_DIRECTION": frozenset({"direction"}),
}
MEDIA_DIRECTIONS = ("both", "in", "out")

DTMF_DIGITS = frozenset("0123456789*#ABCD")
_EVENT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")
_DIGITS = re.compile(r"[0-9]{1,9}\Z")


class ControlError(WireError, ValueError):
    """A control message or media payload chan_websocket would not send. ``reason`` is a
    short slug a log line can carry, ``detail`` the specifics."""


# --- events ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MediaStart:
    """The first text message. ``optimal_frame_size`` is in bytes (one ``ptime_ms`` frame);
    ``rate_hz`` is None for a format the bot cannot take (check it before accepting)."""

    connection_id: str
    channel: str
    channel_id: str | None
    format: str
    optimal_frame_size: int
    ptime_ms: int | None
    rate_hz: int | None
    extra: dict[str, str] = field(default_factory=dict)
    channel_variables: dict[str, str] = field(default_factory=dict)  # JSON format only

    @property
    def supported(self) -> bool:
        return self.rate_hz is not None


@dataclass(frozen=True, slots=True)
class MediaXoff:
    """Asterisk's queue of media from the app reached 900 frames: stop sending."""

    channel_id: str | None = None


@dataclass(frozen=True, slots=True)
class MediaXon:
    """The queue went back under 800 frames: sending may go on."""

    channel_id: str | None = None


@dataclass(frozen=True, slots=True)
class QueueDrained:
    """The queue ran empty after REPORT_QUEUE_DRAINED (once per request)."""

    channel_id: str | None = None


@dataclass(frozen=True, slots=True)
class MediaMarkProcessed:
    """Everything queued before MARK_MEDIA has been played."""

    correlation_id: str | None
    channel_id: str | None = None


@dataclass(frozen=True, slots=True)
class MediaBufferingCompleted:
    """STOP_MEDIA_BUFFERING reached the head of the queue."""

    correlation_id: str | None
    channel_id: str | None = None


@dataclass(frozen=True, slots=True)
class DtmfEnd:
    digit: str
    channel_id: str | None = None


@dataclass(frozen=True, slots=True)
class Status:
    """The answer to GET_STATUS. ``fields`` holds every field as text (booleans as
    ``true``/``false``); the typed attributes are None when a field is absent."""

    fields: dict[str, str]
    channel_id: str | None = None
    queue_length: int | None = None
    xon_level: int | None = None
    xoff_level: int | None = None
    queue_full: bool | None = None
    bulk_media: bool | None = None
    media_paused: bool | None = None


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    """Asterisk rejected a command (see the module docstring for the texts)."""

    error_text: str
    channel_id: str | None = None


@dataclass(frozen=True, slots=True)
class UnknownEvent:
    """An event this codec does not know (a newer Asterisk). ``fields`` are the
    ``key:value`` tokens (plain) or the members as text (JSON); ``raw`` the whole message."""

    name: str
    fields: dict[str, str]
    raw: str = ""


ControlEvent = (
    MediaStart
    | MediaXoff
    | MediaXon
    | QueueDrained
    | MediaMarkProcessed
    | MediaBufferingCompleted
    | DtmfEnd
    | Status
    | ErrorEvent
    | UnknownEvent
)


def codec_rate_hz(codec: str) -> int | None:
    """Sample rate of an Asterisk format name the bot can take, else None."""
    return CODEC_RATES_HZ.get(codec)


def message_format(text: str) -> ControlFormat:
    """The control format a text message is in (the bot answers in the same one)."""
    return "json" if text.lstrip().startswith("{") else "plain"


# --- parsing -----------------------------------------------------------------------------

_Values = Mapping[str, object]
_ID_EVENTS = frozenset({"MEDIA_MARK_PROCESSED", "MEDIA_BUFFERING_COMPLETED"})
_BARE_EVENTS = frozenset({"MEDIA_XON", "MEDIA_XOFF", "QUEUE_DRAINED"})
_KEYED_EVENTS = frozenset({"MEDIA_START", "DTMF_END", "STATUS"})


def parse_control(text: str, *, max_chars: int = MAX_CONTROL_CHARS) -> ControlEvent:
    """One text message from chan_websocket, plain or JSON, as an event."""
    if len(text) > max_chars:
        raise ControlError("too_long", f"{len(text)} characters > {max_chars}")
    stripped = text.strip()
    if not stripped:
        raise ControlError("empty", "empty control message")
    if stripped.startswith("{"):
        name, values = _split_json(stripped)
    else:
        name, values = _split_plain(stripped)
    return _build(name, values, text)


def _split_json(text: str) -> tuple[str, dict[str, object]]:
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ControlError("bad_json", str(exc)[:100]) from None
    if not isinstance(document, dict):
        raise ControlError("bad_json", "not a JSON object")
    name = document.pop("event", None)
    if not isinstance(name, str) or not name:
        raise ControlError("no_event", 'no "event" name')
    if not _EVENT_NAME.match(name):
        raise ControlError("bad_event", f"event name {name[:40]!r}")
    return name, document


def _split_plain(text: str) -> tuple[str, dict[str, object]]:
    name, _, rest = text.partition(" ")
    rest = rest.strip()
    if not _EVENT_NAME.match(name):
        raise ControlError("bad_event", f"event name {name[:40]!r}")
    if name in _ID_EVENTS:  # "<NAME> <id>": the id verbatim, no key
        return name, ({"correlation_id": rest} if rest else {})
    if name == "ERROR":  # error_text is last and holds spaces
        head, marker, error_text = rest.partition("error_text:")
        values = _plain_fields(head, strict=False)
        if marker:
            values["error_text"] = error_text.strip()
        return name, values
    return name, _plain_fields(rest, strict=name in _KEYED_EVENTS)


def _plain_fields(rest: str, *, strict: bool) -> dict[str, object]:
    values: dict[str, object] = {}
    for token in rest.split():
        key, colon, value = token.partition(":")
        if not colon or not key:
            if strict:
                raise ControlError("bad_field", f"{token[:40]!r} is not key:value")
            continue
        if key in values:
            raise ControlError("duplicate_field", key[:40])
        values[key] = value
    return values


_KNOWN_EVENTS = _ID_EVENTS | _BARE_EVENTS | _KEYED_EVENTS | {"ERROR"}


def _build(name: str, values: _Values, raw: str) -> ControlEvent:
    if name not in _KNOWN_EVENTS:
        return UnknownEvent(name, _texts(values), raw)
    channel_id = _optional_text(values, "channel_id")
    match name:
        case "MEDIA_START":
            return _media_start(values, channel_id)
        case "MEDIA_XOFF":
            return MediaXoff(channel_id)
        case "MEDIA_XON":
            return MediaXon(channel_id)
        case "QUEUE_DRAINED":
            return QueueDrained(channel_id)
        case "MEDIA_MARK_PROCESSED":
            return MediaMarkProcessed(_optional_text(values, "correlation_id"), channel_id)
        case "MEDIA_BUFFERING_COMPLETED":
            return MediaBufferingCompleted(_optional_text(values, "correlation_id"), channel_id)
        case "DTMF_END":
            return DtmfEnd(_dtmf_digit(values.get("digit")), channel_id)
        case "STATUS":
            return Status(
                _texts(values),
                channel_id,
                _optional_int(values, "queue_length"),
                _optional_int(values, "xon_level"),
                _optional_int(values, "xoff_level"),
                _optional_bool(values, "queue_full"),
                _optional_bool(values, "bulk_media"),
                _optional_bool(values, "media_paused"),
            )
        case _:
            return ErrorEvent(_optional_text(values, "error_text") or "", channel_id)


_MEDIA_START_KEYS = frozenset(
    {
        "connection_id",
        "channel",
        "channel_id",
        "format",
        "optimal_frame_size",
        "ptime",
        "channel_variables",
    }
)


def _media_start(values: _Values, channel_id: str | None) -> MediaStart:
    codec = values.get("format")
    if not isinstance(codec, str) or not codec:
        raise ControlError("no_format", "MEDIA_START without a format")
    frame_size = _optional_int(values, "optimal_frame_size")
    if frame_size is None:
        raise ControlError("bad_frame_size", "MEDIA_START without optimal_frame_size")
    ptime_ms = _optional_int(values, "ptime")
    if ptime_ms == 0:
        raise ControlError("bad_ptime", "ptime 0")
    variables = values.get("channel_variables", {})
    if not isinstance(variables, dict):
        raise ControlError("bad_channel_variables", "channel_variables is not an object")
    return MediaStart(
        connection_id=_required_text(values, "connection_id"),
        channel=_required_text(values, "channel"),
        channel_id=channel_id,
        format=codec,
        optimal_frame_size=frame_size,
        ptime_ms=ptime_ms,
        rate_hz=codec_rate_hz(codec),
        extra=_texts({k: v for k, v in values.items() if k not in _MEDIA_START_KEYS}),
        channel_variables=_texts(variables),
    )


def _dtmf_digit(value: object) -> str:
    if not isinstance(value, str) or len(value) != 1 or value.upper() not in DTMF_DIGITS:
        raise ControlError("bad_dtmf", f"DTMF digit {str(value)[:20]!r}")
    return value.upper()


def _as_text(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _texts(values: Mapping[Any, object]) -> dict[str, str]:
    return {str(key): _as_text(value) for key, value in values.items()}


def _optional_text(values: _Values, key: str) -> str | None:
    value = values.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ControlError("bad_field", f"{key} is not a string")
    return value or None


def _required_text(values: _Values, key: str) -> str:
    value = _optional_text(values, key)
    if value is None:
        raise ControlError("missing_field", f"MEDIA_START without {key}")
    return value


def _optional_int(values: _Values, key: str) -> int | None:
    value = values.get(key)
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**9:
        return value
    if isinstance(value, str) and _DIGITS.match(value):
        return int(value)
    raise ControlError(
        "bad_frame_size" if key == "optimal_frame_size" else "bad_number",
        f"{key} {str(value)[:20]!r}",
    )


def _optional_bool(values: _Values, key: str) -> bool | None:
    value = values.get(key)
    if value is None or isinstance(value, bool):
        return value
    if value in ("true", "false"):
        return value == "true"
    raise ControlError("bad_bool", f"{key} {str(value)[:20]!r}")


# --- commands ----------------------------------------------------------------------------


def encode_command(name: str, fmt: ControlFormat, **fields: str) -> str:
    """A command as chan_websocket parses it: plain ``<NAME>`` / ``<NAME> <correlation_id>``,
    or JSON ``{"command":"<NAME>",...}``. Raises ValueError for anything Asterisk would
    reject or drop (unknown name or field, a line break, over 128 bytes, SET_MEDIA_DIRECTION
    in plain text)."""
    if name not in COMMANDS:
        raise ValueError(f"not a chan_websocket command: {name!r}")
    if fmt not in ("plain", "json"):
        raise ValueError(f"control format must be 'plain' or 'json', not {fmt!r}")
    allowed = _COMMAND_FIELDS.get(name, frozenset())
    for key, value in fields.items():
        if key not in allowed:
            raise ValueError(f"{name} takes no field {key!r}")
        _check_field_value(key, value)
    if name == "SET_MEDIA_DIRECTION":
        direction = fields.get("direction")
        if direction not in MEDIA_DIRECTIONS:
            raise ValueError(f"SET_MEDIA_DIRECTION needs direction in {MEDIA_DIRECTIONS}")
        if fmt == "plain":
            raise ValueError("SET_MEDIA_DIRECTION exists only in the JSON control format")
    if fmt == "json":
        text = json.dumps({"command": name, **fields}, separators=(",", ":"))
    else:
        argument = fields.get("correlation_id")
        text = name if argument is None else f"{name} {argument}"
    size_bytes = len(text.encode("utf-8"))
    if size_bytes > MAX_COMMAND_BYTES:
        raise ValueError(f"command of {size_bytes} bytes > {MAX_COMMAND_BYTES} (Asterisk drops it)")
    return text


def _check_field_value(key: str, value: object) -> None:
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a string")
    if not value or value != value.strip():
        raise ValueError(f"{key} must be non-empty without outer whitespace: {value!r}")
    if any(unicodedata.category(char) in ("Cc", "Zl", "Zp") for char in value):
        raise ValueError(f"{key} must not contain line breaks or control characters")


# --- media -------------------------------------------------------------------------------


def _build_alaw_decode_table() -> npt.NDArray[np.int16]:
    codes = np.arange(256, dtype=np.int32) ^ 0x55  # even bits are sent inverted
    mantissa = (codes & 0x0F) << 4
    segment = (codes & 0x70) >> 4
    magnitude = np.where(
        segment == 0, mantissa + 8, (mantissa + 0x108) << np.maximum(segment - 1, 0)
    )
    return np.where(codes & 0x80, magnitude, -magnitude).astype(np.int16)


_ALAW_SEGMENT_ENDS_13 = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])


def _build_alaw_encode_table() -> npt.NDArray[np.uint8]:
    """Code for every 16-bit sample, indexed by sample + 32768 (G.711 A-law on the top 13
    bits, the same codes as CPython's audioop.lin2alaw)."""
    value = np.arange(-32768, 32768, dtype=np.int32) >> 3
    negative = value < 0
    mask = np.where(negative, 0x55, 0xD5)
    magnitude = np.where(negative, -value - 1, value)
    segment = np.searchsorted(_ALAW_SEGMENT_ENDS_13, magnitude, side="left")
    shift = np.where(segment < 2, 1, segment)
    code = (segment << 4) | ((magnitude >> shift) & 0x0F)
    return (code ^ mask).astype(np.uint8)


_ALAW_DECODE = _build_alaw_decode_table()
_ALAW_ENCODE = _build_alaw_encode_table()


def alaw_to_pcm(alaw: bytes) -> bytes:
    codes = np.frombuffer(alaw, dtype=np.uint8)
    return _ALAW_DECODE[codes].astype("<i2").tobytes()


def pcm_to_alaw(pcm: bytes) -> bytes:
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.int32)
    return _ALAW_ENCODE[samples + 32768].tobytes()


def _check_codec(codec: str) -> None:
    if codec not in CODEC_RATES_HZ:
        raise ControlError("unsupported_codec", f"no media codec for format {codec[:40]!r}")


def decode_media(payload: bytes, codec: str) -> bytes:
    """A binary message in the channel's format as signed 16-bit little-endian PCM."""
    _check_codec(codec)
    if codec == "ulaw":
        return ulaw_to_pcm(payload)
    if codec == "alaw":
        return alaw_to_pcm(payload)
    if len(payload) % 2:
        raise ControlError("odd_media", f"{codec} payload of {len(payload)} bytes")
    return bytes(payload)


def encode_media(pcm: bytes, codec: str) -> bytes:
    """Signed 16-bit little-endian PCM as a binary message in the channel's format."""
    _check_codec(codec)
    if len(pcm) % 2:
        raise ControlError("odd_media", f"PCM of {len(pcm)} bytes")
    if codec == "ulaw":
        return pcm_to_ulaw(pcm)
    if codec == "alaw":
        return pcm_to_alaw(pcm)
    return bytes(pcm)
