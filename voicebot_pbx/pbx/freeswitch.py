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

ESL runs on greenswitch (gevent) in one dedicated thread: ``voicebot_pbx.pbx.esl_link``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ipaddress
import threading
from collections.abc import Awaitable, Mapping
from typing import Any, TypeVar

import structlog

from voicebot_pbx.config import FreeswitchConfig as FreeswitchConfig
from voicebot_pbx.pbx import esl_codec as esl
from voicebot_pbx.pbx.esl_codec import ChannelInfo
from voicebot_pbx.pbx.esl_link import (
    EslClosed,
    EslError,
    EslEvent,
    EslLink,
    EslNotice,
    EslServer,
    GeventHub,
)
from voicebot_pbx.pbx.media import (
    AudioIn,
    CallState,
    DtmfIn,
)
from voicebot_pbx.pbx.server import HANDLER_GRACE_S, CallHandler, CallServer
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

_DTMF_DIGITS = frozenset("0123456789*#ABCD")
# After a CHANNEL_UNPARK, how long a hang-up still names the call's end (its events may come
# after the unpark): the end of a call transferred from elsewhere is noticed this much later.
UNPARK_GRACE_S = 0.5
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


# --- the asyncio side ---------------------------------------------------------------------------


def _end_reason(closed: EslClosed) -> str:
    return f"bad_input:{closed.reason}" if closed.bad_input else "connection_lost"


