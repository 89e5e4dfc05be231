"""AMI without I/O: the errors, messages and typed events of Asterisk's Manager Interface,
the UUID found in an ``AudioSocket`` dialplan step, and the DTMF de-duplication between
AudioSocket and AMI (pure: time is a parameter)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Literal

import structlog

from voicebot_pbx.config import AmiConfig as AmiConfig

log = structlog.get_logger("voicebot_pbx.ami")


# ---------------------------------------------------------------------------------------------
# Errors (translated at this adapter; ``retryable`` says whether trying again may help)


class AmiError(Exception):
    retryable = False


class AmiConfigError(AmiError, ValueError):
    """The AMI secret is missing or unreadable."""


class AmiNotConnected(AmiError):
    retryable = True


class AmiTimeout(AmiError):
    retryable = True


class AmiAuthFailed(AmiError):
    """Asterisk answered the Login with an error (wrong user/secret or ACL)."""


class AmiActionFailed(AmiError):
    """Asterisk answered ``Response: Error``; the message is Asterisk's."""


# ---------------------------------------------------------------------------------------------
# Typed messages and events


@dataclass(frozen=True, slots=True)
class AmiMessage:
    """One AMI response or event: headers in wire order, repeated headers kept."""

    headers: tuple[tuple[str, str], ...]

    def get(self, name: str, default: str = "") -> str:
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return default

    def get_all(self, name: str) -> tuple[str, ...]:
        wanted = name.lower()
        return tuple(value for key, value in self.headers if key.lower() == wanted)

    @property
    def event(self) -> str:
        return self.get("Event")

    @property
    def response(self) -> str:
        return self.get("Response")

    @property
    def message(self) -> str:
        return self.get("Message")

    @property
    def success(self) -> bool:
        # astman_send_ack -> "Success"; Command -> "Follows"; Logoff -> "Goodbye".
        return self.response in ("Success", "Follows", "Goodbye")

    @classmethod
    def from_panoramisk(cls, message: Any) -> AmiMessage:
        pairs: list[tuple[str, str]] = []
        for key, value in message.items():
            if key == "content":  # panoramisk keeps a Follows body under this key
                continue
            if isinstance(value, list):
                pairs.extend((str(key), str(item)) for item in value)
            else:
                pairs.append((str(key), str(value)))
        return cls(tuple(pairs))


def _int(text: str, default: int = -1) -> int:
    try:
        return int(text.strip())
    except ValueError:
        return default


@dataclass(frozen=True, slots=True)
class NewextenEvent:
    """A channel is about to run ``application(app_data)`` at context,exten,priority."""

    channel: str
    uniqueid: str
    linkedid: str
    context: str
    exten: str
    priority: int
    application: str
    app_data: str


@dataclass(frozen=True, slots=True)
class HangupEvent:
    channel: str
    uniqueid: str
    cause: int
    cause_txt: str


@dataclass(frozen=True, slots=True)
class DtmfEndEvent:
    channel: str
    uniqueid: str
    digit: str
    duration_ms: int
    direction: str  # "Received" (from the caller) or "Sent"


@dataclass(frozen=True, slots=True)
class OriginateResponseEvent:
    action_id: str
    response: str  # "Success" or "Failure"
    channel: str
    context: str
    exten: str
    reason: int
    uniqueid: str


@dataclass(frozen=True, slots=True)
class CoreShowChannelEvent:
    channel: str
    uniqueid: str
    context: str
    exten: str
    priority: int
    application: str
    application_data: str
    duration: str
    bridge_id: str


@dataclass(frozen=True, slots=True)
class DialBeginEvent:
    """``Dial()`` on ``channel`` starts calling ``dest_channel`` (main/manager_channels.c:
    the caller's snapshot as Channel/Uniqueid, the callee's with a ``Dest`` prefix)."""

    channel: str
    uniqueid: str
    dest_channel: str
    dest_uniqueid: str


@dataclass(frozen=True, slots=True)
class VarSetEvent:
    """A channel variable was set (``VarSet``; chan_websocket sets
    ``MEDIA_WEBSOCKET_CONNECTION_ID`` on a ``WebSocket/INCOMING`` channel as it is made)."""

    channel: str
    uniqueid: str
    variable: str
    value: str


@dataclass(frozen=True, slots=True)
class OtherEvent:
    name: str
    message: AmiMessage


AmiEvent = (
    NewextenEvent
    | HangupEvent
    | DtmfEndEvent
    | OriginateResponseEvent
    | CoreShowChannelEvent
    | DialBeginEvent
    | VarSetEvent
    | OtherEvent
)


