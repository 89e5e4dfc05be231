"""A :class:`~actions.backend.Backend` on SQL: a SQLite file or a PostgreSQL database.

DSN forms:

* ``/path/demo.sqlite`` or ``sqlite:///path/demo.sqlite`` (the part after ``sqlite://`` is
  the path, so three slashes give an absolute path; ``sqlite://demo.sqlite`` is relative).
  The file must exist (``ensure_schema``/``seed_demo`` create it): a missing file is
  "unreachable", not a fresh empty database.
* ``postgresql://user@host/db`` / ``postgres://...`` or libpq keywords
  (``host=... dbname=...``), via psycopg 3, imported only when such a DSN is used.

The blocking database work runs in a small thread pool of this backend, so the event loop
never blocks; every call is bounded by ``timeout_s`` (``BackendError(system, "timeout")``),
and a PostgreSQL statement by ``statement_timeout`` too, so abandoned threads end. SQLite is
opened per call (cheap); PostgreSQL connections are kept in a small pool and dropped after
any error.

All times are stored as text, ``YYYY-MM-DD`` and ``YYYY-MM-DDTHH:MM`` (naive local time),
which sorts and compares correctly in both databases. One engineer: ``bookings.starts_at``
is UNIQUE, so of two concurrent bookings of one slot exactly one wins, the other gets
``SlotTaken``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import math
import os
import re
import secrets
import sqlite3
import sys
import threading
import urllib.parse
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

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
    slot_starts,
)

__all__ = [
    "SCHEMA",
    "SqlBackend",
    "SqlConnection",
    "SqlTarget",
    "connect_sql",
    "describe_dsn",
    "ensure_schema",
    "parse_dsn",
]

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    number          TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    postcode        TEXT NOT NULL,
    birth_date      TEXT NOT NULL,
    balance_pence   BIGINT NOT NULL,
    last_bill_pence BIGINT NOT NULL,
    last_bill_date  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outages (
    area          TEXT PRIMARY KEY,
    cause         TEXT NOT NULL,
    estimated_fix TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS bookings (
    reference      TEXT PRIMARY KEY,
    account_number TEXT NOT NULL,
    starts_at      TEXT NOT NULL UNIQUE,
    created_at     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS bookings_by_account ON bookings (account_number, starts_at);
"""

_SCHEMA_LOCK = 0x4E57_5343  # pg_advisory_xact_lock key ("NWSC"): one node creates at a time
_POOL_SIZE = 4
_REFERENCE_ATTEMPTS = 8


@dataclass(frozen=True)
class SqlTarget:
    dialect: str  # "sqlite" | "postgres"
    where: str  # the SQLite path, or the libpq conninfo / URL


_PG_KEYWORDS_RE = re.compile(r"^\s*[a-z_]+\s*=")


def parse_dsn(dsn: str) -> SqlTarget:
    """Which database a DSN names. ValueError for an empty one."""
    text = dsn.strip()
    if not text:
        raise ValueError("empty DSN")
    lowered = text.lower()
    if lowered.startswith(("postgresql://", "postgres://")) or _PG_KEYWORDS_RE.match(text):
        return SqlTarget("postgres", text)
    if lowered.startswith("sqlite://"):
        path = text[len("sqlite://") :]
        if not path:
            raise ValueError(f"no path in SQLite DSN {dsn!r}")
        return SqlTarget("sqlite", path)
    if "://" in text:
        raise ValueError(f"unknown DSN scheme in {dsn!r} (sqlite:// or postgresql://)")
    return SqlTarget("sqlite", text)


def describe_dsn(dsn: str) -> str:
    """The DSN for a log line, without a password."""
    text = re.sub(r"(://[^/:@]*:)[^@/]*@", r"\1***@", dsn)
    return re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", text)


