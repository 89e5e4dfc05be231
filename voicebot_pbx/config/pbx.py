"""The sections that face the PBX: the call server, AMI, handover, the WebSocket
channel and FreeSWITCH's Event Socket."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 9092
    max_calls: int = 32
    # When every slot is taken, a call that has sent no audio frame since it connected at
    # least this long ago (a broken PBX holding UUID-only connections) is hung up to make
    # room for the new one (0: never). A caller whose trunk sends nothing while silent is
    # only at risk while the bot is full.
    evict_silent_after_s: float = 10.0
    # At most this many calls at once from one peer address (0: no cap besides max_calls).
    max_calls_per_peer: int = 0
    # Asterisk sends the UUID at once; a peer that says nothing is closed after this.
    first_message_timeout_s: float = 5.0
    # Rate of the keep-alive silence sent before the first inbound audio reveals the call's rate.
    default_rate_hz: int = 8000
    # Outbound writes that cannot drain within this time mean the peer stopped reading.
    write_timeout_s: float = 2.0
    # No inbound bytes at all for this long ends the call (Asterisk streams continuously).
    read_timeout_s: float = 300.0
    max_call_duration_s: float = 1800.0
    # Peers allowed to connect (CIDRs). Empty: loopback only; needed when host is not
    # a loopback address.
    allow: tuple[str, ...] = ()
    # On SIGTERM: stop accepting, let calls finish for up to drain_s, then send each
    # remaining call 0x00 so its dialplan continues (e.g. to the agent queue).
    drain_s: float = 60.0


@dataclass(frozen=True, slots=True)
class AmiConfig:
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 5038
    username: str = "voicebot"
    # The secret comes from this environment variable, or from secret_file when set
    # (``$VAR`` in the path is expanded, e.g. ``${CREDENTIALS_DIRECTORY}/ami-secret``).
    secret_env: str = "VOICEBOT_AMI_SECRET"
    secret_file: str = ""
    action_timeout_s: float = 5.0
    reconnect_max_s: float = 30.0
    # transfer(call_id, "agents") redirects to transfer_context,agents,transfer_priority;
    # transfer(call_id, "ctx,exten") to ctx,exten,transfer_priority.
    transfer_context: str = "voicebot-transfer"
    transfer_exten: str = "agents"
    transfer_priority: int = 1
    # `voicebot-pbx originate`: the answered leg runs this dialplan, which must do
    # Answer() + AudioSocket(${VOICEBOT_UUID},host:port) (dialplans/asterisk/extensions.conf).
    outbound_context: str = "voicebot-outbound"
    outbound_exten: str = "s"
    outbound_timeout_s: float = 30.0


@dataclass(frozen=True, slots=True)
class HandoverConfig:
    """What a transfer tells the PBX (voicebot_pbx.call.handover): before an AMI Redirect /
    ESL uuid_transfer the bot sets VOICEBOT_CALL_ID, VOICEBOT_INTENT, VOICEBOT_SUMMARY,
    VOICEBOT_VERIFIED and VOICEBOT_ACCOUNT on the caller's channel; before ending the call
    itself, VOICEBOT_DONE=1 (the dialplan after AudioSocket() skips the queue)."""

    enabled: bool = True
    # VOICEBOT_ACCOUNT: "masked" (all but the last 4 digits), "full", or "none" (not set).
    account: Literal["masked", "full", "none"] = "masked"
    timeout_s: float = 2.0  # for all the variables together; the transfer goes on after it


@dataclass(frozen=True, slots=True)
class WebSocketConfig:
    """Asterisk's WebSocket channel (chan_websocket, voicebot_pbx.pbx.websocket): Asterisk
    dials ``WebSocket/<websocket_client.conf stanza>/c(slin16)`` and connects here (subprotocol
    ``media``), one connection per call. Call limits and timeouts are [server]'s."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 9094
    # Peers allowed to connect (CIDRs). Empty: loopback only.
    allow: tuple[str, ...] = ()
    # HTTP Basic auth as websocket_client.conf's username/password send it (empty username:
    # none); the password comes from this environment variable, never from the file.
    username: str = ""
    password_env: str = "VOICEBOT_WEBSOCKET_PASSWORD"
    # TLS (wss://) when both are set: a PEM certificate (chain) and its key; websocket_client.conf
    # then says uri = wss://... and verifies it (ca_list_file, or verify_server_cert = no).
    tls_cert: str = ""
    tls_key: str = ""
    # Speech kept sent ahead of what the caller hears, in Asterisk's queue (which re-times
    # it): a late tick of a busy bot is then not a gap in the caller's ear. Barge-in flushes
    # it (FLUSH_MEDIA); no silence is ever sent ahead. 0: paced 20 ms frames, as AudioSocket.
    send_ahead_ms: int = 100
    # With speech sent ahead: MARK_MEDIA at each point of a reply the bot tracks (its first
    # audio, its end), so the call record's timings and what an interrupted reply got to
    # are Asterisk's (MEDIA_MARK_PROCESSED), not the bot's reckoning.
    marks: bool = True
    # Dial(WebSocket/INCOMING/c(slin16)): Asterisk waits for the application to connect to
    # its HTTP server at /media/<id>. With [ami] on, the bot learns each id from AMI's
    # VarSet event (MEDIA_WEBSOCKET_CONNECTION_ID; manager.conf must let it through) and
    # connects to <incoming_url>/<id>, e.g. "ws://127.0.0.1:8088/media". Empty: off.
    incoming_url: str = ""


