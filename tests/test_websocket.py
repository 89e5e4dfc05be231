"""The chan_websocket transport over real sockets, with a client that speaks to the bot the
way Asterisk 22.10's chan_websocket does (tests/test_websocket_codec.py has the message
facts): the session behind it is the real one with fake engines (tone "speech")."""

from __future__ import annotations

import asyncio
import dataclasses

import structlog
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.test_turns import HOURS, TARIFF, make_shared
from voicebot_pbx.call.session import make_handler
from voicebot_pbx.config import ServerConfig, WebSocketConfig
from voicebot_pbx.ops.records import JsonlRecorder
from voicebot_pbx.pbx.websocket import WebSocketServer
from voicebot_pbx.testing import tone

START = (
    "MEDIA_START connection_id:c0ffee channel:WebSocket/voicebot-00000001 "
    "channel_id:1764720000.42 format:slin16 optimal_frame_size:640 ptime:20"
)
FRAME_BYTES = 640  # 20 ms of slin16


async def bot(tmp_path_recorder: JsonlRecorder, **settings: object) -> WebSocketServer:
    shared = dataclasses.replace(make_shared(stt_delay_s=0.05), recorder=tmp_path_recorder)
    config = ServerConfig(port=0, first_message_timeout_s=1.0, write_timeout_s=1.0)
    config = dataclasses.replace(config, **settings)
    server = WebSocketServer(WebSocketConfig(port=0), config, make_handler(shared))
    await server.start()
    return server


async def speak(ws: ClientConnection, pcm: bytes) -> None:
    """Send caller audio as Asterisk does: whole frames, one per 20 ms."""
    for i in range(0, len(pcm) - FRAME_BYTES + 1, FRAME_BYTES):
        await ws.send(pcm[i : i + FRAME_BYTES])
        await asyncio.sleep(0.02)


async def drain(ws: ClientConnection, seconds: float, texts: list[str]) -> int:
    """Receive for ``seconds``: count the voiced media frames, keep the text messages."""
    voiced = 0
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while (left := end - loop.time()) > 0:
        try:
            message = await asyncio.wait_for(ws.recv(), left)
        except TimeoutError:
            break
        if isinstance(message, bytes):
            assert len(message) == FRAME_BYTES
            voiced += any(message)
        else:
            texts.append(message)
    return voiced


def test_a_call_over_chan_websocket_greets_answers_flushes_on_barge_in_and_hangs_up(
    tmp_path: object,
) -> None:
    from pathlib import Path

    recorder = JsonlRecorder(Path(str(tmp_path)) / "calls.jsonl")

    async def scenario() -> tuple[list[str], int, int]:
        server = await bot(recorder)
        texts: list[str] = []
        silence = bytes(FRAME_BYTES * 25)
        try:
            url = f"ws://127.0.0.1:{server.port}/"
            async with connect(url, subprotocols=["media"]) as ws:  # type: ignore[list-item]
                await ws.send(START)
                greeting = await drain(ws, 1.0, texts)
                await speak(ws, tone(0.8, 16000, TARIFF) + silence)  # the long reply
                await drain(ws, 0.6, texts)
                await speak(ws, tone(0.8, 16000, HOURS) + silence)  # talked over it
                await drain(ws, 1.0, texts)
                await ws.send("DTMF_END digit:5 channel_id:1764720000.42")
                await speak(ws, silence)
            await asyncio.wait_for(server.wait_idle(), 5.0)
        finally:
            await server.close()
        return texts, greeting, server.calls_total

    texts, greeting, calls = asyncio.run(scenario())
    assert calls == 1 and greeting > 0, "the greeting was sent as media"
    assert "FLUSH_MEDIA" in texts, texts  # the barge-in dropped what Asterisk held
    assert any(t.startswith("MARK_MEDIA m") for t in texts), texts  # after speech sent ahead
    (record,) = recorder.read_all()
    assert record["call_id"] == "1764720000.42" and record["rate_hz"] == 16000
    assert record["end_reason"] == "caller_hangup"
    turns = record["turns"]
    assert isinstance(turns, list)
    speech = [t for t in turns if t["kind"] == "speech"]
    assert speech[0]["barged_in"] and "opening hours" in speech[-1]["transcript"]
    assert [t["transcript"] for t in turns if t["kind"] == "dtmf"] == ["5"]


