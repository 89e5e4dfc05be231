"""A fake FreeSWITCH channel: the ``socket`` app's outbound connection, mod_event_socket's
command handling and switch_ivr's unicast media, as FreeSWITCH's own source says they work.

Sources (signalwire/freeswitch):

- ``src/mod/event_handlers/mod_event_socket/mod_event_socket.c``
  - ``socket_function``: connects to host:port (TCP), "async"/"full" flags; in async mode it
    waits for ``connect`` and then parks the channel (``switch_ivr_park``).
  - ``read_packet``: a command is its first line, then "name: value" lines, an empty line,
    and ``Content-Length`` bytes of body. Events go out as
    "Content-Length: %d\\nContent-Type: text/event-%s\\n\\n" + ``switch_event_serialize``
    (values URL-encoded). When the channel is down: with ``linger`` a
    "text/disconnect-notice" with "Content-Disposition: linger" and "Content-Length: 0",
    else the listener ends.
  - ``parse_command``: ``connect`` -> the serialized CHANNEL_DATA event with Content-Type
    command/reply, Reply-Text "+OK\\n", Socket-Mode, Control; ``myevents`` -> "+OK Events
    Enabled" ("-ERR aready enabled." the second time); ``linger`` -> "+OK will linger";
    ``resume`` -> "+OK"; ``exit`` -> "+OK bye"; ``sendmsg`` (async) -> queued, "+OK";
    ``api`` only with ``full`` on an outbound socket, else "-ERR command not found".
  - ``listener_run``: replies are "Content-Type: command/reply\\nReply-Text: %s\\n\\n"; at
    the end ``send_disconnect`` ("Content-Disposition: disconnect", the goodbye as body),
    then the socket closes.
  - ``api_exec``: "Content-Type: api/response\\nContent-Length: %d\\n\\n" + output; an
    empty output becomes "-ERR no reply\\n".
- ``src/mod/applications/mod_commands/mod_commands.c``: ``uuid_transfer`` ("+OK\\n",
  "-ERR No Such Channel!\\n", "-USAGE: ...") and ``uuid_break`` (writes nothing on success);
  ``uuid_setvar <uuid> <var> [value]`` (split at the first two spaces, so the value keeps
  its spaces; "+OK\\n", "-ERR No such channel!\\n"; no value unsets); ``uuid_getvar <uuid>
  <var>`` (the value, "_undef_" when unset, "-ERR No such channel!", "-USAGE: <uuid> <var>":
  as the real 1.10.12 answers them in the test bed).
- ``src/switch_ivr.c``: ``switch_ivr_parse_event`` (call-command unicast / hangup /
  execute), ``switch_ivr_activate_unicast`` (always a UDP socket, ``tcp`` or not; bind
  local-ip:local-port; L16 at the read rate), ``switch_ivr_park`` (one datagram per frame
  read, a CNG frame as 0xFF bytes; unicast deactivated when the park ends),
  ``unicast_thread_run`` (every datagram received is written to the channel at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid as uuid_module
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from voicebot_pbx.pbx import esl_codec as esl

CORE_UUID = "3f4d8c1e-5b7a-4c2d-9e8f-0a1b2c3d4e5f"
GOODBYE = "Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n"
TRANSFER_USAGE = "-USAGE: <uuid> [-bleg|-both] <dest-exten> [<dialplan>] [<context>]\n"


@dataclass
class FsCommand:
    """A command as ``read_packet`` builds it: the first line, then the headers, the body."""

    line: str
    headers: dict[str, str]
    body: bytes = b""

    @property
    def name(self) -> str:
        return self.line.split(" ", 1)[0]

    @property
    def arg(self) -> str:
        parts = self.line.split(" ", 1)
        return parts[1] if len(parts) > 1 else ""


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, sink: Callable[[bytes, tuple[str, int]], None]) -> None:
        self._sink = sink

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self._sink(data, addr)


@dataclass
class Unicast:
    """switch_ivr_activate_unicast + the park loop's sends + unicast_thread_run's receives."""

    local: tuple[str, int]
    remote: tuple[str, int]
    rate_hz: int
    ptime_ms: int
    transport: str
    received: list[tuple[float, bytes, tuple[str, int]]] = field(default_factory=list)
    sent_frames: int = 0
    cng: bool = False  # idle frames as CNG (0xFF bytes) instead of decoded silence
    muted: bool = False  # send nothing (FreeSWITCH stopped reading the channel)
    # A FreeSWITCH-side application plays (a uuid_broadcast): the real 1.10.12 runs it
    # inside the park loop (switch_ivr_parse_all_events), which then reads no frames for
    # unicast: what the caller says meanwhile is lost, never sent late
    # (tests/test_real_freeswitch.py shows it).
    deaf: bool = False
    last_speech_sent_at: float | None = None  # time.monotonic() of the last caller frame
    _queue: deque[bytes] = field(default_factory=deque)
    _held: list[bytes] = field(default_factory=list)
    _hold_ticks: int = 0
    _sock: asyncio.DatagramTransport | None = None
    _task: asyncio.Task[None] | None = None

    @property
    def frame_bytes(self) -> int:
        return self.rate_hz * self.ptime_ms // 1000 * 2

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        # Always SOCK_DGRAM (switch_socket_create(..., AF_INET, SOCK_DGRAM, ...)).
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Datagrams(self._on_datagram), local_addr=self.local
        )
        self._sock = transport
        self.local = transport.get_extra_info("sockname")[:2]
        self._task = loop.create_task(self._send_loop())

    def _on_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.append((time.monotonic(), data, addr))

    def say(self, pcm: bytes) -> None:
        size = self.frame_bytes
        for offset in range(0, len(pcm), size):
            self._queue.append(pcm[offset : offset + size].ljust(size, b"\0"))

    @property
    def speaking(self) -> bool:
        return bool(self._queue)

    def hold(self, frames: int) -> None:
        """Keep the next ``frames`` frames back, then send them all at once (a stall on the
        way: what arrives afterwards is a burst of late datagrams)."""
        self._hold_ticks = frames

    def send_raw(self, data: bytes) -> None:
        if self._sock is not None:
            self._sock.sendto(data, self.remote)

    def clone_socket(self) -> socket.socket:
        """A duplicate of the UDP socket (same address): to send what asyncio will not
        (an empty datagram) or from another thread while the loop is blocked."""
        assert self._sock is not None
        fileno = self._sock.get_extra_info("socket").fileno()
        return socket.socket(socket.AF_INET, socket.SOCK_DGRAM, fileno=os.dup(fileno))

    async def _send_loop(self) -> None:
        """One frame per ptime, on FreeSWITCH's own timer: when this (test) process was
        stalled, it re-anchors rather than sending the missed frames in a burst."""
        frame_s = self.ptime_ms / 1000.0
        loop = asyncio.get_running_loop()
        start = loop.time()
        tick = 0
        while True:
            delay = start + tick * frame_s - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            if delay < -frame_s:
                start, tick = loop.time(), 0
            tick += 1
            if self.muted:
                continue
            if self.deaf:
                if self._queue:
                    self._queue.popleft()
                    if not self._queue:
                        self.last_speech_sent_at = time.monotonic()
                continue
            if self._queue:
                frame = self._queue.popleft()
                if not self._queue:
                    self.last_speech_sent_at = time.monotonic()
            else:
                frame = (b"\xff" if self.cng else b"\0") * self.frame_bytes
            if self._hold_ticks > 0:
                self._held.append(frame)
                self._hold_ticks -= 1
                if self._hold_ticks == 0:
                    for held in self._held:
                        self.send_raw(held)
                    self.sent_frames += len(self._held)
                    self._held.clear()
                continue
            self.send_raw(frame)
            self.sent_frames += 1

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._sock is not None:
            self._sock.close()

    def bot_audio(self) -> bytes:
        return b"".join(data for _, data, _ in self.received)


class FakeFreeSwitch:
    """One channel whose dialplan ran ``answer`` then ``socket host:port async full``."""

    def __init__(
        self,
        port: int,
        *,
        host: str = "127.0.0.1",
        channel_uuid: str | None = None,
        rate_hz: int = 8000,
        ptime_ms: int = 20,
        codec: str = "PCMU",
        mode: str = "async",
        control: str = "full",
        answered: bool = True,
        caller_number: str = "+15551234567",
        caller_name: str = "Ada Lovelace",
        destination: str = "5000",
        variables: dict[str, str] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.uuid = channel_uuid or str(uuid_module.uuid4())
        self.rate_hz = rate_hz
        self.ptime_ms = ptime_ms
        self.codec = codec
        self.mode = mode
        self.control = control
        self.answered = answered
        self.caller_number = caller_number
        self.caller_name = caller_name
        self.destination = destination
        self.variables = variables or {}
        self.commands: list[FsCommand] = []
        self.connected = False
        self.events_on = False
        self.lingering = False
        self.resumed = False
        self.channel_up = True
        self.hangup_cause: str | None = None
        self.transferred_to: tuple[str, ...] | None = None
        self.breaks = 0
        self.playing: str | None = None  # a FreeSWITCH-side playback application running
        self.unicast: Unicast | None = None
        self.unicast_failed = False
        self.media_enabled = True  # False: unicast is accepted but never starts
        self.silent_on: set[str] = set()  # commands never answered
        self.drop_on: set[str] = set()  # commands on which the socket closes unanswered
        self.socket_closed = asyncio.Event()
        self.unicast_ready = asyncio.Event()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._sequence = 0
        self._command_seen = asyncio.Condition()

    # --- the socket app ------------------------------------------------------------------

    async def dial(self) -> None:
        """socket_function: connect to the bot, then serve commands (listener_run)."""
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        self._task = asyncio.get_running_loop().create_task(self._listener())

    async def _listener(self) -> None:
        assert self._reader is not None
        try:
            while True:
                command = await self._read_packet()
                if command is None:
                    break
                async with self._command_seen:
                    self.commands.append(command)
                    self._command_seen.notify_all()
                if command.name in self.drop_on:
                    self._abort()
                    break
                if command.name in self.silent_on:
                    continue
                if not await self._parse_command(command):
                    break
        except (ConnectionError, OSError):
            pass
        finally:
            self._stop_media()
            self.socket_closed.set()

    async def _read_packet(self) -> FsCommand | None:
        assert self._reader is not None
        lines: list[str] = []
        while True:
            raw = await self._reader.readline()
            if not raw:
                return None
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if not line:
                if not lines:
                    continue  # "bah": leading newlines are skipped
                break
            lines.append(line)
        headers: dict[str, str] = {}
        body = b""
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name] = value.lstrip(" ")
            if name.lower() == "content-length" and int(value.strip() or 0) > 0:
                body = await self._reader.readexactly(int(value.strip()))
        return FsCommand(lines[0], headers, body)

    async def _parse_command(self, command: FsCommand) -> bool:
        """parse_command + listener_run's reply; False when the listener ends."""
        name, arg = command.name.lower(), command.arg
        if name in ("exit", "..."):
            await self._reply("+OK bye")
            await self._disconnect(GOODBYE)
            return False
        if name == "resume":
            self.resumed = True
            await self._reply("+OK")
        elif name == "connect":
            self.connected = True
            await self._write(esl.encode_connect_reply(self._connect_headers()))
        elif name == "myevents":
            if self.events_on:
                await self._reply("-ERR aready enabled.")
            else:
                self.events_on = True
                await self._reply("+OK Events Enabled")
        elif name == "sendmsg":
            target = arg.strip()
            if target and target != self.uuid:
                await self._reply(f"-ERR invalid session id [{target}]")
            else:
                await self._reply("+OK")  # async: queued as a private event
                await self._parse_event(command.headers)
        elif name == "api" and self.control == "full":
            # api_exec answers at once; what the command set off (a transfer's
            # CHANNEL_UNPARK ...) reaches the socket later, from the event queue.
            output, after = self._api(arg)
            await self._write(esl.encode_api_response(output))
            if after is not None:
                await after()
        elif name == "linger" and self.control == "full":
            self.lingering = True
            seconds = arg.strip()
            await self._reply(
                f"+OK will linger {seconds} seconds" if seconds else "+OK will linger"
            )
        elif name == "linger":
            # Outbound without "full": only connect/getvar/myevents/sendmsg/resume/exit.
            await self._reply("-ERR command not found")
        elif name == "nolinger" and self.control == "full":
            self.lingering = False
            await self._reply("+OK will not linger")
        else:
            await self._reply("-ERR command not found")
        return True

    async def _parse_event(self, headers: dict[str, str]) -> None:
        """switch_ivr_parse_event, run by the parked channel after the reply."""
        lowered = {k.lower(): v for k, v in headers.items()}
        command = lowered.get("call-command", "")
        if command == "unicast":
            await self._activate_unicast(lowered)
        elif command == "hangup":
            await self.hang_up(lowered.get("hangup-cause", "NORMAL_CLEARING"))

    async def _activate_unicast(self, headers: dict[str, str]) -> None:
        transport = headers.get("transport") or "udp"
        if transport.lower() not in ("udp", "tcp"):
            self.unicast_failed = True  # "Invalid transport %s": no media at all
            return
        if self.mode != "async" or not self.channel_up or not self.media_enabled:
            return  # only the park loop of an async socket runs unicast
        self.unicast = Unicast(
            local=(headers.get("local-ip") or "127.0.0.1", int(headers.get("local-port") or 8025)),
            remote=(
                headers.get("remote-ip") or "127.0.0.1",
                int(headers.get("remote-port") or 8026),
            ),
            rate_hz=self.rate_hz,
            ptime_ms=self.ptime_ms,
            transport=transport,
        )
        await self.unicast.start()
        self.unicast_ready.set()

    def _api(self, arg: str) -> tuple[str, Callable[[], Awaitable[None]] | None]:
        """mod_commands: the output, and what happens to the channel afterwards."""
        cmd, _, rest = arg.partition(" ")
        argv = rest.split()
        if cmd == "uuid_transfer":
            if not 2 <= len(argv) <= 5:
                return TRANSFER_USAGE, None
            if argv[0] != self.uuid or not self.channel_up:
                return "-ERR No Such Channel!\n", None
            self.transferred_to = tuple(argv[1:])

            async def leave_park() -> None:
                # The channel leaves the park loop: unicast is deactivated, CHANNEL_UNPARK.
                self._stop_media()
                await self.event("CHANNEL_UNPARK")

            return "+OK\n", leave_park
        if cmd == "uuid_setvar":
            parts = rest.split(" ", 2)
            if len(parts) < 2 or not parts[1]:
                return "-USAGE: <uuid> <var> [value]\n", None
            if parts[0] != self.uuid or not self.channel_up:
                return "-ERR No such channel!\n", None
            if len(parts) == 3 and parts[2]:
                self.variables[parts[1]] = parts[2]
            else:
                self.variables.pop(parts[1], None)
            return "+OK\n", None
        if cmd == "uuid_getvar":  # checked against the real 1.10.12 (test bed)
            if len(argv) < 2:
                return "-USAGE: <uuid> <var>\n", None
            if argv[0] != self.uuid or not self.channel_up:
                return "-ERR No such channel!\n", None
            return f"{self.variables.get(argv[1], '_undef_')}\n", None
        if cmd == "uuid_break":
            if not argv:
                return "-USAGE: <uuid> [all]\n", None
            if argv[0] != self.uuid or not self.channel_up:
                return "-ERR No Such Channel!\n", None
            self.breaks += 1
            if self.playing is None:
                return "", None  # break_function writes nothing on success

            async def stop_playback() -> None:  # the playback application returns
                app, self.playing = self.playing, None
                if self.unicast is not None:
                    self.unicast.deaf = False
                await self.event("CHANNEL_EXECUTE_COMPLETE", [("Application", app or "")])

            return "", stop_playback
        if cmd == "uuid_kill":
            if not argv or argv[0] != self.uuid or not self.channel_up:
                return "-ERR No Such Channel!\n", None
            cause = argv[1] if len(argv) > 1 else "NORMAL_CLEARING"
            return "+OK\n", lambda: self.hang_up(cause)
        return f"-ERR {cmd} Command not found!\n", None

    # --- what FreeSWITCH sends -----------------------------------------------------------

    def _channel_headers(self) -> list[tuple[str, str]]:
        headers = [
            ("Channel-State", "CS_EXECUTE" if self.channel_up else "CS_HANGUP"),
            ("Channel-Call-State", "ACTIVE" if self.channel_up else "HANGUP"),
            ("Channel-Name", f"sofia/internal/{self.caller_number}@192.0.2.10"),
            ("Unique-ID", self.uuid),
            ("Call-Direction", "inbound"),
            ("Answer-State", "answered" if self.answered else "ringing"),
        ]
        if self.answered:
            headers += [
                ("Channel-Read-Codec-Name", self.codec),
                ("Channel-Read-Codec-Rate", str(self.rate_hz)),
                ("Channel-Read-Codec-Bit-Rate", "64000"),
                ("Channel-Write-Codec-Name", self.codec),
                ("Channel-Write-Codec-Rate", str(self.rate_hz)),
                ("Channel-Write-Codec-Bit-Rate", "64000"),
            ]
        headers += [
            ("Caller-Direction", "inbound"),
            ("Caller-Username", self.caller_number),
            ("Caller-Dialplan", "XML"),
            ("Caller-Caller-ID-Name", self.caller_name),
            ("Caller-Caller-ID-Number", self.caller_number),
            ("Caller-Destination-Number", self.destination),
            ("Caller-Unique-ID", self.uuid),
            ("Caller-Context", "default"),
            ("variable_uuid", self.uuid),
            ("variable_socket_host", self.host),
        ]
        headers += [(f"variable_{k}", v) for k, v in self.variables.items()]
        return headers

    def _connect_headers(self) -> list[tuple[str, str]]:
        return [
            ("Event-Name", "CHANNEL_DATA"),
            ("Core-UUID", CORE_UUID),
            ("FreeSWITCH-Hostname", "pbx1"),
            *self._channel_headers(),
            ("Content-Type", "command/reply"),
            ("Reply-Text", "+OK\n"),
            ("Socket-Mode", self.mode),
            ("Control", "full" if self.control == "full" else "single-channel"),
        ]

    async def event(self, name: str, extra: list[tuple[str, str]] | None = None) -> None:
        """An event of this channel, sent if ``myevents`` asked for it (all names used here
        are in myevents' list)."""
        if not self.events_on:
            return
        self._sequence += 1
        headers = [
            ("Event-Name", name),
            ("Core-UUID", CORE_UUID),
            ("FreeSWITCH-Hostname", "pbx1"),
            ("Event-Date-Timestamp", str(int(time.time() * 1e6))),
            ("Event-Sequence", str(self._sequence)),
            *self._channel_headers(),
            *(extra or []),
        ]
        await self._write(esl.encode_event_plain(headers))

    async def _reply(self, text: str) -> None:
        await self._write(esl.encode_reply(text))

    async def _disconnect(self, message: str) -> None:
        await self._write(esl.encode_disconnect_notice(self.uuid, message))
        self._abort()

    async def _write(self, data: bytes) -> None:
        if self._writer is None or self._writer.is_closing():
            return
        self._writer.write(data)
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.drain()

    def _abort(self) -> None:
        if self._writer is not None:
            self._writer.close()

    def _stop_media(self) -> None:
        if self.unicast is not None:
            self.unicast.stop()

    # --- the caller ----------------------------------------------------------------------

    def say(self, pcm: bytes) -> None:
        assert self.unicast is not None, "no unicast yet"
        self.unicast.say(pcm)

    async def press(self, digit: str, duration_ms: int = 100) -> None:
        await self.event(
            "DTMF",
            [
                ("DTMF-Digit", digit),
                ("DTMF-Duration", str(duration_ms * 8)),
                ("DTMF-Source", "RTP"),
            ],
        )

    async def hang_up(self, cause: str = "NORMAL_CLEARING", *, unpark_first: bool = False) -> None:
        """The channel goes down: the park loop ends (unicast off), CHANNEL_HANGUP fires,
        then read_packet sends the linger notice, or ends the listener without linger.
        ``unpark_first``: CHANNEL_UNPARK before CHANNEL_HANGUP, an order the real
        FreeSWITCH 1.10.12 also sends (the park loop ends as the channel goes down, and the
        state machine's hang-up event can come after it; seen once in CI, 2026-12-04)."""
        if not self.channel_up:
            return
        self.channel_up = False
        self.hangup_cause = cause
        self._stop_media()
        if unpark_first:
            await self.event("CHANNEL_UNPARK")
            await asyncio.sleep(0.05)
        await self.event("CHANNEL_HANGUP", [("Hangup-Cause", cause)])
        if not unpark_first:
            await self.event("CHANNEL_UNPARK")
        if self.lingering:
            await self._write(
                esl.encode_disconnect_notice(
                    self.uuid, linger_s=-1, channel_name=f"sofia/internal/{self.caller_number}"
                )
            )
        else:
            await self._disconnect(GOODBYE)

    @property
    def dialplan_continues(self) -> bool:
        """Whether the dialplan goes on after ``socket`` once the bot let go, as the real
        FreeSWITCH 1.10.12 does it (tests/test_real_freeswitch.py): in async mode only after
        ``resume``; in static mode only *without* it: there ``resume`` moves the channel to
        CS_RESET and the rest of the dialplan never runs (the channel sits until hang-up)."""
        if not self.channel_up or self.transferred_to is not None:
            return False
        return self.resumed if self.mode == "async" else not self.resumed

    async def play(self, app: str = "playback", data: str = "ivr/ivr-hold_connect.wav") -> None:
        """FreeSWITCH-side playback starts (as a uuid_broadcast would): CHANNEL_EXECUTE."""
        self.playing = app
        if self.unicast is not None:
            self.unicast.deaf = True
        await self.event("CHANNEL_EXECUTE", [("Application", app), ("Application-Data", data)])

    async def send_raw(self, data: bytes) -> None:
        await self._write(data)

    def drop(self) -> None:
        """The TCP connection goes away (FreeSWITCH crashed, network gone)."""
        self._abort()

    # --- for tests ------------------------------------------------------------------------

    async def wait_command(
        self, name: str, timeout_s: float = 5.0, arg_prefix: str = ""
    ) -> FsCommand:
        def found() -> FsCommand | None:
            for command in self.commands:
                if command.name == name and command.arg.startswith(arg_prefix):
                    return command
            return None

        async with asyncio.timeout(timeout_s):
            async with self._command_seen:
                await self._command_seen.wait_for(lambda: found() is not None)
        result = found()
        assert result is not None
        return result

    async def wait_unicast(self, timeout_s: float = 5.0) -> Unicast:
        async with asyncio.timeout(timeout_s):
            await self.unicast_ready.wait()
        assert self.unicast is not None
        return self.unicast

    def command_names(self) -> list[str]:
        return [c.name for c in self.commands]

    async def close(self) -> None:
        self._abort()
        if self._task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                async with asyncio.timeout(2.0):
                    await self._task
        self._stop_media()
        if self._writer is not None:
            with contextlib.suppress(TimeoutError, ConnectionError, OSError):
                async with asyncio.timeout(1.0):
                    await self._writer.wait_closed()