class FreeswitchCall(CallState):
    """One call: ESL control + unicast UDP media + the paced speaker (a ``CallMedia``)."""

    pbx = "freeswitch"
    _log = log

    def __init__(
        self,
        info: ChannelInfo,
        link: EslLink,
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
        self.bad_inputs: dict[str, int] = {}
        self.hangup_sent = False
        self.resume_sent = False
        self.transferred_to: str | None = None
        self.breaks_sent = 0
        self.fs_playing = 0  # FreeSWITCH-side playback applications running
        self._transfer_pending = False
        self._unparked: asyncio.TimerHandle | None = None
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
        if self.closed or not esl.TOKEN.fullmatch(target):
            log.warning("transfer_refused", target=target[:80], closed=self.closed)
            return False
        command = (
            f"uuid_transfer {self.call_id} {target} "
            f"{self._config.transfer_dialplan} {self._config.transfer_context}"
        )
        self._transfer_pending = True
        try:
            text = await self._api(command, "transfer_failed", target=target)
        finally:
            self._transfer_pending = False
        if text is None:
            return False
        if not text.startswith("+OK"):
            log.warning("transfer_failed", target=target, reply=text[:120])
            return False
        self.transferred_to = target
        self._mark_closed("transferred")
        log.info("transferred", target=target)
        return True

    async def get_var(self, name: str) -> str | None:
        """A channel variable: as it came with the call (the connect reply, e.g. what the
        originate set: VOICEBOT_CAMPAIGN), else ``api uuid_getvar <uuid> <name>`` for one set
        since; None when unset ("_undef_"), refused or unreachable."""
        known = self.info.variables.get(name)
        if known:
            return known
        if self.closed or not esl.TOKEN.fullmatch(name):
            return None
        text = await self._api(f"uuid_getvar {self.call_id} {name}", "getvar_failed", variable=name)
        if not text or text == "_undef_" or text.startswith(("-ERR", "-USAGE")):
            return None
        return text

    async def set_vars(self, variables: Mapping[str, str]) -> bool:
        """``api uuid_setvar <uuid> <name> <value>`` per variable ("+OK"); mod_commands
        splits the command at its first two spaces, so a value may hold spaces."""
        ok = True
        for name, value in variables.items():
            if self.closed or not esl.TOKEN.fullmatch(name) or "\n" in value:
                log.warning("setvar_refused", variable=name[:40], closed=self.closed)
                ok = False
                continue
            command = f"uuid_setvar {self.call_id} {name} {value}"
            text = await self._api(command, "setvar_failed", variable=name)
            if text is None:
                ok = False
                continue
            if not text.startswith("+OK"):
                log.warning("setvar_failed", variable=name, reply=text[:120])
                ok = False
        return ok

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

    async def _api(self, command: str, failed: str, **fields: str) -> str | None:
        """``api <command>`` on this call's socket: mod_commands' output (api/response), or
        the reply text when the socket refused the command; None, after one ``failed`` log
        line, when the link failed or timed out."""
        try:
            reply = await self._link.command(
                esl.encode_api(command), self._config.command_timeout_s
            )
        except EslError as exc:
            log.warning(failed, error=exc.reason, **fields)
            return None
        return reply.text.strip() if reply.content_type == "api/response" else reply.reply_text

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
            # reply), a hang-up (the park loop ends when the channel does, and its
            # CHANNEL_HANGUP and linger notice may come a moment after: seen in CI, the
            # order varies), or a transfer from elsewhere: "unparked" only if nothing
            # else has ended the call within UNPARK_GRACE_S.
            if self._transfer_pending:
                self._mark_closed("transferred")
            elif self._unparked is None and not self.closed:
                loop = asyncio.get_running_loop()
                self._unparked = loop.call_later(UNPARK_GRACE_S, self._mark_closed, "unparked")
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


class FreeswitchServer(CallServer["FreeswitchCall"]):
    """The outbound-ESL server: FreeSWITCH's socket app connects, one call per connection.
    Its lifecycle is ``CallServer``'s; it is also the ``CallControl`` for its calls."""

    def __init__(
        self,
        config: FreeswitchConfig,
        handler: CallHandler,
        *,
        handler_grace_s: float = HANDLER_GRACE_S,
        port: int | None = None,
        profile: str | None = None,
    ) -> None:
        super().__init__(
            handler,
            allow=config.allow,
            max_call_duration_s=config.max_call_duration_s,
            handler_grace_s=handler_grace_s,
            profile=profile,
        )
        self._config = config
        self._listen_port = config.port if port is None else port
        self._hub = GeventHub()
        self._esl: EslServer | None = None
        self._port: int | None = None
        self._accepting = False

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
        self._esl = EslServer(
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

    async def stop_accepting(self) -> None:
        self._accepting = False
        esl_server = self._esl
        if esl_server is not None:
            self._hub.spawn(esl_server.stop)

    async def _listener_closed(self) -> None:
        """The ESL thread stops once the calls are finished."""
        esl_server = self._esl
        await self._hub.stop(esl_server.shutdown if esl_server is not None else None)

    # --- CallControl ------------------------------------------------------------------------

    async def transfer(self, call_id: str, target: str) -> bool:
        call = self.calls.get(call_id)
        if call is None:
            return False
        return await call.transfer(target)

    async def set_vars(self, call_id: str, variables: Mapping[str, str]) -> bool:
        call = self.calls.get(call_id)
        return False if call is None else await call.set_vars(variables)

    async def get_var(self, call_id: str, name: str) -> str | None:
        """A channel variable of a call being served (``FreeswitchCall.get_var``): a
        campaign call's VOICEBOT_CAMPAIGN / VOICEBOT_CONTACT for an opt-out or a machine."""
        call = self.calls.get(call_id)
        return None if call is None else await call.get_var(name)

    async def break_playback(self, call_id: str) -> bool:
        call = self.calls.get(call_id)
        return False if call is None else await call.break_playback()

    # --- connections ------------------------------------------------------------------------

    def _announce(self, link: EslLink) -> None:
        """Hub thread: a new connection."""
        with contextlib.suppress(RuntimeError):
            link.loop.call_soon_threadsafe(self._on_connection, link)

    def _on_connection(self, link: EslLink) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(link))
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    def _media_ip(self, link: EslLink) -> str | None:
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

    async def _reject(
        self, link: EslLink, reason: str, *, resume: bool = True, **fields: Any
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

    async def _serve(self, link: EslLink) -> None:
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
        with self.serving(call.call_id, call):
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
                            await self.run_session(group, call)
                    finally:
                        for task in tasks:
                            task.cancel()
            finally:
                await call.close()
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
