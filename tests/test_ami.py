"""AMI call control against a fake Asterisk 22 manager (tests/fake_ami.py)."""

from __future__ import annotations

import asyncio
import configparser
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
import structlog

from tests.fake_ami import FakeAmi, FakeChannel, OriginatePlan
from voicebot_pbx.config import AmiConfig
from voicebot_pbx.pbx.ami import AmiClient
from voicebot_pbx.pbx.ami_codec import (
    AmiConfigError,
    AmiMessage,
    AmiNotConnected,
    AmiTimeout,
    CoreShowChannelEvent,
    DtmfDeduper,
    DtmfEndEvent,
    HangupEvent,
    NewextenEvent,
    audiosocket_uuid,
    parse_event,
)
from voicebot_pbx.pbx.ami_originate import originate, originate_outcome
from voicebot_pbx.pbx.ami_wire import load_secret
from voicebot_pbx.pbx.media import CallControl

T = TypeVar("T")
SECRET = "s3cret-Pa55"
REPO = Path(__file__).resolve().parent.parent


def run(main: Callable[[], Coroutine[Any, Any, T]], timeout_s: float = 20.0) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(timeout_s):
            return await main()

    return asyncio.run(bounded())


def make_config(fake: FakeAmi, **overrides: Any) -> AmiConfig:
    values: dict[str, Any] = {
        "enabled": True,
        "port": fake.port,
        "action_timeout_s": 1.0,
        "reconnect_max_s": 0.1,
    }
    values.update(overrides)
    return AmiConfig(**values)


async def connected_client(fake: FakeAmi, *, secret: str = SECRET, **kwargs: Any) -> AmiClient:
    overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in AmiConfig.__dataclass_fields__}
    client = AmiClient(make_config(fake, **overrides), secret=secret, **kwargs)
    await client.start()
    assert await client.wait_connected(5.0)
    return client


@contextlib.asynccontextmanager
async def ami_pair(
    fake: FakeAmi | None = None, **client_kwargs: Any
) -> AsyncIterator[tuple[FakeAmi, AmiClient]]:
    """A started fake Asterisk (``FakeAmi()`` unless given) and a client logged in to it
    (``connected_client``); both closed on the way out, the fake also when the login fails."""
    fake = fake if fake is not None else FakeAmi()
    await fake.start()
    try:
        client = await connected_client(fake, **client_kwargs)
        try:
            yield fake, client
        finally:
            await client.close()
    finally:
        await fake.stop()


