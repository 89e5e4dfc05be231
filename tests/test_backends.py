"""The Northwind Energy back ends of the Rasa custom actions (rasa_project/actions): the same
behaviour from SQLite, PostgreSQL (a real throwaway server) and the JSON HTTP API (a real
local HTTP server); failures of each kind; the circuit breaker; the config.

The package is imported as ``actions`` from ``rasa_project`` (as rasa-sdk does); it must
also run on the Rasa venv's Python 3.10 (checked here when that venv exists)."""

from __future__ import annotations

import asyncio
import datetime
import itertools
import json
import re
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "rasa_project"))

from actions.backend import (  # noqa: E402
    Backend,
    BackendError,
    Booking,
    Outage,
    SlotTaken,
    is_slot,
    iso_minute,
    normalise_area,
    normalise_postcode,
    outward_code,
    parse_iso_minute,
    slot_starts,
)
from actions.backend_config import config_problems, open_backends  # noqa: E402
from actions.backend_http import HttpBackend  # noqa: E402
from actions.backend_sql import SqlBackend, describe_dsn, ensure_schema, parse_dsn  # noqa: E402
from actions.circuit import CircuitBreaker  # noqa: E402
from actions.demo_data import demo_accounts, demo_outages, seed_demo  # noqa: E402

import tests.test_postgres as _postgres  # noqa: E402

pg_server = _postgres.pg_server  # fixtures: a throwaway PostgreSQL cluster, a fresh database
pg_dsn = _postgres.pg_dsn

T = TypeVar("T")

NOW = datetime.datetime(2025, 6, 2, 10, 7)  # a Monday
MONDAY = NOW.date()
SUNDAY = MONDAY - datetime.timedelta(days=1)
TUESDAY = MONDAY + datetime.timedelta(days=1)
ACCOUNTS = demo_accounts(reference_date=MONDAY)
RASA_PYTHON = REPO / ".cache" / "rasa-venv" / "bin" / "python"


def at(day: datetime.date, hour: int, minute: int = 0) -> datetime.datetime:
    return datetime.datetime.combine(day, datetime.time(hour, minute))