def test_bad_peers_are_refused_with_one_line_and_others_go_on(tmp_path: object) -> None:
    from pathlib import Path

    recorder = JsonlRecorder(Path(str(tmp_path)) / "calls.jsonl")

    async def scenario() -> list[dict[str, object]]:
        server = await bot(recorder)
        url = f"ws://127.0.0.1:{server.port}/"
        try:
            with structlog.testing.capture_logs() as logs:
                # No subprotocol "media": refused.
                async with connect(url) as ws:
                    await asyncio.wait_for(ws.wait_closed(), 2.0)
                # No MEDIA_START in time: refused.
                async with connect(url, subprotocols=["media"]) as ws:  # type: ignore[list-item]
                    await asyncio.wait_for(ws.wait_closed(), 3.0)
                # A codec the bot cannot take.
                async with connect(url, subprotocols=["media"]) as ws:  # type: ignore[list-item]
                    await ws.send(START.replace("slin16", "opus"))
                    await asyncio.wait_for(ws.wait_closed(), 2.0)
                # A call that then sends garbage control: that call ends, record written.
                async with connect(url, subprotocols=["media"]) as ws:  # type: ignore[list-item]
                    await ws.send(START)
                    await asyncio.sleep(0.3)
                    await ws.send("{not json")
                    try:
                        await asyncio.wait_for(ws.wait_closed(), 3.0)
                    except ConnectionClosed:
                        pass
                await asyncio.wait_for(server.wait_idle(), 5.0)
        finally:
            await server.close()
        return logs

    logs = asyncio.run(scenario())
    reasons = [e.get("reason") for e in logs if e["event"] in ("call_rejected", "bad_input")]
    assert "subprotocol_not_media" in reasons and "no_media_start" in reasons, reasons
    (record,) = recorder.read_all()
    assert record["end_reason"] == "bad_input"


def test_a_full_bot_evicts_a_websocket_call_that_never_sent_media(tmp_path: object) -> None:
    """Issue #24 item 6 over chan_websocket: MEDIA_START and then no frame at all holds the
    only slot; a new call past ``evict_silent_after_s`` takes it, the mute one gets HANGUP."""
    from pathlib import Path

    recorder = JsonlRecorder(Path(str(tmp_path)) / "calls.jsonl")

    async def scenario() -> tuple[list[str], int, list[dict[str, object]]]:
        server = await bot(recorder, max_calls=1, evict_silent_after_s=0.3)
        url = f"ws://127.0.0.1:{server.port}/"
        mute_texts: list[str] = []
        try:
            with structlog.testing.capture_logs() as logs:
                async with connect(url, subprotocols=["media"]) as mute:  # type: ignore[list-item]
                    await mute.send(START.replace("1764720000.42", "1764720000.41"))
                    await asyncio.sleep(0.5)
                    async with connect(url, subprotocols=["media"]) as ws:  # type: ignore[list-item]
                        await ws.send(START)
                        voiced = await drain(ws, 1.0, [])
                        try:
                            await drain(mute, 0.5, mute_texts)
                        except ConnectionClosed:
                            pass  # closed by the bot after its HANGUP
        finally:
            await server.close()
        return mute_texts, voiced, logs

    mute_texts, voiced, logs = asyncio.run(scenario())
    assert any(text.startswith("HANGUP") for text in mute_texts), mute_texts
    assert voiced > 0  # the newcomer was greeted
    assert [e["event"] for e in logs if e["event"] in ("call_evicted", "call_rejected")] == [
        "call_evicted"
    ]


