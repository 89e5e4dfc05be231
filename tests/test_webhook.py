"""The post-call webhook against a real local HTTP server (``asyncio.start_server`` speaking
minimal HTTP/1.1 with keep-alive) that the test switches between answering 200 (``ok``,
keeping the request), 500 (``fail``) and reading the request but never answering (``hang``),
and that can be stopped (connection refused) and started again on the same port."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from voicebot_pbx.ops.records import CallRecord, TurnRecord
from voicebot_pbx.ops.redaction import Redactor
from voicebot_pbx.ops.webhook import WebhookRecorder, WebhookSender, sign
from voicebot_pbx.ops.webhook_outbox import Outbox

TEST_TIMEOUT_S = 2.5  # every test's whole async body
SECRET = b"s3cret"


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Crm:
    """The fake CRM. ``received`` holds only the requests answered 200."""

    mode: str = "ok"  # ok | fail | hang
    received: list[Request] = field(default_factory=list)
    seen: dict[str, int] = field(default_factory=lambda: {"ok": 0, "fail": 0, "hang": 0})
    port: int = 0
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    _release: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/voicebot"

    async def start(self) -> None:
        self._release = asyncio.Event()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and drop every connection (hung ones included)."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self._release.set()
        for writer in list(self._writers):
            writer.close()
        await asyncio.sleep(0)

    def call_ids(self) -> list[str]:
        return [request.headers["x-voicebot-delivery"] for request in self.received]

    async def _read(self, reader: asyncio.StreamReader) -> Request | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        return Request(method, path, headers, body)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while (request := await self._read(reader)) is not None:
                mode = self.mode
                self.seen[mode] += 1
                if mode == "hang":
                    await self._release.wait()
                    return
                if mode == "ok":
                    self.received.append(request)
                    status = b"200 OK"
                else:
                    status = b"500 Internal Server Error"
                writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 2\r\n\r\n{}")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()


@contextlib.asynccontextmanager
async def crm_server(mode: str = "ok") -> AsyncIterator[Crm]:
    crm = Crm(mode=mode)
    await crm.start()
    try:
        yield crm
    finally:
        await crm.stop()


@contextlib.asynccontextmanager
async def running(sender: WebhookSender) -> AsyncIterator[WebhookSender]:
    task = asyncio.create_task(sender.run())
    try:
        yield sender
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await sender.aclose()


async def until(predicate: Callable[[], bool], timeout_s: float = 2.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 - polls server and outbox state
            await asyncio.sleep(0.01)


def record(call_id: str, transcript: str = "hello", caller_id: str | None = None) -> CallRecord:
    return CallRecord(
        call_id=call_id,
        pbx="asterisk",
        peer="127.0.0.1:40000",
        caller_id=caller_id,
        end_reason="hangup",
        turns=[TurnRecord(turn_id=1, seq=1, transcript=transcript, reply_text="Sure.")],
    )


def fast_sender(outbox: Outbox, url: str, secret: bytes | None = SECRET) -> WebhookSender:
    return WebhookSender(outbox, url, secret=secret, timeout_s=0.3, backoff_s=(0.05, 0.1))


def test_signature_is_hmac_of_timestamp_and_body(tmp_path: Path) -> None:
    async def main() -> tuple[Request, Request]:
        async with asyncio.timeout(TEST_TIMEOUT_S), crm_server() as crm:
            signed = Outbox(tmp_path / "signed.sqlite")
            unsigned = Outbox(tmp_path / "unsigned.sqlite")
            sender_a = fast_sender(signed, crm.url, SECRET)
            sender_b = fast_sender(unsigned, crm.url, None)
            async with running(sender_a), running(sender_b):
                await WebhookRecorder(None, signed, sender_a, None).call_ended(record("c-1"))
                await until(lambda: len(crm.received) == 1)
                await WebhookRecorder(None, unsigned, sender_b, None).call_ended(record("c-2"))
                await until(lambda: len(crm.received) == 2)
            signed.close()
            unsigned.close()
            return crm.received[0], crm.received[1]

    with_secret, without = asyncio.run(main())
    assert with_secret.method == "POST" and with_secret.path == "/hooks/voicebot"
    headers = with_secret.headers
    assert headers["content-type"] == "application/json"
    assert headers["x-voicebot-delivery"] == "c-1"
    timestamp = headers["x-voicebot-timestamp"]
    assert timestamp.isdigit()
    expected = hmac.new(SECRET, timestamp.encode() + b"." + with_secret.body, hashlib.sha256)
    assert headers["x-voicebot-signature"] == "sha256=" + expected.hexdigest()
    assert sign(SECRET, timestamp, with_secret.body) == headers["x-voicebot-signature"]
    payload = with_secret.json()
    assert payload["event"] == "call_ended"
    assert payload["call"]["call_id"] == "c-1"
    assert payload["call"]["turns"][0]["transcript"] == "hello"

    assert "x-voicebot-signature" not in without.headers
    assert without.headers["x-voicebot-delivery"] == "c-2"
    assert without.headers["x-voicebot-timestamp"].isdigit()


def test_outage_fail_then_hang_then_recover_loses_nothing(tmp_path: Path) -> None:
    ids = [f"call-{n}" for n in range(5)]

    async def main() -> tuple[Crm, WebhookSender, int]:
        async with asyncio.timeout(TEST_TIMEOUT_S), crm_server("fail") as crm:
            outbox = Outbox(tmp_path / "outbox.sqlite")
            sender = fast_sender(outbox, crm.url)
            recorder = WebhookRecorder(None, outbox, sender, None)
            async with running(sender):
                for call_id in ids:
                    await recorder.call_ended(record(call_id))
                await until(lambda: crm.seen["fail"] >= 5)
                crm.mode = "hang"
                await until(lambda: crm.seen["hang"] >= 1)
                crm.mode = "ok"
                await until(lambda: len(crm.received) == 5)
                # The outbox row goes in a worker thread before the sender counts the
                # delivery: wait for the count too, or leaving `running` may cancel it.
                await until(lambda: outbox.pending() == 0 and sender.stats.delivered >= 5)
            pending = outbox.pending()
            outbox.close()
            return crm, sender, pending

    with capture_logs() as logs:
        crm, sender, pending = asyncio.run(main())
    assert sorted(crm.call_ids()) == ids  # each exactly once
    assert pending == 0
    assert sender.stats.delivered == 5
    failed = [entry for entry in logs if entry["event"] == "webhook_failed"]
    assert len(failed) == sender.stats.failed_attempts >= 6
    assert {entry["reason"] for entry in failed} >= {"http 500", "timeout"}
    assert all(entry["log_level"] == "warning" for entry in failed)
    assert {entry["call_id"] for entry in failed} == set(ids)
    assert all(entry["attempt"] >= 1 for entry in failed)


def test_restart_with_crm_down_delivers_everything_later(tmp_path: Path) -> None:
    path = tmp_path / "state" / "webhook.sqlite"
    ids = ["r-1", "r-2", "r-3"]

    async def main() -> tuple[list[int], int, list[str]]:
        async with asyncio.timeout(TEST_TIMEOUT_S):
            crm = Crm()
            await crm.start()
            await crm.stop()  # the port is known, nobody listens: connection refused

            outbox = Outbox(path)
            sender = fast_sender(outbox, crm.url)
            recorder = WebhookRecorder(None, outbox, sender, None)
            async with running(sender):
                for call_id in ids:
                    await recorder.call_ended(record(call_id))
                await until(lambda: sender.stats.failed_attempts >= 3)
            outbox.close()  # the bot stops

            await crm.start()
            try:
                reopened = Outbox(path)  # the bot starts again
                attempts = [d.attempts for d in reopened.due(float("inf"), 10)]
                sender = fast_sender(reopened, crm.url)
                async with running(sender):
                    await until(lambda: len(crm.received) == 3)
                    await until(lambda: reopened.pending() == 0)
                pending = reopened.pending()
                reopened.close()
            finally:
                await crm.stop()
            return attempts, pending, crm.call_ids()

    with capture_logs() as logs:
        attempts, pending, delivered = asyncio.run(main())
    assert len(attempts) == 3 and all(n >= 1 for n in attempts)
    assert pending == 0
    assert sorted(delivered) == ids
    reasons = {entry["reason"] for entry in logs if entry["event"] == "webhook_failed"}
    assert reasons == {"ConnectError"}


def test_redaction_applies_to_the_delivered_json(tmp_path: Path) -> None:
    transcript = "my account is 12345678"

    async def main() -> list[Request]:
        async with asyncio.timeout(TEST_TIMEOUT_S), crm_server() as crm:
            outbox = Outbox(tmp_path / "outbox.sqlite")
            sender = fast_sender(outbox, crm.url)
            async with running(sender):
                redacting = WebhookRecorder(None, outbox, sender, Redactor(min_digits=3))
                call = record("red-1", transcript, caller_id="+441234567890")
                call.errors.append("stt: ValueError: bad digits 12345678")
                await redacting.call_ended(call)
                await until(lambda: len(crm.received) == 1)
                assert call.turns[0].transcript == transcript  # the live record is untouched
                assert call.caller_id == "+441234567890"
                plain = WebhookRecorder(None, outbox, sender, None)
                await plain.call_ended(record("plain-1", transcript, caller_id="+441234567890"))
                await until(lambda: len(crm.received) == 2)
            outbox.close()
            return crm.received

    redacted, plain = asyncio.run(main())
    assert b"12345678" not in redacted.body
    call = redacted.json()["call"]
    assert call["turns"][0]["transcript"] == "my account is [digits]"
    assert call["caller_id"].endswith("90") and "1234" not in call["caller_id"]
    assert "12345678" not in call["errors"][0]
    assert b"12345678" in plain.body
    assert plain.json()["call"]["caller_id"] == "+441234567890"


def test_outbox_is_bounded_and_keeps_the_newest(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite", max_rows=3)
    with capture_logs() as logs:
        ids = [outbox.put(f"b-{n}", b"{}", now=100.0 + n) for n in range(5)]
    assert len(set(ids)) == 5
    assert outbox.pending() == 3
    due = outbox.due(now=1000.0, limit=10)
    assert [d.call_id for d in due] == ["b-2", "b-3", "b-4"]  # oldest first
    assert [d.id for d in due] == ids[2:]
    full = [entry for entry in logs if entry["event"] == "webhook_outbox_full"]
    assert len(full) == 2 and all(entry["log_level"] == "warning" for entry in full)
    assert outbox.dropped == 2
    outbox.close()


def test_outbox_schedule_and_persistence(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    outbox = Outbox(path)
    assert outbox.next_due_at() is None
    first = outbox.put("a", b"A", now=10.0)
    second = outbox.put("b", b"B", now=11.0)
    assert [d.call_id for d in outbox.due(now=10.5, limit=10)] == ["a"]
    outbox.retry(first, "http 503", next_at=20.0)
    assert [d.call_id for d in outbox.due(now=15.0, limit=10)] == ["b"]
    assert outbox.next_due_at() == 11.0
    outbox.done(second)
    assert outbox.next_due_at() == 20.0
    outbox.close()

    reopened = Outbox(path)
    (row,) = reopened.due(now=20.0, limit=10)
    assert (row.id, row.call_id, row.body, row.attempts, row.created_at) == (
        first,
        "a",
        b"A",
        1,
        10.0,
    )
    reopened.done(row.id)
    assert reopened.pending() == 0
    reopened.close()


class InnerRecorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    async def call_started(self, call: CallRecord) -> None:
        self.events.append(("started", call.call_id))

    async def turn_finished(self, call: CallRecord, turn: TurnRecord) -> None:
        self.events.append(("turn", call.call_id))

    async def call_ended(self, call: CallRecord) -> None:
        self.events.append(("ended", call.call_id))


def test_recorder_forwards_to_inner(tmp_path: Path) -> None:
    inner = InnerRecorder()
    outbox = Outbox(tmp_path / "outbox.sqlite")
    recorder = WebhookRecorder(inner, outbox, None, None)
    call = record("i-1")

    async def main() -> None:
        async with asyncio.timeout(TEST_TIMEOUT_S):
            await recorder.call_started(call)
            await recorder.turn_finished(call, call.turns[0])
            await recorder.call_ended(call)

    asyncio.run(main())
    assert inner.events == [("started", "i-1"), ("turn", "i-1"), ("ended", "i-1")]
    assert [d.call_id for d in outbox.due(now=float("inf"), limit=10)] == ["i-1"]
    assert not hasattr(recorder, "stats")
    outbox.close()


def test_enqueue_failure_never_reaches_the_call(tmp_path: Path) -> None:
    inner = InnerRecorder()
    outbox = Outbox(tmp_path / "outbox.sqlite")
    outbox.close()  # every put now fails
    recorder = WebhookRecorder(inner, outbox, None, None)

    async def main() -> None:
        async with asyncio.timeout(TEST_TIMEOUT_S):
            await recorder.call_ended(record("x-1"))

    with capture_logs() as logs:
        asyncio.run(main())
    assert inner.events == [("ended", "x-1")]
    failed = [entry for entry in logs if entry["event"] == "webhook_enqueue_failed"]
    assert len(failed) == 1 and failed[0]["call_id"] == "x-1"


def test_sender_rejects_bad_settings(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite")
    with pytest.raises(ValueError):
        WebhookSender(outbox, "http://127.0.0.1:9/", secret=None, backoff_s=())
    with pytest.raises(ValueError):
        WebhookSender(outbox, "http://127.0.0.1:9/", secret=None, backoff_s=(1.0, 0.0))
    outbox.close()