@dataclass(frozen=True, slots=True)
class FreeswitchConfig:
    """The ``[freeswitch]`` section (the lead wires it into ``Config``)."""

    enabled: bool = False  # serve FreeSWITCH's socket app (the service starts the server)
    host: str = "127.0.0.1"  # where the ESL server listens for the socket app
    port: int = 8084  # the socket app's default port (mod_event_socket.c)
    # FreeSWITCH peers allowed to connect (CIDRs); empty: loopback only.
    allow: tuple[str, ...] = ()
    rtp_host: str = "127.0.0.1"  # IPv4 the per-call UDP sockets bind to
    rtp_advertise_host: str = ""  # remote-ip told to FreeSWITCH; empty: rtp_host
    udp_port_min: int = 40000
    udp_port_max: int = 40999
    # local-ip FreeSWITCH binds its unicast socket to; empty: the address it connected from.
    freeswitch_media_host: str = ""
    max_calls: int = 32
    transfer_dialplan: str = "XML"
    transfer_context: str = "default"
    command_timeout_s: float = 5.0
    # After ``unicast``, FreeSWITCH sends a datagram per frame at once; none within this
    # time means no media: the call goes back to the dialplan.
    media_timeout_s: float = 2.0
    # Inbound datagrams later than this behind the playout clock, in a burst, are dropped.
    max_late_ms: int = 100
    max_call_duration_s: float = 1800.0
    # On barge-in, stop what FreeSWITCH itself plays to the caller (uuid_break), if anything.
    break_on_barge_in: bool = True
    # Outbound campaigns ([campaign] pbx = "freeswitch"): FreeSWITCH's own event socket
    # (mod_event_socket, inbound), its password from this environment variable.
    esl_host: str = "127.0.0.1"
    esl_port: int = 8021
    esl_password_env: str = "VOICEBOT_FREESWITCH_PASSWORD"

    def __post_init__(self) -> None:
        if not 0 < self.udp_port_min <= self.udp_port_max <= 65535:
            raise ValueError(
                f"freeswitch.udp_port_min/max: bad range {self.udp_port_min}-{self.udp_port_max}"
            )
        for name in ("rtp_host", "rtp_advertise_host", "freeswitch_media_host"):
            value = getattr(self, name)
            if value and not isinstance(ipaddress.ip_address(value), ipaddress.IPv4Address):
                # switch_ivr_activate_unicast creates an AF_INET socket: IPv4 only.
                raise ValueError(f"freeswitch.{name} must be an IPv4 address, got {value!r}")
        if self.rtp_host in ("0.0.0.0", "") and not self.rtp_advertise_host:
            raise ValueError("freeswitch.rtp_advertise_host is needed when rtp_host is 0.0.0.0")
        for cidr in self.allow:
            ipaddress.ip_network(cidr, strict=False)