def run(coro: Awaitable[T]) -> T:
    """Runs a test coroutine; a hang fails the test instead of the run."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, 10)

    return asyncio.run(bounded())


# --- pure parts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("NW3 2QG", "NW3 2QG"),
        ("nw3 2qg", "NW3 2QG"),
        ("NW32QG", "NW3 2QG"),
        ("  nw3   2qg ", "NW3 2QG"),
        ("n w 3 2 q g", "NW3 2QG"),
        ("N.W.3 2.Q.G.", "NW3 2QG"),
        ("n w three two q g", "NW3 2QG"),
        ("NW10 2AB", "NW10 2AB"),
        ("e c 1 a 1 double b", "EC1A 1BB"),
        ("n double u three, two q g", "NW3 2QG"),  # W said as "double u"
        ("N double-you 3 2 double Q G", None),  # "NW32QQG": one letter too many
        ("s double-you one a, two a a", "SW1A 2AA"),
        ("n w three treble 2 e e", None),  # "NW3222EE"
        ("W1A 0AX", "W1A 0AX"),
        ("sw1a 2aa", "SW1A 2AA"),
        ("oh l one 2 a b", "OL1 2AB"),
        ("m1 oh a a", "M1 0AA"),
        ("GIR 0AA", "GIR 0AA"),
        ("NW3", None),  # an outward code alone is not a postcode
        ("NW3 2Q", None),
        ("NW3 2QGX", None),
        ("NW3 2CI", None),  # C and I are never inward letters
        ("QW3 2QG", None),  # nor Q a first letter
        ("12345678", None),
        ("", None),
        ("my postcode is somewhere in london" * 3, None),
        ("double", None),
    ],
)
def test_normalise_postcode(text: str, expected: str | None) -> None:
    assert normalise_postcode(text) == expected


def test_outward_code_and_area() -> None:
    assert outward_code("nw3 2qg") == "NW3"
    assert outward_code("NW102AB") == "NW10"
    assert outward_code("n w 3") == "NW3"
    with pytest.raises(ValueError, match="not a UK postcode"):
        outward_code("hello")
    assert normalise_area("nw6") == "NW6"
    assert normalise_area("nw6 1ab") == "NW6 1AB"
    assert normalise_area("6") is None


def test_slot_rule() -> None:
    assert slot_starts(SUNDAY) == []
    monday = slot_starts(MONDAY)
    assert len(monday) == 20 and monday[0] == at(MONDAY, 8) and monday[-1] == at(MONDAY, 17, 30)
    assert all(b - a == datetime.timedelta(minutes=30) for a, b in itertools.pairwise(monday))
    saturday = MONDAY + datetime.timedelta(days=5)
    assert len(slot_starts(saturday)) == 20
    assert all(is_slot(start) for start in monday)
    for bad in (
        at(MONDAY, 7, 30),
        at(MONDAY, 18),
        at(MONDAY, 10, 15),
        at(SUNDAY, 10),
        at(MONDAY, 10).replace(second=1),
        at(MONDAY, 10).replace(tzinfo=datetime.UTC),
    ):
        assert not is_slot(bad), bad
    assert iso_minute(at(MONDAY, 9, 30)) == "2025-06-02T09:30"
    assert parse_iso_minute("2025-06-02T09:30") == at(MONDAY, 9, 30)
    for bad_text in ("2025-06-02 09:30", "2025-06-02T09:30:00", "2025-06-02T9:30", "x"):
        with pytest.raises(ValueError):
            parse_iso_minute(bad_text)


def test_backend_error() -> None:
    error = BackendError("billing", "timeout", "2 s")
    assert (error.system, error.reason, error.detail) == ("billing", "timeout", "2 s")
    assert str(error) == "billing: timeout (2 s)"
    with pytest.raises(ValueError):
        BackendError("billing", "oops")


def test_demo_accounts_are_deterministic_and_plausible() -> None:
    assert demo_accounts() == demo_accounts(19, 200)
    assert demo_accounts(seed=20) != demo_accounts()
    assert demo_accounts(n=5) == demo_accounts()[:5]
    numbers = [a.number for a in ACCOUNTS]
    assert len(ACCOUNTS) == 200 and len(set(numbers)) == 200
    assert all(re.fullmatch(r"[1-9]\d{7}", n) for n in numbers)
    assert all(re.fullmatch(r"NW[1-9] \d[A-Z]{2}", a.postcode) for a in ACCOUNTS)
    assert all(normalise_postcode(a.postcode) == a.postcode for a in ACCOUNTS)
    assert all(re.fullmatch(r"[A-Z][a-z]+ [A-Z][A-Za-z']+", a.name) for a in ACCOUNTS)
    balances = [a.balance_pence for a in ACCOUNTS]
    assert all(-5000 <= b <= 40000 for b in balances)
    assert sum(b < 0 for b in balances) >= 10  # some in credit
    assert sum(b > 0 and b % 100 == 0 for b in balances) >= 10  # some whole pounds
    assert sum(b % 100 != 0 for b in balances) >= 100  # mostly pounds and pence
    assert all(a.last_bill_pence > 0 for a in ACCOUNTS)
    assert all(MONDAY - datetime.timedelta(days=60) <= a.last_bill_date < MONDAY for a in ACCOUNTS)
    assert all(1930 < a.birth_date.year < 2008 for a in ACCOUNTS)
    outages = demo_outages(NOW)
    assert {o.area for o in outages} == {"NW3", "NW6", "NW1 4RY"}
    assert all(NOW + datetime.timedelta(hours=1) < o.estimated_fix for o in outages)
    assert all(o.estimated_fix < NOW + datetime.timedelta(hours=6) for o in outages)
    assert all(o.estimated_fix.minute % 15 == 0 for o in outages)


# --- the one behaviour, whatever the back end ----------------------------------------------


async def exercise(backend: Backend) -> None:
    """What every back end must do with the demo company seeded at NOW (and nothing booked)."""
    first, last = ACCOUNTS[0], ACCOUNTS[-1]
    assert await backend.account(first.number) == first
    assert await backend.account(f"{first.number[:4]} {first.number[4:]}") == first
    assert await backend.account(last.number) == last
    known = {a.number for a in ACCOUNTS}
    missing = next(str(n) for n in itertools.count(10_000_000) if str(n) not in known)
    assert await backend.account(missing) is None
    assert await backend.account("1234") is None

    street = await backend.outage("nw1 4ry")
    assert street == Outage(
        "NW1 4RY", "a fault on the overhead line in your street", at(MONDAY, 14, 15)
    )
    district = await backend.outage("NW32QG")
    assert district == Outage("NW3", "a damaged underground cable", at(MONDAY, 13, 15))
    six = await backend.outage("n w 6 1 a b")
    assert six is not None and six.area == "NW6" and six.cause == "a fault at a local substation"
    assert await backend.outage("nw3") == district
    assert await backend.outage("NW1 5AB") is None  # only one street of NW1 is out
    assert await backend.outage("NW9 9ZZ") is None
    assert await backend.outage("not a postcode") is None

    assert await backend.free_slots(SUNDAY, NOW - datetime.timedelta(days=1)) == []
    free = await backend.free_slots(MONDAY, NOW)
    assert free == [start for start in slot_starts(MONDAY) if start > NOW]
    assert (free[0], free[-1], len(free)) == (at(MONDAY, 10, 30), at(MONDAY, 17, 30), 15)
    assert await backend.free_slots(TUESDAY, NOW) == slot_starts(TUESDAY)
    assert await backend.free_slots(MONDAY, at(MONDAY, 17, 30)) == []

    later = await backend.book(first.number, at(TUESDAY, 9))
    sooner = await backend.book(first.number, at(MONDAY, 11))
    assert re.fullmatch(r"NW\d{6}", later.reference) and later.reference != sooner.reference
    assert (later.account_number, later.start) == (first.number, at(TUESDAY, 9))
    assert await backend.bookings(first.number) == [sooner, later]
    assert await backend.bookings(last.number) == []
    free = await backend.free_slots(MONDAY, NOW)
    assert at(MONDAY, 11) not in free and len(free) == 14
    assert at(TUESDAY, 9) not in await backend.free_slots(TUESDAY, NOW)

    with pytest.raises(SlotTaken):
        await backend.book(last.number, at(TUESDAY, 9))
    for not_a_slot in (at(TUESDAY, 10, 15), at(SUNDAY, 10), at(TUESDAY, 18), at(TUESDAY, 7, 30)):
        with pytest.raises(SlotTaken):
            await backend.book(last.number, not_a_slot)
    assert await backend.bookings(last.number) == []

    # Several callers after the same slot at once: exactly one gets it.
    wednesday = MONDAY + datetime.timedelta(days=2)
    for hour in (12, 13, 14):
        start = at(wednesday, hour, 30)
        results = await asyncio.gather(
            *(backend.book(a.number, start) for a in ACCOUNTS[1:5]), return_exceptions=True
        )
        wins = [r for r in results if isinstance(r, Booking)]
        assert len(wins) == 1, results
        assert all(isinstance(r, SlotTaken) for r in results if r not in wins), results
        assert start not in await backend.free_slots(wednesday, NOW)
        assert wins[0] in await backend.bookings(wins[0].account_number)


# --- SQLite ----------------------------------------------------------------------------------


@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    path = tmp_path / "demo.sqlite"
    assert seed_demo(str(path), now=NOW) == 200
    return path


def _count(path: Path, table: str) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def test_sqlite_backend(sqlite_path: Path) -> None:
    async def main() -> None:
        backend = SqlBackend(str(sqlite_path), "bookings")
        try:
            await exercise(backend)
        finally:
            await backend.aclose()
        # sqlite:/// form, absolute path
        again = SqlBackend(f"sqlite://{sqlite_path}", "billing")
        try:
            assert await again.account(ACCOUNTS[7].number) == ACCOUNTS[7]
            assert len(await again.bookings(ACCOUNTS[0].number)) == 2
        finally:
            await again.aclose()
        with pytest.raises(BackendError) as closed:
            await again.account(ACCOUNTS[7].number)
        assert closed.value.reason == "error"

    run(main())
    assert _count(sqlite_path, "bookings") == 2 + 3


def test_sqlite_full_postcode_outage_wins_over_district(sqlite_path: Path) -> None:
    with sqlite3.connect(sqlite_path) as conn:
        conn.execute(
            "INSERT INTO outages VALUES ('NW3 2QG', 'a burst water main', '2025-06-02T12:00')"
        )

    async def main() -> None:
        backend = SqlBackend(str(sqlite_path), "outages")
        try:
            street = await backend.outage("nw3 2qg")
            assert street == Outage("NW3 2QG", "a burst water main", at(MONDAY, 12))
            district = await backend.outage("NW3 5AB")
            assert district is not None and district.area == "NW3"
        finally:
            await backend.aclose()

    run(main())


def test_seed_is_idempotent_and_refreshes_outages(sqlite_path: Path) -> None:
    async def book() -> None:
        backend = SqlBackend(str(sqlite_path), "bookings")
        try:
            await backend.book(ACCOUNTS[0].number, at(TUESDAY, 9))
        finally:
            await backend.aclose()

    run(book())
    later = NOW + datetime.timedelta(days=1, hours=2)
    assert seed_demo(str(sqlite_path), now=later) == 200
    assert seed_demo(f"sqlite://{sqlite_path}", now=later) == 200
    assert _count(sqlite_path, "accounts") == 200
    assert _count(sqlite_path, "outages") == 3
    assert _count(sqlite_path, "bookings") == 1  # left alone
    with sqlite3.connect(sqlite_path) as conn:
        fix = conn.execute("SELECT estimated_fix FROM outages WHERE area = 'NW3'").fetchone()[0]
    assert fix == "2025-06-03T15:15"
    ensure_schema(str(sqlite_path))  # again: nothing happens
    assert _count(sqlite_path, "accounts") == 200


def test_sqlite_failures(sqlite_path: Path, tmp_path: Path) -> None:
    async def main() -> None:
        # A missing file is not silently created.
        missing = SqlBackend(str(tmp_path / "nope" / "x.sqlite"), "billing")
        with pytest.raises(BackendError) as gone:
            await missing.account(ACCOUNTS[0].number)
        assert (gone.value.system, gone.value.reason) == ("billing", "unreachable")
        assert not (tmp_path / "nope").exists()
        await missing.aclose()
        empty = SqlBackend(str(tmp_path / "empty.sqlite"), "billing")
        with pytest.raises(BackendError) as absent:
            await empty.account(ACCOUNTS[0].number)
        assert absent.value.reason == "unreachable"
        assert not (tmp_path / "empty.sqlite").exists()
        await empty.aclose()

        # A row that is not an account: malformed, not a crash.
        with sqlite3.connect(sqlite_path) as conn:
            conn.execute(
                "INSERT INTO accounts VALUES"
                " ('99999999', 'X', 'nowhere', '1970-13-01', 1, 1, '2025-01-01')"
            )
        backend = SqlBackend(str(sqlite_path), "billing", timeout_s=0.4)
        try:
            with pytest.raises(BackendError) as bad:
                await backend.account("99999999")
            assert bad.value.reason == "malformed"

            # Locked by someone else: a timeout within the budget, and the loop keeps running.
            locker = sqlite3.connect(sqlite_path, isolation_level=None)
            locker.execute("BEGIN EXCLUSIVE")
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                for _ in range(20):
                    await asyncio.sleep(0.01)
                    ticks += 1

            try:
                results = await asyncio.gather(
                    backend.account(ACCOUNTS[0].number), ticker(), return_exceptions=True
                )
            finally:
                locker.execute("ROLLBACK")
                locker.close()
            assert isinstance(results[0], BackendError) and results[0].reason == "timeout"
            assert ticks == 20
            assert await backend.account(ACCOUNTS[0].number) == ACCOUNTS[0]  # recovered
        finally:
            await backend.aclose()

    run(main())


def test_dsn_forms() -> None:
    assert parse_dsn("/var/lib/x.sqlite").dialect == "sqlite"
    assert parse_dsn("sqlite:///var/lib/x.sqlite").where == "/var/lib/x.sqlite"
    assert parse_dsn("sqlite://rel.sqlite").where == "rel.sqlite"
    assert parse_dsn("postgresql://u@h/db").dialect == "postgres"
    assert parse_dsn("postgres://u@h/db").dialect == "postgres"
    assert parse_dsn("host=127.0.0.1 dbname=x").dialect == "postgres"
    for bad in ("", "mysql://h/db", "sqlite://"):
        with pytest.raises(ValueError):
            parse_dsn(bad)
    assert describe_dsn("postgresql://bob:s3cret@db/x") == "postgresql://bob:***@db/x"
    assert describe_dsn("host=db password=s3cret dbname=x") == "host=db password=*** dbname=x"
    assert describe_dsn("/tmp/x.sqlite") == "/tmp/x.sqlite"


def test_seed_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from actions.seed import main

    path = tmp_path / "cli.sqlite"
    assert main(["--dsn", str(path), "--seed", "19"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and "200" in lines[0] and str(path) in lines[0]
    assert _count(path, "accounts") == 200
    assert main(["--dsn", str(path)]) == 0
    assert _count(path, "accounts") == 200
    assert main(["--dsn", "mysql://nope"]) == 1


@pytest.mark.skipif(not RASA_PYTHON.exists(), reason="no Rasa venv (.cache/rasa-venv)")
def test_runs_on_the_rasa_venv_python(tmp_path: Path) -> None:
    """The modules import and a seeded SQLite back end answers on Python 3.10."""
    path = tmp_path / "py310.sqlite"
    script = f"""
