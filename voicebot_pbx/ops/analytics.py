"""Call analytics storage: call and turn records in SQLite (default) or PostgreSQL.

One schema for both (portable SQL; timestamps are unix seconds as DOUBLE PRECISION), created
and upgraded by numbered migrations recorded in ``schema_version``. ``AnalyticsRecorder``
implements the session's ``Recorder``: every write is an idempotent upsert of the call row
plus the given turns (keyed by ``(call_id, seq)``), done by one writer thread that owns the
connection, so the event loop never touches the database. A turn is committed when its
``turn_finished`` returns, so killing the process loses at most the turn in progress, and
SQLite's WAL keeps the file consistent. When PostgreSQL is unreachable, writes wait in a
bounded backlog and are retried.

Redaction (``AnalyticsConfig.redact``) is applied to transcripts, reply texts, errors and the
caller id before anything is written; retention deletes calls (and their recordings) older
than ``retention_days``, at start-up and hourly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import re
import socket
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from voicebot_pbx.config import AnalyticsConfig as AnalyticsConfig
from voicebot_pbx.ops.recording import purge_recordings
from voicebot_pbx.ops.records import CallRecord, TurnRecord

log = structlog.get_logger("voicebot_pbx.ops.analytics")

DAY_S = 86400.0


class AnalyticsError(RuntimeError):
    """The analytics store cannot be used (missing DSN, missing database, newer schema)."""


def sqlite_path(config: AnalyticsConfig, state_dir: str | Path) -> Path:
    return Path(config.sqlite_path) if config.sqlite_path else Path(state_dir) / "calls.db"


def recordings_dir(config: AnalyticsConfig, state_dir: str | Path) -> Path:
    return Path(config.recordings_dir) if config.recordings_dir else Path(state_dir) / "recordings"


def node_name(config: AnalyticsConfig) -> str:
    return config.node or socket.gethostname()


# --- classification (shared by metrics and reports) ----------------------------------------

END_CLASSES = ("caller_hangup", "bot_hangup", "transferred", "drained", "error")


def end_class(reason: str) -> str:
    """The issue's end reasons from the transport's/session's raw reason; "" is in progress."""
    if not reason:
        return "in_progress"
    if reason in ("caller_hangup", "peer_hangup"):
        return "caller_hangup"
    if reason in ("bot_hangup", "transferred"):
        return reason
    if reason in ("shutdown", "drained", "drain"):
        return "drained"
    return "error"


_FALLBACK_STAGES = {
    "backchannel_ignored": "turn_taking",
    "false_interruption": "turn_taking",
    "not_understood": "dialogue",
    "max_duration": "call",
    "error": "call",
    "clip_missing": "tts",
}
_STAGE_PREFIXES = ("stt", "vad", "nlu", "dialogue", "llm", "tts", "no_input")


def fallback_name(fallback: str) -> str:
    """``clip_missing:hours`` -> ``clip_missing`` (bounded label values)."""
    return fallback.split(":", 1)[0]


def fallback_stage(fallback: str) -> str:
    name = fallback_name(fallback)
    if name in _FALLBACK_STAGES:
        return _FALLBACK_STAGES[name]
    for prefix in _STAGE_PREFIXES:
        if name == prefix or name.startswith(prefix + "_"):
            return prefix
    return "other"


# --- redaction -------------------------------------------------------------------------------

_DIGIT_WORDS = "zero|oh|one|two|three|four|five|six|seven|eight|nine|double|triple"
_DIGIT_TOKEN = rf"(?:\d+|\b(?:{_DIGIT_WORDS})\b)"
_DIGIT_RUN = re.compile(rf"\+?{_DIGIT_TOKEN}(?:[\s\-./(),]*{_DIGIT_TOKEN})*", re.IGNORECASE)
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
# What STT makes of a spoken address: "john at example dot com", "john at example.com".
_SPOKEN_EMAIL = re.compile(
    r"\b[\w.+-]+\s+at\s+[\w-]+(?:\s+dot\s+[\w-]+|\.[a-z]{2,})+", re.IGNORECASE
)


