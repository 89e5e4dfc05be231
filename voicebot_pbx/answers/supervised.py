"""One child server process, started, watched and restarted: the Rasa server and the Rasa
action server are both run this way (``rasa_server.py``, ``action_server.py``).

* ``await start()`` runs ``argv()`` in its own process group (output appended to
  ``log_path``) and polls ``probe`` until it says ready; a start that fails kills the group.
* A supervisor task restarts a child that died, after ``restart_backoff_s[failures]`` (the
  failure count resets once a child stayed up ``stable_after_s``).
* ``await stop()``: SIGTERM to the group, SIGKILL after ``stop_timeout_s``.
* The child dies with the bot: it gets SIGTERM when the bot's process goes, even on SIGKILL
  (the parent-death signal, set by util-linux ``setpriv`` before it execs the command).
* Its pid is kept in ``pid_path``. A start that finds the port held by a child of an earlier
  bot (the pid file's process, whose command line has every ``orphan_marks`` string and whose
  parent is gone) replaces it; a port held by anything else is refused, saying so.

The owner gives the command, the environment and the probe; log events are
``<event_prefix>.starting|ready|died|restart_failed|kill|stopped|orphan_replaced``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import IO, Self

import httpx
import structlog

__all__ = [
    "ChildError",
    "Probe",
    "SupervisedChild",
    "SupervisedServer",
    "log_tail",
    "wait_for_http",
]

log = structlog.get_logger(__name__)

# One readiness poll: True once the child answers as ready.
Probe = Callable[[httpx.AsyncClient], Awaitable[bool]]

_LOG_TAIL_BYTES = 4000
_PROBE_INTERVAL_S = 0.2


# util-linux's setpriv sets the parent-death signal and execs the child's command: no Python
# between fork and exec (preexec_fn is unsafe in a process with threads).
_SETPRIV = shutil.which("setpriv")


def with_parent_death_signal(argv: list[str]) -> list[str]:
    """``argv`` run so that it gets SIGTERM when this process dies (Linux, util-linux)."""
    if _SETPRIV is None:
        return argv
    return [_SETPRIV, "--pdeathsig", "TERM", "--", *argv]


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def _parent_pid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])  # the field after the state


class ChildError(RuntimeError):
    """The child could not be started (exited while starting, not ready in time, port taken)."""


def log_tail(path: Path, n_bytes: int = _LOG_TAIL_BYTES) -> str:
    """The last ``n_bytes`` of a log file, for error messages ("" when unreadable)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - n_bytes))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


