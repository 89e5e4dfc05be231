"""The OpenAI-compatible HTTP engine over a pool of endpoints: least-loaded healthy endpoint
within per-endpoint caps, back-off on 429/5xx/timeouts/connection errors, key rotation
(keys from the environment or a keys file, never from the TOML, never logged), SSE parsing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
import time
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import structlog

from voicebot_pbx.answers.llm_local import DEFAULT_SEED, LlmBusy, LlmError, LlmUnavailable
from voicebot_pbx.config import (
    DEFAULT_FALLBACK_REPLY as DEFAULT_FALLBACK_REPLY,
)
from voicebot_pbx.config import (
    DEFAULT_REFUSAL_REPLY as DEFAULT_REFUSAL_REPLY,
)
from voicebot_pbx.config import LlmConfig as LlmConfig
from voicebot_pbx.config import LlmEndpointConfig as LlmEndpointConfig
from voicebot_pbx.config import safe_url as _safe_url

log = structlog.get_logger(__name__)


# --- OpenAI-compatible HTTP engine -----------------------------------------------------------


class Secret:
    """An API key that never shows itself in repr/str/logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__


def read_keys_file(path: str | Path) -> dict[str, Secret]:
    """``NAME=key`` lines (``#`` comments, blank lines, ``export `` prefixes allowed)."""
    file = Path(path)
    mode = file.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("llm_keys_file_readable_by_others", path=str(file), hint="chmod 600")
    keys: dict[str, Secret] = {}
    for number, raw in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        name, sep, value = line.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"{file}:{number}: not NAME=key")
        keys[name.strip()] = Secret(value.strip().strip("'\""))
    return keys


def resolve_keys(
    names: Iterable[str], *, keys_file: str = "", environ: Mapping[str, str] | None = None
) -> dict[str, Secret]:
    """Each named key from the environment, else from ``keys_file``. A missing one is an error
    that names the variable (never a value)."""
    env = os.environ if environ is None else environ
    from_file: dict[str, Secret] | None = None
    found: dict[str, Secret] = {}
    for name in names:
        if env.get(name):
            found[name] = Secret(env[name])
            continue
        if from_file is None:
            from_file = read_keys_file(keys_file) if keys_file else {}
        if name in from_file and from_file[name].reveal():
            found[name] = from_file[name]
            continue
        where = f"the environment or {keys_file}" if keys_file else "the environment"
        raise ValueError(f"LLM API key {name} is not set in {where}")
    return found


@dataclass(slots=True)
class ApiKey:
    name: str  # the variable name: safe to log
    secret: Secret
    rest_until: float = 0.0
    uses: int = 0


@dataclass(slots=True)
class Endpoint:
    url: str  # API base, e.g. http://127.0.0.1:8080/v1
    keys: list[ApiKey] = field(default_factory=list)  # empty: keyless
    max_concurrency: int = 2
    model: str = ""
    index: int = 0
    active: int = 0
    rest_until: float = 0.0
    requests: int = 0
    failures: int = 0
    _next_key: int = 0

    @property
    def label(self) -> str:
        return _safe_url(self.url)


@dataclass(slots=True)
class Lease:
    endpoint: Endpoint
    key: ApiKey | None

    @property
    def ident(self) -> tuple[int, str]:
        return (self.endpoint.index, self.key.name if self.key else "")


Outcome = Literal["ok", "cancelled", "rate_limited", "auth", "server_error", "timeout", "down"]