class Redactor:
    """Masks PII in text before it is stored: e-mail addresses (written or spoken), runs of
    ``min_digits`` or more digits (written, spoken or mixed: phone, account, card numbers)
    and the configured names (whole words, any case)."""

    def __init__(self, names: Iterable[str] = (), min_digits: int = 3) -> None:
        self.min_digits = min_digits
        cleaned = sorted({n.strip() for n in names if n.strip()}, key=len, reverse=True)
        self._names = (
            re.compile(r"\b(?:" + "|".join(map(re.escape, cleaned)) + r")\b", re.IGNORECASE)
            if cleaned
            else None
        )

    @classmethod
    def from_config(cls, config: AnalyticsConfig) -> Redactor | None:
        return cls(config.redact_names, config.redact_min_digits) if config.redact else None

    def _digits(self, match: re.Match[str]) -> str:
        tokens = re.findall(_DIGIT_TOKEN, match.group(0), flags=re.IGNORECASE)
        count = sum(len(t) if t.isdigit() else 1 for t in tokens)
        return "[digits]" if count >= self.min_digits else match.group(0)

    def text(self, text: str) -> str:
        if not text:
            return text
        text = _EMAIL.sub("[email]", text)
        text = _SPOKEN_EMAIL.sub("[email]", text)
        if self._names is not None:
            text = self._names.sub("[name]", text)
        return _DIGIT_RUN.sub(self._digits, text)

    def caller_id(self, value: str | None) -> str | None:
        """Digits masked but the last two (``+44******90``); anything with letters (a SIP
        URI, a display name) is replaced whole."""
        if not value:
            return value
        if re.search(r"[^\d\s+\-().]", value):
            return "[redacted]"
        digits = sum(c.isdigit() for c in value)
        out: list[str] = []
        seen = 0
        for char in value:
            if char.isdigit():
                seen += 1
                out.append(char if seen > digits - 2 else "*")
            else:
                out.append(char)
        return "".join(out)


# --- rows --------------------------------------------------------------------------------------

CALL_COLUMNS = (
    "call_id",
    "node",
    "pbx",
    "peer",
    "caller_id",
    "profile",
    "started_at",
    "answered_at",
    "ended_at",
    "duration_s",
    "end_reason",
    "transfer_target",
    "rate_hz",
    "errors",
    "recording_path",
    "updated_at",
)
TURN_COLUMNS = (
    "call_id",
    "seq",
    "turn_id",
    "kind",
    "transcript",
    "stt_confidence",
    "intent",
    "confidence",
    "dialogue",
    "reply_text",
    "reply_source",
    "fallbacks",
    "barged_in",
    "played_ms",
    "reply_audio_ms",
    "end_of_speech_to_stt_ms",
    "nlu_ms",
    "stt_to_dialogue_ms",
    "llm_first_sentence_ms",
    "tts_first_audio_ms",
    "end_of_speech_to_first_frame_ms",
    "finished_at",
)
_TURN_FIELDS = tuple(c for c in TURN_COLUMNS if c != "call_id")
_CALL_FIELDS = tuple(
    c for c in CALL_COLUMNS if c not in ("node", "duration_s", "updated_at", "errors")
)

Row = dict[str, Any]


def call_row(call: CallRecord, node: str) -> Row:
    """The call's row as it is now (a snapshot: the session keeps mutating the record)."""
    row: Row = {name: getattr(call, name) for name in _CALL_FIELDS}
    row["node"] = node
    row["duration_s"] = (
        round(call.ended_at - call.started_at, 3) if call.ended_at is not None else None
    )
    row["errors"] = list(call.errors)
    row["updated_at"] = time.time()
    return row


def turn_row(call_id: str, turn: TurnRecord, *, finished_at: float | None = None) -> Row:
    row: Row = {name: getattr(turn, name) for name in _TURN_FIELDS}
    row["call_id"] = call_id
    row["fallbacks"] = list(turn.fallbacks)
    if row["finished_at"] is None:
        row["finished_at"] = finished_at
    return row


def _redact_rows(redactor: Redactor | None, call: Row, turns: Sequence[Row]) -> None:
    if redactor is None:
        return
    call["caller_id"] = redactor.caller_id(call["caller_id"])
    call["errors"] = [redactor.text(e) for e in call["errors"]]
    for turn in turns:
        turn["transcript"] = redactor.text(turn["transcript"])
        turn["reply_text"] = redactor.text(turn["reply_text"])