class SupervisedChild:
    def __init__(
        self,
        *,
        event_prefix: str,
        host: str,
        port: int,
        argv: Callable[[], list[str]],
        env: Callable[[], dict[str, str]],
        cwd: Path,
        log_path: Path,
        probe: Probe,
        startup_timeout_s: float,
        stop_timeout_s: float,
        restart_backoff_s: Sequence[float],
        stable_after_s: float,
        error: type[Exception] = ChildError,
        pid_path: Path | None = None,
        orphan_marks: Sequence[str] = (),
    ) -> None:
        self.event_prefix = event_prefix
        self.host = host
        self.port = port
        self.log_path = log_path
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.restart_backoff_s = tuple(restart_backoff_s) or (1.0,)
        self.stable_after_s = stable_after_s
        self._argv = argv
        self._env = env
        self._cwd = cwd
        self._probe = probe
        self._error = error
        self.pid_path = pid_path
        self.orphan_marks = tuple(orphan_marks)
        self._proc: asyncio.subprocess.Process | None = None
        self._log_file: IO[bytes] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False
        self._ready = False
        self._ready_event = asyncio.Event()
        self._started_at = 0.0
        self.restarts = 0
        self.startup_s: float | None = None

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    @property
    def ready(self) -> bool:
        """True while the process runs and its last probe said ready."""
        return self._ready and self.pid is not None

    def _set_ready(self, ready: bool) -> None:
        self._ready = ready
        if ready:
            self._ready_event.set()
        else:
            self._ready_event.clear()

    def _event(self, name: str) -> str:
        return f"{self.event_prefix}.{name}"

    async def start(self) -> None:
        """Launch and return once the probe says ready; then supervise (no-op if running)."""
        if self.running:
            return
        self._stopping = False
        await self._launch_and_wait()
        name = f"{self.event_prefix}-sup-{self.port}"
        self._supervisor = asyncio.create_task(self._supervise(), name=name)

    def port_in_use(self) -> bool:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            return s.connect_ex((self.host, self.port)) == 0

    def _orphan(self) -> int | None:
        """The pid of an earlier bot's child still holding the port, else None."""
        if self.pid_path is None or not self.orphan_marks:
            return None
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None
        if pid == os.getpid() or not all(m in _cmdline(pid) for m in self.orphan_marks):
            return None
        parent = _parent_pid(pid)
        if parent is None or (parent != 1 and "voicebot_pbx" in _cmdline(parent)):
            return None  # a live bot's child: not ours to take
        return pid

    async def _replace_orphan(self) -> None:
        pid = self._orphan()
        if pid is None:
            raise self._error(
                f"{self.host}:{self.port} is already in use (not by a child of an earlier "
                "bot: stop whatever holds it, or change the port)"
            )
        log.warning(self._event("orphan_replaced"), pid=pid, port=self.port)
        self._signal_group(pid, signal.SIGTERM)
        for _ in range(int(self.stop_timeout_s / 0.1)):
            if not _cmdline(pid):  # gone (a zombie has no command line either)
                break
            await asyncio.sleep(0.1)
        self._signal_group(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
        for _ in range(50):  # the port is free a moment after the process is gone
            if not self.port_in_use():
                break
            await asyncio.sleep(0.1)

    async def _launch_and_wait(self) -> None:
        if self.port_in_use():
            await self._replace_orphan()
        argv = with_parent_death_signal(self._argv())
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._close_log()
        self._log_file = self.log_path.open("ab")
        t0 = time.monotonic()
        self._set_ready(False)
        self._proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=asyncio.subprocess.STDOUT,
            env=self._env(),
            cwd=self._cwd,
            start_new_session=True,  # own process group: stop() signals the whole group
        )
        if self.pid_path is not None:
            self.pid_path.parent.mkdir(parents=True, exist_ok=True)
            self.pid_path.write_text(f"{self._proc.pid}\n")
        log.info(self._event("starting"), pid=self._proc.pid, port=self.port)
        try:
            await self._wait_ready(self._proc)
        except BaseException:
            await self._kill(self._proc)
            raise
        self.startup_s = time.monotonic() - t0
        self._started_at = time.monotonic()
        self._set_ready(True)
        log.info(
            self._event("ready"),
            pid=self._proc.pid,
            port=self.port,
            startup_s=round(self.startup_s, 2),
            restarts=self.restarts,
        )

    async def _wait_ready(self, proc: asyncio.subprocess.Process) -> None:
        try:
            async with (
                asyncio.timeout(self.startup_timeout_s),
                httpx.AsyncClient(timeout=2.0) as client,
            ):
                while True:
                    if proc.returncode is not None:
                        raise self._error(
                            f"{self.event_prefix} exited with {proc.returncode} while "
                            f"starting; log {self.log_path}:\n{log_tail(self.log_path)}"
                        )
                    try:
                        if await self._probe(client):
                            return
                    except (httpx.TransportError, ValueError):
                        pass
                    await asyncio.sleep(_PROBE_INTERVAL_S)
        except TimeoutError as exc:
            raise self._error(
                f"{self.event_prefix} not ready after {self.startup_timeout_s:.0f} s; "
                f"log {self.log_path}:\n{log_tail(self.log_path)}"
            ) from exc

    async def wait_ready(self, timeout_s: float) -> None:
        """Wait until the (possibly restarting) child is ready; TimeoutError otherwise."""
        async with asyncio.timeout(timeout_s):
            await self._ready_event.wait()

    async def _supervise(self) -> None:
        failures = 0
        while not self._stopping:
            proc = self._proc
            assert proc is not None
            returncode = await proc.wait()
            if self._stopping:
                return
            self._set_ready(False)
            uptime_s = time.monotonic() - self._started_at
            if uptime_s > self.stable_after_s:
                failures = 0
            self._signal_group(proc.pid, signal.SIGKILL)  # leftovers of the dead child
            delay_s = self.restart_backoff_s[min(failures, len(self.restart_backoff_s) - 1)]
            log.error(
                self._event("died"),
                returncode=returncode,
                uptime_s=round(uptime_s, 1),
                restart_in_s=delay_s,
                log=str(self.log_path),
            )
            await asyncio.sleep(delay_s)
            if self._stopping:
                return
            self.restarts += 1
            try:
                await self._launch_and_wait()
            except (self._error, OSError) as exc:
                failures += 1
                log.error(self._event("restart_failed"), error=str(exc)[:500], failures=failures)

    @staticmethod
    def _signal_group(pid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)

    async def _kill(self, proc: asyncio.subprocess.Process) -> None:
        """SIGTERM the process group, SIGKILL after ``stop_timeout_s``."""
        if proc.returncode is None:
            self._signal_group(proc.pid, signal.SIGTERM)
            try:
                async with asyncio.timeout(self.stop_timeout_s):
                    await proc.wait()
            except TimeoutError:
                log.warning(self._event("kill"), pid=proc.pid, after_s=self.stop_timeout_s)
                self._signal_group(proc.pid, signal.SIGKILL)
                await proc.wait()
        self._signal_group(proc.pid, signal.SIGKILL)  # anything left in the group

    async def stop(self) -> None:
        """Stop supervising and terminate the child (idempotent)."""
        self._stopping = True
        self._set_ready(False)
        sup, self._supervisor = self._supervisor, None
        if sup is not None and not sup.done():
            sup.cancel()
            try:
                await sup
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # we are being cancelled ourselves, not just the supervisor
        proc = self._proc
        if proc is not None:
            await self._kill(proc)
            log.info(self._event("stopped"), pid=proc.pid, returncode=proc.returncode)
            self._forget_pid(proc.pid)
        self._close_log()

    def _forget_pid(self, pid: int) -> None:
        """The pid file of a child that is gone (only ours: another bot may have written it
        since), so the work folder does not fill with them."""
        if self.pid_path is None:
            return
        with contextlib.suppress(OSError, ValueError):
            if int(self.pid_path.read_text().strip()) == pid:
                self.pid_path.unlink()

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


