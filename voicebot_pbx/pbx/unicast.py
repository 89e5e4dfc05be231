"""FreeSWITCH "unicast" media: raw L16 over UDP, one datagram per frame, both ways.

What FreeSWITCH does (``src/switch_ivr.c``):

- ``switch_ivr_activate_unicast`` binds ``local-ip:local-port`` on the FreeSWITCH host with
  ``switch_socket_create(..., AF_INET, SOCK_DGRAM, ...)`` whatever ``transport`` says
  (``tcp`` only sets a field), and sets up an ``L16`` codec at the read codec's
  ``actual_samples_per_second`` and packet time. ``local-port: 0`` binds an ephemeral port,
  which is why the bot learns FreeSWITCH's address from its first datagram.
- ``switch_ivr_park`` (the ``socket`` app in async mode parks the channel) sends every
  frame it reads, decoded to L16, with ``switch_socket_sendto`` to ``remote-ip:remote-port``:
  no header, no sequence number, no timestamp. A comfort-noise frame goes out as
  ``decoded_bytes_per_packet`` bytes of 0xFF (samples of -1).
- ``unicast_thread_run`` writes every datagram it receives to the channel at once
  (``samples = datalen / 2``): FreeSWITCH neither paces nor buffers what the bot sends, so
  the bot's ``Speaker`` sends one 20 ms frame per tick against an absolute deadline.
- L16 is FreeSWITCH's internal signed linear in *host* byte order: ``switch_pcm.c``'s L16
  encode/decode are NOOPs (a memcpy when resampling), unlike RTP L16 which is byte-swapped
  on the wire. FreeSWITCH hosts are x86-64/ARM64, so the datagrams are little-endian, the
  project's slin.

With no sequence number, order is arrival order and reordering cannot be undone; what the
bot can do is refuse audio that comes too late to be useful: ``LateFilter`` judges each
datagram against a playout clock fed by the kernel's receive timestamps (SO_TIMESTAMPNS),
so a stalled event loop on our side does not look like a late network.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import platform
import socket
import struct
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog

from voicebot_pbx.audio import Reframer, Resampler, frame_bytes

log = structlog.get_logger("voicebot_pbx.unicast")

# Linux asm-generic/socket.h: SO_TIMESTAMPNS_OLD 35, SCM_TIMESTAMPNS == SO_TIMESTAMPNS.
# Python's socket module does not export them; only used on the architectures below.
_SO_TIMESTAMPNS = 35
_TIMESTAMP_ARCHES = frozenset({"x86_64", "amd64", "aarch64", "arm64", "i686", "i386", "armv7l"})
_TIMESPEC = struct.Struct("@ll")
_RECV_BUFFER_BYTES = 65536
_MAX_READS_PER_WAKE = 64


class NoPortAvailable(OSError):
    """Every UDP port of the configured range is taken."""


@dataclass(slots=True)
class LateFilter:
    """Decides which inbound datagrams arrive too late to use (pure; time is a parameter).

    The n-th frame is due at ``first_arrival + (duration of the frames before it)``. A
    datagram more than ``max_late_s`` behind its due time is:

    - *late*, and dropped, when another datagram of the same read arrived right behind it
      (faster than real time): a burst released after a stall on the way, whose oldest part
      is stale. Its slot passes all the same, so the burst is cut to its last ``max_late_s``.
    - a *gap* otherwise (datagrams lost, or FreeSWITCH stopped reading the channel for a
      while): the clock re-anchors on it and it is used.

    A sender running ahead of the clock (clock drift) re-anchors it too.
    """

    max_late_s: float = 0.1
    late: int = 0
    resyncs: int = 0
    _due_s: float | None = None

    def admit(self, batch: Sequence[tuple[float, float]]) -> list[bool]:
        """``batch``: (arrival_s, duration_s) of the datagrams read together, in order."""
        verdicts: list[bool] = []
        for i, (arrival_s, duration_s) in enumerate(batch):
            if self._due_s is None or arrival_s - self._due_s < -self.max_late_s:
                self._due_s = arrival_s
            lateness_s = arrival_s - self._due_s
            keep = True
            if lateness_s > self.max_late_s:
                burst = i + 1 < len(batch) and batch[i + 1][0] - arrival_s < duration_s / 2
                if burst:
                    keep = False
                    self.late += 1
                else:
                    self._due_s = arrival_s
                    self.resyncs += 1
            self._due_s += duration_s
            verdicts.append(keep)
        return verdicts


class RateAdapter:
    """Between the channel's L16 rate and the session's (8 or 16 kHz: what the VAD takes).

    Inbound chunks are resampled as they come; outbound 20 ms session frames are resampled
    and re-cut into whole 20 ms frames at the channel rate (one datagram each)."""

    def __init__(self, channel_rate_hz: int, session_rate_hz: int) -> None:
        self.channel_rate_hz = channel_rate_hz
        self.session_rate_hz = session_rate_hz
        self.passthrough = channel_rate_hz == session_rate_hz
        self._in = Resampler(channel_rate_hz, session_rate_hz)
        self._out = Resampler(session_rate_hz, channel_rate_hz)
        self._reframer = Reframer(frame_bytes(channel_rate_hz))

    def inbound(self, pcm: bytes) -> bytes:
        return pcm if self.passthrough else self._in.process(pcm)

    def outbound(self, pcm: bytes) -> list[bytes]:
        if self.passthrough:
            return [pcm]
        return self._reframer.feed(self._out.process(pcm))


def session_rate_for(channel_rate_hz: int) -> int:
    """The session works at 8 or 16 kHz; wideband and above are brought to 16 kHz."""
    return channel_rate_hz if channel_rate_hz in (8000, 16000) else 16000


def _kernel_timestamps_supported() -> bool:
    return sys.platform.startswith("linux") and platform.machine().lower() in _TIMESTAMP_ARCHES


def bind_udp(
    host: str, port_min: int, port_max: int, start_index: int = 0
) -> tuple[socket.socket, int]:
    """A non-blocking UDP socket bound to the first free port of ``[port_min, port_max]``,
    trying from ``start_index`` on (callers rotate it so a just-freed port rests a while)."""
    if not 0 < port_min <= port_max <= 65535:
        raise ValueError(f"bad UDP port range {port_min}-{port_max}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    count = port_max - port_min + 1
    for offset in range(count):
        port = port_min + (start_index + offset) % count
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                continue
            raise
        return sock, port
    raise NoPortAvailable(errno.EADDRINUSE, f"no free UDP port in {port_min}-{port_max}")


@dataclass(slots=True)
class UnicastStats:
    datagrams_in: int = 0
    frames_out: int = 0
    unsent_before_lock: int = 0
    send_errors: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str) -> int:
        count = self.dropped.get(reason, 0) + 1
        self.dropped[reason] = count
        return count


class UnicastEndpoint:
    """The bot's UDP side of one call.

    Inbound datagrams are checked (size, source), judged by ``LateFilter`` and handed to
    ``on_audio(pcm, at_s)`` with their arrival time in loop time. The return address is
    locked to the first good datagram from ``expect_ip`` (FreeSWITCH's media address): until
    then ``send`` has nowhere to go; afterwards datagrams from anywhere else are dropped.
    Bad input is reported through ``on_bad(reason, detail)``; nothing here raises on it.
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        rate_hz: int,
        on_audio: Callable[[bytes, float], None],
        on_bad: Callable[[str, str], None],
        expect_ip: str | None = None,
        max_late_s: float = 0.1,
        max_datagram_ms: int = 120,
        kernel_timestamps: bool = True,
    ) -> None:
        self._sock = sock
        self.port: int = sock.getsockname()[1]
        self.rate_hz = rate_hz
        self._on_audio = on_audio
        self._on_bad = on_bad
        self._expect_ip = expect_ip
        self._max_bytes = frame_bytes(rate_hz, max_datagram_ms)
        self.late_filter = LateFilter(max_late_s)
        self.stats = UnicastStats()
        self.remote: tuple[str, int] | None = None
        self.locked = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._closed = False
        self._timestamps = False
        if kernel_timestamps and _kernel_timestamps_supported():
            try:
                sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
                self._timestamps = True
            except OSError:
                self._timestamps = False
        self._ancillary_bytes = socket.CMSG_SPACE(_TIMESPEC.size) if self._timestamps else 0
        self._loop.add_reader(sock.fileno(), self._on_readable)

    @property
    def kernel_timestamps(self) -> bool:
        return self._timestamps

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()

    # --- inbound -------------------------------------------------------------------------

    def _arrival_s(self, ancillary: list[tuple[int, int, bytes]]) -> float:
        now_loop = self._loop.time()
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(data) >= 8:
                sec, nsec = _TIMESPEC.unpack_from(data.ljust(_TIMESPEC.size, b"\0"))
                age_s = time.time() - (float(sec) + float(nsec) / 1e9)
                return now_loop - min(max(age_s, 0.0), 60.0)
        return now_loop

    def _on_readable(self) -> None:
        batch: list[tuple[float, bytes]] = []
        for _ in range(_MAX_READS_PER_WAKE):
            try:
                data, ancillary, flags, address = self._sock.recvmsg(
                    _RECV_BUFFER_BYTES, self._ancillary_bytes
                )
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._bad("recv_error", f"{type(exc).__name__}: {exc}")
                break
            self.stats.datagrams_in += 1
            arrival_s = self._arrival_s(ancillary)
            source = (str(address[0]), int(address[1]))
            if self.remote is not None and source != self.remote:
                self._bad("foreign_datagram", f"{len(data)} bytes from {source[0]}:{source[1]}")
                continue
            if self.remote is None and self._expect_ip and source[0] != self._expect_ip:
                self._bad("foreign_datagram", f"before lock, from {source[0]}:{source[1]}")
                continue
            if flags & socket.MSG_TRUNC or len(data) > self._max_bytes:
                self._bad("oversized_datagram", f"{len(data)} bytes > {self._max_bytes}")
                continue
            if not data:
                self._bad("empty_datagram", f"from {source[0]}:{source[1]}")
                continue
            if len(data) % 2:
                self._bad("odd_datagram", f"{len(data)} bytes")
                continue
            if self.remote is None:
                self.remote = source
                self.locked.set()
                log.info("unicast_locked", remote=f"{source[0]}:{source[1]}", port=self.port)
            batch.append((arrival_s, data))
        if not batch:
            return
        verdicts = self.late_filter.admit(
            [(arrival_s, len(data) / (2 * self.rate_hz)) for arrival_s, data in batch]
        )
        for (arrival_s, data), keep in zip(batch, verdicts, strict=True):
            if keep:
                self._on_audio(data, arrival_s)
            else:
                self._bad("late_datagram", f"{len(data)} bytes")

    def _bad(self, reason: str, detail: str) -> None:
        self.stats.drop(reason)
        self._on_bad(reason, detail)

    # --- outbound ------------------------------------------------------------------------

    def send(self, pcm: bytes) -> bool:
        if self._closed:
            return False
        if self.remote is None:
            self.stats.unsent_before_lock += 1
            return False
        try:
            self._sock.sendto(pcm, self.remote)
        except (BlockingIOError, InterruptedError):
            self.stats.send_errors += 1  # socket buffer full: this frame is lost
            return False
        except OSError:
            self.stats.send_errors += 1
            return False
        self.stats.frames_out += 1
        return True


_port_cursor = itertools.count()


def next_port_index() -> int:
    """Rotates the first port tried by ``bind_udp`` across calls of the process."""
    return next(_port_cursor)
