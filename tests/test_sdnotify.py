"""sd_notify over a real AF_UNIX datagram socket, as systemd's NOTIFY_SOCKET would be."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from voicebot_pbx.ops import sdnotify


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, dict[str, str]]]:
    # A short directory: AF_UNIX paths are limited to 108 bytes.
    folder = Path(tempfile.mkdtemp(prefix="sdn", dir="/tmp"))
    path = folder / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2.0)
    try:
        yield sock, {"NOTIFY_SOCKET": str(path)}
    finally:
        sock.close()
        path.unlink(missing_ok=True)
        folder.rmdir()


def receive(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_ready_stopping_status(notify_socket: tuple[socket.socket, dict[str, str]]) -> None:
    sock, env = notify_socket
    assert sdnotify.ready(environ=env)
    assert receive(sock) == "READY=1"
    assert sdnotify.ready("listening on 127.0.0.1:9092", environ=env)
    assert receive(sock) == "READY=1\nSTATUS=listening on 127.0.0.1:9092"
    assert sdnotify.stopping("draining 3 calls", environ=env)
    assert receive(sock) == "STOPPING=1\nSTATUS=draining 3 calls"
    assert sdnotify.extend_timeout(30, environ=env)
    assert receive(sock) == "EXTEND_TIMEOUT_USEC=30000000"
    assert sdnotify.status("a\nmulti-line\n status", environ=env)
    assert receive(sock) == "STATUS=a multi-line status"
    assert sdnotify.watchdog_ping(environ=env)
    assert receive(sock) == "WATCHDOG=1"


def test_abstract_namespace_socket() -> None:
    name = f"voicebot-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2.0)
    try:
        assert sdnotify.notify("READY=1", environ={"NOTIFY_SOCKET": "@" + name})
        assert receive(sock) == "READY=1"
    finally:
        sock.close()


def test_without_systemd_nothing_is_sent() -> None:
    assert sdnotify.notify("READY=1", environ={}) is False
    assert sdnotify.notify("READY=1", environ={"NOTIFY_SOCKET": "vsock:2:1234"}) is False
    # A socket that does not exist: logged, not raised.
    assert sdnotify.notify("READY=1", environ={"NOTIFY_SOCKET": "/nonexistent/notify"}) is False


def test_watchdog_interval_from_environment() -> None:
    pid = str(os.getpid())
    assert sdnotify.watchdog_interval_s({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert sdnotify.watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": pid}) == 15.0
    assert sdnotify.watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert sdnotify.watchdog_interval_s({"WATCHDOG_USEC": "0"}) is None
    assert sdnotify.watchdog_interval_s({"WATCHDOG_USEC": "soon"}) is None
    assert sdnotify.watchdog_interval_s({}) is None


def test_heartbeat_pings_from_the_event_loop(
    notify_socket: tuple[socket.socket, dict[str, str]],
) -> None:
    sock, env = notify_socket
    env = {**env, "WATCHDOG_USEC": "40000", "WATCHDOG_PID": str(os.getpid())}  # ping every 20 ms
    healthy = [True]

    async def main() -> None:
        task = asyncio.create_task(
            sdnotify.watchdog_heartbeat(healthy=lambda: healthy[0], environ=env)
        )
        try:
            await asyncio.sleep(0.15)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())
    sock.settimeout(0.0)
    pings = []
    while True:
        try:
            pings.append(receive(sock))
        except BlockingIOError:
            break
    assert len(pings) >= 2
    assert set(pings) == {"WATCHDOG=1"}


def test_heartbeat_withholds_pings_when_unhealthy(
    notify_socket: tuple[socket.socket, dict[str, str]],
) -> None:
    sock, env = notify_socket

    async def main() -> None:
        task = asyncio.create_task(
            sdnotify.watchdog_heartbeat(0.01, healthy=lambda: False, environ=env)
        )
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())
    sock.settimeout(0.0)
    with pytest.raises(BlockingIOError):
        receive(sock)


def test_heartbeat_returns_when_no_watchdog() -> None:
    async def main() -> None:
        async with asyncio.timeout(1.0):
            await sdnotify.watchdog_heartbeat(environ={})

    asyncio.run(main())
