"""The health/readiness/metrics endpoint, over real TCP on 127.0.0.1:0."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

import pytest

from voicebot_pbx.ops.health import HealthServer, readiness_report
from voicebot_pbx.pbx.allow import parse_cidrs, peer_allowed

T = TypeVar("T")


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(15.0):
            return await main()

    return asyncio.run(bounded())


async def request(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return status, headers, body


async def get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    return await request(port, f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())


def test_health_ready_and_metrics() -> None:
    state = {"models": False, "draining": False}

    def readiness() -> Mapping[str, Any]:
        return readiness_report(
            models_loaded=state["models"],
            draining=state["draining"],
            rasa="degraded",
            ami="connected",
            active_calls=2,
        )

    async def main() -> None:
        server = HealthServer(
            readiness, metrics=lambda: "voicebot_calls_active 2\n", host="127.0.0.1", port=0
        )
        await server.start()
        try:
            status, headers, body = await get(server.port, "/health")
            assert status == 200 and json.loads(body) == {"status": "alive"}
            assert headers["Content-Type"] == "application/json"
            assert int(headers["Content-Length"]) == len(body)

            status, _, body = await get(server.port, "/ready")
            assert status == 503
            assert json.loads(body)["status"] == "starting"

            state["models"] = True
            status, _, body = await get(server.port, "/ready?verbose=1")
            report = json.loads(body)
            assert status == 200
            assert report["ready"] is True and report["status"] == "degraded"
            assert report["rasa"] == "degraded" and report["ami"] == "connected"
            assert report["active_calls"] == 2

            state["draining"] = True
            status, _, body = await get(server.port, "/ready")
            assert status == 503 and json.loads(body)["status"] == "draining"

            status, headers, body = await get(server.port, "/metrics")
            assert status == 200
            assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
            assert body == b"voicebot_calls_active 2\n"

            status, headers, body = await get(server.port, "/health", method="HEAD")
            assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0
        finally:
            await server.close()

    run(main)


def test_errors_and_bad_requests() -> None:
    async def broken() -> Mapping[str, Any]:
        raise RuntimeError("rasa probe exploded")

    async def main() -> None:
        server = HealthServer(broken, port=0, request_timeout_s=0.3)
        await server.start()
        try:
            assert (await get(server.port, "/nope"))[0] == 404
            assert (await get(server.port, "/metrics"))[0] == 404  # no metrics provider
            status, headers, _ = await get(server.port, "/health", method="POST")
            assert status == 405 and headers["Allow"] == "GET, HEAD"
            status, _, body = await get(server.port, "/ready")
            assert status == 503 and json.loads(body)["ready"] is False
            assert (await request(server.port, b"garbage\r\n\r\n"))[0] == 400
            assert (await request(server.port, b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\n"))[
                0
            ] == 400
            # A client that sends nothing is disconnected after the request timeout.
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            async with asyncio.timeout(3.0):
                assert await reader.read() == b""
            writer.close()
            # The server still answers afterwards.
            assert (await get(server.port, "/health"))[0] == 200
        finally:
            await server.close()

    run(main)


def test_clients_outside_the_allowlist_are_refused() -> None:
    async def main() -> None:
        server = HealthServer(lambda: {"ready": True}, port=0, allow_cidrs=("10.0.0.0/8",))
        await server.start()
        try:
            assert (await get(server.port, "/health"))[0] == 403
        finally:
            await server.close()

    run(main)


def test_peer_allowed() -> None:
    loopback = ("127.0.0.0/8", "::1/128")
    assert peer_allowed("127.0.0.1", loopback)
    assert peer_allowed("::1", loopback)
    assert peer_allowed("::ffff:127.0.0.1", loopback)  # IPv4-mapped
    assert not peer_allowed("10.1.2.3", loopback)
    assert not peer_allowed("not-an-ip", loopback)
    assert peer_allowed("10.1.2.3", ["10.1.2.0/24"])
    assert peer_allowed("fe80::1%eth0", ["fe80::/10"])
    assert peer_allowed("203.0.113.9", [])  # empty allowlist: no restriction
    assert peer_allowed("192.0.2.7", parse_cidrs(["192.0.2.7"]))
    assert peer_allowed("10.9.9.9", ["10.1.2.3/8"])  # host bits tolerated
    with pytest.raises(ValueError):
        parse_cidrs(["10.0.0.0/33"])
    with pytest.raises(ValueError):
        peer_allowed("10.0.0.1", ["nonsense"])


def test_readiness_report() -> None:
    assert readiness_report(models_loaded=True)["status"] == "ok"
    assert readiness_report(models_loaded=True, ami="disconnected")["ready"] is True
    assert readiness_report(models_loaded=False)["ready"] is False


def test_readiness_reports_each_profile_rasa() -> None:
    report = readiness_report(models_loaded=True, profiles={"support": "ok", "sales": "degraded"})
    assert report["ready"] is True and report["status"] == "degraded"
    assert report["profile_rasa"] == {"support": "ok", "sales": "degraded"}
    healthy = readiness_report(models_loaded=True, profiles={"support": "ok"})
    assert healthy["status"] == "ok"
    assert "profile_rasa" not in readiness_report(models_loaded=True)


def test_liveness_answers_through_idle_slow_and_flooding_connections() -> None:
    """Issue #24: 16 idle connections used to make every /health a 503. Now idle, slow-header
    and 500 concurrent connections leave /health at 200; only /ready and /metrics (which call
    providers) are capped, and every refusal is counted."""
    refused: list[str] = []

    async def main() -> None:
        server = HealthServer(
            lambda: {"ready": True},
            metrics=lambda: "x 1\n",
            port=0,
            request_timeout_s=0.5,
            max_connections=2,
            on_refused=refused.append,
        )
        await server.start()
        hostile: list[asyncio.StreamWriter] = []
        try:
            for n in range(60):
                _, w = await asyncio.open_connection("127.0.0.1", server.port)
                if n % 2:
                    w.write(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # never ends its headers
                hostile.append(w)
            polls = [await get(server.port, "/health") for _ in range(10)]
            assert [status for status, _, _ in polls] == [200] * 10
            flood = await asyncio.gather(*(get(server.port, "/health") for _ in range(500)))
            assert {status for status, _, _ in flood} == {200}
            await asyncio.sleep(0.8)  # the hostile connections time out and are counted
            assert refused.count("slow_request") >= 60
        finally:
            for w in hostile:
                w.close()
            await server.close()

    run(main)


def test_ready_is_capped_and_the_refusals_are_counted_and_logged_once(
    capsys: pytest.CaptureFixture[str],
) -> None:
    refused: list[str] = []
    release = asyncio.Event()

    async def slow_readiness() -> Mapping[str, Any]:
        await release.wait()
        return {"ready": True}

    async def main() -> None:
        server = HealthServer(slow_readiness, port=0, max_connections=2, on_refused=refused.append)
        await server.start()
        try:
            held = [asyncio.ensure_future(get(server.port, "/ready")) for _ in range(2)]
            await asyncio.sleep(0.2)
            extra = [await get(server.port, "/ready") for _ in range(3)]
            assert [status for status, _, _ in extra] == [503] * 3
            assert json.loads(extra[0][2]) == {"error": "busy"}
            assert (await get(server.port, "/health"))[0] == 200
            release.set()
            assert [status for status, _, _ in await asyncio.gather(*held)] == [200, 200]
        finally:
            await server.close()

    run(main)
    assert refused == ["busy"] * 3
    assert capsys.readouterr().out.count("health_refused") == 1  # rate-limited


def test_other_paths_go_to_the_pages_callable_with_query_and_headers() -> None:
    from voicebot_pbx.ops.health import Page, Request

    seen: list[Request] = []

    async def pages(request: Request) -> Page | None:
        seen.append(request)
        if request.path == "/boom":
            raise RuntimeError("a bug in a page")
        if request.path != "/calls":
            return None
        return Page(200, "text/html; charset=utf-8", b"<h1>calls</h1>")

    async def main() -> None:
        server = HealthServer(lambda: {"ready": True}, port=0, pages=pages)
        await server.start()
        try:
            raw = b"GET /calls?outcome=transferred&outcome=hangup HTTP/1.1\r\nX-Token: t0\r\n\r\n"
            status, headers, body = await request(server.port, raw)
            assert (status, body) == (200, b"<h1>calls</h1>")
            assert headers["Content-Type"] == "text/html; charset=utf-8"
            assert (await get(server.port, "/nothing"))[0] == 404
            assert (await get(server.port, "/boom"))[0] == 500
            assert (await get(server.port, "/health"))[0] == 200  # never reaches pages
        finally:
            await server.close()

    run(main)
    assert seen[0].query == {"outcome": "hangup"} and seen[0].headers["x-token"] == "t0"
    assert [r.path for r in seen] == ["/calls", "/nothing", "/boom"]


def test_a_burst_of_metrics_requests_renders_the_text_once() -> None:
    """bench_chaos: 500 /ready+/metrics requests froze the loop that paces every call's
    audio for 0.3-0.65 s; the metrics text is now reused for ``cache_s``."""
    renders = [0]

    def metrics() -> str:
        renders[0] += 1
        return f"voicebot_renders {renders[0]}\n"

    async def main() -> list[str]:
        server = HealthServer(lambda: {"ready": True}, metrics=metrics, port=0, cache_s=60.0)
        await server.start()
        try:
            bodies = []
            for _ in range(20):
                status, _, body = await get(server.port, "/metrics")
                assert status == 200
                bodies.append(body.decode() if isinstance(body, bytes) else body)
            return bodies
        finally:
            await server.close()

    bodies = asyncio.run(main())
    assert renders[0] == 1 and set(bodies) == {"voicebot_renders 1\n"}