class SupervisedServer:
    """What a server the bot runs as a ``SupervisedChild`` (the Rasa server, the action
    server) shows of it; the subclass builds ``_child`` and says how it starts."""

    _child: SupervisedChild

    @property
    def pid(self) -> int | None:
        return self._child.pid

    @property
    def ready(self) -> bool:
        """True while the process runs and its readiness probe said so."""
        return self._child.ready

    @property
    def restarts(self) -> int:
        return self._child.restarts

    @property
    def startup_s(self) -> float | None:
        return self._child.startup_s

    async def start(self) -> None:
        raise NotImplementedError

    async def wait_ready(self, timeout_s: float) -> None:
        """Wait until the (possibly restarting) server is ready; TimeoutError otherwise."""
        await self._child.wait_ready(timeout_s)

    async def stop(self) -> None:
        """Stop supervising and terminate the server (idempotent)."""
        await self._child.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


def wait_for_http(url: str, timeout_s: float, *, event_prefix: str, poll_s: float = 0.5) -> int:
    """0 once ``GET url`` answers 200, 1 after ``timeout_s`` (blocking): systemd's
    ``ExecStartPost=`` of the Rasa and action server units, so a unit ordered ``After=`` one
    starts only when it can answer."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(url, timeout=min(2.0, timeout_s)).status_code == 200:
                log.info(f"{event_prefix}.ready", url=url)
                return 0
        except httpx.HTTPError:
            pass
        if time.monotonic() >= deadline:
            log.error(f"{event_prefix}.not_ready", url=url, timeout_s=timeout_s)
            return 1
        time.sleep(poll_s)