def parse_event(message: AmiMessage) -> AmiEvent:
    """The typed form of an AMI event (``OtherEvent`` for the ones this bot does not use)."""
    name = message.event
    key = name.lower()
    get = message.get
    if key == "newexten":
        return NewextenEvent(
            channel=get("Channel"),
            uniqueid=get("Uniqueid"),
            linkedid=get("Linkedid"),
            context=get("Context"),
            exten=get("Exten") or get("Extension"),
            priority=_int(get("Priority")),
            application=get("Application"),
            app_data=get("AppData"),
        )
    if key == "dialbegin":
        return DialBeginEvent(
            channel=get("Channel"),
            uniqueid=get("Uniqueid"),
            dest_channel=get("DestChannel"),
            dest_uniqueid=get("DestUniqueid"),
        )
    if key == "varset":
        return VarSetEvent(
            channel=get("Channel"),
            uniqueid=get("Uniqueid"),
            variable=get("Variable"),
            value=get("Value"),
        )
    if key == "hangup":
        return HangupEvent(
            channel=get("Channel"),
            uniqueid=get("Uniqueid"),
            cause=_int(get("Cause")),
            cause_txt=get("Cause-txt"),
        )
    if key == "dtmfend":
        return DtmfEndEvent(
            channel=get("Channel"),
            uniqueid=get("Uniqueid"),
            digit=get("Digit"),
            duration_ms=_int(get("DurationMs")),
            direction=get("Direction"),
        )
    if key == "originateresponse":
        return OriginateResponseEvent(
            action_id=get("ActionID"),
            response=get("Response"),
            channel=get("Channel"),
            context=get("Context"),
            exten=get("Exten"),
            reason=_int(get("Reason")),
            uniqueid=get("Uniqueid"),
        )
    if key == "coreshowchannel":
        return CoreShowChannelEvent(
            channel=get("Channel"),
            uniqueid=get("Uniqueid"),
            context=get("Context"),
            exten=get("Exten"),
            priority=_int(get("Priority")),
            application=get("Application"),
            application_data=get("ApplicationData"),
            duration=get("Duration"),
            bridge_id=get("BridgeId"),
        )
    return OtherEvent(name=name, message=message)


def audiosocket_uuid(application: str, app_data: str) -> str | None:
    """The call UUID in a dialplan step that hands the channel to AudioSocket, else None.

    ``AudioSocket(<uuid>,<host:port>)`` (app_audiosocket.c: ``AST_APP_ARG(idStr)`` first) or
    ``Dial(AudioSocket/<host:port>/<uuid>[/<options>][,...])`` (chan_audiosocket's dial
    string). The UUID is returned in canonical lower-case form, as the bot's ``call_id``.
    """
    app = application.strip().lower()
    if app == "audiosocket":
        candidate = app_data.split(",", 1)[0]
    elif app == "dial":
        candidate = ""
        for dest in app_data.split(",", 1)[0].split("&"):
            parts = dest.strip().split("/")
            if len(parts) >= 3 and parts[0].lower() == "audiosocket":
                candidate = parts[2]
                break
        if not candidate:
            return None
    else:
        return None
    return canonical_uuid(candidate)


def canonical_uuid(text: str) -> str | None:
    text = text.strip()
    if len(text) != 36:  # only the hyphenated form Asterisk's uuid_parse() accepts
        return None
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------
# DTMF from two sources


class DtmfDeduper:
    """Keeps one copy of each key press when both AudioSocket (0x03) and AMI deliver it.

    Pure: time is a parameter. Per call: once a digit has come from the media path, that
    Asterisk forwards DTMF over AudioSocket and AMI digits for the call are dropped. Before
    that, a digit equal to the last one accepted from the *other* source within
    ``window_s`` is the same key press (both are sent on key release) and is dropped once.
    """

    def __init__(self, window_s: float = 0.5, max_calls: int = 4096) -> None:
        self.window_s = window_s
        self.max_calls = max_calls
        self._calls: dict[str, _DtmfState] = {}

    def accept(
        self, call_id: str, digit: str, source: Literal["media", "ami"], at_s: float
    ) -> bool:
        state = self._calls.get(call_id)
        if state is None:
            if len(self._calls) >= self.max_calls:
                self._calls.pop(next(iter(self._calls)))
            state = self._calls[call_id] = _DtmfState()
        if source == "ami" and state.media_seen:
            return False
        if source == "media":
            state.media_seen = True
        other = state.last_ami if source == "media" else state.last_media
        if other is not None and other[0] == digit and 0.0 <= at_s - other[1] <= self.window_s:
            if source == "media":
                state.last_ami = None
            else:
                state.last_media = None
            return False
        if source == "media":
            state.last_media = (digit, at_s)
        else:
            state.last_ami = (digit, at_s)
        return True

    def forget(self, call_id: str) -> None:
        self._calls.pop(call_id, None)


@dataclass(slots=True)
class _DtmfState:
    media_seen: bool = False
    last_media: tuple[str, float] | None = None
    last_ami: tuple[str, float] | None = None
