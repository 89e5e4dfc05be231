"""systemd's notify protocol (``sd_notify(3)``) over a plain AF_UNIX datagram socket.

No libsystemd: the protocol is one datagram of ``KEY=VALUE`` lines to the socket named in
``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace). Outside systemd the
variable is unset and every call is a cheap no-op returning False.

The service sends, in order (``Type=notify``):

* ``READY=1`` only when the models are loaded and the AudioSocket port is bound;
* ``WATCHDOG=1`` every half ``WatchdogSec`` from ``watchdog_heartbeat()``, a coroutine on the
  event loop, so a blocked loop stops the pings and systemd restarts the service;
* ``STOPPING=1`` when SIGTERM starts the drain (``EXTEND_TIMEOUT_USEC`` can ask for more time).
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Mapping

import structlog

log = structlog.get_logger("voicebot_pbx.ops.sdnotify")


def _address(environ: Mapping[str, str]) -> str | None:
    address = environ.get("NOTIFY_SOCKET", "")
    if address.startswith("@"):
        return "\0" + address[1:]  # abstract namespace
    if address.startswith("/"):
        return address
    if address:
        # e.g. "vsock:CID:PORT" (systemd 254+ in VMs): not needed on a PBX host.
        log.debug("sd_notify_unsupported_socket", notify_socket=address)
    return None


def notify(state: str, *, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (``"READY=1"``, ``"WATCHDOG=1\\nSTATUS=..."``); True if it was sent.

    Never blocks (non-blocking socket) and never raises: a full or missing socket is logged.
    """
    address = _address(os.environ if environ is None else environ)
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)
            sock.connect(address)
            sock.sendall(state.encode("utf-8"))
    except OSError as exc:
        log.warning("sd_notify_failed", state=state.split("\n", 1)[0], error=str(exc))
        return False
    return True


def ready(status: str = "", *, environ: Mapping[str, str] | None = None) -> bool:
    """Startup finished: models loaded, port bound."""
    return notify(_with_status("READY=1", status), environ=environ)


def stopping(status: str = "", *, environ: Mapping[str, str] | None = None) -> bool:
    """Shutdown (the drain) began."""
    return notify(_with_status("STOPPING=1", status), environ=environ)


def status(text: str, *, environ: Mapping[str, str] | None = None) -> bool:
    """Free-form status shown by ``systemctl status``."""
    return notify(f"STATUS={_one_line(text)}", environ=environ)


def extend_timeout(seconds: float, *, environ: Mapping[str, str] | None = None) -> bool:
    """Ask for ``seconds`` more before the start/stop timeout fires (systemd 236+)."""
    return notify(f"EXTEND_TIMEOUT_USEC={max(0, round(seconds * 1e6))}", environ=environ)


def watchdog_ping(*, environ: Mapping[str, str] | None = None) -> bool:
    return notify("WATCHDOG=1", environ=environ)


def watchdog_interval_s(environ: Mapping[str, str] | None = None) -> float | None:
    """How often to ping the watchdog: half of ``$WATCHDOG_USEC`` (as ``sd_watchdog_enabled``
    recommends), or None when no watchdog is armed for this process."""
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None  # meant for another process (e.g. inherited by a child)
    return usec / 2 / 1e6


async def watchdog_heartbeat(
    interval_s: float | None = None,
    *,
    healthy: Callable[[], bool] | None = None,
    environ: Mapping[str, str] | None = None,
) -> None:
    """Ping the watchdog forever from the event loop (returns at once when none is armed).

    Ticks follow an absolute schedule; after a stall (the loop was blocked) it pings at once,
    logs the lateness and re-anchors instead of bursting. When ``healthy()`` returns False
    the ping is skipped, so a wedged service gets restarted by systemd.
    """
    if interval_s is None:
        interval_s = watchdog_interval_s(environ)
    if interval_s is None or interval_s <= 0:
        return
    loop = asyncio.get_running_loop()
    origin = loop.time()
    tick = 0
    while True:
        if healthy is None or healthy():
            notify("WATCHDOG=1", environ=environ)
        else:
            log.warning("watchdog_ping_withheld", reason="unhealthy")
        tick += 1
        due = origin + tick * interval_s
        now = loop.time()
        if now > due:  # the loop was blocked for more than a whole interval
            log.warning("event_loop_stalled", late_s=round(now - due, 3), interval_s=interval_s)
            origin, tick = now, 1
            due = now + interval_s
        await asyncio.sleep(due - now)


def _with_status(state: str, text: str) -> str:
    return f"{state}\nSTATUS={_one_line(text)}" if text else state


def _one_line(text: str) -> str:
    return " ".join(text.split())


__all__ = [
    "extend_timeout",
    "notify",
    "ready",
    "status",
    "stopping",
    "watchdog_heartbeat",
    "watchdog_interval_s",
    "watchdog_ping",
]