async def until(predicate: Callable[[], bool], timeout_s: float = 3.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 - polls arbitrary client state
            await asyncio.sleep(0.005)


async def audiosocket_call(
    fake: FakeAmi, client: AmiClient, channel: str, **variables: str
) -> tuple[str, FakeChannel]:
    """A channel (with ``variables``) running AudioSocket() with a fresh UUID, once the
    client has mapped that UUID to it."""
    call_id = new_uuid()
    chan = fake.add_channel(channel)
    chan.variables.update(variables)
    await fake.newexten(chan, "AudioSocket", f"{call_id},127.0.0.1:9092")
    await until(lambda: client.channel_for(call_id) is not None)
    return call_id, chan


def first(action: dict[str, list[str]], name: str) -> str:
    return action[name.lower()][0]


def new_uuid() -> str:
    return str(uuid.uuid4())


# -- pure parts --------------------------------------------------------------------------------


def test_audiosocket_uuid_from_both_dialplan_forms() -> None:
    u = new_uuid()
    assert audiosocket_uuid("AudioSocket", f"{u},127.0.0.1:9092") == u
    assert audiosocket_uuid("AudioSocket", f"{u.upper()},127.0.0.1:9092") == u
    assert audiosocket_uuid("Dial", f"AudioSocket/127.0.0.1:9092/{u}/c(slin16)") == u
    assert audiosocket_uuid("Dial", f"PJSIP/100&AudioSocket/10.0.0.2:9092/{u},30") == u
    assert audiosocket_uuid("AudioSocket", "1716220000.42,127.0.0.1:9092") is None  # UNIQUEID
    assert audiosocket_uuid("Dial", "PJSIP/100,30") is None
    assert audiosocket_uuid("Queue", "agents") is None


def test_originate_reason_codes() -> None:
    # pbx_dial_reason() in main/pbx.c, values of enum ast_control_frame_type
    assert originate_outcome(4) == "answered"
    assert originate_outcome(3) == "no_answer"
    assert originate_outcome(5) == "busy"
    for reason in (0, 1, 8, 99, -1):
        assert originate_outcome(reason) == "failed"


def test_parse_event_types() -> None:
    msg = AmiMessage(
        (
            ("Event", "DTMFEnd"),
            ("Channel", "PJSIP/100-1"),
            ("Uniqueid", "1.1"),
            ("Digit", "#"),
            ("DurationMs", "140"),
            ("Direction", "Received"),
        )
    )
    event = parse_event(msg)
    assert event == DtmfEndEvent("PJSIP/100-1", "1.1", "#", 140, "Received")
    hang = parse_event(AmiMessage((("Event", "Hangup"), ("Channel", "X"), ("Cause", "junk"))))
    assert isinstance(hang, HangupEvent) and hang.cause == -1


def test_dtmf_deduper_keeps_one_copy_per_key_press() -> None:
    d = DtmfDeduper(window_s=0.5)
    # Old Asterisk: only AMI digits, repeats are real key presses.
    assert d.accept("a", "5", "ami", 1.0)
    assert d.accept("a", "5", "ami", 1.3)
    # AMI first, then the AudioSocket copy of the same press: the copy is dropped once ...
    assert d.accept("b", "7", "ami", 1.0)
    assert not d.accept("b", "7", "media", 1.05)
    # ... after which the media path is authoritative and AMI copies are dropped.
    assert d.accept("b", "7", "media", 1.4)
    assert not d.accept("b", "7", "ami", 1.41)
    assert d.accept("b", "1", "media", 2.0)
    # Media first: AMI never gets through for that call.
    assert d.accept("c", "9", "media", 1.0)
    assert not d.accept("c", "9", "ami", 1.01)
    assert not d.accept("c", "2", "ami", 5.0)
    # A different digit from the other source within the window is a different press.
    assert d.accept("e", "3", "ami", 1.0)
    assert d.accept("e", "4", "media", 1.1)


def test_secret_from_env_or_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = AmiConfig()
    assert load_secret(config, {"VOICEBOT_AMI_SECRET": "abc"}) == "abc"
    with pytest.raises(AmiConfigError):
        load_secret(config, {})
    (tmp_path / "ami-secret").write_text("from-file\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    creds = AmiConfig(secret_file="${CREDENTIALS_DIRECTORY}/ami-secret")
    assert load_secret(creds, {}) == "from-file"
    with pytest.raises(AmiConfigError):
        load_secret(AmiConfig(secret_file=str(tmp_path / "missing")), {})
    with pytest.raises(AmiConfigError):
        load_secret(config, {"VOICEBOT_AMI_SECRET": "two\nlines"})


def test_transfer_destination() -> None:
    client = AmiClient(AmiConfig(), secret="x")
    assert client.transfer_destination("") == ("voicebot-transfer", "agents")
    assert client.transfer_destination("sales") == ("voicebot-transfer", "sales")
    assert client.transfer_destination("support, 200") == ("support", "200")
    with pytest.raises(ValueError):
        client.transfer_destination("agents\r\nAction: Originate")


def test_client_satisfies_call_control() -> None:
    control: CallControl = AmiClient(AmiConfig(), secret="x")
    assert callable(control.transfer)


# -- against the fake Asterisk -------------------------------------------------------------------


def test_login_success_and_event_mask() -> None:
    async def main() -> None:
        fake = FakeAmi()
        await fake.start()
        try:
            client = await connected_client(fake)
            login = fake.actions_named("Login")[0]
            assert first(login, "Username") == "voicebot"
            assert first(login, "Secret") == SECRET
            assert first(login, "Events") == "call,dialplan,dtmf"
            assert client.connected
            assert client.ami_version == "11.0.0"
            await client.close()
            assert not client.connected
            assert fake.actions_named("Logoff")
        finally:
            await fake.stop()

    run(main)


def test_login_failure_backs_off_and_never_logs_the_secret() -> None:
    async def main() -> None:
        fake = FakeAmi()
        await fake.start()
        try:
            with structlog.testing.capture_logs() as logs:
                client = AmiClient(make_config(fake), secret="wrong-Secret-123")
                await client.start()
                await until(lambda: fake.login_attempts >= 3)
                assert not client.connected
                assert not await client.wait_connected(0.05)
                assert await client.transfer(new_uuid(), "agents") is False
                await client.close()
            # One line for the reason, not one per retry (a real Asterisk refusing the
            # login every back-off filled serve.log with identical warnings).
            failures = [e for e in logs if e["event"] == "ami_connect_failed"]
            assert len(failures) == 1
            assert "Authentication failed" in failures[0]["error"]
            assert failures[0]["retry_in_s"] <= 0.1
            assert "Authentication failed" in client.last_error
            assert "wrong-Secret-123" not in repr(logs)
        finally:
            await fake.stop()

    run(main)


def test_connect_refused_retries_until_asterisk_is_up() -> None:
    async def main() -> None:
        fake = FakeAmi()
        await fake.start()
        port = fake.port
        await fake.stop()  # nothing listens on the port now
        client = AmiClient(make_config(fake), secret=SECRET)
        await client.start()
        await asyncio.sleep(0.3)
        assert not client.connected
        fake2 = FakeAmi(port=port)
        await fake2.start()
        try:
            assert await client.wait_connected(5.0)
        finally:
            await client.close()
            await fake2.stop()

    run(main)


def test_newexten_maps_uuid_to_channel_and_hangup_cleans_up() -> None:
    async def main() -> None:
        async with ami_pair() as (fake, client):
            call_id = new_uuid()
            chan = fake.add_channel("PJSIP/trunk-00000001")
            await fake.newexten(chan, "Answer", "")
            await fake.newexten(chan, "Set", f"VOICEBOT_UUID={call_id}")
            await fake.newexten(chan, "AudioSocket", f"{call_id},127.0.0.1:9092")
            await until(lambda: client.channel_for(call_id) is not None)
            assert client.channel_for(call_id) == "PJSIP/trunk-00000001"
            assert client.channel_for(call_id.upper()) == "PJSIP/trunk-00000001"

            wide_id = new_uuid()
            wide = fake.add_channel("PJSIP/trunk-00000002")
            await fake.newexten(wide, "Dial", f"AudioSocket/127.0.0.1:9092/{wide_id}/c(slin16)")
            await until(lambda: client.channel_for(wide_id) is not None)

            await fake.hangup_event(chan)
            await until(lambda: client.channel_for(call_id) is None)
            assert client.channel_for(wide_id) == "PJSIP/trunk-00000002"

    run(main)


def test_transfer_redirects_the_callers_channel() -> None:
    async def main() -> None:
        # Asterisk's writes arrive in arbitrary pieces
        async with ami_pair(FakeAmi(chunk_size=7)) as (fake, client):
            call_id, chan = await audiosocket_call(fake, client, "PJSIP/trunk-00000003")

            assert await client.transfer(call_id, "agents") is True
            redirect = fake.actions_named("Redirect")[-1]
            assert first(redirect, "Channel") == "PJSIP/trunk-00000003"
            assert first(redirect, "Context") == "voicebot-transfer"
            assert first(redirect, "Exten") == "agents"
            assert first(redirect, "Priority") == "1"
            assert first(redirect, "ActionID")

            # Handover variables: one Setvar each on the caller's channel.
            assert await client.set_vars(call_id, {"VOICEBOT_INTENT": "x", "VOICEBOT_DONE": "1"})
            setvars = fake.actions_named("Setvar")[-2:]
            assert [
                (first(a, "Channel"), first(a, "Variable"), first(a, "Value")) for a in setvars
            ] == [
                ("PJSIP/trunk-00000003", "VOICEBOT_INTENT", "x"),
                ("PJSIP/trunk-00000003", "VOICEBOT_DONE", "1"),
            ]

            assert await client.transfer(call_id, "support,200") is True
            redirect = fake.actions_named("Redirect")[-1]
            assert (first(redirect, "Context"), first(redirect, "Exten")) == ("support", "200")

    run(main)


def test_a_websocket_call_is_controlled_on_the_channel_that_dialled_it() -> None:
    """Dial(WebSocket/...): the bot's call id is the WebSocket channel's uniqueid (its
    MEDIA_START channel_id); DialBegin maps it to the dialling channel, which transfer and
    Setvar act on."""

    async def main() -> None:
        async with ami_pair() as (fake, client):
            caller = fake.add_channel("PJSIP/trunk-00000007")
            ws = fake.add_channel("WebSocket/voicebot/0x7efc6000adc0")
            await fake.dial_begin(caller, ws)
            for _ in range(50):
                if client.channel_for(ws.uniqueid) is not None:
                    break
                await asyncio.sleep(0.02)
            assert client.channel_for(ws.uniqueid) == "PJSIP/trunk-00000007"
            assert await client.set_vars(ws.uniqueid, {"VOICEBOT_INTENT": "check_balance"})
            assert caller.variables["VOICEBOT_INTENT"] == "check_balance"
            assert await client.transfer(ws.uniqueid, "agents") is True
            redirect = fake.actions_named("Redirect")[-1]
            assert first(redirect, "Channel") == "PJSIP/trunk-00000007"
            # A Dial() of anything else maps nothing.
            other = fake.add_channel("PJSIP/agent-00000008")
            await fake.dial_begin(caller, other)
            await asyncio.sleep(0.1)
            assert client.channel_for(other.uniqueid) is None

    run(main)


def test_an_incoming_websocket_channel_is_offered_to_the_bot_by_its_connection_id() -> None:
    """Dial(WebSocket/INCOMING/...): chan_websocket sets MEDIA_WEBSOCKET_CONNECTION_ID on the
    new channel; its VarSet event hands the id to ``on_incoming_media`` (once; other
    variables and other channels' ids are not offers)."""

    async def main() -> list[str]:
        offered: list[str] = []
        async with ami_pair() as (fake, client):
            client.on_incoming_media = offered.append
            incoming = fake.add_channel("WebSocket/INCOMING/0x7efc6000adc0")
            await fake.var_set(incoming, "MEDIA_WEBSOCKET_OPTIMAL_FRAME_SIZE", "640")
            await fake.var_set(
                incoming, "MEDIA_WEBSOCKET_CONNECTION_ID", "0b2c7e4e-57b9-4a55-a7f5-4c1f7d0d2a01"
            )
            outgoing = fake.add_channel("WebSocket/voicebot/0x7efc6000ae00")
            await fake.var_set(outgoing, "MEDIA_WEBSOCKET_CONNECTION_ID", "voicebot")
            for _ in range(50):
                if offered:
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.1)
        return offered

    assert run(main) == ["0b2c7e4e-57b9-4a55-a7f5-4c1f7d0d2a01"]


def test_transfer_failures_return_false() -> None:
    async def main() -> None:
        async with ami_pair() as (fake, client):
            # Unknown call: nothing is sent.
            assert await client.transfer(new_uuid(), "agents") is False
            assert not fake.actions_named("Redirect")
            # The channel vanished on the Asterisk side: "Channel does not exist: ...".
            call_id, chan = await audiosocket_call(fake, client, "PJSIP/trunk-00000004")
            del fake.channels[chan.name]
            with structlog.testing.capture_logs() as logs:
                assert await client.transfer(call_id, "agents") is False
            assert any("Channel does not exist" in str(e.get("error")) for e in logs)
            # Header injection is refused before anything is written.
            assert await client.transfer(call_id, "agents\nAction: Originate") is False
            assert len(fake.actions_named("Redirect")) == 1

    run(main)


def test_hangup_getvar_setvar() -> None:
    async def main() -> None:
        async with ami_pair() as (fake, client):
            call_id, chan = await audiosocket_call(
                fake, client, "PJSIP/trunk-00000005", **{"CALLERID(num)": "5551234"}
            )
            assert await client.get_var(call_id, "CALLERID(num)") == "5551234"
            assert await client.set_var(call_id, "VOICEBOT_DONE", "1") is True
            assert chan.variables["VOICEBOT_DONE"] == "1"
            assert await client.hangup(call_id) is True
            assert first(fake.actions_named("Hangup")[-1], "Channel") == chan.name
            await until(lambda: client.channel_for(call_id) is None)  # its Hangup event
            assert await client.hangup(call_id) is False

    run(main)


def test_a_lookup_at_the_calls_start_waits_for_its_channel() -> None:
    """The AudioSocket connection can reach the bot before the Newexten event that names the
    channel (seen through the real Asterisk: a campaign call's VOICEBOT_PROFILE read as
    unknown). A Getvar asked then waits for the event, up to CHANNEL_WAIT_S; a call whose
    channel never comes gets None after that wait."""

    async def main() -> None:
        async with ami_pair() as (fake, client):
            call_id = new_uuid()
            chan = fake.add_channel("Local/73001@callee-00000001;1")
            chan.variables["VOICEBOT_PROFILE"] = "outbound"
            lookup = asyncio.create_task(client.get_var(call_id, "VOICEBOT_PROFILE"))
            await asyncio.sleep(0.05)
            assert not lookup.done()
            await fake.newexten(chan, "AudioSocket", f"{call_id},127.0.0.1:9092")
            assert await lookup == "outbound"
            assert await client.get_var(new_uuid(), "VOICEBOT_PROFILE") is None
            assert not client._awaited  # noqa: SLF001 - no waiter left behind

    run(main)


def test_dtmf_end_reaches_the_callback_once() -> None:
    async def main() -> None:
        got: list[tuple[str, str]] = []

        async def on_dtmf(call_id: str, digit: str) -> None:
            got.append((call_id, digit))

        async with ami_pair(on_dtmf=on_dtmf) as (fake, client):
            call_id, chan = await audiosocket_call(fake, client, "PJSIP/trunk-00000006")
            await fake.dtmf_end(chan, "4")
            await fake.dtmf_end(chan, "9", direction="Sent")  # played to the caller: ignored
            await until(lambda: len(got) == 1)
            assert got == [(call_id, "4")]
            # The AudioSocket copy of the same press is refused ...
            assert client.accept_media_dtmf(call_id, "4") is False
            # ... and once AudioSocket delivers DTMF, AMI copies are dropped for this call.
            assert client.accept_media_dtmf(call_id, "2") is True
            await fake.dtmf_end(chan, "2")
            await fake.dtmf_end(chan, "3")
            await asyncio.sleep(0.1)
            assert got == [(call_id, "4")]

    run(main)


def test_core_show_channels_is_a_complete_list() -> None:
    async def main() -> None:
        # every byte in its own segment
        async with ami_pair(FakeAmi(chunk_size=1), action_timeout_s=10.0) as (fake, client):
            ids = [new_uuid() for _ in range(3)]
            for n, call_id in enumerate(ids):
                fake.add_channel(f"PJSIP/trunk-0000001{n}", app_data=f"{call_id},127.0.0.1:9092")
            fake.add_channel("PJSIP/100-00000020", application="Dial", app_data="PJSIP/200")
            channels = await client.core_show_channels()
            assert len(channels) == 4
            assert all(isinstance(c, CoreShowChannelEvent) for c in channels)
            assert channels[0].application == "AudioSocket"
            assert channels[3].application_data == "PJSIP/200"

    run(main, timeout_s=40.0)


def test_drop_and_reconnect_recovers_calls_through_core_show_channels() -> None:
    async def main() -> None:
        async with ami_pair() as (fake, client):
            early = new_uuid()
            chan = fake.add_channel("PJSIP/trunk-00000030", app_data=f"{early},127.0.0.1:9092")
            await fake.newexten(chan, "AudioSocket", f"{early},127.0.0.1:9092")
            await until(lambda: client.channel_for(early) is not None)

            with structlog.testing.capture_logs() as logs:
                fake.drop_connections()
                await until(lambda: not client.connected)
                # While AMI is down: transfer degrades (logged), nothing raises.
                assert await client.transfer(early, "agents") is False
                # A call starts and one ends while the bot cannot see events.
                late = new_uuid()
                fake.add_channel("PJSIP/trunk-00000031", app_data=f"{late},127.0.0.1:9092")
                del fake.channels[chan.name]
                assert await client.wait_connected(5.0)
                await until(lambda: client.channel_for(late) is not None)
            assert client.channel_for(early) is None
            assert client.channel_for(late) == "PJSIP/trunk-00000031"
            assert client.connects == 2
            events = [e["event"] for e in logs]
            assert "ami_disconnected" in events and "ami_degraded" in events
            assert await client.transfer(late, "agents") is True

    run(main)


def test_resync_without_reporting_permission_is_not_fatal() -> None:
    async def main() -> None:
        fake = FakeAmi(write_perms="call,originate")
        await fake.start()
        try:
            with structlog.testing.capture_logs() as logs:
                client = await connected_client(fake)
                await until(lambda: any(e["event"] == "ami_resync_failed" for e in logs))
            assert "Permission denied" in next(
                e["error"] for e in logs if e["event"] == "ami_resync_failed"
            )
            assert client.connected
            await client.close()
        finally:
            await fake.stop()

    run(main)


def test_actions_time_out_and_pending_ones_fail_on_disconnect() -> None:
    async def main() -> None:
        async with ami_pair(action_timeout_s=0.2) as (fake, client):
            fake.unanswered.add("getvar")
            with pytest.raises(AmiTimeout):
                await client.send_action({"Action": "Getvar", "Variable": "X"})
            # A pending action fails as soon as the connection drops, not at its timeout.
            pending = asyncio.create_task(
                client.send_action({"Action": "Getvar", "Variable": "Y"}, timeout_s=30.0)
            )
            await fake.wait_for_action("Getvar")
            await until(lambda: len(fake.actions_named("Getvar")) == 2)
            fake.drop_connections()
            with pytest.raises(AmiNotConnected):
                await asyncio.wait_for(pending, 2.0)
            with pytest.raises(AmiNotConnected):
                await client.send_action({"Action": "Ping"})

    run(main)


def test_ping_timeout_triggers_reconnect() -> None:
    async def main() -> None:
        async with ami_pair(action_timeout_s=0.2, ping_interval_s=0.05) as (fake, client):
            fake.unanswered.add("ping")  # a stuck PBX: TCP is up, nothing answers
            await until(lambda: client.connects >= 2, timeout_s=5.0)
            assert len(fake.actions_named("Login")) >= 2

    run(main)


def test_originate_outcomes() -> None:
    async def main() -> None:
        fake = FakeAmi()
        fake.dialplan.add(("outbound", "greet"))
        fake.originate_plans.update(
            {
                "PJSIP/answer": OriginatePlan(reason=4),
                "PJSIP/ring": OriginatePlan(reason=3),
                "PJSIP/busy": OriginatePlan(reason=5),
                "PJSIP/congested": OriginatePlan(reason=8),
                "PJSIP/gone": OriginatePlan(reason=0),
            }
        )
        await fake.start()
        client = await connected_client(fake)
        try:
            outcomes = {}
            for endpoint in ("answer", "ring", "busy", "congested", "gone"):
                result = await originate(
                    client,
                    f"PJSIP/{endpoint}",
                    context="outbound",
                    exten="greet",
                    caller_id='"Northwind" <5550000>',
                    variables={"VOICEBOT_CAMPAIGN": "c1", "VOICEBOT_LANG": "en"},
                    timeout_s=2.0,
                )
                outcomes[endpoint] = result.outcome
                if endpoint == "answer":
                    assert result.answered and result.reason == 4
                    assert result.channel == "PJSIP/answer-00000007"
            assert outcomes == {
                "answer": "answered",
                "ring": "no_answer",
                "busy": "busy",
                "congested": "failed",
                "gone": "failed",
            }
            sent = fake.actions_named("Originate")[0]
            assert first(sent, "Async") == "true"
            assert first(sent, "Timeout") == "2000"
            assert sent["variable"] == ["VOICEBOT_CAMPAIGN=c1", "VOICEBOT_LANG=en"]
            # Refused at once ("Extension does not exist.") is a single Error response.
            refused = await originate(
                client, "PJSIP/answer", context="nowhere", exten="x", timeout_s=2.0
            )
            assert refused.outcome == "failed"
            assert refused.message == "Extension does not exist."
        finally:
            await client.close()
            await fake.stop()

        # Without AMI: failed, with a reason, no exception.
        offline = AmiClient(make_config(fake), secret=SECRET)
        result = await originate(offline, "PJSIP/answer", context="outbound", exten="greet")
        assert result.outcome == "failed" and "not connected" in result.message

    run(main)


def test_event_listener_runs_in_the_clients_task() -> None:
    async def main() -> None:
        fake = FakeAmi()
        await fake.start()
        seen: list[object] = []

        def boom(event: object) -> None:
            raise RuntimeError("listener bug")

        client = await connected_client(fake)
        client.add_listener(boom)
        client.add_listener(seen.append)
        try:
            chan = fake.add_channel("PJSIP/trunk-00000040")
            await fake.newexten(chan, "Playback", "hello")
            await until(lambda: any(isinstance(e, NewextenEvent) for e in seen))
            assert client.connected  # a failing listener does not hurt the client
        finally:
            await client.close()
            await fake.stop()

    run(main)


# -- manager.conf ------------------------------------------------------------------------------


def test_manager_conf_is_least_privilege_on_loopback() -> None:
    parser = configparser.ConfigParser(
        strict=False, interpolation=None, inline_comment_prefixes=(";",)
    )
    text = (REPO / "dialplans/asterisk/manager.conf").read_text()
    parser.read_string(text)
    general = parser["general"]
    assert general["enabled"] == "yes"
    assert general["bindaddr"] == "127.0.0.1"
    assert general.get("webenabled", "no") == "no"
    user = parser["voicebot"]
    read = {p.strip() for p in user["read"].split(",")}
    write = {p.strip() for p in user["write"].split(",")}
    assert read == {"call", "dialplan", "dtmf"}
    assert write == {"call", "originate", "reporting"}
    assert not (read | write) & {"system", "command", "config", "all", "agi", "user"}
    assert "secret" not in user or user["secret"].startswith("CHANGE")
    assert "127.0.0.1" in user["permit"]


def test_dialplan_dial_to_the_bot_continues_after_the_bot_leg_ends() -> None:
    """A real Asterisk 22 hangs the caller up when the AudioSocket leg of a Dial() ends
    (the bot's 0x00, a transfer without AMI, a bot that died) unless Dial has the ``g``
    option: the hand-off to the queue below it would never run
    (tests/test_real_asterisk_ami.py shows both)."""
    text = (REPO / "dialplans/asterisk/extensions.conf").read_text()
    dials = [
        line.split(";", 1)[0]
        for line in text.splitlines()
        if "Dial(AudioSocket/" in line.split(";", 1)[0]
    ]
    assert dials
    for line in dials:
        args = line[line.index("Dial(") + 5 : line.rindex(")")]
        options = args.split(",")[2] if args.count(",") >= 2 else ""
        assert "g" in options, line
