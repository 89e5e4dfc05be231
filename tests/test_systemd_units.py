"""The systemd unit files: the settings issue 6 asks for, and ``systemd-analyze verify``."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from voicebot_pbx.ops import sdnotify

SYSTEMD_DIR = Path(__file__).resolve().parent.parent / "systemd"
UNITS = sorted(SYSTEMD_DIR.glob("*.service"))
BOT_UNIT = SYSTEMD_DIR / "voicebot-pbx.service"
RASA_UNIT_PATH = SYSTEMD_DIR / "voicebot-rasa.service"
RASA_TEMPLATE_PATH = SYSTEMD_DIR / "voicebot-rasa@.service"
DRAIN_TIMEOUT_S = 60  # the service's default drain time on SIGTERM


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> values (systemd allows repeated keys; continuation lines joined)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path.name}: key outside a section: {line}"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def seconds(value: str) -> float:
    units = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "ms": 0.001}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit]
    return total


def test_bot_unit_settings() -> None:
    unit = parse_unit(BOT_UNIT)
    service = {key: values[-1] for key, values in unit["Service"].items()}
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    assert service["Restart"] == "on-failure"
    assert seconds(service["WatchdogSec"]) >= 10
    assert service["User"] not in ("root", "0") and service["Group"] not in ("root", "0")
    assert service["ProtectSystem"] == "strict"
    assert service["StateDirectory"] == "voicebot-pbx"
    assert service["CacheDirectory"] == "voicebot-pbx"
    assert service["EnvironmentFile"].lstrip("-").startswith("/etc/voicebot-pbx/")
    assert seconds(service["TimeoutStopSec"]) > DRAIN_TIMEOUT_S
    assert service["KillMode"] == "mixed"
    assert service["NoNewPrivileges"] == "yes"
    assert service["CapabilityBoundingSet"] == ""
    assert "serve" in service["ExecStart"].split()
    # Secrets only through the environment file, never inline.
    for value in unit["Service"].get("Environment", []):
        assert not re.search(r"(SECRET|PASSWORD|TOKEN)=", value.upper()), value
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_watchdog_interval_matches_the_unit() -> None:
    service = parse_unit(BOT_UNIT)["Service"]
    usec = int(seconds(service["WatchdogSec"][-1]) * 1_000_000)
    interval = sdnotify.watchdog_interval_s({"WATCHDOG_USEC": str(usec)})
    assert interval is not None and interval * 2 == seconds(service["WatchdogSec"][-1])


@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_systemd_analyze_verify(unit: Path, tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not installed (Debian: apt-get install systemd)")
    # The binaries live under /opt on a server; verify checks they exist, so point ExecStart
    # at an executable that exists here and keep everything else byte for byte.
    text = re.sub(r"(?m)^(Exec\w+=[-@:+!]*)(/\S+)", r"\1/bin/true", unit.read_text())
    # A template (name@.service) is verified as one of its instances.
    copy = tmp_path / unit.name.replace("@.service", "@support.service")
    copy.write_text(text)
    result = subprocess.run(
        [tool, "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, output
    # verify exits 0 on unknown keys and bad values: any message is a finding.
    assert output == "", output


def test_profile_rasa_template_runs_one_loopback_server_per_profile() -> None:
    unit = parse_unit(SYSTEMD_DIR / "voicebot-rasa@.service")
    service = {key: values[-1] for key, values in unit["Service"].items()}
    assert service["EnvironmentFile"] == "/etc/voicebot-pbx/rasa-%i.env"
    assert service["StateDirectory"] == "voicebot-rasa/%i"
    command = service["ExecStart"].split()
    assert command[command.index("--project") + 1] == "${RASA_PROJECT}"
    assert command[command.index("--port") + 1] == "${RASA_PORT}"
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert command[command.index("--models-dir") + 1] == "/var/lib/voicebot-rasa/%i/models"
    assert service["IPAddressDeny"] == "any" and service["User"] not in ("root", "0")


def test_rasa_units_are_active_only_once_rasa_answers_and_the_bot_has_a_memory_cap() -> None:
    for path in (RASA_UNIT_PATH, RASA_TEMPLATE_PATH):
        service = parse_unit(path)["Service"]
        post = " ".join(service["ExecStartPost"])
        assert "voicebot_pbx.answers.rasa_server wait" in post, path
    bot = {key: values[-1] for key, values in parse_unit(BOT_UNIT)["Service"].items()}
    assert seconds(bot["TimeoutStartSec"]) > 0 and bot["MemoryMax"].endswith("G")


def test_rasa_wait_returns_once_the_server_answers_and_fails_after_its_timeout() -> None:
    import http.server
    import threading

    from voicebot_pbx.answers.rasa_server import wait_until_ready

    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"Hello from Rasa: 3.6.21")

        def log_message(self, *args: object) -> None:
            pass

    free = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    port = free.server_address[1]
    free.server_close()  # nothing listens there yet
    assert wait_until_ready("127.0.0.1", port, timeout_s=0.6, poll_s=0.1) == 1
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert wait_until_ready("127.0.0.1", server.server_address[1], timeout_s=5.0) == 0
    finally:
        server.shutdown()
        server.server_close()


def test_a_managed_rasa_under_systemd_writes_to_its_cache_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from voicebot_pbx.config import load_config
    from voicebot_pbx.ops.service import rasa_server_for

    monkeypatch.setenv("VOICEBOT_CACHE", "/opt/voicebot-pbx/.cache")  # read-only there
    monkeypatch.setenv("CACHE_DIRECTORY", f"{tmp_path}:/elsewhere")
    server = rasa_server_for(load_config())
    assert server.models_dir == tmp_path / "rasa-models"
    assert server.work_dir == tmp_path
