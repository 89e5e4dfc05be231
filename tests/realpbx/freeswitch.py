"""A real FreeSWITCH under a private configuration, and test callers placed through it.

``FreeSwitch(root, bot_port=...).start()`` writes ``tests/realpbx/freeswitch/freeswitch.xml``
(ports and folders filled in) to ``<root>/conf``, runs ``freeswitch -nf -nc ... -conf
<root>/conf -log <root>/log ...`` with ``<root>`` as its working directory and waits until
``fs_cli -x status`` says "is ready". Inbound ESL (``fs_cli``) listens on a free loopback
port with a private password.

A call is a loopback channel pair. ``call(steps)`` writes the caller's own extension
``caller_<tag>`` (``<root>/conf/callers/<tag>.xml``), reloads the XML and originates
``loopback/caller_<tag>/default``: that half answers, records what it hears (left channel)
and what it says (right channel) with ``record_session`` (``RECORD_STEREO``), runs its steps
(play a WAV, stream silence, sleep, send DTMF) and hangs up. The other half goes to the bot:
the ``tobot_<tag>`` extension (``answer``, ``socket host:port async full``, then a mark that
the dialplan went on) or, with ``mode="inline"``, ``'&socket(host:port async full)'`` straight
from ``originate``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import time
import uuid
import wave
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import quoteattr

import numpy as np

from tests.realpbx import (
    ROOT,
    PbxUnavailable,
    free_port,
    log_tail,
    run_tool,
    unpacked,
    wait_ready,
    wait_stopped,
)

CONF_DIR = Path(__file__).with_name("freeswitch")
EXAMPLE_DIALPLAN = ROOT / "dialplans" / "freeswitch" / "voicebot.xml"


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a test caller's script (a dialplan action of its extension)."""

    app: str
    data: str = ""


def play(path: str) -> Step:
    """Play a WAV (frames stream, the file's silence included)."""
    return Step("playback", path)


def silence(seconds: float) -> Step:
    """Stream silence frames for ``seconds``."""
    return Step("playback", f"silence_stream://{int(seconds * 1000)}")


def sleep(seconds: float) -> Step:
    """``sleep``: the caller writes nothing (the loopback channel fills in)."""
    return Step("sleep", str(int(seconds * 1000)))


def dtmf(digits: str, duration_ms: int = 120) -> Step:
    """``send_dtmf``: RFC 2833-style DTMF (events, not tones) towards the bot's half."""
    return Step("send_dtmf", f"{digits}@{duration_ms}")


@dataclass(frozen=True, slots=True)
class Call:
    """A placed test call: its tag and the UUID of the bot's half (the call record's id)."""

    tag: str
    uuid: str


@dataclass(frozen=True, slots=True)
class Recording:
    """What the caller half heard and said, sample-aligned (record_session, stereo)."""

    heard: np.ndarray  # int16
    said: np.ndarray
    rate_hz: int