def test_basic_auth_as_websocket_client_conf_sends_it(tmp_path: object) -> None:
    import base64
    from pathlib import Path

    from websockets.exceptions import InvalidStatus

    recorder = JsonlRecorder(Path(str(tmp_path)) / "calls.jsonl")

    def basic(user: str, password: str) -> dict[str, str]:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    async def scenario() -> tuple[list[int], int, list[dict[str, object]]]:
        shared = dataclasses.replace(make_shared(stt_delay_s=0.05), recorder=recorder)
        config = ServerConfig(port=0, first_message_timeout_s=1.0, write_timeout_s=1.0)
        ws_config = WebSocketConfig(port=0, username="asterisk", password_env="TEST_WS_PW")
        server = WebSocketServer(
            ws_config, config, make_handler(shared), environ={"TEST_WS_PW": "s3cret"}
        )
        await server.start()
        url = f"ws://127.0.0.1:{server.port}/"
        statuses: list[int] = []
        voiced = 0
        try:
            with structlog.testing.capture_logs() as logs:
                for headers in ({}, basic("asterisk", "wrong"), basic("eve", "s3cret")):
                    try:
                        async with connect(url, subprotocols=["media"], additional_headers=headers):  # type: ignore[list-item]
                            pass
                    except InvalidStatus as exc:
                        statuses.append(exc.response.status_code)
                good = basic("asterisk", "s3cret")
                async with connect(url, subprotocols=["media"], additional_headers=good) as ws:  # type: ignore[list-item]
                    await ws.send(START)
                    voiced = await drain(ws, 1.0, [])
                await asyncio.wait_for(server.wait_idle(), 5.0)
        finally:
            await server.close()
        return statuses, voiced, logs

    statuses, voiced, logs = asyncio.run(scenario())
    assert statuses == [401, 401, 401]
    assert voiced > 0, "the authenticated call was greeted"
    reasons = [e["reason"] for e in logs if e["event"] == "call_rejected"]
    assert reasons == ["auth_missing", "auth_failed", "auth_failed"]
    assert not any("s3cret" in str(e) for e in logs)


def test_tls_when_given_a_certificate(tmp_path: object) -> None:
    """wss:// as websocket_client.conf's ``uri = wss://...`` connects: a self-signed
    certificate made here; a plain ws:// client gets no call."""
    import shutil
    import ssl
    from pathlib import Path

    import pytest

    from tests.realpbx import self_signed

    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    folder = Path(str(tmp_path))
    cert, key = self_signed(folder)
    recorder = JsonlRecorder(folder / "calls.jsonl")

    async def scenario() -> tuple[int, bool]:
        shared = dataclasses.replace(make_shared(stt_delay_s=0.05), recorder=recorder)
        config = ServerConfig(port=0, first_message_timeout_s=1.0, write_timeout_s=1.0)
        ws_config = WebSocketConfig(port=0, tls_cert=str(cert), tls_key=str(key))
        server = WebSocketServer(ws_config, config, make_handler(shared))
        await server.start()
        trust = ssl.create_default_context(cafile=str(cert))
        try:
            plain_refused = False
            try:
                async with connect(f"ws://127.0.0.1:{server.port}/", open_timeout=2):
                    pass
            except Exception:
                plain_refused = True
            url = f"wss://127.0.0.1:{server.port}/"
            async with connect(url, subprotocols=["media"], ssl=trust) as ws:  # type: ignore[list-item]
                await ws.send(START)
                voiced = await drain(ws, 1.0, [])
            await asyncio.wait_for(server.wait_idle(), 5.0)
        finally:
            await server.close()
        return voiced, plain_refused

    voiced, plain_refused = asyncio.run(scenario())
    assert voiced > 0, "the call over TLS was greeted"
    assert plain_refused


def test_a_clean_close_seen_while_sending_is_the_callers_hang_up() -> None:
    """Through the real Asterisk over TLS the close sometimes reached the pacer's send
    before the reader: the record said connection_error:ConnectionClosedOK."""
    from websockets.exceptions import ConnectionClosedOK
    from websockets.frames import Close

    from voicebot_pbx.pbx import websocket_codec as wire
    from voicebot_pbx.pbx.websocket import WebSocketCall

    class Closed:
        async def send(self, data: object) -> None:
            raise ConnectionClosedOK(Close(1000, ""), Close(1000, ""), True)

    async def scenario() -> str | None:
        start = wire.parse_control(START)
        assert isinstance(start, wire.MediaStart)
        call = WebSocketCall(Closed(), start, wire.message_format(START), ServerConfig(), "p")  # type: ignore[arg-type]
        await call.write_frame(b"\x01\x00" * 320, is_silence=False)
        return call.end_reason

    assert asyncio.run(scenario()) == "caller_hangup"


