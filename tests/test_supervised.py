"""Child processes the bot runs (Rasa, the action server) with ``SupervisedChild``, on small
real children: they die with the bot even when it is SIGKILLed, an earlier bot's orphan
holding the port is replaced, a stranger holding it is refused, a crash is restarted."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from voicebot_pbx.answers.supervised import ChildError, SupervisedChild

# A child server: answers any connection with "HTTP/1.0 200" (its readiness), tagged so the
# orphan check can recognise it.
SERVER = textwrap.dedent(
    """
    import socket, sys
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(16)
    while True:
        c, _ = s.accept(); c.recv(1024)
        c.sendall(b"HTTP/1.0 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok"); c.close()
    """
)
MARK = "voicebot-test-child"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_for(check: object, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


async def answers(client: httpx.AsyncClient, port: int) -> bool:
    return (await client.get(f"http://127.0.0.1:{port}/")).status_code == 200


def child(tmp_path: Path, port: int) -> SupervisedChild:
    async def probe(client: httpx.AsyncClient) -> bool:
        return await answers(client, port)

    return SupervisedChild(
        event_prefix="test_child",
        host="127.0.0.1",
        port=port,
        argv=lambda: [sys.executable, "-c", SERVER, str(port), MARK],
        env=lambda: dict(os.environ),
        cwd=tmp_path,
        log_path=tmp_path / "child.log",
        probe=probe,
        startup_timeout_s=10.0,
        stop_timeout_s=2.0,
        restart_backoff_s=(0.1,),
        stable_after_s=60.0,
        pid_path=tmp_path / "child.pid",
        orphan_marks=(MARK, str(port)),
    )


def test_the_child_dies_with_the_bot_even_on_sigkill(tmp_path: Path) -> None:
    port = free_port()
    bot = textwrap.dedent(
        f"""
        import asyncio, os, signal, sys
        from pathlib import Path
        sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
        from tests.test_supervised import child
        async def main():
            c = child(Path({str(tmp_path)!r}), {port})
            await c.start()
            print("CHILD", c.pid, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        asyncio.run(main())
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", bot], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    (line,) = [ln for ln in proc.stdout.splitlines() if ln.startswith("CHILD ")]
    pid = int(line.split()[1])
    assert wait_for(lambda: not alive(pid)), "the child outlived the SIGKILLed bot"


def test_an_earlier_bots_orphan_on_the_port_is_replaced(tmp_path: Path) -> None:
    port = free_port()
    # The child of a bot that died without the parent-death signal: same command, its pid
    # in the pid file, still holding the port.
    orphan = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(port), MARK], start_new_session=True
    )
    try:
        (tmp_path / "child.pid").write_text(f"{orphan.pid}\n")
        with socket.socket() as probe:
            assert wait_for(lambda: probe.connect_ex(("127.0.0.1", port)) == 0)

        async def main() -> tuple[int | None, str]:
            c = child(tmp_path, port)
            await c.start()
            try:
                return c.pid, (tmp_path / "child.pid").read_text().strip()
            finally:
                await c.stop()

        new_pid, written = asyncio.run(main())
        assert orphan.wait(10) is not None  # the orphan was stopped
        assert new_pid is not None and new_pid != orphan.pid
        assert written == str(new_pid)
        # A clean stop takes its pid file away (the work folder does not fill with them).
        assert not (tmp_path / "child.pid").exists()
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait(5)


def test_a_stranger_on_the_port_is_refused_and_left_alone(tmp_path: Path) -> None:
    port = free_port()
    with socket.socket() as stranger:
        stranger.bind(("127.0.0.1", port))
        stranger.listen(1)
        (tmp_path / "child.pid").write_text(f"{os.getpid()}\n")  # even a pid file lying

        async def main() -> None:
            await child(tmp_path, port).start()

        with pytest.raises(ChildError, match="already in use .*not by a child of an earlier"):
            asyncio.run(main())
        assert stranger.fileno() != -1


def test_a_crashed_child_is_restarted(tmp_path: Path) -> None:
    port = free_port()

    async def main() -> None:
        c = child(tmp_path, port)
        await c.start()
        try:
            first = c.pid
            assert first is not None
            os.killpg(first, signal.SIGKILL)
            await c.wait_ready(15)  # not ready while it is down ...
            for _ in range(300):  # ... so wait for the restart itself
                if c.restarts == 1 and c.ready:
                    break
                await asyncio.sleep(0.05)
            assert c.restarts == 1 and c.ready
            assert c.pid not in (None, first)
        finally:
            await c.stop()

    asyncio.run(main())
