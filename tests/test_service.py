"""The service as an admin runs it, and its call-control features.

* a real ``voicebot-pbx serve`` process: sd_notify READY/STOPPING on a test socket, the
  health endpoint, a profile selected by listen port, SIGTERM drain (0x00 to the call in
  progress, records complete);
* profile selection by the dialplan's VOICEBOT_PROFILE over (fake) AMI, and an outbound
  Originate whose AudioSocket leg hears the outbound greeting first;
* the peer allowlist.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import structlog

from tests.fake_ami import FakeAmi, _first
from tests.speech import have_espeak
from tests.test_turns import make_shared
from tests.test_webhook import Crm
from voicebot_pbx.call.session import make_handler
from voicebot_pbx.config import (
    AmiConfig,
    ProfileConfig,
    ServerConfig,
    load_config,
    parse_config,
)
from voicebot_pbx.config.parse import ConfigError
from voicebot_pbx.ops.records import JsonlRecorder
from voicebot_pbx.pbx.ami import AmiClient
from voicebot_pbx.pbx.audiosocket import AudioSocketServer
from voicebot_pbx.pbx.caller import Pause, Say, SimulatedCaller
from voicebot_pbx.testing import tone

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- the real service process ------------------------------------------------------------


@pytest.mark.models
@pytest.mark.skipif(not have_espeak(), reason="needs espeak-ng and sox (scripts/install)")
def test_service_notifies_serves_a_profile_port_and_drains_on_sigterm(tmp_path: Path) -> None:
    port, profile_port, health_port = free_port(), free_port(), free_port()
    crm = Crm(port=free_port())  # the post-call webhook's receiver
    config = tmp_path / "voicebot.toml"
    config.write_text(
        f"""