def test_a_barge_in_flushes_asterisks_queue_at_once_not_at_the_next_tick() -> None:
    """``FLUSH_MEDIA`` goes out when the speaker drops the reply, not with the pacer's next
    frame (up to 20 ms later, more on a busy machine)."""
    from voicebot_pbx.pbx import websocket_codec as wire
    from voicebot_pbx.pbx.websocket import WebSocketCall

    sent: list[tuple[float, str]] = []
    interrupted: list[float] = []

    class Asterisk:
        call: WebSocketCall | None = None

        async def send(self, data: object) -> None:
            loop = asyncio.get_running_loop()
            sent.append((loop.time(), data if isinstance(data, str) else "media"))
            if len(sent) == 3 and self.call is not None:
                # Just after the pacer wrote a frame: the next tick is 20 ms away.
                def barge_in() -> None:
                    interrupted.append(loop.time())
                    assert self.call is not None
                    self.call.speaker.interrupt()

                loop.call_soon(barge_in)

    async def scenario() -> None:
        start = wire.parse_control(START)
        assert isinstance(start, wire.MediaStart)
        asterisk = Asterisk()
        call = WebSocketCall(asterisk, start, wire.message_format(START), ServerConfig(), "p")  # type: ignore[arg-type]
        asterisk.call = call
        call.speaker.enqueue(tone(1.0, 16000, HOURS), call.speaker.generation)
        pacer = asyncio.create_task(call.run_pacer())
        await asyncio.sleep(0.2)
        pacer.cancel()
        try:
            await pacer
        except asyncio.CancelledError:
            pass

    asyncio.run(scenario())
    kinds = [kind for _, kind in sent]
    assert kinds[:3] == ["media"] * 3
    assert kinds[3] == "FLUSH_MEDIA"  # before any later frame
    assert "media" not in kinds[4:]  # nothing of the dropped reply after it
    flushed_at = sent[3][0]
    assert flushed_at - interrupted[0] < 0.005


def test_asterisks_mark_report_fires_the_marker_its_mark_was_sent_for() -> None:
    """``MARK_MEDIA <id>`` goes out in order after the frames before a marker;
    ``MEDIA_MARK_PROCESSED <id>`` from Asterisk fires it (a report for another id does not)."""
    from voicebot_pbx.pbx import websocket_codec as wire
    from voicebot_pbx.pbx.websocket import WebSocketCall

    sent: list[str] = []

    class Asterisk:
        async def send(self, data: object) -> None:
            sent.append(data if isinstance(data, str) else "media")

    async def scenario() -> list[float]:
        start = wire.parse_control(START)
        assert isinstance(start, wire.MediaStart)
        call = WebSocketCall(Asterisk(), start, "plain", ServerConfig(), "p")  # type: ignore[arg-type]
        call.speaker.send_ahead_s = 0.1
        call.speaker.mark_writer = call.write_mark
        fired: list[float] = []
        generation = call.speaker.generation
        call.speaker.enqueue(tone(0.1, 16000, HOURS), generation)
        call.speaker.mark(fired.append, generation)
        pacer = asyncio.create_task(call.run_pacer())
        await asyncio.sleep(0.05)
        call._on_control(wire.parse_control("MEDIA_MARK_PROCESSED m9"), 1.0)
        assert fired == []
        call._on_control(wire.parse_control("MEDIA_MARK_PROCESSED m1"), 2.0)
        pacer.cancel()
        try:
            await pacer
        except asyncio.CancelledError:
            pass
        return fired

    fired = asyncio.run(scenario())
    assert fired == [2.0]
    assert sent == ["media"] * 5 + ["MARK_MEDIA m1"]