class EndpointPool:
    """Endpoints (and their keys) with per-endpoint concurrency caps.

    ``acquire`` picks the least-loaded healthy endpoint with a free slot (ties go round the
    pool), and on it the next resting-free key (round robin). When every healthy endpoint is
    at its cap, up to ``queue_max`` requests wait up to ``queue_timeout_s`` for a slot, then
    :class:`LlmBusy`; with no healthy endpoint left (or all tried), :class:`LlmUnavailable`.
    ``release`` records the outcome: 429 rests the key (or the endpoint when keyless, or when
    it has no other key); 5xx, timeouts and connection errors rest the endpoint; 401/403 rest
    the key.
    """

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        *,
        queue_max: int = 8,
        queue_timeout_s: float = 1.0,
        backoff_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not endpoints:
            raise ValueError("an endpoint pool needs at least one endpoint")
        self.endpoints = list(endpoints)
        for index, endpoint in enumerate(self.endpoints):
            endpoint.index = index
        self.queue_max = queue_max
        self.queue_timeout_s = queue_timeout_s
        self.backoff_s = backoff_s
        self._clock = clock
        self._turn = 0
        self._waiters: list[asyncio.Future[None]] = []

    @classmethod
    def from_config(
        cls, config: LlmConfig, *, environ: Mapping[str, str] | None = None
    ) -> EndpointPool:
        names = [name for ep in config.endpoints for name in ep.key_env]
        secrets = resolve_keys(names, keys_file=config.keys_file, environ=environ)
        endpoints = [
            Endpoint(
                url=ep.url.rstrip("/"),
                keys=[ApiKey(name, secrets[name]) for name in ep.key_env],
                max_concurrency=ep.max_concurrency,
                model=ep.model,
            )
            for ep in config.endpoints
        ]
        return cls(
            endpoints,
            queue_max=config.queue_max,
            queue_timeout_s=config.queue_timeout_s,
            backoff_s=config.backoff_s,
        )

    def _usable_keys(self, ep: Endpoint, now: float, exclude: set[tuple[int, str]]) -> list[int]:
        if not ep.keys:
            return [] if (ep.index, "") in exclude else [-1]
        return [
            i
            for i, key in enumerate(ep.keys)
            if key.rest_until <= now and (ep.index, key.name) not in exclude
        ]

    def _pick(self, exclude: set[tuple[int, str]]) -> Lease | None | Literal["full"]:
        now = self._clock()
        candidates = [
            ep
            for ep in self.endpoints
            if ep.rest_until <= now and self._usable_keys(ep, now, exclude)
        ]
        if not candidates:
            return None
        free = [ep for ep in candidates if ep.active < ep.max_concurrency]
        if not free:
            return "full"
        count, offset = len(self.endpoints), self._turn
        self._turn += 1  # ties go round the pool, starting from the first endpoint
        best = min(
            free, key=lambda ep: (ep.active / ep.max_concurrency, (ep.index - offset) % count)
        )
        usable = self._usable_keys(best, now, exclude)
        key: ApiKey | None = None
        if usable != [-1]:
            # round robin over the endpoint's keys, skipping resting/tried ones
            n = len(best.keys)
            for step in range(n):
                candidate = (best._next_key + step) % n
                if candidate in usable:
                    key = best.keys[candidate]
                    best._next_key = (candidate + 1) % n
                    break
            assert key is not None
            key.uses += 1
        best.active += 1
        best.requests += 1
        return Lease(best, key)

    async def acquire(self, exclude: set[tuple[int, str]] | None = None) -> Lease:
        tried = exclude or set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.queue_timeout_s
        while True:
            picked = self._pick(tried)
            if isinstance(picked, Lease):
                return picked
            if picked is None:
                raise LlmUnavailable("no healthy LLM endpoint left")
            if len(self._waiters) >= self.queue_max:
                raise LlmBusy(f"every LLM endpoint is at its cap and {self.queue_max} wait")
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.append(fut)
            try:
                async with asyncio.timeout_at(deadline):
                    await fut
            except TimeoutError:
                raise LlmBusy(f"no LLM endpoint slot within {self.queue_timeout_s:.1f} s") from None
            finally:
                if fut in self._waiters:
                    self._waiters.remove(fut)

    def release(self, lease: Lease, outcome: Outcome, retry_after_s: float | None = None) -> None:
        ep = lease.endpoint
        ep.active = max(0, ep.active - 1)
        now = self._clock()
        rest = self.backoff_s if retry_after_s is None else min(max(retry_after_s, 1.0), 300.0)
        if outcome in ("rate_limited", "auth"):
            ep.failures += 1
            if lease.key is not None:
                lease.key.rest_until = now + rest
            if lease.key is None or all(k.rest_until > now for k in ep.keys):
                ep.rest_until = max(ep.rest_until, now + rest)
        elif outcome in ("server_error", "timeout", "down"):
            ep.failures += 1
            ep.rest_until = now + rest
        if outcome not in ("ok", "cancelled"):
            log.warning(
                "llm_endpoint_rests",
                endpoint=ep.label,
                key=lease.key.name if lease.key else None,
                outcome=outcome,
                rest_s=round(rest, 1),
            )
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def healthy(self) -> list[Endpoint]:
        now = self._clock()
        return [ep for ep in self.endpoints if ep.rest_until <= now]


class _EndpointFailed(Exception):
    def __init__(self, outcome: Outcome, detail: str, retry_after_s: float | None = None):
        super().__init__(detail)
        self.outcome: Outcome = outcome
        self.retry_after_s = retry_after_s


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        return None


