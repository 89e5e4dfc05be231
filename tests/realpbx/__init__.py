"""The real-PBX test bed: a real Asterisk and a real FreeSWITCH started by the tests.

Test support code, not product code. The builds come from the folder named by
``VOICEBOT_TEST_PBX`` (``.ci/run`` sets it to ``../shared/pbx``): each archive is checked
against that folder's ``SHA256SUMS`` and unpacked once under ``.cache/pbx/``. Each PBX then
runs as root under a private configuration in a temporary folder (``asterisk -C``,
``freeswitch -conf/-log/-db/-run``) on free loopback ports, so nothing of the machine's own
PBX (if any) is touched.

With ``VOICEBOT_TEST_PBX`` unset the real-PBX tests are skipped with one reason
(``conftest.py``); with it set, a missing or broken PBX fails them. One exception: a build
that dies of SIGILL at start (compiled for CPU instructions this machine lacks: the shared
Asterisk build uses AVX-512) skips the tests that need it, naming the instructions, since no
change to the project can make that binary run here.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENV = "VOICEBOT_TEST_PBX"
SKIP_REASON = (
    f"real-PBX test: set {ENV} to the folder with the Asterisk/FreeSWITCH builds "
    "(.ci/run sets it to ../shared/pbx)"
)


class PbxUnavailable(RuntimeError):
    """VOICEBOT_TEST_PBX is set but a PBX cannot be had: the test fails, never skips."""


def pbx_folder() -> Path | None:
    value = os.environ.get(ENV, "").strip()
    return Path(value).resolve() if value else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def unpacked(name: str) -> Path:
    """The PBX build ``name`` ("asterisk" or "freeswitch") unpacked from the archive in
    ``VOICEBOT_TEST_PBX``: the folder that holds its ``sbin``/``bin`` and ``lib``."""
    folder = pbx_folder()
    if folder is None:
        raise PbxUnavailable(SKIP_REASON)
    archives = sorted(folder.glob(f"{name}-*.tar.xz"))
    if len(archives) != 1:
        raise PbxUnavailable(f"expected one {name}-*.tar.xz in {folder}, found {archives}")
    archive = archives[0]
    sums: dict[str, str] = {}
    sums_file = folder / "SHA256SUMS"
    if sums_file.exists():
        for line in sums_file.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2:
                sums[parts[1].lstrip("*")] = parts[0]
    expected = sums.get(archive.name)
    if expected is None:
        raise PbxUnavailable(f"{archive.name} is not listed in {sums_file}")
    target = ROOT / ".cache" / "pbx" / f"{archive.name.removesuffix('.tar.xz')}-{expected[:12]}"
    done = target / ".unpacked"
    target.parent.mkdir(parents=True, exist_ok=True)
    with (target.parent / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            actual = _sha256(archive)
            if actual != expected:
                raise PbxUnavailable(f"{archive} has sha256 {actual}, SHA256SUMS says {expected}")
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir()
            subprocess.run(["tar", "-xJf", str(archive), "-C", str(target)], check=True)
            done.touch()
    return target / name


def run_tool(argv: list[str], env: dict[str, str], timeout_s: float) -> str | None:
    """A PBX's command-line tool (``asterisk -rx``, ``fs_cli -x``): its output, or None
    when it fails or hangs (the PBX is not up yet, or is gone)."""
    try:
        done = subprocess.run(argv, env=env, capture_output=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None
    if done.returncode != 0:
        return None
    return done.stdout.decode(errors="replace")


def log_tail(root: Path, names: tuple[str, ...], chars: int = 3000) -> str:
    """The end of each of a PBX's log files under ``root`` (for failure messages)."""
    text = ""
    for name in names:
        path = root / name
        if path.exists():
            text += f"--- {name}\n" + path.read_text(errors="replace")[-chars:]
    return text


