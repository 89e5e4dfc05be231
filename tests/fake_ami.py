"""A fake Asterisk Manager Interface that speaks like Asterisk 22's ``main/manager.c``.

An asyncio TCP server on 127.0.0.1:0. Every message it writes is shaped the way Asterisk's
C source writes it, so the client is tested against the real byte layout:

* Banner: ``session_do()`` -> ``astman_append(&s, "Asterisk Call Manager/%s\\r\\n",
  AMI_VERSION)`` -- one line, no blank line after it. A real Asterisk 22.10.1 sends
  ``Asterisk Call Manager/11.0.0`` (the fake said 9.0.0 before the real-PBX tests; clients
  must not depend on it).
* Requests: ``get_input()`` accepts lines ending in CRLF *or* LF; a blank line ends the action.
* Responses: ``astman_send_response_full()`` writes ``Response: <Success|Error>``, then
  ``ActionID`` if the action had one, then ``EventList: <flag>`` for list acks, then
  ``Message: <text>`` and a blank line (``astman_start_ack()`` omits Message and the blank
  line so the action can append fields: Getvar, Ping).
* Login (``action_login``): on a wrong user/secret Asterisk does ``sleep(1)``, answers
  ``Response: Error / Message: Authentication failed`` and returns -1, which ends the session
  (the socket is closed). Success answers ``Authentication accepted``; ``FullyBooted``
  follows only when the user may read "system" events.
* Before login every action except Login/Logoff/Challenge gets ``Permission denied``
  (``process_message``); after it an action runs when ``writeperm & authority`` is non-zero
  or the authority is 0 (Ping, Logoff).
* Events: ``__ast_manager_event_multichan()`` writes ``Event: <name>``, ``Privilege:
  <class>,all`` (``authority_to_str``), the fields, a blank line; a session receives an
  event when both its user's read permission and its event mask (Login ``Events:``,
  ``set_eventmask``) include the event's class. Channel events carry the channel snapshot
  (``ast_manager_build_channel_state_string_prefix`` in main/manager_channels.c: Channel,
  ChannelState, ChannelStateDesc, CallerIDNum, CallerIDName, ConnectedLineNum,
  ConnectedLineName, Language, AccountCode, Context, Exten, Priority, Uniqueid, Linkedid).
  ``Newexten`` (class dialplan) adds Extension/Application/AppData; ``Hangup`` (call) adds
  Cause/Cause-txt; ``DTMFEnd`` (dtmf) adds Digit/DurationMs/Direction.
* ``Redirect`` (``action_redirect``): "Channel not specified", "Context not specified",
  "Exten not specified", "Priority not specified", "Channel does not exist: <name>",
  success "Redirect successful".
* ``Hangup`` (``action_hangup``): "No channel specified", "No such channel", success
  "Channel Hungup" (then the channel's Hangup event).
* ``Getvar``: ``astman_start_ack`` + ``Variable: <name>`` / ``Value: <value>``.
* ``CoreShowChannels`` (``action_coreshowchannels``): ``astman_send_listack(..., "Channels
  will follow", "start")``, one ``Event: CoreShowChannel`` per channel (ActionID, snapshot,
  Application, ApplicationData, Duration, BridgeId), then
  ``astman_send_list_complete_start/end``: ``Event: CoreShowChannelsComplete``, ActionID,
  ``EventList: Complete``, ``ListItems: <n>``.
* ``Originate`` with ``Async: true`` (``action_originate``): "Channel not specified",
  "Invalid channel" (no '/'), "Extension does not exist." (checked before dialling); else
  ack "Originate successfully queued" and, when the dial ends, ``fast_originate()`` emits
  ``OriginateResponse`` (class call) with the action's ActionID first, then Response
  (Success/Failure), Channel, Context, Exten, Application, Data, Reason, Uniqueid,
  CallerIDNum, CallerIDName (docs.asterisk.org, AMI_Events/OriginateResponse). Reason is
  pbx_dial_reason() in main/pbx.c: 4 answered, 3 no answer, 5 busy, 8 congestion,
  1 hangup, 0 failure.
* Unknown actions: "Invalid/unknown command: <name>. Use Action: ListCommands to show
  available commands."
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field

AMI_VERSION = "11.0.0"  # what a real Asterisk 22.10.1 announces
CRLF = "\r\n"

# manager.c perms[] order (authority_to_str walks it)
_CLASSES = (
    "system",
    "call",
    "log",
    "verbose",
    "command",
    "agent",
    "user",
    "config",
    "dtmf",
    "reporting",
    "cdr",
    "dialplan",
    "originate",
)

# Authority of the actions the fake implements (ast_manager_register_xml_core calls).
_AUTHORITY: dict[str, frozenset[str]] = {
    "login": frozenset(),
    "logoff": frozenset(),
    "ping": frozenset(),
    "redirect": frozenset({"call"}),
    "hangup": frozenset({"system", "call"}),
    "getvar": frozenset({"call", "reporting"}),
    "setvar": frozenset({"call"}),
    "coreshowchannels": frozenset({"system", "reporting"}),
    "originate": frozenset({"originate", "call"}),
}

_STATE_DESC = {0: "Down", 4: "Ring", 5: "Ringing", 6: "Up"}
_CAUSE_TXT = {16: "Normal Clearing", 17: "User busy", 19: "No answer", 21: "Call Rejected"}


def _mask(text: str) -> frozenset[str]:
    """set_eventmask()/get_perm(): "on"/"yes" = all, "off"/"no" = none, else a class list."""
    value = text.strip().lower()
    if value in ("on", "yes", "true", "all"):
        return frozenset(_CLASSES)
    if value in ("off", "no", "false", "none"):
        return frozenset()
    return frozenset(part.strip() for part in value.split(",") if part.strip() in _CLASSES)


@dataclass
class FakeChannel:
    name: str
    uniqueid: str
    context: str = "voicebot"
    exten: str = "s"
    priority: int = 5
    application: str = "AudioSocket"
    app_data: str = ""
    state: int = 6
    caller_num: str = "5551234"
    caller_name: str = "Test Caller"
    linkedid: str = ""
    variables: dict[str, str] = field(default_factory=dict)

    def snapshot(self) -> list[tuple[str, str]]:
        return [
            ("Channel", self.name),
            ("ChannelState", str(self.state)),
            ("ChannelStateDesc", _STATE_DESC.get(self.state, "Unknown")),
            ("CallerIDNum", self.caller_num or "<unknown>"),
            ("CallerIDName", self.caller_name or "<unknown>"),
            ("ConnectedLineNum", "<unknown>"),
            ("ConnectedLineName", "<unknown>"),
            ("Language", "en"),
            ("AccountCode", ""),
            ("Context", self.context),
            ("Exten", self.exten),
            ("Priority", str(self.priority)),
            ("Uniqueid", self.uniqueid),
            ("Linkedid", self.linkedid or self.uniqueid),
        ]


@dataclass
class OriginatePlan:
    reason: int  # OriginateResponse Reason
    delay_s: float = 0.01


class _Session:
    def __init__(
        self, server: FakeAmi, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.authenticated = False
        self.event_mask: frozenset[str] = frozenset(_CLASSES)
        self.closed = False
        self._write_lock = asyncio.Lock()

    async def send(self, text: str) -> None:
        data = text.encode()
        async with self._write_lock:
            if self.closed:
                return
            try:
                size = self.server.chunk_size
                if size:
                    for start in range(0, len(data), size):
                        self.writer.write(data[start : start + size])
                        await self.writer.drain()
                        await asyncio.sleep(0)
                else:
                    self.writer.write(data)
                    await self.writer.drain()
            except (ConnectionError, RuntimeError):
                self.closed = True

    def close(self) -> None:
        self.closed = True
        self.writer.close()

    def wants(self, category: str) -> bool:
        return (
            self.authenticated
            and category in self.server.read_perms
            and category in self.event_mask
        )


def _response(
    action: dict[str, list[str]],
    status: str,
    message: str | None,
    *,
    listflag: str | None = None,
    more: bool = False,
) -> str:
    """astman_send_response_full()."""
    out = f"Response: {status}{CRLF}"
    action_id = _first(action, "ActionID")
    if action_id:
        out += f"ActionID: {action_id}{CRLF}"
    if listflag:
        out += f"EventList: {listflag}{CRLF}"
    if more:  # MSG_MOREDATA: the caller appends fields and the blank line
        return out
    if message is not None:
        return out + f"Message: {message}{CRLF}{CRLF}"
    return out + CRLF


def _first(action: dict[str, list[str]], name: str) -> str:
    values = action.get(name.lower())
    return values[0] if values else ""


class FakeAmi:
    def __init__(
        self,
        *,
        username: str = "voicebot",
        secret: str = "s3cret-Pa55",
        read_perms: str = "call,dialplan,dtmf",
        write_perms: str = "call,originate,reporting",
        auth_fail_delay_s: float = 0.05,  # Asterisk: sleep(1)
        chunk_size: int | None = None,
        port: int = 0,
    ) -> None:
        self.username = username
        self.secret = secret
        self.read_perms = _mask(read_perms)
        self.write_perms = _mask(write_perms)
        self.auth_fail_delay_s = auth_fail_delay_s
        self.chunk_size = chunk_size
        self.channels: dict[str, FakeChannel] = {}
        self.dialplan: set[tuple[str, str]] = {("voicebot-transfer", "agents"), ("voicebot", "s")}
        self.originate_plans: dict[str, OriginatePlan] = {}
        self.unanswered: set[str] = set()  # lower-case action names the "stuck PBX" ignores
        self.actions: list[dict[str, list[str]]] = []
        self.login_attempts = 0
        self.sessions: set[_Session] = set()
        self._server: asyncio.Server | None = None
        self._port = port
        self._tasks: set[asyncio.Task[None]] = set()
        self._action_seen = asyncio.Condition()
        self._uniqueids = itertools.count(1)

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self._port)
        self._port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and drop every session (Asterisk going down)."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self.drop_connections()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def drop_connections(self) -> None:
        """Close every session's socket (network drop / Asterisk restart)."""
        for session in list(self.sessions):
            session.close()
        self.sessions.clear()

    @property
    def logged_in_sessions(self) -> int:
        return sum(1 for s in self.sessions if s.authenticated and not s.closed)

    # -- channels and events ---------------------------------------------------------------

    def add_channel(self, name: str, **kwargs: object) -> FakeChannel:
        uniqueid = f"1716220000.{next(self._uniqueids)}"
        channel = FakeChannel(name=name, uniqueid=uniqueid, **kwargs)  # type: ignore[arg-type]
        self.channels[name] = channel
        return channel

    async def emit(self, name: str, category: str, fields: list[tuple[str, str]]) -> None:
        """__ast_manager_event_multichan(): to every session that may and wants to read it."""
        privilege = f"{category},all"
        text = f"Event: {name}{CRLF}Privilege: {privilege}{CRLF}"
        text += "".join(f"{key}: {value}{CRLF}" for key, value in fields) + CRLF
        for session in list(self.sessions):
            if session.wants(category):
                await session.send(text)

    async def newexten(self, channel: FakeChannel, application: str, app_data: str) -> None:
        """channel_newexten() (main/manager_channels.c): the channel runs a new step."""
        channel.priority += 1
        channel.application = application
        channel.app_data = app_data
        await self.emit(
            "Newexten",
            "dialplan",
            channel.snapshot()
            + [("Extension", channel.exten), ("Application", application), ("AppData", app_data)],
        )

    async def dial_begin(self, caller: FakeChannel, dest: FakeChannel) -> None:
        """app_dial / manager_channels.c: DialBegin with the caller's snapshot and the
        callee's, its keys prefixed "Dest" (DestChannel, DestUniqueid, ...)."""
        dest_fields = [("Dest" + key, value) for key, value in dest.snapshot()]
        await self.emit(
            "DialBegin", "call", caller.snapshot() + dest_fields + [("DialString", "voicebot")]
        )

    async def var_set(self, channel: FakeChannel, variable: str, value: str) -> None:
        """manager_channels.c channel_varset_cb(): VarSet (dialplan class) with the channel's
        snapshot, then Variable and Value."""
        channel.variables[variable] = value
        await self.emit(
            "VarSet", "dialplan", channel.snapshot() + [("Variable", variable), ("Value", value)]
        )

    async def hangup_event(self, channel: FakeChannel, cause: int = 16) -> None:
        """channel_state_change(): the Hangup event; the channel is gone afterwards."""
        self.channels.pop(channel.name, None)
        await self.emit(
            "Hangup",
            "call",
            channel.snapshot()
            + [("Cause", str(cause)), ("Cause-txt", _CAUSE_TXT.get(cause, "Unknown"))],
        )

    async def dtmf_end(
        self, channel: FakeChannel, digit: str, direction: str = "Received", duration_ms: int = 120
    ) -> None:
        """channel_dtmf_end_cb(): DTMFEnd with Digit, DurationMs, Direction."""
        await self.emit(
            "DTMFEnd",
            "dtmf",
            channel.snapshot()
            + [("Digit", digit), ("DurationMs", str(duration_ms)), ("Direction", direction)],
        )

    # -- inspection ------------------------------------------------------------------------

    async def wait_for_action(self, name: str, timeout_s: float = 2.0) -> dict[str, list[str]]:
        """The first received action called ``name`` (waits for it)."""
        wanted = name.lower()
        async with asyncio.timeout(timeout_s), self._action_seen:
            while True:
                for action in self.actions:
                    if _first(action, "Action").lower() == wanted:
                        return action
                await self._action_seen.wait()

    def actions_named(self, name: str) -> list[dict[str, list[str]]]:
        return [a for a in self.actions if _first(a, "Action").lower() == name.lower()]

    # -- protocol --------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = _Session(self, reader, writer)
        self.sessions.add(session)
        try:
            await session.send(f"Asterisk Call Manager/{AMI_VERSION}{CRLF}")
            while not session.closed:
                action = await self._read_action(reader)
                if action is None:
                    break
                self.actions.append(action)
                async with self._action_seen:
                    self._action_seen.notify_all()
                if not await self._process(session, action):
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.sessions.discard(session)
            session.close()

    @staticmethod
    async def _read_action(reader: asyncio.StreamReader) -> dict[str, list[str]] | None:
        headers: dict[str, list[str]] = {}
        while True:
            line = await reader.readline()
            if not line:
                return None
            text = line.decode(errors="replace").rstrip("\r\n")
            if not text:
                if headers:
                    return headers
                continue
            key, _, value = text.partition(":")
            headers.setdefault(key.strip().lower(), []).append(value.strip())

    async def _process(self, session: _Session, action: dict[str, list[str]]) -> bool:
        """process_message(); False ends the session."""
        name = _first(action, "Action")
        key = name.lower()
        if not name:
            await session.send(_response(action, "Error", "Missing action in request"))
            return True
        if not session.authenticated and key not in ("login", "logoff", "challenge"):
            await session.send(_response(action, "Error", "Permission denied"))
            return True
        if key in self.unanswered:
            return True
        authority = _AUTHORITY.get(key)
        if authority is None:
            await session.send(
                _response(
                    action,
                    "Error",
                    f"Invalid/unknown command: {name}. "
                    "Use Action: ListCommands to show available commands.",
                )
            )
            return True
        if authority and session.authenticated and not (authority & self.write_perms):
            await session.send(_response(action, "Error", "Permission denied"))
            return True
        handler = getattr(self, f"_action_{key}")
        result: bool = await handler(session, action)
        return result

    async def _action_login(self, session: _Session, action: dict[str, list[str]]) -> bool:
        if session.authenticated:
            await session.send(_response(action, "Success", "Already authenticated"))
            return True
        self.login_attempts += 1
        if _first(action, "Username") != self.username or _first(action, "Secret") != self.secret:
            await asyncio.sleep(self.auth_fail_delay_s)
            await session.send(_response(action, "Error", "Authentication failed"))
            return False
        session.authenticated = True
        events = _first(action, "Events")
        if events:
            session.event_mask = _mask(events)
        await session.send(_response(action, "Success", "Authentication accepted"))
        if "system" in self.read_perms and "system" in session.event_mask:
            await session.send(
                f"Event: FullyBooted{CRLF}Privilege: system,all{CRLF}"
                f"Status: Fully Booted{CRLF}{CRLF}"
            )
        return True

    async def _action_logoff(self, session: _Session, action: dict[str, list[str]]) -> bool:
        await session.send(_response(action, "Goodbye", "Thanks for all the fish."))
        return False

    async def _action_ping(self, session: _Session, action: dict[str, list[str]]) -> bool:
        now = time.time()
        await session.send(
            _response(action, "Success", None, more=True)
            + f"Ping: Pong{CRLF}Timestamp: {int(now)}.{int(now % 1 * 1e6):06d}{CRLF}{CRLF}"
        )
        return True

    async def _action_redirect(self, session: _Session, action: dict[str, list[str]]) -> bool:
        name = _first(action, "Channel")
        context = _first(action, "Context")
        exten = _first(action, "Exten")
        priority = _first(action, "Priority")
        for value, error in (
            (name, "Channel not specified"),
            (context, "Context not specified"),
            (exten, "Exten not specified"),
            (priority, "Priority not specified"),
        ):
            if not value:
                await session.send(_response(action, "Error", error))
                return True
        if not priority.isdigit() or int(priority) < 1:
            await session.send(_response(action, "Error", "Priority is invalid"))
            return True
        channel = self.channels.get(name)
        if channel is None:
            await session.send(_response(action, "Error", f"Channel does not exist: {name}"))
            return True
        await session.send(_response(action, "Success", "Redirect successful"))
        # ast_async_goto(): the channel leaves AudioSocket and runs the new location.
        channel.context, channel.exten, channel.priority = context, exten, int(priority) - 1
        await self.newexten(channel, "Queue", exten)
        return True

    async def _action_hangup(self, session: _Session, action: dict[str, list[str]]) -> bool:
        name = _first(action, "Channel")
        if not name:
            await session.send(_response(action, "Error", "No channel specified"))
            return True
        channel = self.channels.get(name)
        if channel is None:
            await session.send(_response(action, "Error", "No such channel"))
            return True
        cause = _first(action, "Cause")
        await session.send(_response(action, "Success", "Channel Hungup"))
        await self.hangup_event(channel, int(cause) if cause.isdigit() else 16)
        return True

    async def _action_getvar(self, session: _Session, action: dict[str, list[str]]) -> bool:
        variable = _first(action, "Variable")
        if not variable:
            await session.send(_response(action, "Error", "No variable specified"))
            return True
        name = _first(action, "Channel")
        channel = self.channels.get(name) if name else None
        if name and channel is None:
            await session.send(_response(action, "Error", "No such channel"))
            return True
        value = channel.variables.get(variable, "") if channel else ""
        await session.send(
            _response(action, "Success", None, more=True)
            + f"Variable: {variable}{CRLF}Value: {value}{CRLF}{CRLF}"
        )
        return True

    async def _action_setvar(self, session: _Session, action: dict[str, list[str]]) -> bool:
        variable = _first(action, "Variable")
        if not variable:
            await session.send(_response(action, "Error", "No variable specified"))
            return True
        name = _first(action, "Channel")
        channel = self.channels.get(name) if name else None
        if name and channel is None:
            await session.send(_response(action, "Error", "No such channel"))
            return True
        if channel is not None:
            channel.variables[variable] = _first(action, "Value")
        await session.send(_response(action, "Success", "Variable Set"))
        return True

    async def _action_coreshowchannels(
        self, session: _Session, action: dict[str, list[str]]
    ) -> bool:
        action_id = _first(action, "ActionID")
        id_text = f"ActionID: {action_id}{CRLF}" if action_id else ""
        await session.send(_response(action, "Success", "Channels will follow", listflag="start"))
        for channel in list(self.channels.values()):
            fields = "".join(f"{k}: {v}{CRLF}" for k, v in channel.snapshot())
            await session.send(
                f"Event: CoreShowChannel{CRLF}{id_text}{fields}"
                f"Application: {channel.application}{CRLF}"
                f"ApplicationData: {channel.app_data}{CRLF}"
                f"Duration: 00:00:07{CRLF}BridgeId: {CRLF}{CRLF}"
            )
        await session.send(
            f"Event: CoreShowChannelsComplete{CRLF}{id_text}"
            f"EventList: Complete{CRLF}ListItems: {len(self.channels)}{CRLF}{CRLF}"
        )
        return True

    async def _action_originate(self, session: _Session, action: dict[str, list[str]]) -> bool:
        name = _first(action, "Channel")
        context = _first(action, "Context")
        exten = _first(action, "Exten")
        if not name:
            await session.send(_response(action, "Error", "Channel not specified"))
            return True
        if "/" not in name:
            await session.send(_response(action, "Error", "Invalid channel"))
            return True
        if exten and context and (context, exten) not in self.dialplan:
            await session.send(_response(action, "Error", "Extension does not exist."))
            return True
        if _first(action, "Async").lower() not in ("true", "yes", "1", "on"):
            await session.send(_response(action, "Error", "fake: only Async originate"))
            return True
        await session.send(_response(action, "Success", "Originate successfully queued"))
        plan = self.originate_plans.get(name, OriginatePlan(reason=4))
        task = asyncio.create_task(self._originate_done(action, plan))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _originate_done(self, action: dict[str, list[str]], plan: OriginatePlan) -> None:
        """fast_originate(): one OriginateResponse when the dial ends."""
        await asyncio.sleep(plan.delay_s)
        name = _first(action, "Channel")
        answered = plan.reason == 4
        if answered:
            channel = self.add_channel(f"{name}-00000007", context=_first(action, "Context"))
            channel_name, uniqueid = channel.name, channel.uniqueid
        else:
            channel_name, uniqueid = name, "<null>"
        cid = _first(action, "CallerID")
        fields = []
        action_id = _first(action, "ActionID")
        if action_id:
            fields.append(("ActionID", action_id))
        fields += [
            ("Response", "Success" if answered else "Failure"),
            ("Channel", channel_name),
            ("Context", _first(action, "Context")),
            ("Exten", _first(action, "Exten")),
            ("Application", ""),
            ("Data", ""),
            ("Reason", str(plan.reason)),
            ("Uniqueid", uniqueid),
            ("CallerIDNum", cid or "<unknown>"),
            ("CallerIDName", "<unknown>"),
        ]
        await self.emit("OriginateResponse", "call", fields)