class SqlConnection:
    """One open connection, either database: ``?`` placeholders (rewritten to ``%s`` for
    psycopg), explicit commit/rollback, and the database's own exception classes."""

    def __init__(self, raw: Any, dialect: str) -> None:
        self.raw = raw
        self.dialect = dialect
        if dialect == "postgres":
            import psycopg

            self.integrity_error: type[Exception] = psycopg.IntegrityError
        else:
            self.integrity_error = sqlite3.IntegrityError

    def _sql(self, text: str) -> str:
        return text.replace("?", "%s") if self.dialect == "postgres" else text

    def rows(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        cursor = self.raw.execute(self._sql(sql), tuple(params))
        try:
            return [tuple(row) for row in cursor.fetchall()]
        finally:
            cursor.close()

    def execute(self, sql: str, params: Sequence[object] = ()) -> None:
        self.raw.execute(self._sql(sql), tuple(params)).close()

    def executemany(self, sql: str, params: Sequence[Sequence[object]]) -> None:
        cursor = self.raw.cursor()
        try:
            cursor.executemany(self._sql(sql), [tuple(p) for p in params])
        finally:
            cursor.close()

    def commit(self) -> None:
        self.raw.commit()

    def rollback(self) -> None:
        self.raw.rollback()

    def close(self) -> None:
        self.raw.close()

    def __enter__(self) -> SqlConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if exc[0] is not None:
                self.rollback()
        finally:
            self.close()


def connect_sql(dsn: str, *, create: bool = False, timeout_s: float = 10.0) -> SqlConnection:
    """Opens the database (blocking). ``create``: a missing SQLite file is created (else it
    is an error). Raises the driver's own exceptions."""
    target = parse_dsn(dsn)
    if target.dialect == "postgres":
        import psycopg

        raw = psycopg.connect(
            target.where,
            autocommit=False,
            connect_timeout=max(2, math.ceil(timeout_s)),
            application_name="northwind-actions",
        )
        try:
            # The call is abandoned after timeout_s; the server ends the statement soon after,
            # which frees the worker thread.
            raw.execute(
                "SELECT set_config('statement_timeout', %s, false)",
                (f"{max(1000, math.ceil(timeout_s * 2000))}ms",),
            )
            raw.commit()
        except BaseException:
            raw.close()
            raise
        return SqlConnection(raw, "postgres")
    path = os.path.abspath(os.path.expanduser(target.where))
    uri = f"file:{urllib.parse.quote(path)}?mode={'rwc' if create else 'rw'}"
    raw_lite = sqlite3.connect(uri, uri=True, timeout=timeout_s, check_same_thread=False)
    return SqlConnection(raw_lite, "sqlite")


def ensure_schema(dsn: str) -> None:
    """Creates the tables and index if missing (idempotent; a SQLite file is created)."""
    with connect_sql(dsn, create=True) as conn:
        if conn.dialect == "postgres":
            conn.execute("SELECT pg_advisory_xact_lock(?)", (_SCHEMA_LOCK,))
        for statement in SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.commit()


def _as_date(value: object) -> datetime.date:
    if isinstance(value, datetime.datetime):
        return value.date()
    if isinstance(value, datetime.date):
        return value
    if isinstance(value, str):
        return parse_iso_date(value)
    raise ValueError(f"not a date: {value!r}")


def _as_minute(value: object) -> datetime.datetime:
    if isinstance(value, datetime.datetime):
        return value.replace(second=0, microsecond=0, tzinfo=None)
    if isinstance(value, str):
        return parse_iso_minute(value)
    raise ValueError(f"not a YYYY-MM-DDTHH:MM time: {value!r}")


def _as_int(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError(f"not an integer: {value!r}")


def _as_str(value: object) -> str:
    if isinstance(value, str):
        return value
    raise ValueError(f"not text: {value!r}")


def _new_reference() -> str:
    return f"NW{secrets.randbelow(1_000_000):06d}"


def _booking(row: tuple[Any, ...]) -> Booking:
    return Booking(
        reference=_as_str(row[0]), account_number=_as_str(row[1]), start=_as_minute(row[2])
    )


class SqlBackend:
    """``SqlBackend(dsn, system)``: see the module docstring. Opening does no I/O."""

    def __init__(self, dsn: str, system: str, *, timeout_s: float = 1.5) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.system = system
        self.dsn = dsn
        self.timeout_s = timeout_s
        self._target = parse_dsn(dsn)
        self._executor = ThreadPoolExecutor(
            max_workers=_POOL_SIZE, thread_name_prefix=f"sql-{system}"
        )
        self._lock = threading.Lock()
        self._idle: list[SqlConnection] = []  # PostgreSQL only
        self._closed = False

    def __repr__(self) -> str:
        return f"SqlBackend({describe_dsn(self.dsn)!r}, {self.system!r})"

    # --- the Backend calls ---------------------------------------------------------------

    async def account(self, number: str) -> Account | None:
        digits = normalise_account_number(number)
        if digits is None:
            return None

        def work(conn: SqlConnection) -> Account | None:
            rows = conn.rows(
                "SELECT number, name, postcode, birth_date, balance_pence, last_bill_pence,"
                " last_bill_date FROM accounts WHERE number = ?",
                (digits,),
            )
            if not rows:
                return None
            row = rows[0]
            postcode = normalise_postcode(_as_str(row[2]))
            if postcode is None:
                raise ValueError(f"stored postcode {row[2]!r} is not a postcode")
            return Account(
                number=_as_str(row[0]),
                name=_as_str(row[1]),
                postcode=postcode,
                birth_date=_as_date(row[3]),
                balance_pence=_as_int(row[4]),
                last_bill_pence=_as_int(row[5]),
                last_bill_date=_as_date(row[6]),
            )

        return await self._call(work)

    async def outage(self, postcode: str) -> Outage | None:
        area = normalise_area(postcode)
        if area is None:
            return None
        district = area.split(" ", 1)[0]

        def work(conn: SqlConnection) -> Outage | None:
            rows = conn.rows(
                "SELECT area, cause, estimated_fix FROM outages WHERE area = ? OR area = ?",
                (area, district),
            )
            # The full postcode first, else the district.
            rows.sort(key=lambda row: row[0] != area)
            if not rows:
                return None
            row = rows[0]
            return Outage(
                area=_as_str(row[0]), cause=_as_str(row[1]), estimated_fix=_as_minute(row[2])
            )

        return await self._call(work)

    async def free_slots(
        self, day: datetime.date, now: datetime.datetime
    ) -> list[datetime.datetime]:
        candidates = [start for start in slot_starts(day) if start > now]
        if not candidates:
            return []
        first = day.isoformat()
        after = (day + datetime.timedelta(days=1)).isoformat()

        def work(conn: SqlConnection) -> list[datetime.datetime]:
            rows = conn.rows(
                "SELECT starts_at FROM bookings WHERE starts_at >= ? AND starts_at < ?",
                (first, after),
            )
            taken = {_as_minute(row[0]) for row in rows}
            return [start for start in candidates if start not in taken]

        return await self._call(work)

    async def book(self, account_number: str, start: datetime.datetime) -> Booking:
        # "": a caller who did not identify; the visit is booked without an account
        digits = normalise_account_number(account_number) if account_number else ""
        if digits is None:
            raise ValueError(f"not an 8-digit account number: {account_number!r}")
        if not is_slot(start):
            raise SlotTaken(f"{start.isoformat()} is not a bookable slot")
        key = iso_minute(start)

        def work(conn: SqlConnection) -> Booking:
            for _ in range(_REFERENCE_ATTEMPTS):
                reference = _new_reference()
                created = iso_minute(datetime.datetime.now())
                try:
                    conn.execute(
                        "INSERT INTO bookings (reference, account_number, starts_at, created_at)"
                        " VALUES (?, ?, ?, ?)",
                        (reference, digits, key, created),
                    )
                    conn.commit()
                    return Booking(reference=reference, account_number=digits, start=start)
                except conn.integrity_error:
                    conn.rollback()
                    # The slot (UNIQUE starts_at), or by chance the reference, is taken.
                    if conn.rows("SELECT 1 FROM bookings WHERE starts_at = ?", (key,)):
                        raise SlotTaken(f"{key} is booked already") from None
            raise RuntimeError("could not find a free booking reference")

        return await self._call(work)

    async def bookings(self, account_number: str) -> list[Booking]:
        digits = normalise_account_number(account_number)
        if digits is None:
            return []

        def work(conn: SqlConnection) -> list[Booking]:
            rows = conn.rows(
                "SELECT reference, account_number, starts_at FROM bookings"
                " WHERE account_number = ? ORDER BY starts_at, reference",
                (digits,),
            )
            return sorted((_booking(row) for row in rows), key=lambda b: (b.start, b.reference))

        return await self._call(work)

    async def aclose(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        self._executor.shutdown(wait=False, cancel_futures=True)
        for conn in idle:
            with contextlib.suppress(Exception):  # a possibly broken connection
                conn.close()

    # --- running the work ----------------------------------------------------------------

    async def _call(self, work: Callable[[SqlConnection], T]) -> T:
        if self._closed:
            raise BackendError(self.system, "error", "backend closed")
        loop = asyncio.get_running_loop()
        try:
            future = loop.run_in_executor(self._executor, self._in_thread, work)
        except RuntimeError as exc:  # the executor was shut down meanwhile
            raise BackendError(self.system, "error", str(exc)) from exc
        try:
            return await asyncio.wait_for(future, self.timeout_s)
        except asyncio.TimeoutError:
            raise BackendError(
                self.system, "timeout", f"no answer within {self.timeout_s:g}s"
            ) from None

    def _in_thread(self, work: Callable[[SqlConnection], T]) -> T:
        conn = self._acquire()
        healthy = False
        try:
            result = work(conn)
            conn.rollback()  # end a read transaction; nothing to undo after a commit
            healthy = True
            return result
        except SlotTaken:
            healthy = self._rolled_back(conn)
            raise
        except (ValueError, TypeError) as exc:
            healthy = self._rolled_back(conn)
            raise BackendError(self.system, "malformed", str(exc)) from exc
        except Exception as exc:
            raise self._translate(exc) from exc
        finally:
            self._release(conn, healthy=healthy)

    def _rolled_back(self, conn: SqlConnection) -> bool:
        try:
            conn.rollback()
            return True
        except Exception:
            return False

    def _acquire(self) -> SqlConnection:
        with self._lock:
            if self._closed:
                raise BackendError(self.system, "error", "backend closed")
            if self._idle:
                return self._idle.pop()
        try:
            return connect_sql(self.dsn, timeout_s=self.timeout_s)
        except ImportError as exc:
            raise BackendError(self.system, "error", f"psycopg is not installed: {exc}") from exc
        except Exception as exc:
            raise BackendError(self.system, "unreachable", _one_line(exc)) from exc

    def _release(self, conn: SqlConnection, *, healthy: bool) -> None:
        if healthy and conn.dialect == "postgres":
            with self._lock:
                if not self._closed and len(self._idle) < _POOL_SIZE:
                    self._idle.append(conn)
                    return
        with contextlib.suppress(Exception):  # a possibly broken connection
            conn.close()

    def _translate(self, exc: Exception) -> BackendError:
        detail = _one_line(exc)
        if isinstance(exc, BackendError):
            return exc
        if isinstance(exc, sqlite3.OperationalError):
            if "locked" in detail or "busy" in detail:
                return BackendError(self.system, "timeout", detail)
            if "unable to open" in detail or "disk I/O" in detail:
                return BackendError(self.system, "unreachable", detail)
            return BackendError(self.system, "error", detail)
        psycopg = sys.modules.get("psycopg")
        if psycopg is not None:
            if isinstance(exc, psycopg.errors.QueryCanceled):
                return BackendError(self.system, "timeout", detail)
            if isinstance(exc, psycopg.OperationalError):
                return BackendError(self.system, "unreachable", detail)
        return BackendError(self.system, "error", detail)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