# --- schema ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step; the SQL must run on both SQLite and PostgreSQL."""

    version: int
    description: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "calls and turns",
        (
            """CREATE TABLE calls (
                call_id TEXT PRIMARY KEY,
                node TEXT NOT NULL DEFAULT '',
                pbx TEXT NOT NULL,
                peer TEXT NOT NULL,
                caller_id TEXT,
                profile TEXT NOT NULL DEFAULT 'default',
                started_at DOUBLE PRECISION NOT NULL,
                answered_at DOUBLE PRECISION,
                ended_at DOUBLE PRECISION,
                duration_s DOUBLE PRECISION,
                end_reason TEXT NOT NULL DEFAULT '',
                transfer_target TEXT,
                rate_hz INTEGER NOT NULL,
                errors TEXT NOT NULL DEFAULT '[]',
                recording_path TEXT,
                updated_at DOUBLE PRECISION NOT NULL
            )""",
            "CREATE INDEX calls_started_at ON calls (started_at)",
            """CREATE TABLE turns (
                call_id TEXT NOT NULL REFERENCES calls (call_id) ON DELETE CASCADE,
                seq INTEGER NOT NULL,
                turn_id INTEGER NOT NULL,
                kind TEXT NOT NULL,
                transcript TEXT NOT NULL,
                stt_confidence DOUBLE PRECISION,
                intent TEXT,
                confidence DOUBLE PRECISION,
                dialogue TEXT NOT NULL,
                reply_text TEXT NOT NULL,
                reply_source TEXT NOT NULL,
                fallbacks TEXT NOT NULL DEFAULT '[]',
                barged_in BOOLEAN NOT NULL,
                played_ms DOUBLE PRECISION,
                reply_audio_ms DOUBLE PRECISION,
                end_of_speech_to_stt_ms DOUBLE PRECISION,
                nlu_ms DOUBLE PRECISION,
                stt_to_dialogue_ms DOUBLE PRECISION,
                llm_first_sentence_ms DOUBLE PRECISION,
                tts_first_audio_ms DOUBLE PRECISION,
                end_of_speech_to_first_frame_ms DOUBLE PRECISION,
                finished_at DOUBLE PRECISION,
                PRIMARY KEY (call_id, seq)
            )""",
        ),
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1].version


def _placeholders(n: int) -> str:
    return ", ".join("?" * n)


_CALL_UPSERT = (
    f"INSERT INTO calls ({', '.join(CALL_COLUMNS)}) VALUES ({_placeholders(len(CALL_COLUMNS))}) "
    "ON CONFLICT (call_id) DO UPDATE SET "
    "node = excluded.node, pbx = excluded.pbx, peer = excluded.peer, "
    "caller_id = COALESCE(excluded.caller_id, calls.caller_id), profile = excluded.profile, "
    "started_at = excluded.started_at, "
    "answered_at = COALESCE(excluded.answered_at, calls.answered_at), "
    "ended_at = COALESCE(excluded.ended_at, calls.ended_at), "
    "duration_s = COALESCE(excluded.duration_s, calls.duration_s), "
    "end_reason = CASE WHEN excluded.end_reason <> '' THEN excluded.end_reason "
    "ELSE calls.end_reason END, "
    "transfer_target = COALESCE(excluded.transfer_target, calls.transfer_target), "
    "rate_hz = excluded.rate_hz, errors = excluded.errors, "
    "recording_path = COALESCE(excluded.recording_path, calls.recording_path), "
    "updated_at = excluded.updated_at"
)
_TURN_UPDATES = ", ".join(
    f"{c} = excluded.{c}" for c in TURN_COLUMNS if c not in ("call_id", "seq", "finished_at")
)
_TURN_UPSERT = (
    f"INSERT INTO turns ({', '.join(TURN_COLUMNS)}) VALUES ({_placeholders(len(TURN_COLUMNS))}) "
    f"ON CONFLICT (call_id, seq) DO UPDATE SET {_TURN_UPDATES}, "
    "finished_at = COALESCE(turns.finished_at, excluded.finished_at)"
)


