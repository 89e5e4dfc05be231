"""The post-call webhook: each finished call's record POSTed as JSON to a CRM.

Two halves, joined by the durable ``Outbox`` (``webhook_outbox``):

* ``WebhookRecorder`` is a ``Recorder`` (it wraps the session's recorder): at
  ``call_ended`` it serialises ``{"event": "call_ended", "call": <CallRecord JSON>}``,
  redacted first when a ``Redactor`` is given, commits it to the outbox off the event loop
  and wakes the sender. It never raises into the call.
* ``WebhookSender.run`` is one long-lived task: it takes due deliveries from the outbox,
  POSTs each (bounded by ``timeout_s``), deletes it on 2xx and otherwise reschedules it
  with the next back-off step (``backoff_s[attempts]``, capped at the last step) and one
  ``webhook_failed`` warning, then goes on with the other due items. Between rounds it
  sleeps until woken by a new call or until the next retry is due (at most 5 s). Stop it
  by cancelling the task; whatever was not acknowledged stays queued for the next start.

Request headers: ``Content-Type: application/json``, ``X-Voicebot-Timestamp`` (unix
seconds at send time), ``X-Voicebot-Signature: sha256=<hex HMAC-SHA256(secret,
timestamp + "." + body)>`` when a secret is configured (receivers should recompute it over
the raw body and reject stale timestamps), and ``X-Voicebot-Delivery: <call_id>``.

Delivery is at-least-once: a CRM that committed the call but answered late (after our
timeout), or a bot killed between the 2xx and the outbox delete, gets the same call again.
Receivers must treat ``X-Voicebot-Delivery`` as an idempotency key.

Non-2xx answers, 4xx included, are retried (a wrong URL or secret is usually fixed on the
CRM side); the outbox's row bound is what eventually gives up on old calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import structlog

from voicebot_pbx.ops.records import CallRecord, Recorder, TurnRecord
from voicebot_pbx.ops.redaction import Redactor
from voicebot_pbx.ops.webhook_outbox import Delivery, Outbox

log = structlog.get_logger(__name__)

DEFAULT_BACKOFF_S: tuple[float, ...] = (1.0, 2.0, 5.0, 15.0, 60.0, 300.0)
_BATCH = 20  # deliveries taken from the outbox per round
_MAX_WAIT_S = 5.0  # longest sleep between rounds (also the idle poll)


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """``sha256=`` + hex HMAC-SHA256 of ``timestamp + "." + body`` under ``secret``."""
    digest = hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


def webhook_body(call: dict[str, Any], redactor: Redactor | None) -> bytes:
    """The POST body for a finished call (``call`` is ``CallRecord.to_json()``, which is
    redacted in place: caller id, errors, and each turn's transcript and reply text)."""
    if redactor is not None:
        call["caller_id"] = redactor.caller_id(call.get("caller_id"))
        call["errors"] = [redactor.text(error) for error in call.get("errors", [])]
        for turn in call.get("turns", []):
            turn["transcript"] = redactor.text(turn.get("transcript", ""))
            turn["reply_text"] = redactor.text(turn.get("reply_text", ""))
    payload = {"event": "call_ended", "call": call}
    return json.dumps(payload, ensure_ascii=False, default=str).encode("utf-8")


@dataclass(slots=True)
class WebhookStats:
    delivered: int = 0
    failed_attempts: int = 0


class WebhookSender:
    """Drains the outbox to ``url`` (see the module docstring). ``client`` lets the caller
    share an ``httpx.AsyncClient`` (then ``aclose`` leaves it open)."""

    def __init__(
        self,
        outbox: Outbox,
        url: str,
        *,
        secret: bytes | None,
        timeout_s: float = 5.0,
        backoff_s: Sequence[float] = DEFAULT_BACKOFF_S,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not backoff_s or any(step <= 0 for step in backoff_s):
            raise ValueError("backoff_s needs at least one step, all > 0")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        self.outbox = outbox
        self.url = url
        self.secret = secret
        self.timeout_s = timeout_s
        self.backoff_s = tuple(backoff_s)
        self.clock = clock
        self.stats = WebhookStats()
        self._own_client = client is None
        self._client = client if client is not None else httpx.AsyncClient(timeout=timeout_s)
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """New work was queued: start a round now (call from the event loop)."""
        self._wake.set()

    async def run(self) -> None:
        """Deliver forever (cancel the task to stop)."""
        while True:
            self._wake.clear()  # before reading the outbox, so no wake() is missed
            next_at: float | None
            try:
                batch = await asyncio.to_thread(self.outbox.due, self.clock(), _BATCH)
                for delivery in batch:
                    await self._deliver(delivery)
                if len(batch) == _BATCH:
                    continue
                next_at = await asyncio.to_thread(self.outbox.next_due_at)
            except Exception as exc:
                log.error("webhook_outbox_error", error=f"{type(exc).__name__}: {exc}")
                next_at = None
            wait_s = _MAX_WAIT_S if next_at is None else next_at - self.clock()
            wait_s = min(wait_s, _MAX_WAIT_S)
            if wait_s <= 0:
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await self._wake.wait()

    def _headers(self, delivery: Delivery) -> dict[str, str]:
        timestamp = str(int(self.clock()))
        headers = {
            "Content-Type": "application/json",
            "X-Voicebot-Timestamp": timestamp,
            "X-Voicebot-Delivery": delivery.call_id,
        }
        if self.secret is not None:
            headers["X-Voicebot-Signature"] = sign(self.secret, timestamp, delivery.body)
        return headers

    async def _post(self, delivery: Delivery) -> str | None:
        """One attempt: None when the CRM answered 2xx, else the reason it failed."""
        try:
            # httpx's timeout is per phase (connect, each read...); the outer one caps the
            # whole request, so a CRM trickling bytes cannot hold the sender either.
            async with asyncio.timeout(self.timeout_s):
                response = await self._client.post(
                    self.url,
                    content=delivery.body,
                    headers=self._headers(delivery),
                    timeout=self.timeout_s,
                )
        except (TimeoutError, httpx.TimeoutException):
            return "timeout"
        except Exception as exc:
            return type(exc).__name__
        if 200 <= response.status_code < 300:
            return None
        return f"http {response.status_code}"

    async def _deliver(self, delivery: Delivery) -> None:
        reason = await self._post(delivery)
        if reason is None:
            await asyncio.to_thread(self.outbox.done, delivery.id)
            self.stats.delivered += 1
            return
        self.stats.failed_attempts += 1
        retry_in_s = self.backoff_s[min(delivery.attempts, len(self.backoff_s) - 1)]
        log.warning(
            "webhook_failed",
            call_id=delivery.call_id,
            attempt=delivery.attempts + 1,
            reason=reason,
            retry_in_s=retry_in_s,
        )
        await asyncio.to_thread(self.outbox.retry, delivery.id, reason, self.clock() + retry_in_s)

    async def aclose(self) -> None:
        """Close the HTTP client if this sender created it (the outbox is the caller's)."""
        if self._own_client:
            await self._client.aclose()


class WebhookRecorder:
    """A ``Recorder`` that hands every call to ``inner`` and, when a call ends, queues its
    (redacted) record for the webhook. With ``sender`` None the record is only queued (a
    sender started later, or after a restart, delivers it)."""

    def __init__(
        self,
        inner: Recorder | None,
        outbox: Outbox,
        sender: WebhookSender | None,
        redactor: Redactor | None,
    ) -> None:
        self.inner = inner
        self.outbox = outbox
        self.sender = sender
        self.redactor = redactor
        self._clock: Callable[[], float] = sender.clock if sender is not None else time.time

    async def call_started(self, call: CallRecord) -> None:
        if self.inner is not None:
            await self.inner.call_started(call)

    async def turn_finished(self, call: CallRecord, turn: TurnRecord) -> None:
        if self.inner is not None:
            await self.inner.turn_finished(call, turn)

    def _enqueue(self, call_id: str, record: dict[str, Any], now: float) -> None:
        self.outbox.put(call_id, webhook_body(record, self.redactor), now)

    async def call_ended(self, call: CallRecord) -> None:
        try:
            record = call.to_json()  # a snapshot, taken on the loop; the rest in a thread
            await asyncio.to_thread(self._enqueue, call.call_id, record, self._clock())
            if self.sender is not None:
                self.sender.wake()
        except Exception as exc:
            log.error(
                "webhook_enqueue_failed",
                call_id=call.call_id,
                error=f"{type(exc).__name__}: {exc}",
            )
        if self.inner is not None:
            await self.inner.call_ended(call)