def test_the_incoming_form_the_bot_connects_to_asterisks_media_url(tmp_path: object) -> None:
    """``Dial(WebSocket/INCOMING/...)``: given the connection id (from AMI), the bot
    connects to ``<incoming_url>/<id>`` with the ``media`` subprotocol and serves the call
    as one Asterisk dialled in; an id Asterisk does not know (404) is one log line."""
    from pathlib import Path

    from websockets.asyncio.server import ServerConnection, serve
    from websockets.http11 import Request, Response

    recorder = JsonlRecorder(Path(str(tmp_path)) / "calls.jsonl")
    paths: list[str] = []
    texts: list[str] = []

    def only_known(connection: ServerConnection, request: Request) -> Response | None:
        paths.append(request.path)
        if request.path != "/media/0b2c7e4e-57b9-4a55-a7f5-4c1f7d0d2a01":
            return connection.respond(404, "WebSocket instance not found\n")
        return None

    async def asterisk(ws: ServerConnection) -> None:
        await ws.send(START)
        await drain(ws, 1.0, texts)  # type: ignore[arg-type]
        await speak(ws, tone(0.8, 16000, HOURS) + bytes(FRAME_BYTES * 25))  # type: ignore[arg-type]
        await drain(ws, 1.0, texts)  # type: ignore[arg-type]

    async def scenario() -> WebSocketServer:
        async with serve(
            asterisk, "127.0.0.1", 0, subprotocols=["media"], process_request=only_known
        ) as http:  # type: ignore[list-item]
            port = next(iter(http.sockets)).getsockname()[1]
            shared = dataclasses.replace(make_shared(stt_delay_s=0.05), recorder=recorder)
            server = WebSocketServer(
                WebSocketConfig(port=0, incoming_url=f"ws://127.0.0.1:{port}/media/"),
                ServerConfig(port=0, first_message_timeout_s=1.0, write_timeout_s=1.0),
                make_handler(shared),
            )
            await server.start()
            try:
                with structlog.testing.capture_logs() as logs:
                    server.dial_incoming("ffffffff-0000-0000-0000-000000000000")
                    server.dial_incoming("../../etc/passwd")
                    server.dial_incoming("0b2c7e4e-57b9-4a55-a7f5-4c1f7d0d2a01")
                    await asyncio.sleep(0.5)
                    await asyncio.wait_for(server.wait_idle(), 8.0)
                    await asyncio.sleep(0.2)
            finally:
                await server.close()
            assert [e["event"] for e in logs if e["event"] == "incoming_media_failed"] == [
                "incoming_media_failed"
            ]
            assert any(e.get("reason") == "incoming_media_bad_id" for e in logs)
        return server

    server = asyncio.run(scenario())
    assert server.calls_total == 1 and server.calls_rejected == 1
    assert sorted(paths) == [
        "/media/0b2c7e4e-57b9-4a55-a7f5-4c1f7d0d2a01",
        "/media/ffffffff-0000-0000-0000-000000000000",
    ]
    (record,) = recorder.read_all()
    assert record["call_id"] == "1764720000.42"
    turns = record["turns"]
    assert isinstance(turns, list)
    assert "opening hours" in [t for t in turns if t["kind"] == "speech"][-1]["transcript"]


def test_incoming_url_is_checked(tmp_path: object) -> None:
    from pathlib import Path

    import pytest

    from voicebot_pbx.config import ConfigError, load_config

    path = Path(str(tmp_path)) / "v.toml"
    good = '[websocket]\nenabled = true\nincoming_url = "ws://127.0.0.1:8088/media"\n'
    path.write_text(good + "[ami]\nenabled = true\n")
    assert load_config(path).websocket.incoming_url == "ws://127.0.0.1:8088/media"
    for bad, words in (
        (good.replace("ws://", "http://") + "[ami]\nenabled = true\n", "must start ws://"),
        (good, "needs [websocket] enabled = true and [ami] enabled = true"),
    ):
        path.write_text(bad)
        with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("]", r"\]")):
            load_config(path)