def _call_params(row: Row) -> tuple[Any, ...]:
    values = dict(row, errors=json.dumps(row["errors"], ensure_ascii=False))
    return tuple(values[c] for c in CALL_COLUMNS)


def _turn_params(row: Row) -> tuple[Any, ...]:
    values = dict(
        row,
        fallbacks=json.dumps(row["fallbacks"], ensure_ascii=False),
        barged_in=bool(row["barged_in"]),
    )
    return tuple(values[c] for c in TURN_COLUMNS)


def _call_from_row(row: Sequence[Any]) -> CallRecord:
    values = dict(zip(CALL_COLUMNS, row, strict=True))
    call = CallRecord(**{name: values[name] for name in _CALL_FIELDS})
    call.errors = list(json.loads(values["errors"] or "[]"))
    return call


def _turn_from_row(row: Sequence[Any]) -> tuple[str, TurnRecord]:
    values = dict(zip(TURN_COLUMNS, row, strict=True))
    turn = TurnRecord(**{name: values[name] for name in _TURN_FIELDS})
    turn.fallbacks = list(json.loads(values["fallbacks"] or "[]"))
    turn.barged_in = bool(values["barged_in"])
    return values["call_id"], turn


# --- stores ------------------------------------------------------------------------------------


class Store:
    """One connection to the analytics database. Not thread-safe: one thread at a time."""

    dialect: str = ""

    def _sql(self, text: str) -> str:
        return text

    @contextlib.contextmanager
    def _transaction(self, *, write: bool = True) -> Iterator[Any]:
        raise NotImplementedError
        yield  # pragma: no cover

    def _lock_migrations(self, cur: Any) -> None:
        """Serialise migrations of concurrent bot nodes (inside the transaction)."""

    def _has_table(self, cur: Any, name: str) -> bool:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # --- schema --------------------------------------------------------------------------

    def schema_version(self) -> int:
        with self._transaction(write=False) as cur:
            if not self._has_table(cur, "schema_version"):
                return 0
            cur.execute("SELECT MAX(version) FROM schema_version")
            found = cur.fetchone()
        return int(found[0]) if found and found[0] is not None else 0

    def migrate(self, migrations: Sequence[Migration] = MIGRATIONS) -> int:
        """Apply the pending migrations in one transaction; returns the schema version."""
        latest = migrations[-1].version
        with self._transaction() as cur:
            self._lock_migrations(cur)
            cur.execute(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                "version INTEGER PRIMARY KEY, description TEXT NOT NULL, "
                "applied_at DOUBLE PRECISION NOT NULL)"
            )
            cur.execute("SELECT MAX(version) FROM schema_version")
            found = cur.fetchone()
            current = int(found[0]) if found and found[0] is not None else 0
            if current > latest:
                raise AnalyticsError(
                    f"the analytics database has schema version {current}, newer than this "
                    f"program's {latest}: upgrade voicebot-pbx"
                )
            for migration in migrations:
                if migration.version <= current:
                    continue
                for statement in migration.statements:
                    cur.execute(statement)
                cur.execute(
                    self._sql(
                        "INSERT INTO schema_version (version, description, applied_at) "
                        "VALUES (?, ?, ?)"
                    ),
                    (migration.version, migration.description, time.time()),
                )
                log.info("analytics_migrated", dialect=self.dialect, version=migration.version)
        return max(current, latest)

    # --- writes --------------------------------------------------------------------------

    def write(self, call: Row, turns: Sequence[Row] = ()) -> None:
        """Upsert the call row and the given turns in one transaction."""
        with self._transaction() as cur:
            cur.execute(self._sql(_CALL_UPSERT), _call_params(call))
            if turns:
                cur.executemany(self._sql(_TURN_UPSERT), [_turn_params(t) for t in turns])

    def recover_unfinished(self, node: str, now: float | None = None) -> int:
        """Close the calls this node left open when its process died (a call cannot outlive
        its process): ``end_reason = process_died``, ended at its last finished turn."""
        now = time.time() if now is None else now
        with self._transaction() as cur:
            cur.execute(
                self._sql(
                    "UPDATE calls SET end_reason = 'process_died', "
                    "ended_at = COALESCE((SELECT MAX(t.finished_at) FROM turns t "
                    "WHERE t.call_id = calls.call_id), started_at), updated_at = ? "
                    "WHERE node = ? AND ended_at IS NULL AND started_at >= ?"
                ),
                (now, node, now - 2 * DAY_S),
            )
            count = int(cur.rowcount or 0)
            cur.execute(
                self._sql(
                    "UPDATE calls SET duration_s = ended_at - started_at "
                    "WHERE node = ? AND end_reason = 'process_died' AND duration_s IS NULL"
                ),
                (node,),
            )
        return count

    def delete_before(self, cutoff: float) -> tuple[int, list[str]]:
        """Delete calls started before ``cutoff`` (unix s) and their turns; returns the count
        and the recording paths they referenced."""
        with self._transaction() as cur:
            cur.execute(
                self._sql(
                    "SELECT recording_path FROM calls WHERE started_at < ? "
                    "AND recording_path IS NOT NULL"
                ),
                (cutoff,),
            )
            paths = [str(r[0]) for r in cur.fetchall()]
            cur.execute(
                self._sql(
                    "DELETE FROM turns WHERE call_id IN "
                    "(SELECT call_id FROM calls WHERE started_at < ?)"
                ),
                (cutoff,),
            )
            cur.execute(self._sql("DELETE FROM calls WHERE started_at < ?"), (cutoff,))
            count = int(cur.rowcount or 0)
        return count, paths

    # --- reads ---------------------------------------------------------------------------

    def calls(self, since: float | None = None, until: float | None = None) -> list[CallRecord]:
        """Calls started in ``[since, until)`` with their turns, oldest first."""
        where = "started_at >= ? AND started_at < ?"
        bounds = (since if since is not None else -1e18, until if until is not None else 1e18)
        with self._transaction(write=False) as cur:
            cur.execute(
                self._sql(
                    f"SELECT {', '.join(CALL_COLUMNS)} FROM calls WHERE {where} "
                    "ORDER BY started_at, call_id"
                ),
                bounds,
            )
            calls = [_call_from_row(r) for r in cur.fetchall()]
            cur.execute(
                self._sql(
                    f"SELECT {', '.join('t.' + c for c in TURN_COLUMNS)} FROM turns t "
                    "JOIN calls c ON c.call_id = t.call_id "
                    "WHERE c.started_at >= ? AND c.started_at < ? ORDER BY t.call_id, t.seq"
                ),
                bounds,
            )
            turn_rows = cur.fetchall()
        by_id = {c.call_id: c for c in calls}
        for row in turn_rows:
            call_id, turn = _turn_from_row(row)
            if call_id in by_id:
                by_id[call_id].turns.append(turn)
        return calls

    def call(self, call_id: str) -> CallRecord | None:
        """One call by id, or by a unique prefix of its id."""
        with self._transaction(write=False) as cur:
            cur.execute(
                self._sql(f"SELECT {', '.join(CALL_COLUMNS)} FROM calls WHERE call_id = ?"),
                (call_id,),
            )
            rows = cur.fetchall()
            if not rows and call_id:
                pattern = call_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                cur.execute(
                    self._sql(
                        f"SELECT {', '.join(CALL_COLUMNS)} FROM calls "
                        "WHERE call_id LIKE ? ESCAPE '\\' LIMIT 2"
                    ),
                    (pattern + "%",),
                )
                rows = cur.fetchall()
            if len(rows) != 1:
                return None
            call = _call_from_row(rows[0])
            cur.execute(
                self._sql(
                    f"SELECT {', '.join(TURN_COLUMNS)} FROM turns WHERE call_id = ? ORDER BY seq"
                ),
                (call.call_id,),
            )
            call.turns = [_turn_from_row(r)[1] for r in cur.fetchall()]
        return call


