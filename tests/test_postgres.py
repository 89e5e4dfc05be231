"""The PostgreSQL store against a real server started here (initdb + pg_ctl in a temp dir on
a free port): the same calls give the same records and the same report as SQLite; several
bot nodes migrate and write concurrently; an outage is ridden out; retention and redaction.

Skipped only when the PostgreSQL server binaries are not installed (Debian: postgresql)."""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_analytics import run_known_call, sqlite_recorder, without_stamps
from voicebot_pbx.config import AnalyticsConfig
from voicebot_pbx.ops.analytics import AnalyticsRecorder, open_recorder
from voicebot_pbx.ops.analytics_open import open_store
from voicebot_pbx.ops.analytics_postgres import PostgresStore
from voicebot_pbx.ops.analytics_sqlite import SqliteStore
from voicebot_pbx.ops.analytics_store import Store
from voicebot_pbx.ops.records import CallRecord, TurnRecord
from voicebot_pbx.ops.report import build_report


def _pg_bin_dir() -> Path | None:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(candidate) / "initdb").exists() and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb and shutil.which("pg_ctl") else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def pg_server() -> Iterator[str]:
    """A throwaway PostgreSQL cluster; yields the DSN of its ``postgres`` database."""
    bin_dir = _pg_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not installed: apt postgresql")
    root = Path(tempfile.mkdtemp(prefix="voicebot-pg-"))
    data = root / "data"
    prefix: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root: run the cluster as an unprivileged user
        user = "postgres"
        try:
            pwd.getpwnam(user)
        except KeyError:
            user = "nobody"
        entry = pwd.getpwnam(user)
        os.chown(root, entry.pw_uid, entry.pw_gid)
        prefix = ["runuser", "-u", user, "--"]
    port = _free_port()

    def run(*cmd: str) -> None:
        subprocess.run([*prefix, *cmd], check=True, capture_output=True, timeout=60)

    try:
        run(
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-A",
            "trust",
            "-U",
            "voicebot",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        options = (
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off"
        )
        run(
            str(bin_dir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(root / "log"),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )
    except subprocess.CalledProcessError as exc:
        log = (root / "log").read_text() if (root / "log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"could not start PostgreSQL: {exc.stderr!r} {log}") from exc
    try:
        yield f"host=127.0.0.1 port={port} user=voicebot dbname=postgres connect_timeout=5"
    finally:
        with contextlib.suppress(Exception):
            run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


_db_counter = iter(range(1_000_000))


@pytest.fixture
def pg_dsn(pg_server: str) -> str:
    """A fresh, empty database for one test."""
    import psycopg

    name = f"t{next(_db_counter)}_{os.getpid()}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return pg_server.replace("dbname=postgres", f"dbname={name}")


@contextlib.contextmanager
def pg_recorder(dsn: str, **kwargs: object) -> Iterator[AnalyticsRecorder]:
    recorder = AnalyticsRecorder(lambda: PostgresStore.connect(dsn), **kwargs).start()  # type: ignore[arg-type]
    assert recorder.wait_ready()
    try:
        yield recorder
    finally:
        recorder.close()


def all_calls(store: Store) -> list[CallRecord]:
    try:
        return store.calls()
    finally:
        store.close()


def test_same_calls_same_records_and_report_as_sqlite(pg_dsn: str, tmp_path: Path) -> None:
    call_ids = [f"00000000-0000-4000-8000-00000000000{i}" for i in (1, 2)]
    with pg_recorder(pg_dsn, node="pg") as pg, sqlite_recorder(tmp_path / "c.db") as lite:
        for call_id in call_ids:
            # One call, recorded to both stores at once (the same turn_finished/call_ended).
            run_known_call(_Both(pg, lite), call_id=call_id)
        assert pg.flush() and lite.flush()
        assert pg.stats.write_errors == lite.stats.write_errors == 0
    from_pg = all_calls(PostgresStore.connect(pg_dsn))
    from_lite = all_calls(SqliteStore.open(tmp_path / "c.db"))
    assert [c.call_id for c in from_pg] == call_ids
    assert [without_stamps(c) for c in from_pg] == [without_stamps(c) for c in from_lite]
    # Exact floats, bools, JSON lists, NULLs survive both ways.
    turn = next(t for t in from_pg[0].turns if t.barged_in)
    assert isinstance(turn.barged_in, bool) and isinstance(turn.fallbacks, list)
    assert build_report(from_pg).summary == build_report(from_lite).summary
    one = PostgresStore.connect(pg_dsn)
    shown = one.call(call_ids[0][:-1] + "1")
    assert shown is not None and without_stamps(shown) == without_stamps(from_lite[0])
    assert one.call("00000000") is None  # a prefix matching two calls is not an answer
    one.close()


class _Both:
    def __init__(self, *recorders: AnalyticsRecorder) -> None:
        self.recorders = recorders

    async def call_started(self, call: CallRecord) -> None:
        await asyncio.gather(*(r.call_started(call) for r in self.recorders))

    async def turn_finished(self, call: CallRecord, turn: TurnRecord) -> None:
        await asyncio.gather(*(r.turn_finished(call, turn) for r in self.recorders))

    async def call_ended(self, call: CallRecord) -> None:
        await asyncio.gather(*(r.call_ended(call) for r in self.recorders))


def test_several_nodes_migrate_and_write_concurrently(pg_dsn: str) -> None:
    nodes = 4
    barrier = threading.Barrier(nodes)
    errors: list[BaseException] = []

    def node(index: int) -> None:
        try:
            barrier.wait()
            recorder = AnalyticsRecorder(
                lambda: PostgresStore.connect(pg_dsn), node=f"node{index}"
            ).start()

            async def calls() -> None:
                for n in range(5):
                    call = CallRecord(call_id=f"n{index}-c{n}", pbx="asterisk", peer="p")
                    await recorder.call_started(call)
                    for seq in range(3):
                        turn = TurnRecord(turn_id=seq, seq=seq, transcript=f"{index}/{n}/{seq}")
                        call.turns.append(turn)
                        await recorder.turn_finished(call, turn)
                    call.ended_at, call.end_reason = time.time(), "caller_hangup"
                    await recorder.call_ended(call)

            asyncio.run(calls())
            recorder.close()
            assert recorder.stats.write_errors == 0, recorder.stats.last_error
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=node, args=(i,)) for i in range(nodes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    store = PostgresStore.connect(pg_dsn)
    assert store.schema_version() == 1
    calls = all_calls(store)
    assert len(calls) == nodes * 5 and all(len(c.turns) == 3 for c in calls)


def test_an_outage_is_ridden_out(pg_dsn: str) -> None:
    # Nothing listens on port 1: the database is down.
    target = {"dsn": "host=127.0.0.1 port=1 user=voicebot dbname=postgres"}

    def connect() -> PostgresStore:
        return PostgresStore.connect(target["dsn"], connect_timeout_s=1)

    recorder = AnalyticsRecorder(connect, retry_s=0.1, node="flaky").start()

    async def during_outage() -> None:
        call = CallRecord(call_id="outage", pbx="asterisk", peer="p")
        await recorder.call_started(call)
        turn = TurnRecord(turn_id=1, transcript="still here")
        call.turns.append(turn)
        await recorder.turn_finished(call, turn)

    asyncio.run(asyncio.wait_for(during_outage(), 10.0))
    assert recorder.stats.backlog >= 1 and recorder.stats.write_errors >= 1
    target["dsn"] = pg_dsn  # the database is back
    deadline = time.monotonic() + 15.0
    while recorder.stats.backlog and time.monotonic() < deadline:
        time.sleep(0.05)
    recorder.close()
    (call,) = all_calls(PostgresStore.connect(pg_dsn))
    assert [t.transcript for t in call.turns] == ["still here"]


def test_retention_and_redaction_through_the_configured_recorder(
    pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VOICEBOT_TEST_PG_DSN", pg_dsn)
    config = AnalyticsConfig(
        backend="postgres",
        dsn_env="VOICEBOT_TEST_PG_DSN",
        retention_days=7,
        redact=True,
        redact_names=("Alice",),
    )
    store = open_store(config, tmp_path)  # creates the schema
    old = CallRecord(call_id="old", pbx="a", peer="p", started_at=time.time() - 8 * 86400)
    from voicebot_pbx.ops.analytics_schema import call_row

    store.write(call_row(old, "n"))
    store.close()
    recorder = open_recorder(config, tmp_path)
    assert recorder.wait_ready()

    async def run() -> None:
        call = CallRecord(call_id="new", pbx="a", peer="p", caller_id="+15551234567")
        await recorder.call_started(call)
        turn = TurnRecord(turn_id=1, transcript="this is Alice, 555 123 4567")
        call.turns.append(turn)
        await recorder.turn_finished(call, turn)

    asyncio.run(run())
    assert recorder.flush()
    recorder.close()
    (call,) = all_calls(open_store(config, tmp_path))
    assert call.call_id == "new" and call.caller_id == "+*********67"
    assert call.turns[0].transcript == "this is [name], [digits]"


def test_the_paged_call_list_matches_the_reference(pg_dsn: str) -> None:
    """Issue #22: ``calls_page`` filters and pages in PostgreSQL's SQL as in SQLite's."""
    from tests.test_analytics import bulk_write, check_calls_page, synthetic_calls

    store = PostgresStore.connect(pg_dsn)
    try:
        store.migrate()
        calls = synthetic_calls(150)
        bulk_write(store, calls)
        check_calls_page(store, calls)
    finally:
        store.close()