def wait_ready(
    proc: subprocess.Popen[bytes],
    name: str,
    ready: Callable[[], bool],
    timeout_s: float,
    log_tail: Callable[[], str],
    poll_s: float = 0.25,
) -> None:
    """Until ``ready()`` (a PBX's own status command says so); a PBX that exits or is not
    ready in ``timeout_s`` is ``PbxUnavailable`` with the end of its logs."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            if proc.returncode == -signal.SIGILL:
                pytest.skip(cpu_mismatch(name))
            raise PbxUnavailable(f"{name} exited at start: {log_tail()}")
        if ready():
            return
        time.sleep(poll_s)
    raise PbxUnavailable(f"{name} not ready in {timeout_s} s: {log_tail()}")


def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags (``/proc/cpuinfo``; empty where there is none)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_mismatch(name: str) -> str:
    """Why a PBX build died of SIGILL: the AVX-512 flags it was built for, this CPU's."""
    avx512 = sorted(f for f in cpu_flags() if f.startswith("avx512"))
    return (
        f"{name} from {ENV} died of SIGILL (illegal instruction) at start: the build uses "
        f"CPU instructions this machine lacks (its AVX-512 flags: {avx512 or 'none'}); "
        "a PBX build for this CPU is needed to run these tests"
    )


def wait_stopped(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """After the PBX was asked to stop: killed if it has not exited in ``timeout_s``."""
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5.0)


# --- outbound campaigns through a real PBX (issue #23) -------------------------------------

# Every day, all day; a busy callee retried once, a second later.
CAMPAIGN_SETTINGS = (
    'window = "00:00-23:59:59"\ndays = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]\n'
    "busy_retries_s = [1.0]\ncalls_per_s = 5.0\n"
)


def asterisk_campaign_config(
    bot_folder: Path, folder: Path, ami_secret: str
) -> tuple[Path, dict[str, str]]:
    """A campaign config (the bot's own, dialling ``Local/{number}@callee`` over the test
    Asterisk's AMI) and the environment with its AMI secret."""
    config = folder / "campaign.toml"
    config.write_text(
        (bot_folder / "voicebot.toml").read_text()
        + '\n[campaign]\nchannel = "Local/{number}@callee"\n'
        + CAMPAIGN_SETTINGS
    )
    return config, {**os.environ, "VOICEBOT_AMI_SECRET": ami_secret}


def campaign_cli(config: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``voicebot-pbx campaign ARGS --config CONFIG`` as its own process (as an admin runs it)."""
    import sys

    return subprocess.run(
        [sys.executable, "-m", "voicebot_pbx.cli", "campaign", *args, "--config", str(config)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def run_campaign_through(config: Path, env: dict[str, str], folder: Path) -> None:
    """``voicebot-pbx campaign`` with ``config`` against the test beds' callees (71xxx
    answers, 72xxx is busy): one answered, one busy twice, one on the do-not-call list never
    dialled, and a rerun of the same campaign dials nobody."""
    import json

    contacts = folder / "contacts.csv"
    contacts.write_text("number,name\n71001,Ada\n72001,Bob\n71002,Cy\n")

    def cli(*args: str) -> tuple[int, dict[str, object], str]:
        done = campaign_cli(config, env, *args)
        start = done.stdout.find("{")
        summary = json.loads(done.stdout[start:]) if start >= 0 else {}
        return done.returncode, summary, done.stdout + done.stderr

    assert cli("dnc", "add", "71002")[0] == 0
    code, summary, output = cli("run", str(contacts))
    assert code == 0, output
    assert summary["status"] == {"done": 1, "exhausted": 1, "dnc": 1}, summary
    assert summary["attempts"] == {"answered": 1, "busy": 2}, summary
    code, again, output = cli("run", str(contacts))
    assert code == 0 and again["run"]["dialled"] == 0, output  # type: ignore[index]


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost (its own CA) and its key, made with the
    openssl command line: ``folder``/bot-cert.pem and bot-key.pem."""
    import subprocess

    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "bot-cert.pem", folder / "bot-key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"]
        + ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"]
        + ["-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key