class FreeSwitch:
    def __init__(self, root: Path, *, bot_port: int) -> None:
        self.prefix = unpacked("freeswitch")
        self.root = root
        self.bot_port = bot_port
        self.esl_port = free_port()
        self.esl_password = "tb-" + secrets.token_hex(8)
        self.rec = root / "rec"
        self.sounds = root / "sounds"
        self.callers = root / "conf" / "callers"
        self._proc: subprocess.Popen[bytes] | None = None
        self._env = {**os.environ, "LD_LIBRARY_PATH": str(self.prefix / "lib")}

    # --- lifecycle -----------------------------------------------------------------------

    def _write_config(self) -> None:
        for sub in ("conf", "log", "db", "run", "rec", "sounds", "conf/callers"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        values = {
            "@ROOT@": str(self.root),
            "@ESL_PORT@": str(self.esl_port),
            "@ESL_PASSWORD@": self.esl_password,
            "@BOT_PORT@": str(self.bot_port),
        }
        text = (CONF_DIR / "freeswitch.xml").read_text()
        for key, value in values.items():
            text = text.replace(key, value)
        (self.root / "conf" / "freeswitch.xml").write_text(text)
        # The include needs at least one file to match.
        (self.callers / "_none.xml").write_text("<include></include>\n")
        # The admin's example dialplan, pointed at this bed's bot.
        example = EXAMPLE_DIALPLAN.read_text().replace(
            "127.0.0.1:8084", f"127.0.0.1:{self.bot_port}"
        )
        (self.root / "conf" / "example").mkdir(exist_ok=True)
        (self.root / "conf" / "example" / "voicebot.xml").write_text(example)

    def start(self, timeout_s: float = 30.0) -> None:
        binary = self.prefix / "bin" / "freeswitch"
        if not binary.exists():
            raise PbxUnavailable(f"{binary} is missing")
        self._write_config()
        root = self.root
        log = (root / "console.log").open("ab")
        self._proc = subprocess.Popen(
            [
                str(binary),
                "-nonat",
                "-nc",
                "-nf",
                "-base",
                str(self.prefix),
                "-mod",
                str(self.prefix / "mod"),
                "-conf",
                str(root / "conf"),
                "-log",
                str(root / "log"),
                "-db",
                str(root / "db"),
                "-run",
                str(root / "run"),
                "-temp",
                str(root / "run"),
            ],
            cwd=root,
            env=self._env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

        def is_ready() -> bool:
            out = self._api_raw("status", timeout_s=5.0)
            return out is not None and "is ready" in out

        wait_ready(self._proc, "freeswitch", is_ready, timeout_s, self.log_tail, poll_s=0.3)

    def stop(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)  # FreeSWITCH shuts down cleanly on TERM
        wait_stopped(proc, 15.0)

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_text(self) -> str:
        with contextlib.suppress(OSError):
            return (self.root / "log" / "freeswitch.log").read_text(errors="replace")
        return ""

    def log_tail(self, chars: int = 3000) -> str:
        return log_tail(self.root, ("console.log", "log/freeswitch.log"), chars)

    def _api_raw(self, command: str, timeout_s: float) -> str | None:
        argv = [
            str(self.prefix / "bin" / "fs_cli"),
            "-H",
            "127.0.0.1",
            "-P",
            str(self.esl_port),
            "-p",
            self.esl_password,
            "-x",
            command,
        ]
        return run_tool(argv, self._env, timeout_s)

    def api(self, command: str, timeout_s: float = 10.0) -> str:
        """An API command through inbound ESL (``fs_cli -x``): its output."""
        out = self._api_raw(command, timeout_s)
        if out is None:
            raise PbxUnavailable(f"fs_cli {command!r} failed: {self.log_tail()}")
        return out

    def global_var(self, name: str) -> str:
        """A global variable (the dialplan's marks): "" when unset (``global_getvar`` then
        prints nothing, which inbound ESL turns into "-ERR no reply")."""
        value = self.api(f"global_getvar {name}").strip()
        return "" if value == "-ERR no reply" else value

    # --- calls ---------------------------------------------------------------------------

    def sound(self, name: str, pcm_8k: bytes) -> str:
        """Store 8 kHz slin as a WAV the dialplan can play; return its path."""
        path = self.sounds / f"{name}.wav"
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(8000)
            w.writeframes(pcm_8k)
        return str(path)

    def call(
        self,
        steps: Sequence[Step],
        mode: str = "dialplan",
        variables: Mapping[str, str] | None = None,
    ) -> Call:
        """Place a test call whose caller runs ``steps``.

        ``mode``: ``dialplan`` (the bot half runs ``tobot_<tag>``: socket from the XML
        dialplan, the dialplan going on after it), ``static`` (the same without ``async``),
        ``example`` (5000 in the admin's example dialplan, ``dialplans/freeswitch``)
        or ``inline`` (``originate ...
        '&socket(127.0.0.1:<port> async full)'``, nothing after it). ``variables``: channel
        variables of the bot's half (``VOICEBOT_PROFILE``), set on the originate."""
        tag = "c" + uuid.uuid4().hex[:12]
        bot_uuid = str(uuid.uuid4())
        extra = "".join(f",{name}={value}" for name, value in (variables or {}).items())
        actions = [
            Step("answer"),
            Step("set", "RECORD_STEREO=true"),
            Step("record_session", f"{self.rec}/{tag}.wav"),
            *steps,
            Step("hangup"),
        ]
        lines = "\n".join(
            f"      <action application={quoteattr(s.app)} data={quoteattr(s.data)}/>"
            for s in actions
        )
        (self.callers / f"{tag}.xml").write_text(
            f'<include>\n  <extension name="caller_{tag}">\n'
            f'    <condition field="destination_number" expression="^caller_{tag}$">\n'
            f"{lines}\n    </condition>\n  </extension>\n</include>\n"
        )
        out = self.api("reloadxml")
        if "+OK" not in out:
            raise AssertionError(f"reloadxml: {out}")
        if mode == "dialplan":
            command = (
                f"originate {{origination_uuid={bot_uuid}{extra}}}loopback/caller_{tag}/default "
                f"tobot_{tag} XML default"
            )
        elif mode == "static":
            command = (
                f"originate {{origination_uuid={bot_uuid}{extra}}}loopback/caller_{tag}/default "
                f"tobotstatic_{tag} XML default"
            )
        elif mode == "example":
            command = (
                f"originate {{origination_uuid={bot_uuid}{extra}}}loopback/caller_{tag}/default "
                "5000 XML example"
            )
        elif mode == "inline":
            command = (
                f"originate {{origination_uuid={bot_uuid},vb_tag={tag}{extra}}}"
                f"loopback/caller_{tag}/default "
                f"'&socket(127.0.0.1:{self.bot_port} async full)'"
            )
        else:
            raise ValueError(mode)
        out = self.api(command, timeout_s=20.0)
        if "+OK" not in out:
            raise AssertionError(f"{command}: {out}\n{self.log_tail()}")
        return Call(tag, bot_uuid)

    def channels(self) -> str:
        return self.api("show channels")

    def exists(self, channel_uuid: str) -> bool:
        """``uuid_exists``: from the session table (``show channels`` reads the core
        database, which can lag behind)."""
        return self.api(f"uuid_exists {channel_uuid}").strip() == "true"

    def _recording_closed(self, tag: str) -> bool:
        # mod_sndfile writes the RIFF sizes when the file is closed (at the caller's hang-up).
        path = self.rec / f"{tag}.wav"
        with contextlib.suppress(OSError), path.open("rb") as f:
            head = f.read(8)
            return len(head) == 8 and int.from_bytes(head[4:8], "little") > 36
        return False

    def wait_call_gone(self, call: Call, timeout_s: float) -> None:
        """Both halves gone: the bot's by ``uuid_exists``, the caller's by its recording
        being closed."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._recording_closed(call.tag) and not self.exists(call.uuid):
                return
            time.sleep(0.25)
        raise AssertionError(f"call {call.tag} still up after {timeout_s} s:\n{self.channels()}")

    def recording(self, call: Call, timeout_s: float = 5.0) -> Recording:
        """The caller half's recording, once record_session has closed it."""
        path = self.rec / f"{call.tag}.wav"
        deadline = time.monotonic() + timeout_s
        while not self._recording_closed(call.tag):
            if time.monotonic() > deadline:
                raise AssertionError(f"no recording for {call.tag}: {self.log_tail()}")
            time.sleep(0.1)
        with wave.open(str(path), "rb") as w:
            if w.getnchannels() != 2:
                raise AssertionError(f"{path}: {w.getnchannels()} channel(s), expected stereo")
            samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
            rate_hz = w.getframerate()
        return Recording(heard=samples[0::2].copy(), said=samples[1::2].copy(), rate_hz=rate_hz)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
