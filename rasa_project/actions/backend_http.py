"""A :class:`~actions.backend.Backend` that asks a JSON-over-HTTP service (one
``httpx.AsyncClient`` per backend).

Each call, including its retries and back-off, is bounded by ``timeout_s`` in total. GETs are
idempotent and are retried (up to ``retries`` more attempts, exponential back-off with
jitter starting at ``backoff_s``, never sleeping past the budget) after a connection error,
a timeout or an HTTP 5xx; a booking POST is retried only after a connection error (the
request never reached the server), so a slow or failing server cannot book twice. A response
larger than ``max_response_bytes`` is abandoned as soon as that many bytes have arrived.
With a :class:`~actions.circuit.CircuitBreaker`, an open breaker refuses the call without a
request; every :class:`~actions.backend.BackendError` counts as a failure, any answer
(including "no such account" and "slot taken") as a success. Proxy environment variables are
ignored (``trust_env=False``): these are internal services.

Errors (``BackendError.reason``): "timeout" (the budget ran out), "unreachable" (no
connection), "server_error" (5xx after the retries), "malformed" (not JSON, or missing keys
or wrong types), "too_large", "circuit_open", "error" (any other status or failure).

The JSON API (HTTP_API.md says the same)
========================================

JSON over HTTP, UTF-8. Times are naive local times: dates "YYYY-MM-DD", times
"YYYY-MM-DDTHH:MM". Amounts are integers in pence (balance_pence > 0: the customer owes;
< 0: in credit). Postcodes are normalised: upper case, one space ("NW3 2QG"). Extra keys
are ignored; a missing key or a wrong type makes the whole answer malformed.

GET /accounts/{number}
    number: 8 digits.
    200 {"number": "12345678", "name": "Ava Smith", "postcode": "NW1 4RY",
         "birth_date": "1980-02-29", "balance_pence": 4250, "last_bill_pence": 6100,
         "last_bill_date": "2025-05-20"}
    404 no such account (any body)

GET /outages?postcode=NW3%202QG
    postcode: a normalised full postcode, or an outward code alone ("NW3"). The server
    matches the full postcode first, else its outward code (the district).
    200 {"outage": null}
    200 {"outage": {"area": "NW3", "cause": "a damaged underground cable",
                    "estimated_fix": "2025-06-02T17:15"}}
    (area: the outward code or full postcode the outage is known for)

GET /slots?date=YYYY-MM-DD&after=YYYY-MM-DDTHH:MM
    The engineer visit starts on that date that are not booked, strictly after "after",
    sorted (Monday to Saturday, on the hour and half hour from 08:00 to 17:30).
    200 {"slots": ["2025-06-02T14:00", "2025-06-02T14:30"]}

POST /bookings
    body {"account_number": "12345678", "start": "2025-06-02T14:30"}
    201 {"reference": "NW123456", "account_number": "12345678", "start": "2025-06-02T14:30"}
    409 the slot is booked already, or is not a bookable slot (any body)
    (account_number "" books for a caller who did not identify)

GET /bookings?account_number=12345678
    200 {"bookings": [{"reference": "NW123456", "account_number": "12345678",
                       "start": "2025-06-02T14:30"}]}
    (all the account's bookings, future and past, in any order)

Any other status is an error; a 5xx is the server failing.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import random
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import httpx

from .backend import (
    Account,
    BackendError,
    Booking,
    Outage,
    SlotTaken,
    is_slot,
    iso_minute,
    normalise_account_number,
    normalise_area,
    normalise_postcode,
    parse_iso_date,
    parse_iso_minute,
)
from .circuit import CircuitBreaker

__all__ = ["HttpBackend"]

T = TypeVar("T")

_Params = Mapping[str, str] | None


class _Failed(Exception):
    """One attempt failed; whether another may be made depends on the method."""

    def __init__(self, reason: str, detail: str, *, retry_get: bool, retry_post: bool) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.retry_get = retry_get
        self.retry_post = retry_post


class _Malformed(ValueError):
    pass


class HttpBackend:
    """``HttpBackend(base_url, system)``: see the module docstring. Opening does no I/O."""

    def __init__(
        self,
        base_url: str,
        system: str,
        *,
        timeout_s: float = 1.5,
        retries: int = 2,
        backoff_s: float = 0.1,
        max_response_bytes: int = 65536,
        breaker: CircuitBreaker | None = None,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        if retries < 0:
            raise ValueError("retries must not be negative")
        if backoff_s < 0:
            raise ValueError("backoff_s must not be negative")
        if max_response_bytes < 1:
            raise ValueError("max_response_bytes must be positive")
        self.system = system
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_response_bytes = max_response_bytes
        self.breaker = breaker
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            headers={
                "Accept": "application/json",
                "User-Agent": "northwind-actions",
                **dict(headers or {}),
            },
            transport=transport,
            timeout=timeout_s,
            follow_redirects=False,
            trust_env=False,
        )
        self._closed = False

    def __repr__(self) -> str:
        return f"HttpBackend({self.base_url!r}, {self.system!r})"

    # --- the Backend calls ---------------------------------------------------------------

    async def account(self, number: str) -> Account | None:
        digits = normalise_account_number(number)
        if digits is None:
            return None

        def parse(status: int, content: bytes) -> Account | None:
            if status == 404:
                return None
            self._expect(status, 200)
            data = _object(_json(content))
            postcode = normalise_postcode(_str(data, "postcode"))
            if postcode is None:
                raise _Malformed(f"postcode {data['postcode']!r} is not a postcode")
            account = Account(
                number=_str(data, "number"),
                name=_str(data, "name"),
                postcode=postcode,
                birth_date=_date(data, "birth_date"),
                balance_pence=_int(data, "balance_pence"),
                last_bill_pence=_int(data, "last_bill_pence"),
                last_bill_date=_date(data, "last_bill_date"),
            )
            if account.number != digits:
                raise _Malformed(f"asked for account {digits}, got {account.number}")
            return account

        return await self._exchange("GET", f"/accounts/{digits}", parse)

    async def outage(self, postcode: str) -> Outage | None:
        area = normalise_area(postcode)
        if area is None:
            return None

        def parse(status: int, content: bytes) -> Outage | None:
            self._expect(status, 200)
            data = _object(_json(content))
            if "outage" not in data:
                raise _Malformed("no 'outage' key")
            if data["outage"] is None:
                return None
            found = _object(data["outage"])
            known_area = normalise_area(_str(found, "area"))
            if known_area is None:
                raise _Malformed(f"area {found['area']!r} is not a postcode or outward code")
            return Outage(
                area=known_area,
                cause=_str(found, "cause"),
                estimated_fix=_minute(found, "estimated_fix"),
            )

        return await self._exchange("GET", "/outages", parse, params={"postcode": area})

    async def free_slots(
        self, day: datetime.date, now: datetime.datetime
    ) -> list[datetime.datetime]:
        def parse(status: int, content: bytes) -> list[datetime.datetime]:
            self._expect(status, 200)
            slots = _list(_object(_json(content)), "slots")
            starts = [_as_minute(item) for item in slots]
            return sorted({start for start in starts if start.date() == day and start > now})

        params = {"date": day.isoformat(), "after": iso_minute(now)}
        return await self._exchange("GET", "/slots", parse, params=params)

    async def book(self, account_number: str, start: datetime.datetime) -> Booking:
        # "": a caller who did not identify; the visit is booked without an account
        digits = normalise_account_number(account_number) if account_number else ""
        if digits is None:
            raise ValueError(f"not an 8-digit account number: {account_number!r}")
        if not is_slot(start):
            raise SlotTaken(f"{start.isoformat()} is not a bookable slot")

        def parse(status: int, content: bytes) -> Booking:
            if status == 409:
                raise SlotTaken(f"{iso_minute(start)} is booked already")
            self._expect(status, 201, 200)
            booking = _booking(_json(content))
            if booking.account_number != digits or booking.start != start:
                raise _Malformed(f"asked to book {digits} at {iso_minute(start)}, got {booking}")
            return booking

        body = {"account_number": digits, "start": iso_minute(start)}
        return await self._exchange("POST", "/bookings", parse, body=body)

    async def bookings(self, account_number: str) -> list[Booking]:
        digits = normalise_account_number(account_number)
        if digits is None:
            return []

        def parse(status: int, content: bytes) -> list[Booking]:
            self._expect(status, 200)
            found = [_booking(item) for item in _list(_object(_json(content)), "bookings")]
            if any(b.account_number != digits for b in found):
                raise _Malformed(f"asked for the bookings of {digits}, got others")
            return sorted(found, key=lambda b: (b.start, b.reference))

        return await self._exchange("GET", "/bookings", parse, params={"account_number": digits})

    async def aclose(self) -> None:
        self._closed = True
        await self._client.aclose()

    # --- one call: breaker, budget, retries -----------------------------------------------

    def _expect(self, status: int, *expected: int) -> None:
        if status not in expected:
            raise BackendError(self.system, "error", f"unexpected HTTP {status}")

    async def _exchange(
        self,
        method: str,
        path: str,
        parse: Callable[[int, bytes], T],
        *,
        params: _Params = None,
        body: Mapping[str, Any] | None = None,
    ) -> T:
        if self._closed:
            raise BackendError(self.system, "error", "backend closed")
        breaker = self.breaker
        if breaker is not None and not breaker.allow():
            raise BackendError(self.system, "circuit_open", f"{breaker.state}: not tried")
        try:
            status, content = await self._with_retries(method, path, params, body)
            try:
                result = parse(status, content)
            except (_Malformed, ValueError, TypeError) as exc:
                raise BackendError(self.system, "malformed", f"{method} {path}: {exc}") from exc
        except SlotTaken:
            if breaker is not None:
                breaker.record_success()
            raise
        except BackendError:
            if breaker is not None:
                breaker.record_failure()
            raise
        # A cancelled call records nothing: the breaker lets another trial through later.
        if breaker is not None:
            breaker.record_success()
        return result

    async def _with_retries(
        self, method: str, path: str, params: _Params, body: Mapping[str, Any] | None
    ) -> tuple[int, bytes]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        attempt = 0
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise BackendError(self.system, "timeout", f"no answer within {self.timeout_s:g}s")
            try:
                return await asyncio.wait_for(
                    self._attempt(method, path, params, body, remaining), remaining
                )
            except asyncio.TimeoutError:
                raise BackendError(
                    self.system, "timeout", f"no answer within {self.timeout_s:g}s"
                ) from None
            except _Failed as failed:
                retryable = failed.retry_get if method == "GET" else failed.retry_post
                tries = f"{method} {path}, attempt {attempt + 1}: {failed.detail}"
                if not retryable or attempt >= self.retries:
                    raise BackendError(self.system, failed.reason, tries) from None
                delay = self.backoff_s * (2**attempt) * random.uniform(0.5, 1.5)
                if loop.time() + delay >= deadline:
                    raise BackendError(
                        self.system, failed.reason, f"{tries}; no time left to retry"
                    ) from None
                await asyncio.sleep(delay)
                attempt += 1

    async def _attempt(
        self,
        method: str,
        path: str,
        params: _Params,
        body: Mapping[str, Any] | None,
        remaining: float,
    ) -> tuple[int, bytes]:
        limit = self.max_response_bytes
        try:
            async with self._client.stream(
                method,
                path,
                params=dict(params) if params is not None else None,
                json=dict(body) if body is not None else None,
                timeout=remaining,
            ) as response:
                status = response.status_code
                if status >= 500:
                    raise _Failed(
                        "server_error", f"HTTP {status}", retry_get=True, retry_post=False
                    )
                if status not in (200, 201):
                    return status, b""  # 404, 409, ...: the status is the answer
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > limit:
                    raise _Failed(
                        "too_large",
                        f"Content-Length {declared} > {limit}",
                        retry_get=False,
                        retry_post=False,
                    )
                content = bytearray()
                async for chunk in response.aiter_bytes():
                    content += chunk
                    if len(content) > limit:
                        raise _Failed(
                            "too_large",
                            f"more than {limit} bytes",
                            retry_get=False,
                            retry_post=False,
                        )
                return status, bytes(content)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            # The request never reached the server: safe to retry even a POST.
            raise _Failed("unreachable", _describe(exc), retry_get=True, retry_post=True) from exc
        except httpx.TimeoutException as exc:
            raise _Failed("timeout", _describe(exc), retry_get=True, retry_post=False) from exc
        except httpx.UnsupportedProtocol as exc:
            raise _Failed("error", _describe(exc), retry_get=False, retry_post=False) from exc
        except httpx.TransportError as exc:  # the connection broke: the server may have acted
            raise _Failed("error", _describe(exc), retry_get=True, retry_post=False) from exc
        except httpx.DecodingError as exc:
            raise _Failed("malformed", _describe(exc), retry_get=False, retry_post=False) from exc
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise _Failed("error", _describe(exc), retry_get=False, retry_post=False) from exc


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --- the shape of the answers -------------------------------------------------------------


def _json(content: bytes) -> Any:
    try:
        return json.loads(content)
    except (ValueError, RecursionError) as exc:
        raise _Malformed(f"not JSON: {exc}") from None


def _object(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Malformed(f"expected an object, got {type(value).__name__}")
    return value


def _field(data: Mapping[str, Any], key: str) -> Any:
    if key not in data:
        raise _Malformed(f"no {key!r} key")
    return data[key]


def _str(data: Mapping[str, Any], key: str) -> str:
    value = _field(data, key)
    if not isinstance(value, str):
        raise _Malformed(f"{key!r} is not a string: {value!r}")
    return value


def _int(data: Mapping[str, Any], key: str) -> int:
    value = _field(data, key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise _Malformed(f"{key!r} is not an integer: {value!r}")
    return value


def _list(data: Mapping[str, Any], key: str) -> list[Any]:
    value = _field(data, key)
    if not isinstance(value, list):
        raise _Malformed(f"{key!r} is not a list: {value!r}")
    return value


def _date(data: Mapping[str, Any], key: str) -> datetime.date:
    return parse_iso_date(_str(data, key))


def _minute(data: Mapping[str, Any], key: str) -> datetime.datetime:
    return parse_iso_minute(_str(data, key))


def _as_minute(value: Any) -> datetime.datetime:
    if not isinstance(value, str):
        raise _Malformed(f"not a time string: {value!r}")
    return parse_iso_minute(value)


def _booking(value: Any) -> Booking:
    data = _object(value)
    return Booking(
        reference=_str(data, "reference"),
        account_number=_str(data, "account_number"),
        start=_minute(data, "start"),
    )