class SqliteStore(Store):
    dialect = "sqlite"

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self.conn = conn
        self.path = path

    @classmethod
    def open(cls, path: str | Path, *, create: bool = True) -> SqliteStore:
        path = Path(path)
        if not path.exists():
            if not create:
                raise AnalyticsError(f"{path}: no call records yet")
            path.parent.mkdir(parents=True, exist_ok=True)
            # Records hold caller data: owner-only (SQLite gives its -wal/-shm the same mode).
            with contextlib.suppress(FileExistsError):
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        conn = sqlite3.connect(
            str(path), isolation_level=None, timeout=10.0, check_same_thread=False
        )
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: a commit survives the process being killed (not a power cut).
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=10000")
        except sqlite3.Error:
            conn.close()
            raise
        return cls(conn, path)

    @contextlib.contextmanager
    def _transaction(self, *, write: bool = True) -> Iterator[Any]:
        cur = self.conn.cursor()
        cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield cur
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                cur.execute("ROLLBACK")
            raise
        else:
            cur.execute("COMMIT")
        finally:
            cur.close()

    def _has_table(self, cur: Any, name: str) -> bool:
        cur.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
        return cur.fetchone() is not None

    def integrity_check(self) -> str:
        found = self.conn.execute("PRAGMA integrity_check").fetchone()
        return str(found[0]) if found else ""

    def close(self) -> None:
        self.conn.close()