import asyncio, sys
assert sys.version_info[:2] == (3, 10), sys.version
import actions.backend, actions.backend_sql, actions.circuit, actions.demo_data
import actions.backend_config, actions.seed
from actions.backend_sql import SqlBackend
from actions.demo_data import demo_accounts
assert actions.seed.main(["--dsn", {str(path)!r}]) == 0
async def main():
    backend = SqlBackend({str(path)!r}, "billing")
    number = demo_accounts(reference_date={MONDAY!r})[0].number
    account = await backend.account(number)
    assert account is not None and account.number == number
    slots = await backend.free_slots({MONDAY!r}, {NOW!r})
    booking = await backend.book(number, slots[0])
    assert await backend.bookings(number) == [booking]
    await backend.aclose()
    print("py310 ok")
asyncio.run(main())
"""
    script = "import datetime\n" + script
    done = subprocess.run(
        [str(RASA_PYTHON), "-c", script],
        cwd=REPO / "rasa_project",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "py310 ok" in done.stdout


# --- PostgreSQL ------------------------------------------------------------------------------


def test_postgres_backend(pg_dsn: str) -> None:
    import psycopg

    assert seed_demo(pg_dsn, now=NOW) == 200
    assert seed_demo(pg_dsn, now=NOW) == 200  # idempotent

    def count(sql: str) -> int:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            row = conn.execute(sql).fetchone()
            assert row is not None
            return int(row[0])

    assert count("SELECT count(*) FROM accounts") == 200
    assert count("SELECT count(*) FROM outages") == 3

    async def main() -> None:
        backend = SqlBackend(pg_dsn, "bookings")
        try:
            await exercise(backend)
        finally:
            await backend.aclose()
        # The URL form of the same database.
        parts = dict(item.split("=", 1) for item in pg_dsn.split())
        url = f"postgresql://{parts['user']}@{parts['host']}:{parts['port']}/{parts['dbname']}"
        again = SqlBackend(url, "billing")
        try:
            assert await again.account(ACCOUNTS[3].number) == ACCOUNTS[3]
            assert len(await again.bookings(ACCOUNTS[0].number)) == 2
        finally:
            await again.aclose()

    run(main())
    assert count("SELECT count(*) FROM bookings") == 2 + 3
    # No connection of ours is left open once the backends are closed.
    others = (
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    deadline = time.monotonic() + 5
    while count(others) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert count(others) == 0
    seed_demo(pg_dsn, now=NOW + datetime.timedelta(hours=5))
    assert count("SELECT count(*) FROM bookings") == 5
    assert count("SELECT count(*) FROM accounts") == 200


def test_postgres_unreachable() -> None:
    port = _free_port()

    async def main() -> None:
        backend = SqlBackend(f"postgresql://nobody@127.0.0.1:{port}/x", "billing")
        try:
            with pytest.raises(BackendError) as down:
                await backend.account(ACCOUNTS[0].number)
            assert (down.value.system, down.value.reason) == ("billing", "unreachable")
        finally:
            await backend.aclose()

    run(main())


# --- HTTP ------------------------------------------------------------------------------------


class FakeApi:
    """The JSON API of backend_http.py over the demo company, in memory, with scripted
    misbehaviour: each request takes the next mode from ``script``, else ``always``, else
    "ok"."""

    def __init__(self) -> None:
        self.accounts = {a.number: a for a in ACCOUNTS}
        self.outages = {o.area: o for o in demo_outages(NOW)}
        self.booked: dict[str, dict[str, str]] = {}
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []
        self.script: list[str] = []
        self.always: str | None = None
        self.release = threading.Event()
        self.references = itertools.count(400_001)

    def record(self, method: str, path: str) -> str:
        with self.lock:
            self.requests.append((method, path))
            if self.script:
                return self.script.pop(0)
            return self.always or "ok"

    def count(self, method: str | None = None) -> int:
        with self.lock:
            return sum(1 for m, _ in self.requests if method in (None, m))

    def route(self, method: str, path: str, query: dict[str, str], body: bytes) -> tuple[int, Any]:
        if method == "GET" and path.startswith("/accounts/"):
            account = self.accounts.get(path.rsplit("/", 1)[1])
            if account is None:
                return 404, {"error": "no such account"}
            return 200, {
                "number": account.number,
                "name": account.name,
                "postcode": account.postcode,
                "birth_date": account.birth_date.isoformat(),
                "balance_pence": account.balance_pence,
                "last_bill_pence": account.last_bill_pence,
                "last_bill_date": account.last_bill_date.isoformat(),
                "extra": "ignored",
            }
        if method == "GET" and path == "/outages":
            area = normalise_area(query.get("postcode", ""))
            found = None
            if area is not None:
                found = self.outages.get(area) or self.outages.get(area.split(" ")[0])
            if found is None:
                return 200, {"outage": None}
            return 200, {
                "outage": {
                    "area": found.area,
                    "cause": found.cause,
                    "estimated_fix": iso_minute(found.estimated_fix),
                }
            }
        if method == "GET" and path == "/slots":
            day = datetime.date.fromisoformat(query["date"])
            after = parse_iso_minute(query["after"])
            with self.lock:
                taken = set(self.booked)
            starts = [s for s in slot_starts(day) if s > after and iso_minute(s) not in taken]
            return 200, {"slots": [iso_minute(s) for s in reversed(starts)]}
        if method == "POST" and path == "/bookings":
            data = json.loads(body)
            start = parse_iso_minute(data["start"])
            with self.lock:
                if not is_slot(start) or data["start"] in self.booked:
                    return 409, {"error": "taken"}
                booking = {
                    "reference": f"NW{next(self.references):06d}",
                    "account_number": data["account_number"],
                    "start": data["start"],
                }
                self.booked[data["start"]] = booking
            return 201, booking
        if method == "GET" and path == "/bookings":
            with self.lock:
                mine = [
                    b
                    for b in self.booked.values()
                    if b["account_number"] == query.get("account_number")
                ]
            return 200, {"bookings": list(reversed(mine))}
        return 404, {"error": "no such route"}


def _wrong_types(value: Any) -> Any:
    """Numbers as strings, and times as numbers."""
    if isinstance(value, dict):
        return {k: _wrong_types(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_wrong_types(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return f"{value / 100:.2f}"
    if isinstance(value, str) and re.match(r"\d{4}-\d\d-\d\dT", value):
        return 1748858400
    return value


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    api: FakeApi


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are written separately
    server: _Server

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _serve(self, method: str) -> None:
        api = self.server.api
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        mode = api.record(method, url.path)
        try:
            if mode == "hang":
                api.release.wait(10)
                self.close_connection = True
            elif mode == "500":
                self._send(500, b'{"error": "internal"}')
            elif mode == "malformed":
                self._send(200, b'{"number": "1234')
            elif mode == "html":
                self._send(200, b"<html>Service Unavailable</html>", "text/html")
            elif mode == "huge":
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(4_000_000))
                self.end_headers()
                for _ in range(500):
                    self.wfile.write(b" " * 8000)
            elif mode == "huge_chunked":
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for _ in range(500):
                    self.wfile.write(b"1f40\r\n" + b" " * 8000 + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")
            else:
                status, payload = api.route(method, url.path, query, body)
                if mode == "wrong_types":
                    payload = _wrong_types(payload)
                self._send(status, json.dumps(payload).encode())
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


@pytest.fixture
def api() -> Iterator[tuple[FakeApi, str]]:
    fake = FakeApi()
    server = _Server(("127.0.0.1", 0), _Handler)
    server.api = fake
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield fake, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        fake.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def with_http(url: str, check: Callable[[HttpBackend], Awaitable[None]], **kwargs: Any) -> None:
    async def main() -> None:
        backend = HttpBackend(url, kwargs.pop("system", "billing"), **kwargs)
        try:
            await check(backend)
        finally:
            await backend.aclose()

    run(main())


def test_http_backend(api: tuple[FakeApi, str]) -> None:
    fake, url = api
    with_http(url, exercise, system="bookings")
    assert fake.count("POST") == 2 + 1 + 3 * 4  # the invalid slots never reached the server


async def _failure(backend: HttpBackend, call: Awaitable[object]) -> BackendError:
    with pytest.raises(BackendError) as caught:
        await call
    assert caught.value.system == backend.system
    return caught.value


def test_http_retry_then_success(api: tuple[FakeApi, str]) -> None:
    fake, url = api
    fake.script = ["500", "500"]

    async def check(backend: HttpBackend) -> None:
        assert await backend.account(ACCOUNTS[0].number) == ACCOUNTS[0]

    with_http(url, check, retries=2, backoff_s=0.01)
    assert fake.count() == 3


def test_http_server_error_after_retries(api: tuple[FakeApi, str]) -> None:
    fake, url = api
    fake.always = "500"

    async def check(backend: HttpBackend) -> None:
        error = await _failure(backend, backend.free_slots(MONDAY, NOW))
        assert error.reason == "server_error" and "HTTP 500" in error.detail

    with_http(url, check, retries=2, backoff_s=0.01)
    assert fake.count() == 3


def test_http_post_not_retried_on_500_but_on_connect_error(api: tuple[FakeApi, str]) -> None:
    fake, url = api
    fake.always = "500"

    async def check(backend: HttpBackend) -> None:
        error = await _failure(backend, backend.book(ACCOUNTS[0].number, at(TUESDAY, 9)))
        assert error.reason == "server_error"

    with_http(url, check, retries=3, backoff_s=0.01)
    assert fake.count("POST") == 1

    fake.always = None

    class RefuseFirst(httpx.AsyncBaseTransport):
        def __init__(self) -> None:
            self.inner = httpx.AsyncHTTPTransport()
            self.refused = 0

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if self.refused < 1:
                self.refused += 1
                raise httpx.ConnectError("connection refused", request=request)
            return await self.inner.handle_async_request(request)

        async def aclose(self) -> None:
            await self.inner.aclose()

    transport = RefuseFirst()

    async def check_booked(backend: HttpBackend) -> None:
        booking = await backend.book(ACCOUNTS[0].number, at(TUESDAY, 9))
        assert booking.start == at(TUESDAY, 9)

    with_http(url, check_booked, retries=1, backoff_s=0.01, transport=transport)
    assert transport.refused == 1 and fake.count("POST") == 2


def test_http_hang_times_out_within_budget(api: tuple[FakeApi, str]) -> None:
    fake, url = api
    fake.always = "hang"

    async def check(backend: HttpBackend) -> None:
        error = await _failure(backend, backend.account(ACCOUNTS[0].number))
        assert error.reason == "timeout"
        error = await _failure(backend, backend.book(ACCOUNTS[0].number, at(TUESDAY, 9)))
        assert error.reason == "timeout"

    with_http(url, check, timeout_s=0.4, retries=5, backoff_s=0.01)
    assert fake.count("POST") == 1  # a POST that may have reached the server is not repeated


def test_http_malformed_answers(api: tuple[FakeApi, str]) -> None:
    fake, url = api

    async def check(backend: HttpBackend) -> None:
        for mode, call in (
            ("malformed", lambda: backend.account(ACCOUNTS[0].number)),
            ("html", lambda: backend.outage("NW3 2QG")),
            ("wrong_types", lambda: backend.account(ACCOUNTS[0].number)),
            ("wrong_types", lambda: backend.free_slots(MONDAY, NOW)),
        ):
            fake.script = [mode]
            error = await _failure(backend, call())
            assert error.reason == "malformed", (mode, error)
        # A 2xx for the wrong account is not that account.
        fake.accounts[ACCOUNTS[1].number] = ACCOUNTS[2]
        error = await _failure(backend, backend.account(ACCOUNTS[1].number))
        assert error.reason == "malformed"

    with_http(url, check, retries=2)
    assert fake.count() == 5  # malformed answers are not retried


def test_http_wrong_types_in_a_booking_list(api: tuple[FakeApi, str]) -> None:
    fake, url = api

    async def check(backend: HttpBackend) -> None:
        await backend.book(ACCOUNTS[0].number, at(TUESDAY, 9))
        fake.script = ["wrong_types"]
        error = await _failure(backend, backend.bookings(ACCOUNTS[0].number))
        assert error.reason == "malformed"

    with_http(url, check)


def test_http_too_large(api: tuple[FakeApi, str]) -> None:
    fake, url = api

    async def check(backend: HttpBackend) -> None:
        for mode in ("huge", "huge_chunked"):
            fake.script = [mode]
            error = await _failure(backend, backend.account(ACCOUNTS[0].number))
            assert error.reason == "too_large", (mode, error)
        assert await backend.account(ACCOUNTS[0].number) == ACCOUNTS[0]  # still usable

    with_http(url, check, max_response_bytes=20_000)


def test_http_unreachable() -> None:
    url = f"http://127.0.0.1:{_free_port()}"

    async def check(backend: HttpBackend) -> None:
        error = await _failure(backend, backend.account(ACCOUNTS[0].number))
        assert error.reason == "unreachable"
        error = await _failure(backend, backend.book(ACCOUNTS[0].number, at(TUESDAY, 9)))
        assert error.reason == "unreachable"

    with_http(url, check, retries=2, backoff_s=0.01)


def test_http_breaker_opens_then_fails_fast_then_recovers(api: tuple[FakeApi, str]) -> None:
    fake, url = api
    fake.always = "500"
    clock = [1000.0]
    breaker = CircuitBreaker(failures_to_open=3, reset_after_s=30, clock=lambda: clock[0])

    async def check(backend: HttpBackend) -> None:
        for _ in range(3):
            error = await _failure(backend, backend.account(ACCOUNTS[0].number))
            assert error.reason == "server_error"
        assert breaker.state == "open"
        for _ in range(5):
            error = await _failure(backend, backend.outage("NW3 2QG"))
            assert error.reason == "circuit_open"
        assert fake.count() == 3  # no requests while open
        clock[0] += 30
        assert breaker.state == "half_open"
        error = await _failure(backend, backend.account(ACCOUNTS[0].number))  # trial fails
        assert error.reason == "server_error" and breaker.state == "open"
        assert fake.count() == 4
        clock[0] += 30
        fake.always = None
        assert await backend.account(ACCOUNTS[0].number) == ACCOUNTS[0]  # trial succeeds
        assert breaker.state == "closed"
        assert await backend.account("99999999") is None  # a 404 is an answer, not a failure
        assert breaker.consecutive_failures == 0

    with_http(url, check, retries=0, breaker=breaker)
    assert fake.count() == 6


def test_http_book_taken_is_slot_taken(api: tuple[FakeApi, str]) -> None:
    fake, url = api
    breaker = CircuitBreaker(failures_to_open=1)

    async def check(backend: HttpBackend) -> None:
        await backend.book(ACCOUNTS[0].number, at(TUESDAY, 9))
        with pytest.raises(SlotTaken):
            await backend.book(ACCOUNTS[1].number, at(TUESDAY, 9))
        assert breaker.state == "closed"  # a taken slot is a normal answer

    with_http(url, check, breaker=breaker)
    assert fake.count("POST") == 2


def test_http_closed_backend(api: tuple[FakeApi, str]) -> None:
    fake, url = api

    async def main() -> None:
        backend = HttpBackend(url, "outages")
        await backend.aclose()
        error = await _failure(backend, backend.outage("NW3 2QG"))
        assert error.reason == "error"

    run(main())
    assert fake.count() == 0


def test_http_headers_and_base_path(api: tuple[FakeApi, str]) -> None:
    fake, url = api
    seen: list[httpx.Request] = []

    class Spy(httpx.AsyncBaseTransport):
        def __init__(self) -> None:
            self.inner = httpx.AsyncHTTPTransport()

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            seen.append(request)
            return await self.inner.handle_async_request(request)

        async def aclose(self) -> None:
            await self.inner.aclose()

    async def check(backend: HttpBackend) -> None:
        assert (await backend.outage("nw3 2qg")) is not None

    with_http(url + "/", check, headers={"Authorization": "Bearer demo"}, transport=Spy())
    assert seen[0].headers["authorization"] == "Bearer demo"
    assert seen[0].url.path == "/outages"
    assert parse_qs(seen[0].url.query.decode())["postcode"] == ["NW3 2QG"]


def test_http_api_document_matches_the_docstring() -> None:
    import actions.backend_http as module

    text = (REPO / "rasa_project" / "actions" / "HTTP_API.md").read_text(encoding="utf-8")
    api_text = text.split("```text\n", 1)[1].split("```", 1)[0]
    assert module.__doc__ is not None
    assert api_text.strip() in module.__doc__
    for route in (
        "GET /accounts/",
        "GET /outages",
        "GET /slots",
        "POST /bookings",
        "GET /bookings",
    ):
        assert route in api_text


# --- the circuit breaker ---------------------------------------------------------------------


def test_circuit_breaker() -> None:
    now = [0.0]
    breaker = CircuitBreaker(failures_to_open=3, reset_after_s=10, clock=lambda: now[0])
    assert breaker.state == "closed" and breaker.allow()
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()  # not consecutive
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state == "closed" and breaker.allow()
    breaker.record_failure()
    assert breaker.state == "open" and not breaker.allow()
    now[0] = 9.9
    assert breaker.state == "open" and not breaker.allow()
    now[0] = 10.0
    assert breaker.state == "half_open"
    assert breaker.allow()  # the one trial
    assert not breaker.allow()  # and no other meanwhile
    breaker.record_failure()  # the trial failed: open again, from now
    assert breaker.state == "open"
    now[0] = 19.9
    assert not breaker.allow()
    now[0] = 20.0
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == "closed" and breaker.allow() and breaker.allow()

    # A trial whose outcome never comes (the caller was cancelled) does not wedge it.
    for _ in range(3):
        breaker.record_failure()
    now[0] = 30.0
    assert breaker.allow() and not breaker.allow()
    now[0] = 39.9
    assert not breaker.allow()
    now[0] = 40.0
    assert breaker.allow()
    with pytest.raises(ValueError):
        CircuitBreaker(failures_to_open=0)


# --- the config ------------------------------------------------------------------------------


def test_open_backends(tmp_path: Path) -> None:
    config = {
        "budget_s": 0.8,
        "identity_attempts": 3,
        "systems": {
            "billing": {"kind": "sql", "dsn": str(tmp_path / "b.sqlite"), "demo": True},
            "outages": {
                "kind": "http",
                "url": "http://127.0.0.1:9",
                "timeout_s": 1.2,
                "retries": 4,
            },
        },
        "default": {"kind": "sql", "dsn": "postgresql://u@127.0.0.1:9/db", "timeout_s": 2},
    }
    assert config_problems(config) == []
    backends = open_backends(config)
    try:
        assert sorted(backends) == ["billing", "bookings", "outages"]
        billing, outages, bookings = (backends[k] for k in ("billing", "outages", "bookings"))
        assert isinstance(billing, SqlBackend) and billing.timeout_s == 0.8
        assert isinstance(outages, HttpBackend)
        assert (outages.timeout_s, outages.retries) == (1.2, 4)
        assert isinstance(outages.breaker, CircuitBreaker)
        assert isinstance(bookings, SqlBackend) and bookings.timeout_s == 2
        assert bookings.dsn.startswith("postgresql://")
        assert {b.system for b in backends.values()} == {"billing", "outages", "bookings"}
    finally:

        async def close() -> None:
            for backend in backends.values():
                await backend.aclose()

        run(close())
    only_default = {"default": {"kind": "http", "url": "https://x", "breaker": False}}
    backends = open_backends(only_default)
    assert all(isinstance(b, HttpBackend) and b.breaker is None for b in backends.values())

    async def close_all() -> None:
        for backend in backends.values():
            await backend.aclose()

    run(close_all())


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"default": {"kind": "ftp", "dsn": "x"}}, ["billing (default): 'kind'"]),
        ({"systems": {"billing": {"kind": "sql"}}}, ["billing (systems.billing): 'dsn'"]),
        ({"systems": {"outages": {"kind": "http"}}, "default": {"kind": "sql", "dsn": "x"}},
         ["outages (systems.outages): 'url'"]),
        ({"systems": {"outages": {"kind": "http", "url": "ftp://x"}},
          "default": {"kind": "sql", "dsn": "x"}}, ["outages (systems.outages): 'url'"]),
        ({"systems": {"billing": {"kind": "sql", "dsn": "x"}}},
         ["outages (default): no back end", "bookings (default): no back end"]),
        ({"systems": {"biling": {"kind": "sql", "dsn": "x"}},
          "default": {"kind": "sql", "dsn": "x"}},
         ["systems.biling: unknown system"]),
        ({"budget_s": 0, "default": {"kind": "sql", "dsn": "x"}}, ["'budget_s'"]),
        ({"default": {"kind": "sql", "dsn": "x", "timeout_s": "1"}},
         ["billing (default): 'timeout_s'"]),
        ({"default": {"kind": "http", "url": "http://x", "retries": -1}},
         ["bookings (default): 'retries'"]),
        ({"default": {"kind": "http", "url": "http://x", "breaker": {"failures_to_open": 0}}},
         ["outages (default): 'breaker.failures_to_open'"]),
        ({"default": "sql"}, ["billing (default): must be an object"]),
    ],
)  # fmt: skip
def test_config_problems(config: dict[str, Any], expected: list[str]) -> None:
    problems = config_problems(config)
    for fragment in expected:
        assert any(fragment in problem for problem in problems), (fragment, problems)
    with pytest.raises(ValueError) as raised:
        open_backends(config)
    for fragment in expected:
        assert fragment in str(raised.value)
