"""Health endpoint: a tiny HTTP/1.0-style server on loopback (no framework).

* ``GET /health`` -- liveness: 200 whenever the event loop answers.
* ``GET /ready``  -- readiness: the JSON of the readiness callable; 200 when its ``"ready"``
  is true, else 503. ``readiness_report()`` builds that dict: ready = models loaded and not
  draining. Rasa unreachable ("degraded": the rules dialogue answers) and AMI disconnected
  (only transfer/hang-up degrade) are reported but do not make the bot unready.
* ``GET /metrics`` -- Prometheus text from an optional callable (404 without one).

One request per connection (``Connection: close``), bounded request size, a short timeout on
reading the request and one on every write, and a client allowlist (loopback by default; the
check itself is ``voicebot_pbx.pbx.allow``, shared with the PBX listeners).

Liveness cannot be starved: ``/health`` is answered whatever else is open (up to
``max_open`` connections, far above any honest poller); only ``/ready`` and ``/metrics``,
which call providers, share ``max_connections`` and answer 503 "busy" beyond it. Refusals
(busy, forbidden, bad request, slow request, over capacity) are counted through
``on_refused`` (the ``voicebot_admin_refused`` metric) and logged at most once per
``log_every_s`` with the count since the last line.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qs

import structlog

from voicebot_pbx.pbx.allow import LOOPBACK_CIDRS, parse_cidrs, peer_allowed

log = structlog.get_logger("voicebot_pbx.ops.health")

ReadinessFn = Callable[[], Mapping[str, Any] | Awaitable[Mapping[str, Any]]]


@dataclass(frozen=True, slots=True)
class Request:
    """A GET/HEAD request the health server hands to its ``pages`` callable."""

    method: str
    target: str  # path and query string, as sent
    headers: Mapping[str, str]  # lower-case names

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> dict[str, str]:
        return {k: v[-1] for k, v in parse_qs(self.target.partition("?")[2]).items()}


@dataclass(frozen=True, slots=True)
class Page:
    status: int
    content_type: str
    body: bytes


# Other paths of the admin port (the calls web page): a Page, or None for 404.
PagesFn = Callable[[Request], Awaitable[Page | None]]
MetricsFn = Callable[[], str | Awaitable[str]]

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_MAX_LINE_BYTES = 8192
_MAX_HEADERS = 64
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


# ---------------------------------------------------------------------------------------------
# Readiness


def readiness_report(
    *,
    models_loaded: bool,
    draining: bool = False,
    rasa: Literal["ok", "degraded", "disabled"] = "disabled",
    ami: Literal["connected", "disconnected", "disabled"] = "disabled",
    active_calls: int | None = None,
    profiles: Mapping[str, Literal["ok", "degraded"]] | None = None,
    knowledge: Literal["ok", "unavailable", "disabled"] = "disabled",
    actions: Literal["ok", "degraded", "disabled"] = "disabled",
) -> dict[str, Any]:
    """The dict ``/ready`` serves. ``rasa``: "ok" reachable, "degraded" unreachable (the rule
    dialogue answers), "disabled"; ``ami``: "connected", "disconnected", "disabled";
    ``profiles``: the Rasa server of each profile that has its own, "ok" or "degraded";
    ``knowledge``: the knowledge base and LLM loaded ("ok"), failed to load ("unavailable":
    intents and rules still answer), or "disabled"; ``actions``: the Rasa action server the
    bot runs, "ok" answering, "degraded" down (lookups fail, spoken as such), "disabled"."""
    ready = models_loaded and not draining
    profile_rasa = dict(profiles or {})
    if not ready:
        overall = "draining" if draining else "starting"
    elif (
        rasa == "degraded"
        or ami == "disconnected"
        or knowledge == "unavailable"
        or actions == "degraded"
        or "degraded" in profile_rasa.values()
    ):
        overall = "degraded"
    else:
        overall = "ok"
    report: dict[str, Any] = {
        "ready": ready,
        "status": overall,
        "models_loaded": models_loaded,
        "draining": draining,
        "rasa": rasa,
        "ami": ami,
        "knowledge": knowledge,
        "actions": actions,
    }
    if active_calls is not None:
        report["active_calls"] = active_calls
    if profile_rasa:
        report["profile_rasa"] = profile_rasa
    return report


# ---------------------------------------------------------------------------------------------
# Server


class HealthServer:
    def __init__(
        self,
        readiness: ReadinessFn,
        *,
        metrics: MetricsFn | None = None,
        host: str = "127.0.0.1",
        port: int = 9093,
        allow_cidrs: Iterable[str] = LOOPBACK_CIDRS,
        request_timeout_s: float = 2.0,
        provider_timeout_s: float = 2.0,
        max_connections: int = 16,
        max_open: int = 2048,
        on_refused: Callable[[str], None] | None = None,
        pages: PagesFn | None = None,
        log_every_s: float = 10.0,
        cache_s: float = 1.0,
    ) -> None:
        self._readiness = readiness
        self._metrics = metrics
        self.host = host
        self._port = port
        self._allow = parse_cidrs(allow_cidrs)
        self._request_timeout_s = request_timeout_s
        self._provider_timeout_s = provider_timeout_s
        self._max_connections = max_connections
        self._max_open = max_open
        self._on_refused = on_refused
        self._pages = pages
        self._log_every_s = log_every_s
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._busy = 0  # connections serving /ready or /metrics
        self.requests = 0
        self.refused: dict[str, int] = {}
        self._unlogged = 0
        self._logged_at = -log_every_s
        # The /metrics text is reused for cache_s: a burst of requests renders it once, not
        # once each on the loop that paces every call's audio (/ready stays live: draining
        # must show at once).
        self._cache_s = cache_s
        self._metrics_cache: tuple[float, str] | None = None

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        if self._server is not None and self._server.sockets:
            return int(self._server.sockets[0].getsockname()[1])
        return self._port

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, self.host, self._port, limit=_MAX_LINE_BYTES
        )
        if self._allow and not peer_allowed(self.host, self._allow):
            log.warning("health_not_on_loopback", host=self.host)
        log.info("health_listening", host=self.host, port=self.port)

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for writer in list(self._writers):
            writer.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._request_timeout_s):
                await server.wait_closed()

    def _refused(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        if self._on_refused is not None:
            self._on_refused(reason)
        self._unlogged += 1
        now = asyncio.get_running_loop().time()
        if now - self._logged_at >= self._log_every_s:
            log.warning(
                "health_refused",
                reason=reason,
                refused_since_last_line=self._unlogged,
                open_connections=len(self._writers),
            )
            self._unlogged = 0
            self._logged_at = now

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        peer_ip = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        if len(self._writers) >= self._max_open:
            self._refused("over_capacity")
            writer.close()
            return
        self._writers.add(writer)
        try:
            await self._serve_one(reader, writer, peer_allowed(peer_ip, self._allow))
        except TimeoutError:
            self._refused("slow_request")
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(TimeoutError, ConnectionError):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()

    async def _serve_one(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, allowed: bool
    ) -> None:
        # The request is read even when it will be refused: closing with unread input would
        # reset the connection instead of delivering the answer.
        try:
            async with asyncio.timeout(self._request_timeout_s):
                request_line = await reader.readline()
                headers: dict[str, str] = {}
                for _ in range(_MAX_HEADERS):
                    header = await reader.readline()
                    if header in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = header.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                else:
                    raise ValueError("too many headers")
        except ValueError:  # a line over the limit (LimitOverrunError) or too many headers
            self._refused("bad_request")
            await self._send(writer, 400, {"error": "bad request"}, head=False)
            return
        if not allowed:
            self._refused("forbidden")
            await self._send(writer, 403, {"error": "forbidden"}, head=False)
            return
        parts = request_line.decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            self._refused("bad_request")
            await self._send(writer, 400, {"error": "bad request"}, head=False)
            return
        method, target, _version = parts
        path = target.split("?", 1)[0]
        self.requests += 1
        head = method == "HEAD"
        if method not in ("GET", "HEAD"):
            await self._send(writer, 405, {"error": "method not allowed"}, head=False)
            return
        if path == "/health":  # never capped: liveness must not depend on other clients
            await self._send(writer, 200, {"status": "alive"}, head=head)
            return
        known = path == "/ready" or (path == "/metrics" and self._metrics is not None)
        if not known and self._pages is None:
            await self._send(writer, 404, {"error": "not found"}, head=head)
            return
        if self._busy >= self._max_connections:
            self._refused("busy")
            await self._send(writer, 503, {"error": "busy"}, head=head)
            return
        self._busy += 1
        try:
            if path == "/ready":
                report = await self._call_readiness()
                code = 200 if report.get("ready") is True else 503
                await self._send(writer, code, report, head=head)
            elif not known:
                await self._serve_page(writer, Request(method, target, headers), head=head)
            else:
                text = await self._call_metrics()
                if text is None:
                    await self._send(writer, 503, {"error": "metrics unavailable"}, head=head)
                else:
                    body = text.encode("utf-8")
                    await self._write(writer, 200, PROMETHEUS_CONTENT_TYPE, body, head=head)
        finally:
            self._busy -= 1

    async def _serve_page(
        self, writer: asyncio.StreamWriter, request: Request, *, head: bool
    ) -> None:
        assert self._pages is not None
        try:
            async with asyncio.timeout(self._provider_timeout_s * 5):
                page = await self._pages(request)
        except Exception as exc:  # a broken page is a 500, not a crashed admin port
            log.warning("page_failed", path=request.path, error=f"{type(exc).__name__}: {exc}")
            page = Page(500, "text/plain; charset=utf-8", b"internal error\n")
        if page is None:
            await self._send(writer, 404, {"error": "not found"}, head=head)
            return
        await self._write(writer, page.status, page.content_type, page.body, head=head)

    async def _call_readiness(self) -> Mapping[str, Any]:
        try:
            result = self._readiness()
            if inspect.isawaitable(result):
                async with asyncio.timeout(self._provider_timeout_s):
                    result = await result
            return dict(result)
        except Exception as exc:  # a broken provider is "not ready", not a crashed server
            log.warning("readiness_check_failed", error=f"{type(exc).__name__}: {exc}")
            return {"ready": False, "status": "error", "error": "readiness check failed"}

    async def _call_metrics(self) -> str | None:
        now = asyncio.get_running_loop().time()
        if self._metrics_cache is not None and now - self._metrics_cache[0] < self._cache_s:
            return self._metrics_cache[1]
        text = await self._metrics_now()
        if text is not None:
            self._metrics_cache = (now, text)
        return text

    async def _metrics_now(self) -> str | None:
        assert self._metrics is not None
        try:
            result = self._metrics()
            if inspect.isawaitable(result):
                async with asyncio.timeout(self._provider_timeout_s):
                    result = await result
            return str(result)
        except Exception as exc:
            log.warning("metrics_failed", error=f"{type(exc).__name__}: {exc}")
            return None

    async def _send(
        self, writer: asyncio.StreamWriter, code: int, payload: Mapping[str, Any], *, head: bool
    ) -> None:
        body = (json.dumps(payload, sort_keys=True, default=str) + "\n").encode("utf-8")
        await self._write(writer, code, "application/json", body, head=head)

    async def _write(
        self, writer: asyncio.StreamWriter, code: int, content_type: str, body: bytes, *, head: bool
    ) -> None:
        headers = (
            f"HTTP/1.1 {code} {_REASONS.get(code, 'Status')}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Cache-Control: no-store\r\n"
            "Connection: close\r\n"
        )
        if code == 405:
            headers += "Allow: GET, HEAD\r\n"
        writer.write(headers.encode("ascii") + b"\r\n" + (b"" if head else body))
        async with asyncio.timeout(self._request_timeout_s):
            await writer.drain()
