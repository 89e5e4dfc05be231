"""The bot as an admin runs it: a ``voicebot-pbx serve`` process on free ports.

``BotProcess(folder, ...).start()`` writes a TOML config (rule dialogue unless told
otherwise, the suite's shared TTS cache, AMI pointed at the test bed's Asterisk when given),
starts ``python -m voicebot_pbx.cli serve`` and waits until ``/ready`` answers 200. Its call
records are read back from the analytics store it writes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.realpbx import ROOT, free_port, wait_stopped
from voicebot_pbx.config import AnalyticsConfig
from voicebot_pbx.ops.analytics_open import open_store
from voicebot_pbx.ops.records import CallRecord


class BotProcess:
    def __init__(
        self,
        folder: Path,
        *,
        port: int = 0,
        ami_port: int = 0,
        ami_secret: str = "",
        extra_toml: str = "",
        dialogue: str = "rules",
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.folder = folder
        self.port = port or free_port()
        self.health_port = free_port()
        self.ami_port = ami_port
        self.ami_secret = ami_secret
        self.extra_toml = extra_toml
        self.extra_env = dict(extra_env or {})
        self.dialogue = dialogue
        self.state_dir = folder / "state"
        self.log_path = folder / "serve.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def config_text(self) -> str:
        ami = ""
        if self.ami_port:
            ami = f"""
[ami]
enabled = true
port = {self.ami_port}
username = "voicebot"
action_timeout_s = 3.0
reconnect_max_s = 2.0
"""
        return f"""
state_dir = "{self.state_dir}"
[server]
port = {self.port}
drain_s = 2.0
[health]
port = {self.health_port}
[dialogue]
engine = "{self.dialogue}"
[tts]
cache_dir = "{ROOT / ".cache" / "test-tts-cache"}"
{ami}
{self.extra_toml}
"""

    def start(self, timeout_s: float = 180.0) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        config = self.folder / "voicebot.toml"
        config.write_text(self.config_text())
        env = {**os.environ, "VOICEBOT_AMI_SECRET": self.ami_secret, **self.extra_env}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "voicebot_pbx.cli", "serve", "--config", str(config)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.log_path.open("ab"),
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise AssertionError(f"serve exited at start: {self.log_tail()}")
            if self.ready():
                return
            time.sleep(0.3)
        raise AssertionError(f"serve not ready in {timeout_s} s: {self.log_tail()}")

    def ready(self) -> bool:
        url = f"http://127.0.0.1:{self.health_port}/ready"
        try:
            with urllib.request.urlopen(url, timeout=2.0) as response:
                return bool(json.loads(response.read()).get("ready"))
        except (OSError, urllib.error.URLError, ValueError):
            return False

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: a node that dies mid-traffic."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=10.0)

    def stop(self, timeout_s: float = 30.0) -> int | None:
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            wait_stopped(proc, timeout_s)
        return proc.returncode

    def log_tail(self, chars: int = 4000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""

    def log_text(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""

    def records(self) -> list[CallRecord]:
        return open_store(AnalyticsConfig(), self.state_dir).calls()

    def wait_records(self, count: int, timeout_s: float = 15.0) -> list[CallRecord]:
        """At least ``count`` finished call records (written when each call ends)."""
        deadline = time.monotonic() + timeout_s
        while True:
            records = [r for r in self.records() if r.ended_at]
            if len(records) >= count or time.monotonic() > deadline:
                return records
            time.sleep(0.2)