_PG_MIGRATION_LOCK = 0x766F6963  # pg_advisory_xact_lock key ("voic")


class PostgresStore(Store):
    dialect = "postgres"

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    @classmethod
    def connect(cls, dsn: str, *, connect_timeout_s: int = 5) -> PostgresStore:
        import psycopg

        conn = psycopg.connect(
            dsn,
            autocommit=True,
            connect_timeout=connect_timeout_s,
            application_name="voicebot-pbx",
        )
        return cls(conn)

    def _sql(self, text: str) -> str:
        return text.replace("?", "%s")

    @contextlib.contextmanager
    def _transaction(self, *, write: bool = True) -> Iterator[Any]:
        with self.conn.transaction(), self.conn.cursor() as cur:
            yield cur

    def _lock_migrations(self, cur: Any) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_MIGRATION_LOCK,))

    def _has_table(self, cur: Any, name: str) -> bool:
        cur.execute("SELECT to_regclass(%s)", (name,))
        found = cur.fetchone()
        return found is not None and found[0] is not None

    def close(self) -> None:
        self.conn.close()


def store_factory(config: AnalyticsConfig, state_dir: str | Path) -> Callable[[], Store]:
    """How to connect to the configured store (called in the writer thread)."""
    if config.backend == "postgres":
        dsn = os.environ.get(config.dsn_env, "")
        if not dsn:
            raise AnalyticsError(
                f"analytics.backend is postgres but ${config.dsn_env} (the DSN) is not set"
            )
        return lambda: PostgresStore.connect(dsn)
    path = sqlite_path(config, state_dir)
    return lambda: SqliteStore.open(path)


def open_store(config: AnalyticsConfig, state_dir: str | Path) -> Store:
    """A migrated store for reading (reports); an existing SQLite file is required."""
    if config.backend == "postgres":
        store: Store = store_factory(config, state_dir)()
    else:
        store = SqliteStore.open(sqlite_path(config, state_dir), create=False)
    try:
        if store.schema_version() < SCHEMA_VERSION:  # reading needs no write access otherwise
            store.migrate()
    except Exception:
        store.close()
        raise
    return store


# --- the recorder ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Write:
    call: Row
    turns: list[Row]
    notify: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None
    attempts: int = 0


@dataclass(slots=True)
class _Barrier:
    done: threading.Event


_STOP = object()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


@dataclass(slots=True)
class RecorderStats:
    writes: int = 0
    write_errors: int = 0
    dropped: int = 0
    backlog: int = 0
    retention_deleted: int = 0
    last_error: str = ""