class OpenAIEngine:
    """``POST {url}/chat/completions`` with ``stream: true`` (server-sent events) over an
    :class:`EndpointPool`. A failure before the first token moves the request to the next
    endpoint/key; after it, the answer ends with :class:`LlmError`. Closing the iterator
    closes the HTTP stream, which makes llama.cpp-style servers stop generating."""

    name = "openai"

    def __init__(
        self,
        pool: EndpointPool,
        *,
        endpoint_timeout_s: float = 2.0,
        stream_timeout_s: float = 3.0,
        client: httpx.AsyncClient | None = None,
        seed: int = DEFAULT_SEED,
    ) -> None:
        self.pool = pool
        # Sent with every request that samples (temperature above 0), so an endpoint that
        # honours it (llama.cpp's server, vLLM, OpenAI) gives a question the same answer
        # every time, as the local engine does; greedy requests need none and carry none.
        self.seed = seed
        self.endpoint_timeout_s = endpoint_timeout_s
        self.stream_timeout_s = stream_timeout_s
        self._own_client = client is None
        self._client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(
                connect=endpoint_timeout_s,
                read=stream_timeout_s,
                write=endpoint_timeout_s,
                pool=endpoint_timeout_s,
            ),
            limits=httpx.Limits(max_keepalive_connections=16, keepalive_expiry=30.0),
            trust_env=False,
        )

    async def aclose(self) -> None:
        if self._own_client:
            async with asyncio.timeout(5.0):
                await self._client.aclose()

    async def stream_chat(
        self, messages: Sequence[Mapping[str, str]], *, max_tokens: int, temperature: float
    ) -> AsyncGenerator[str, None]:
        tried: set[tuple[int, str]] = set()
        last_failure: _EndpointFailed | None = None
        while True:
            try:
                lease = await self.pool.acquire(tried)
            except LlmUnavailable as exc:
                detail = f": last error {last_failure}" if last_failure else ""
                raise LlmUnavailable(f"{exc}{detail}") from last_failure
            tried.add(lease.ident)
            body = {
                "model": lease.endpoint.model or "default",
                "messages": [dict(m) for m in messages],
                "max_tokens": max_tokens,
                "temperature": temperature,
                "stream": True,
            }
            if temperature > 0:
                body["seed"] = self.seed
            outcome: Outcome = "cancelled"
            retry_after: float | None = None
            yielded = False
            try:
                # aclosing: a consumer that stops (barge-in) closes the HTTP stream at once
                async with contextlib.aclosing(self._stream_one(lease, body)) as pieces:
                    async for piece in pieces:
                        yielded = True
                        yield piece
                outcome = "ok"
                return
            except _EndpointFailed as failed:
                outcome, retry_after, last_failure = failed.outcome, failed.retry_after_s, failed
                if yielded:
                    raise LlmError(f"LLM stream broke mid-answer: {failed}") from None
            finally:
                self.pool.release(lease, outcome, retry_after)

    async def _stream_one(self, lease: Lease, body: dict[str, Any]) -> AsyncGenerator[str, None]:
        endpoint = lease.endpoint
        headers = {"Accept": "text/event-stream"}
        if lease.key is not None:
            headers["Authorization"] = f"Bearer {lease.key.secret.reveal()}"
        request = self._client.build_request(
            "POST", f"{endpoint.url}/chat/completions", json=body, headers=headers
        )
        try:
            async with asyncio.timeout(self.endpoint_timeout_s):
                response = await self._client.send(request, stream=True)
        except TimeoutError:
            raise _EndpointFailed(
                "timeout", f"{endpoint.label}: no response in {self.endpoint_timeout_s} s"
            ) from None
        except httpx.TimeoutException as exc:
            raise _EndpointFailed("timeout", f"{endpoint.label}: {type(exc).__name__}") from None
        except httpx.TransportError as exc:
            raise _EndpointFailed("down", f"{endpoint.label}: {type(exc).__name__}") from None
        try:
            status = response.status_code
            if status != 200:
                outcome: Outcome = (
                    "rate_limited"
                    if status == 429
                    else "auth"
                    if status in (401, 403)
                    else "server_error"
                )
                raise _EndpointFailed(
                    outcome, f"{endpoint.label}: HTTP {status}", _retry_after(response)
                )
            lines = response.aiter_lines()
            while True:
                try:
                    async with asyncio.timeout(self.stream_timeout_s):
                        line = await anext(lines)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    raise _EndpointFailed(
                        "timeout", f"{endpoint.label}: stream stalled {self.stream_timeout_s} s"
                    ) from None
                except httpx.TimeoutException as exc:
                    raise _EndpointFailed(
                        "timeout", f"{endpoint.label}: {type(exc).__name__}"
                    ) from None
                except httpx.TransportError as exc:
                    raise _EndpointFailed(
                        "down", f"{endpoint.label}: {type(exc).__name__}"
                    ) from None
                piece = _sse_piece(line, endpoint.label)
                if piece is _SSE_DONE:
                    return
                if piece:
                    assert isinstance(piece, str)
                    yield piece
        finally:
            with contextlib.suppress(TimeoutError, httpx.HTTPError):
                async with asyncio.timeout(1.0):
                    await response.aclose()


_SSE_DONE = object()


def _sse_piece(line: str, label: str) -> object:
    """The text of one server-sent-event line ("" for comments, keep-alives, role-only
    chunks), ``_SSE_DONE`` for ``[DONE]``."""
    if not line.startswith("data:"):
        return ""
    data = line[5:].strip()
    if data == "[DONE]":
        return _SSE_DONE
    try:
        event = json.loads(data)
    except ValueError:
        raise _EndpointFailed("server_error", f"{label}: bad event JSON") from None
    if not isinstance(event, dict):
        return ""
    if "error" in event:
        raise _EndpointFailed("server_error", f"{label}: error event in stream")
    choices = event.get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        return ""
    choice = choices[0]
    delta = choice.get("delta")
    if isinstance(delta, dict):
        content = delta.get("content")
        return content if isinstance(content, str) else ""
    text = choice.get("text")  # plain /completions servers
    return text if isinstance(text, str) else ""