state_dir = "{tmp_path / "state"}"
[server]
port = {port}
drain_s = 1.5
[health]
port = {health_port}
[dialogue]
engine = "rules"
[tts]
cache_dir = "{ROOT / ".cache" / "test-tts-cache"}"
[webhook]
url = "{crm.url}"
secret_env = "TEST_WEBHOOK_SECRET"
[[profiles]]
name = "reminder"
port = {profile_port}
greeting = "This is a reminder call from Northwind Energy."
tts_length_scale = 1.15       # its own voice settings: warmed into its own cache
"""
    )
    notify_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(1.0)
    # No WATCHDOG_PID: the child cannot know its pid in advance; any pid is accepted then.
    env = {
        **os.environ,
        "NOTIFY_SOCKET": str(notify_path),
        "WATCHDOG_USEC": "2000000",
        "TEST_WEBHOOK_SECRET": "s3cret",
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "voicebot_pbx.cli",
            "serve",
            "--config",
            str(config),
            "--record-audio",  # `make run RECORD=1`: every call recorded for the calls page
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "serve.log").open("wb"),
    )
    messages: list[str] = []

    def wait_for(state: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(state in m for m in messages):
                return
            with contextlib.suppress(TimeoutError):
                messages.append(notify.recv(4096).decode())
            if proc.poll() is not None:  # gone: what it sent before is still queued
                with contextlib.suppress(TimeoutError):
                    while True:
                        messages.append(notify.recv(4096).decode())
                if not any(state in m for m in messages):
                    raise AssertionError((tmp_path / "serve.log").read_text()[-3000:])
        raise AssertionError(f"no {state} in {messages}")

    try:
        wait_for("READY=1", 180.0)
        wait_for("WATCHDOG=1", 5.0)  # the heartbeat runs on the event loop
        with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/ready", timeout=5) as r:
            ready = json.loads(r.read())
        assert ready["ready"] is True
        with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/metrics", timeout=5) as r:
            assert b"voicebot_active_calls" in r.read()

        async def calls() -> tuple[object, object]:
            await crm.start()
            profile_call = SimulatedCaller("127.0.0.1", profile_port, reply_gap_s=0.5)
            first = await profile_call.run([Pause(0.3)])
            staying = SimulatedCaller("127.0.0.1", port, reply_gap_s=0.5)
            stay_task = asyncio.create_task(staying.run([Pause(60.0)]))
            await asyncio.sleep(3.0)  # greeting playing / done; the call is in progress
            proc.send_signal(signal.SIGTERM)
            second = await asyncio.wait_for(stay_task, 30.0)
            await asyncio.to_thread(proc.wait, 30)  # the sender's last round is over
            await crm.stop()
            return first, second

        first, second = asyncio.run(calls())
        assert first.greeting_heard  # type: ignore[attr-defined]
        assert second.got_hangup, "the call in progress got 0x00 at the end of the drain"  # type: ignore[attr-defined]
        wait_for("STOPPING=1", 10.0)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        notify.close()
    from voicebot_pbx.config import AnalyticsConfig
    from voicebot_pbx.ops.analytics_open import open_store

    records = open_store(AnalyticsConfig(), tmp_path / "state").calls()
    by_profile = {r.profile: r for r in records}
    assert by_profile["reminder"].turns[0].reply_text == (
        "This is a reminder call from Northwind Energy."
    )
    assert by_profile["default"].end_reason == "drained"
    # --record-audio: both calls were recorded (WAV files under the state dir).
    assert all(r.recording_path and Path(r.recording_path).is_file() for r in records)
    # The reminder profile spoke its pre-synthesized greeting in its own voice settings.
    assert by_profile["reminder"].turns[0].reply_source == "cache"
    log_text = (tmp_path / "serve.log").read_text()
    assert "profile_ready" in log_text and "length_scale=1.15" in log_text
    assert "startup_heap_frozen" in log_text  # before READY: see the test below
    # The post-call webhook: every call either reached the CRM, signed, or is still in the
    # durable queue for the next start (the drained call may end after the sender stopped).
    from voicebot_pbx.ops.webhook import sign
    from voicebot_pbx.ops.webhook_outbox import Outbox

    assert crm.received, log_text[-3000:]
    for request in crm.received:
        stamp = request.headers["x-voicebot-timestamp"]
        assert request.headers["x-voicebot-signature"] == sign(b"s3cret", stamp, request.body)
        assert request.json()["call"]["call_id"] == request.headers["x-voicebot-delivery"]
    outbox = Outbox(tmp_path / "state" / "webhook-outbox.sqlite")
    queued = [d.call_id for d in outbox.due(time.time() + 3600.0, 100)]
    outbox.close()
    # At least once: a call taken by the CRM as the sender was stopped may also still be
    # queued (the CRM dedupes on X-Voicebot-Delivery).
    assert set(crm.call_ids()) | set(queued) == {r.call_id for r in records}


def test_the_startup_heap_leaves_the_collected_generations() -> None:
    import gc

    from voicebot_pbx.ops.service import freeze_startup_heap

    alive_at_startup = [object()]
    try:
        frozen = freeze_startup_heap()
        assert frozen == gc.get_freeze_count() > 0
        made_later = [object()]
        tracked = gc.get_objects()  # generations 0-2: what a full collection walks
        assert not any(o is alive_at_startup for o in tracked)
        assert any(o is made_later for o in tracked)
    finally:
        gc.unfreeze()


# --- profiles over AMI and outbound calls (fake AMI, fake engines, real sockets) ---------


def ami_config(fake: FakeAmi) -> AmiConfig:
    return AmiConfig(enabled=True, port=fake.port, secret_env="", action_timeout_s=2.0)


async def bot_with_ami(
    fake: FakeAmi, tmp_path: Path
) -> tuple[AudioSocketServer, AmiClient, JsonlRecorder]:
    shared = make_shared(stt_delay_s=0.05)
    profiles = (
        ProfileConfig(name="billing", greeting="Billing line, how can I help?"),
        ProfileConfig(name="outbound", greeting_clip="reminder"),
    )
    config = dataclasses.replace(
        shared.config,
        server=dataclasses.replace(shared.config.server, port=0),
        profiles=profiles,
    )
    from voicebot_pbx.audio import write_wav
    from voicebot_pbx.call.prompts import ClipLibrary

    write_wav(tmp_path / "reminder.wav", tone(1.0, 8000, 300), 8000)
    recorder = JsonlRecorder(tmp_path / "calls.jsonl")
    ami = AmiClient(ami_config(fake), secret=fake.secret)
    await ami.start()
    await ami.wait_connected(5.0)
    shared = dataclasses.replace(
        shared,
        config=config,
        control=ami,
        recorder=recorder,
        clips=ClipLibrary({"reminder": tmp_path / "reminder.wav"}),
    )
    server = AudioSocketServer(config.server, make_handler(shared))
    await server.start()
    return server, ami, recorder


def test_profile_from_the_dialplan_channel_variable(tmp_path: Path) -> None:
    async def scenario() -> list[dict[str, object]]:
        fake = FakeAmi()
        await fake.start()
        server, ami, recorder = await bot_with_ami(fake, tmp_path)
        try:
            call_id = uuid.uuid4()
            channel = fake.add_channel("PJSIP/1001-00000001")
            channel.variables["VOICEBOT_PROFILE"] = "billing"
            # Asterisk runs AudioSocket(): Newexten carries the UUID, then it connects.
            await fake.newexten(channel, "AudioSocket", f"{call_id},127.0.0.1:{server.port}")
            await asyncio.sleep(0.1)
            caller = SimulatedCaller("127.0.0.1", server.port, call_uuid=call_id, reply_gap_s=0.4)
            await caller.run([Pause(0.2)])
            await asyncio.wait_for(server.wait_idle(), 5.0)
        finally:
            await server.close()
            await ami.close()
            await fake.stop()
        return recorder.read_all()

    (record,) = asyncio.run(scenario())
    assert record["profile"] == "billing"
    assert record["turns"][0]["reply_text"] == "Billing line, how can I help?"  # type: ignore[index]


def test_a_transfer_sets_the_handover_variables_before_the_redirect(tmp_path: Path) -> None:
    """The caller asks for an agent: the bot sets VOICEBOT_* on the caller's channel (AMI
    Setvar), then redirects it; the transfer context reads them (issue #19 item 3)."""
    from tests.test_turns import AGENT

    async def scenario() -> tuple[FakeAmi, dict[str, str], list[dict[str, object]]]:
        fake = FakeAmi()
        fake.dialplan.add(("voicebot-transfer", "q"))
        await fake.start()
        server, ami, recorder = await bot_with_ami(fake, tmp_path)
        try:
            call_id = uuid.uuid4()
            channel = fake.add_channel("PJSIP/1001-00000002")
            await fake.newexten(channel, "AudioSocket", f"{call_id},127.0.0.1:{server.port}")
            await asyncio.sleep(0.1)
            caller = SimulatedCaller("127.0.0.1", server.port, call_uuid=call_id, reply_gap_s=0.4)
            await caller.run([Pause(0.3), Say(tone(0.8, 8000, AGENT)), Pause(2.0)])
            await asyncio.wait_for(server.wait_idle(), 5.0)
        finally:
            await server.close()
            await ami.close()
            await fake.stop()
        return fake, dict(channel.variables), recorder.read_all()

    fake, variables, records = asyncio.run(scenario())
    (record,) = records
    assert record["end_reason"] == "transferred" and not record["errors"]
    names = [_first(a, "Action") + ":" + _first(a, "Variable") for a in fake.actions]
    setvars = [n.split(":", 1)[1] for n in names if n.startswith("Setvar:")]
    assert setvars == [
        "VOICEBOT_CALL_ID",
        "VOICEBOT_INTENT",
        "VOICEBOT_SUMMARY",
        "VOICEBOT_VERIFIED",
    ]
    # All of them before the Redirect that moves the channel.
    assert max(names.index(f"Setvar:{v}") for v in setvars) < names.index("Redirect:")
    assert variables["VOICEBOT_CALL_ID"] == record["call_id"]
    assert variables["VOICEBOT_VERIFIED"] == "no"
    assert variables["VOICEBOT_SUMMARY"].startswith(f"{variables['VOICEBOT_INTENT']}; 1 turn")


def test_originate_places_the_call_and_the_leg_hears_the_outbound_greeting_first(
    tmp_path: Path,
) -> None:
    from voicebot_pbx.cli import originate_call

    async def scenario() -> tuple[dict[str, object], object, list[dict[str, object]]]:
        fake = FakeAmi()
        fake.dialplan.add(("voicebot-outbound", "s"))
        await fake.start()
        server, ami, recorder = await bot_with_ami(fake, tmp_path)
        base = load_config()
        config = dataclasses.replace(base, state_dir=str(tmp_path / "state"), ami=ami_config(fake))
        os.environ["VOICEBOT_AMI_SECRET"] = fake.secret
        try:
            config = dataclasses.replace(
                config, ami=dataclasses.replace(config.ami, secret_env="VOICEBOT_AMI_SECRET")
            )
            placing = asyncio.create_task(originate_call(config, "PJSIP/1001", profile="outbound"))
            action = await fake.wait_for_action("Originate", 5.0)
            variables = dict(v.split("=", 1) for v in action["variable"])
            outcome = await placing
            # The answered leg runs [voicebot-outbound]: Newexten, then AudioSocket connects.
            channel = fake.add_channel("PJSIP/1001-00000009")
            channel.variables.update(variables)
            leg_uuid = uuid.UUID(variables["VOICEBOT_UUID"])
            await fake.newexten(channel, "AudioSocket", f"{leg_uuid},127.0.0.1:{server.port}")
            await asyncio.sleep(0.1)
            leg = SimulatedCaller("127.0.0.1", server.port, call_uuid=leg_uuid, reply_gap_s=0.4)
            result = await leg.run([Pause(0.2)])
            await asyncio.wait_for(server.wait_idle(), 5.0)
        finally:
            os.environ.pop("VOICEBOT_AMI_SECRET", None)
            await server.close()
            await ami.close()
            await fake.stop()
        return outcome, result, recorder.read_all()

    outcome, result, records = asyncio.run(scenario())
    assert outcome["outcome"] == "answered"
    (record,) = records
    assert record["call_id"] == outcome["call_id"] and record["profile"] == "outbound"
    assert record["turns"][0]["reply_source"] == "clip"  # type: ignore[index]
    # The clip (pre-recorded, no synthesis) is the first thing on the wire, at once.
    frames = result.frames  # type: ignore[attr-defined]
    first_voiced = next(t for t, voiced in frames if voiced)
    assert first_voiced - frames[0][0] < 0.5
    log = (tmp_path / "state" / "outbound.jsonl").read_text().splitlines()
    assert json.loads(log[0])["outcome"] == "answered"


# --- allowlist ---------------------------------------------------------------------------


def test_peer_not_in_the_allowlist_is_refused() -> None:
    async def scenario() -> tuple[bool, int, list[dict[str, object]]]:
        shared = make_shared()
        config = ServerConfig(port=0, allow=("10.0.0.0/8",))
        server = AudioSocketServer(config, make_handler(shared))
        await server.start()
        with structlog.testing.capture_logs() as logs:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            from voicebot_pbx.pbx.audiosocket_codec import encode_uuid

            writer.write(encode_uuid(uuid.uuid4()))
            try:
                data = await asyncio.wait_for(reader.read(100), 5.0)
            except ConnectionResetError:  # closed with our UUID unread: a reset
                data = b""
            writer.close()
        calls = server.calls_total
        await server.close()
        return data == b"", calls, logs

    closed, calls, logs = asyncio.run(scenario())
    assert closed and calls == 0
    assert [e for e in logs if e.get("reason") == "peer_not_allowed"]


def test_a_non_loopback_listener_needs_an_allowlist() -> None:
    with pytest.raises(ConfigError, match="server.allow"):
        parse_config({"server": {"host": "0.0.0.0"}})
    config = parse_config({"server": {"host": "0.0.0.0", "allow": ["192.0.2.10/32"]}})
    assert config.server.allow == ("192.0.2.10/32",)


def test_loopback_peer_is_served_by_default() -> None:
    async def scenario() -> bool:
        shared = make_shared()
        server = AudioSocketServer(ServerConfig(port=0), make_handler(shared))
        await server.start()
        caller = SimulatedCaller("127.0.0.1", server.port, reply_gap_s=0.3)
        result = await caller.run([Pause(0.2)])
        await server.close()
        return result.greeting_heard

    assert asyncio.run(scenario())


def test_ready_reports_rasa_ok_only_while_the_bots_own_server_answers(tmp_path: Path) -> None:
    """Issue #24: an orphaned Rasa from an earlier bot answered the URL, so /ready said "ok"
    while the bot's own server had failed to start."""
    from voicebot_pbx.answers.action_server import ActionServer
    from voicebot_pbx.answers.rasa import RasaDialogue
    from voicebot_pbx.answers.rasa_server import RasaServer
    from voicebot_pbx.config import ActionsConfig
    from voicebot_pbx.ops.service import _State

    state = _State(models_loaded=True)
    state.rasa = RasaDialogue("http://127.0.0.1:9")
    state.rasa_ok = True  # something answers the URL
    assert state.readiness()["rasa"] == "ok"  # not managed: reachable is enough
    root = Path(__file__).resolve().parent.parent
    state.rasa_server = RasaServer(
        root / "rasa_project", tmp_path / "venv", models_dir=tmp_path / "models", facts={}
    )
    state.actions = ActionServer(ActionsConfig(), state_dir=tmp_path, venv_dir=tmp_path)
    report = state.readiness()
    assert report["rasa"] == "degraded" and report["actions"] == "degraded"
    assert report["status"] == "degraded" and report["ready"] is True


def test_a_failed_rasa_start_is_retried_with_back_off(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """It used to be logged once and never tried again (the rules answered for good)."""
    from voicebot_pbx.answers.rasa import RasaDialogue
    from voicebot_pbx.ops import service

    attempts: list[float] = []

    async def flaky(*args: object, **kwargs: object) -> None:
        attempts.append(time.monotonic())
        if len(attempts) < 3:
            raise RuntimeError("127.0.0.1:5005 is already in use")

    monkeypatch.setattr(service, "start_rasa", flaky)
    rasa = RasaDialogue("http://127.0.0.1:9")

    async def main() -> None:
        try:
            async with asyncio.timeout(5):
                await service._start_rasa_logged([], None, rasa, retry_s=(0.05, 0.1))
        finally:
            await rasa.aclose()

    asyncio.run(main())
    assert len(attempts) == 3
    assert attempts[1] - attempts[0] >= 0.05 and attempts[2] - attempts[1] >= 0.1  # backed off
    assert capsys.readouterr().out.count("rasa_unavailable") == 2


def test_routed_control_asks_freeswitch_about_its_own_calls() -> None:
    """A FreeSWITCH call's channel variables come from its event socket, an Asterisk call's
    over AMI (a campaign's opt-out and machine verdict read VOICEBOT_CAMPAIGN this way;
    before, a FreeSWITCH call always got None)."""
    from voicebot_pbx.ops.service import RoutedControl

    class Freeswitch:
        calls = {"fs-call": object()}

        async def get_var(self, call_id: str, name: str) -> str | None:
            return f"esl:{call_id}:{name}"

    class Ami:
        async def get_var(self, call_id: str, name: str) -> str | None:
            return f"ami:{call_id}:{name}"

    both = RoutedControl(Freeswitch(), Ami())  # type: ignore[arg-type]
    alone = RoutedControl(Freeswitch(), None)  # type: ignore[arg-type]

    async def main() -> list[str | None]:
        return [
            await both.get_var("fs-call", "VOICEBOT_CAMPAIGN"),
            await both.get_var("ast-call", "VOICEBOT_CAMPAIGN"),
            await alone.get_var("fs-call", "VOICEBOT_CONTACT"),
            await alone.get_var("ast-call", "VOICEBOT_CONTACT"),
        ]

    assert asyncio.run(main()) == [
        "esl:fs-call:VOICEBOT_CAMPAIGN",
        "ami:ast-call:VOICEBOT_CAMPAIGN",
        "esl:fs-call:VOICEBOT_CONTACT",
        None,
    ]
