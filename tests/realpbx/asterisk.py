"""A real Asterisk under a private configuration, and test callers placed through it.

``Asterisk(root, ...).start()`` writes ``tests/realpbx/asterisk/*.conf`` (with the ports and
folders filled in) to ``<root>/etc``, runs ``asterisk -C <root>/etc/asterisk.conf -f -n``
and waits until the CLI answers. A call is a Local channel pair: the ``caller`` half runs a
script of steps (play a WAV, wait without sending frames, send DTMF) and records what it
hears and says with MixMonitor; the other half runs a ``tobot`` extension (AudioSocket from
the dialplan at 8 kHz, the channel driver at 16 kHz, a two-node fail-over, or an
AudioSocket echo that calibrates the recordings).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
import wave
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tests.realpbx import (
    PbxUnavailable,
    cpu_flags,
    free_port,
    log_tail,
    run_tool,
    unpacked,
    wait_ready,
    wait_stopped,
)

if TYPE_CHECKING:
    from tests.realpbx.bot import BotProcess

CONF_DIR = Path(__file__).with_name("asterisk")
DEBIAN_SOUNDS = Path("/usr/share/asterisk/sounds")
AMI_SECRET = "testbed-secret"
WS_PASSWORD = "testbed-ws-secret"  # websocket_client.conf [voicebot] password


def resampler(flags: frozenset[str]) -> str:
    """The module that translates between 8 and 16 kHz audio on this CPU. The shared
    build's ``codec_resample.so`` (the speex resampler) was compiled with AVX-VNNI
    instructions (VEX ``vpdpwssd``): on a CPU without ``avx_vnni`` (AVX-512 VNNI alone is
    another encoding) Asterisk dies of SIGILL at the first 8 <-> 16 kHz translation, in the
    middle of a call. There ``codec_g722.so`` is loaded instead: Asterisk then translates
    through G.722 (8 kHz audio in, 16 kHz out, and back), a wideband codec, so the bot still
    gets 16 kHz audio from the same dialplan."""
    return "codec_resample.so" if "avx_vnni" in flags else "codec_g722.so"


@dataclass(frozen=True, slots=True)
class Recording:
    """What the caller half heard and said, sample-aligned (MixMonitor r()/t())."""

    heard: np.ndarray  # int16
    said: np.ndarray
    rate_hz: int


class Asterisk:
    def __init__(
        self,
        root: Path,
        *,
        bot_port: int,
        bot2_port: int = 0,
        ws_port: int = 0,
        extensions: str | None = None,
    ) -> None:
        """``extensions``: a dialplan to run instead of the test bed's (taken as is)."""
        self.prefix = unpacked("asterisk")
        self.root = root
        self.extensions = extensions
        self.bot_port = bot_port
        self.bot2_port = bot2_port or free_port()
        self.ws_port = ws_port or free_port()
        self.echo_port = free_port()  # the [tobot] echo- extension's AudioSocket peer
        self.ami_port = free_port()
        self.http_port = free_port()  # Dial(WebSocket/INCOMING/...): the bot connects here
        self.ami_secret = AMI_SECRET
        self.rec = root / "rec"
        self.sounds = root / "sounds"
        self._proc: subprocess.Popen[bytes] | None = None
        self._env = {**os.environ, "LD_LIBRARY_PATH": str(self.prefix / "lib")}

    # --- lifecycle -----------------------------------------------------------------------

    def _write_config(self) -> None:
        etc = self.root / "etc"
        for sub in ("etc", "var/lib", "var/spool", "var/run", "var/log", "var/cache", "rec"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.sounds.mkdir(exist_ok=True)
        values = {
            "@PREFIX@": str(self.prefix),
            "@ROOT@": str(self.root),
            "@BOT_PORT@": str(self.bot_port),
            "@BOT2_PORT@": str(self.bot2_port),
            "@ECHO_PORT@": str(self.echo_port),
            "@WS_PORT@": str(self.ws_port),
            "@WS_PASSWORD@": WS_PASSWORD,
            "@AMI_PORT@": str(self.ami_port),
            "@HTTP_PORT@": str(self.http_port),
            "@AMI_SECRET@": self.ami_secret,
            "@RESAMPLER@": resampler(cpu_flags()),
        }
        for template in CONF_DIR.glob("*.conf"):
            text = template.read_text()
            for key, value in values.items():
                text = text.replace(key, value)
            (etc / template.name).write_text(text)
        if self.extensions is not None:
            (etc / "extensions.conf").write_text(self.extensions)
        # Files Asterisk reads from its data dir: the build's own, and Debian's recorded
        # prompts (silence/N, the 8 kHz prompts) as the sounds folder.
        lib = self.root / "var" / "lib"
        for name in ("documentation", "images", "rest-api", "static-http"):
            source = self.prefix / "var" / "lib" / "asterisk" / name
            link = lib / name
            if source.exists() and not link.exists():
                link.symlink_to(source)
        if not DEBIAN_SOUNDS.is_dir():
            raise PbxUnavailable(
                f"{DEBIAN_SOUNDS} is missing: install the runtime packages (scripts/install)"
            )
        if not (lib / "sounds").exists():
            (lib / "sounds").symlink_to(DEBIAN_SOUNDS)

    def start(self, timeout_s: float = 30.0) -> None:
        self._write_config()
        log = (self.root / "console.log").open("ab")
        self._proc = subprocess.Popen(
            [str(self.prefix / "sbin" / "asterisk"), "-C", str(self.conf), "-f", "-n", "-g"],
            env=self._env,
            cwd=self.root,  # -g: a crash dumps core here, not into the checkout
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

        def booted() -> bool:
            out = self._cli_raw("core waitfullybooted", timeout_s=5.0)
            return out is not None and "fully booted" in out.lower()

        wait_ready(self._proc, "asterisk", booted, timeout_s, self.log_tail, poll_s=0.2)

    def stop(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        self._cli_raw("core stop now", timeout_s=5.0)
        wait_stopped(proc, 10.0)

    def restart(self) -> None:
        self.stop()
        self.start()

    def set_ami_secret(self, secret: str) -> None:
        """Change the AMI user's secret in manager.conf and ``manager reload`` (sessions
        already logged in stay; the next Login needs the new secret)."""
        self.ami_secret = secret
        if self.running:
            self._write_config()
            self.cli("manager reload")

    @property
    def conf(self) -> Path:
        return self.root / "etc" / "asterisk.conf"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        return log_tail(self.root, ("console.log", "var/log/messages.log"), chars)

    def _cli_raw(self, command: str, timeout_s: float) -> str | None:
        argv = [str(self.prefix / "sbin" / "asterisk"), "-C", str(self.conf), "-rx", command]
        return run_tool(argv, self._env, timeout_s)

    def cli(self, command: str, timeout_s: float = 10.0) -> str:
        out = self._cli_raw(command, timeout_s)
        if out is None:
            raise PbxUnavailable(f"asterisk CLI {command!r} failed: {self.log_tail()}")
        return out

    # --- calls ---------------------------------------------------------------------------

    def sound(self, name: str, pcm_8k: bytes) -> str:
        """Store 8 kHz slin as a WAV the dialplan can play; return its Playback name."""
        path = self.sounds / f"{name}.wav"
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(8000)
            w.writeframes(pcm_8k)
        return str(path.with_suffix(""))

    def call(self, steps: Sequence[str], mode: str = "bot", context: str = "tobot") -> str:
        """Place a test call; ``steps`` as in extensions.conf's [caller]. Returns its tag.
        The bot side runs ``<mode>-<tag>@<context>``."""
        tag = "c" + uuid.uuid4().hex[:12]
        script = ",".join(steps)
        self.cli(f'database put vbscript {tag} "{script}"')
        self.cli(f"channel originate Local/{tag}@caller extension {mode}-{tag}@{context}")
        return tag

    def channels(self) -> str:
        return self.cli("core show channels concise")

    def wait_call_gone(self, tag: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if f"Local/{tag}@" not in self.channels():
                return
            time.sleep(0.25)
        raise AssertionError(f"call {tag} still up after {timeout_s} s:\n{self.channels()}")

    def db_get(self, family: str, key: str) -> str | None:
        out = self.cli(f"database get {family} {key}")
        for line in out.splitlines():
            if line.startswith("Value:"):
                return line.split(":", 1)[1].strip()
        return None

    def recording(self, tag: str, timeout_s: float = 5.0) -> Recording:
        """The caller half's recordings, once MixMonitor has closed them."""
        heard_path = self.rec / f"{tag}-heard.wav"
        said_path = self.rec / f"{tag}-said.wav"
        deadline = time.monotonic() + timeout_s
        while not (heard_path.exists() and said_path.exists()):
            if time.monotonic() > deadline:
                raise AssertionError(f"no recordings for {tag}: {self.log_tail()}")
            time.sleep(0.1)
        heard, rate_hz = _read_wav(heard_path)
        said, _ = _read_wav(said_path)
        return Recording(heard=heard, said=said, rate_hz=rate_hz)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def running(asterisk: Asterisk, bot: BotProcess) -> Iterator[None]:
    """Asterisk, then the bot, started for a test module; the bot stopped and Asterisk's
    folder removed however the module ends."""
    asterisk.start()
    try:
        bot.start()
        yield
    finally:
        bot.stop()
        asterisk.cleanup()


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2"), w.getframerate()


class AmiWatcher:
    """A second AMI session that records every event it is sent (a test's own observer,
    independent of the bot's client): ``events("DTMFEnd")`` -> header dicts."""

    def __init__(self, port: int, secret: str, username: str = "voicebot") -> None:
        self._sock = socket.create_connection(("127.0.0.1", port), timeout=5.0)
        self._sock.settimeout(None)
        self._lock = threading.Lock()
        self._events: list[dict[str, str]] = []
        self._sock.sendall(
            f"Action: Login\r\nUsername: {username}\r\nSecret: {secret}\r\n"
            "Events: call,dialplan,dtmf\r\n\r\n".encode()
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        buf = b""
        while True:
            try:
                data = self._sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            buf += data
            while b"\r\n\r\n" in buf:
                block, buf = buf.split(b"\r\n\r\n", 1)
                headers: dict[str, str] = {}
                for line in block.decode(errors="replace").split("\r\n"):
                    key, sep, value = line.partition(": ")
                    if sep:
                        headers.setdefault(key, value)
                if "Event" in headers:
                    with self._lock:
                        self._events.append(headers)

    def events(self, name: str) -> list[dict[str, str]]:
        with self._lock:
            return [e for e in self._events if e["Event"].lower() == name.lower()]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._thread.join(timeout=2.0)