class AnalyticsRecorder:
    """The session's ``Recorder`` for a ``Store``: snapshots rows on the event loop, writes
    them from one thread (which owns the connection). ``turn_finished``/``call_ended`` return
    once the write is committed (or, with the database unreachable, queued for retry; or
    after ``max_wait_s``); ``call_started`` only queues. Never raises into the call."""

    def __init__(
        self,
        connect: Callable[[], Store],
        *,
        node: str | None = None,
        redactor: Redactor | None = None,
        retention_days: int = 0,
        recordings_dir: Path | None = None,
        retry_s: float = 5.0,
        max_wait_s: float = 2.0,
        max_backlog: int = 10_000,
        max_attempts: int = 5,
    ) -> None:
        self._connect = connect
        self.node = node or socket.gethostname()
        self.redactor = redactor
        self.retention_days = retention_days
        self.recordings_dir = recordings_dir
        self.retry_s = retry_s
        self.max_wait_s = max_wait_s
        self.max_attempts = max_attempts
        self.stats = RecorderStats()
        self._queue: queue.Queue[object] = queue.Queue()
        self._backlog: deque[_Write] = deque()
        self._max_backlog = max_backlog
        self._store: Store | None = None
        self._next_connect = 0.0
        self._next_retention = 0.0
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._recovered = False

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> AnalyticsRecorder:
        with self._lock:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(
                    target=self._run, name="analytics-writer", daemon=True
                )
                self._thread.start()
        return self

    def wait_ready(self, timeout_s: float = 10.0) -> bool:
        """True once the store is connected and migrated (False if it is not, yet)."""
        return self._ready.wait(timeout_s) and self._store is not None

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until everything queued so far has been handled (written or backlogged)."""
        if self._thread is None or not self._thread.is_alive():
            return self._queue.empty()
        done = threading.Event()
        self._queue.put(_Barrier(done))
        return done.wait(timeout_s)

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued (and retry the backlog once), then close the connection."""
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is None:
            return
        self._queue.put(_STOP)
        thread.join(timeout_s)
        if thread.is_alive():
            log.error("analytics_close_timeout", timeout_s=timeout_s)

    async def aclose(self, timeout_s: float = 10.0) -> None:
        await asyncio.to_thread(self.close, timeout_s)

    # --- Recorder --------------------------------------------------------------------

    async def call_started(self, call: CallRecord) -> None:
        # Queued, not awaited: the greeting must not wait for a database.
        await self._submit(call, [], wait=False)

    async def turn_finished(self, call: CallRecord, turn: TurnRecord) -> None:
        try:
            rows = [turn_row(call.call_id, turn, finished_at=time.time())]
        except Exception as exc:
            log.error("record_snapshot_failed", error=str(exc))
            return
        await self._submit(call, rows)

    async def call_ended(self, call: CallRecord) -> None:
        try:
            rows = [turn_row(call.call_id, turn) for turn in call.turns]
        except Exception as exc:
            log.error("record_snapshot_failed", error=str(exc))
            return
        await self._submit(call, rows)

    async def _submit(self, call: CallRecord, turns: list[Row], *, wait: bool = True) -> None:
        """Queue the write; with ``wait``, return once it is committed (or backlogged), but
        after ``max_wait_s`` at most: the write stays queued either way."""
        try:
            if self._closed:
                log.warning("record_after_close", call_id=call.call_id)
                return
            self.start()
            loop = asyncio.get_running_loop()
            future: asyncio.Future[None] | None = loop.create_future() if wait else None
            notify = (loop, future) if future is not None else None
            self._queue.put(_Write(call_row(call, self.node), turns, notify))
        except Exception as exc:
            log.error("record_submit_failed", error=str(exc))
            return
        if future is None:
            return
        try:
            async with asyncio.timeout(self.max_wait_s):
                await future
        except TimeoutError:
            log.debug("record_write_slow", call_id=call.call_id, max_wait_s=self.max_wait_s)

    # --- writer thread ---------------------------------------------------------------

    def _run(self) -> None:
        self._ensure_store()
        self._ready.set()
        while True:
            timeout = self.retry_s if self._backlog else 60.0
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                item = None
            if item is _STOP:
                self._drain_backlog()
                break
            self._maintenance()
            if isinstance(item, _Write):
                self._handle(item)
            elif isinstance(item, _Barrier):
                item.done.set()
        self._drop_store()
        if self._backlog:
            log.error("analytics_backlog_lost", writes=len(self._backlog))

    def _ensure_store(self) -> bool:
        if self._store is not None:
            return True
        now = time.monotonic()
        if now < self._next_connect:
            return False
        self._next_connect = now + self.retry_s
        try:
            store = self._connect()
        except Exception as exc:
            self._note_error("analytics_connect_failed", exc)
            return False
        try:
            store.migrate()
            if not self._recovered:
                # Only at start-up: on a reconnect, this node's open calls are still live.
                recovered = store.recover_unfinished(self.node)
                self._recovered = True
                if recovered:
                    log.warning("analytics_recovered_unfinished_calls", calls=recovered)
        except Exception as exc:
            self._note_error("analytics_migrate_failed", exc)
            with contextlib.suppress(Exception):
                store.close()
            return False
        self._store = store
        self._next_retention = 0.0
        log.info("analytics_ready", dialect=store.dialect, node=self.node)
        return True

    def _drop_store(self) -> None:
        if self._store is not None:
            with contextlib.suppress(Exception):
                self._store.close()
            self._store = None

    def _note_error(self, event: str, exc: BaseException) -> None:
        self.stats.write_errors += 1
        self.stats.last_error = f"{type(exc).__name__}: {exc}"
        log.error(event, error=self.stats.last_error)

    def _handle(self, job: _Write) -> None:
        try:
            _redact_rows(self.redactor, job.call, job.turns)
        except Exception as exc:  # never store unredacted text
            self._note_error("analytics_redaction_failed", exc)
            self.stats.dropped += 1
            self._notify(job)
            return
        if self._backlog or not self._ensure_store():
            self._backlog_job(job)
        else:
            self._try_write(job)
        self._notify(job)

    def _try_write(self, job: _Write) -> bool:
        store = self._store
        if store is None:
            self._backlog_job(job)
            return False
        try:
            store.write(job.call, job.turns)
        except Exception as exc:
            job.attempts += 1
            self._note_error("analytics_write_failed", exc)
            # A lost connection or a locked database: reconnect and retry later.
            self._drop_store()
            self._next_connect = time.monotonic() + self.retry_s
            if job.attempts < self.max_attempts:
                self._backlog_job(job, front=True)
            else:
                self.stats.dropped += 1
            return False
        self.stats.writes += 1
        return True

    def _backlog_job(self, job: _Write, *, front: bool = False) -> None:
        if len(self._backlog) >= self._max_backlog:
            self._backlog.popleft()
            self.stats.dropped += 1
        if front:
            self._backlog.appendleft(job)
        else:
            self._backlog.append(job)
        self.stats.backlog = len(self._backlog)

    def _drain_backlog(self) -> None:
        while self._backlog and self._ensure_store():
            job = self._backlog.popleft()
            self.stats.backlog = len(self._backlog)
            if not self._try_write(job):
                break
        self.stats.backlog = len(self._backlog)

    @staticmethod
    def _notify(job: _Write) -> None:
        if job.notify is None:
            return
        loop, future = job.notify
        job.notify = None
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            loop.call_soon_threadsafe(_resolve, future)

    def _maintenance(self) -> None:
        if self._backlog:
            self._drain_backlog()
        if self.retention_days <= 0 or self._store is None:
            return
        now = time.monotonic()
        if now < self._next_retention:
            return
        self._next_retention = now + 3600.0
        self.apply_retention()

    def apply_retention(self) -> int:
        """Delete calls and recordings older than ``retention_days`` (writer thread, or
        before ``start``)."""
        if self.retention_days <= 0:
            return 0
        store = self._store
        if store is None:
            return 0
        cutoff = time.time() - self.retention_days * DAY_S
        try:
            count, paths = store.delete_before(cutoff)
        except Exception as exc:
            self._note_error("analytics_retention_failed", exc)
            self._drop_store()
            return 0
        files = 0
        for path in paths:
            with contextlib.suppress(OSError):
                Path(path).unlink()
                files += 1
        if self.recordings_dir is not None:
            files += purge_recordings(self.recordings_dir, cutoff)
        self.stats.retention_deleted += count
        if count or files:
            log.info("analytics_retention", calls_deleted=count, recordings_deleted=files)
        return count


def open_recorder(config: AnalyticsConfig, state_dir: str | Path) -> AnalyticsRecorder:
    """The configured recorder, started (connects and migrates in its thread)."""
    return AnalyticsRecorder(
        store_factory(config, state_dir),
        node=node_name(config),
        redactor=Redactor.from_config(config),
        retention_days=config.retention_days,
        recordings_dir=recordings_dir(config, state_dir),
    ).start()
