"""The post-call webhook's durable queue: one SQLite file in the state folder.

A call record to be POSTed to the CRM is ``put`` here first (committed with
``synchronous=FULL`` before ``put`` returns), and only ``done`` deletes it, after the CRM
answered 2xx. So a CRM outage, a hung CRM or a bot restart (crash, kill, deploy) loses
nothing: the sender reopens the file and carries on where it left off. Delivery is
therefore at-least-once (a crash between the 2xx and ``done`` sends it again).

Each row carries its back-off state (``attempts``, ``next_at``, ``last_error``), so the
schedule survives restarts too. ``due`` hands out the oldest rows whose ``next_at`` has
passed.

The queue is bounded (``max_rows``, default 100 000): when it is full, ``put`` drops the
OLDEST row (one ``webhook_outbox_full`` warning per drop), so a CRM that is down for weeks,
or a URL that always answers 4xx, cannot fill the disk; the newest calls are kept.

This is plain synchronous code (the async shell in ``webhook`` calls it through
``asyncio.to_thread``); one connection, shared between threads under a lock. One process
owns the file at a time.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

DEFAULT_MAX_ROWS = 100_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY,
    call_id TEXT NOT NULL,
    body BLOB NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS outbox_next_at ON outbox(next_at);
"""


@dataclass(frozen=True, slots=True)
class Delivery:
    """One queued POST: ``attempts`` is the number of failed tries so far."""

    id: int
    call_id: str
    body: bytes
    attempts: int
    created_at: float


class Outbox:
    """A bounded, durable FIFO of webhook bodies over SQLite (WAL). Thread-safe."""

    def __init__(self, path: Path, *, max_rows: int = DEFAULT_MAX_ROWS) -> None:
        if max_rows < 1:
            raise ValueError("max_rows must be at least 1")
        self.path = path
        self.max_rows = max_rows
        self.dropped = 0  # rows dropped because the queue was full (this process)
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db: sqlite3.Connection | None = sqlite3.connect(
            str(path), check_same_thread=False, isolation_level=None, timeout=10.0
        )
        with self._lock:
            db = self._db
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise sqlite3.ProgrammingError("outbox is closed")
        return self._db

    def put(self, call_id: str, body: bytes, now: float) -> int:
        """Queue ``body``, due at once; returns its id. Drops the oldest rows when full."""
        with self._lock:
            db = self._conn()
            db.execute("BEGIN IMMEDIATE")
            try:
                (count,) = db.execute("SELECT COUNT(*) FROM outbox").fetchone()
                excess = int(count) - self.max_rows + 1
                dropped: list[tuple[int, str]] = []
                if excess > 0:
                    dropped = [
                        (int(row[0]), str(row[1]))
                        for row in db.execute(
                            "SELECT id, call_id FROM outbox ORDER BY id LIMIT ?", (excess,)
                        )
                    ]
                    db.execute(
                        "DELETE FROM outbox WHERE id IN"
                        " (SELECT id FROM outbox ORDER BY id LIMIT ?)",
                        (excess,),
                    )
                cursor = db.execute(
                    "INSERT INTO outbox (call_id, body, created_at, attempts, next_at)"
                    " VALUES (?, ?, ?, 0, ?)",
                    (call_id, body, now, now),
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            row_id = cursor.lastrowid
            assert row_id is not None
            if dropped:
                self.dropped += len(dropped)
                log.warning(
                    "webhook_outbox_full",
                    max_rows=self.max_rows,
                    dropped=len(dropped),
                    dropped_call_ids=[call for _, call in dropped][:5],
                    dropped_total=self.dropped,
                )
            return row_id

    def due(self, now: float, limit: int) -> list[Delivery]:
        """Up to ``limit`` rows whose ``next_at`` <= ``now``, oldest first."""
        with self._lock:
            rows = (
                self._conn()
                .execute(
                    "SELECT id, call_id, body, attempts, created_at FROM outbox"
                    " WHERE next_at <= ? ORDER BY id LIMIT ?",
                    (now, limit),
                )
                .fetchall()
            )
        return [
            Delivery(
                id=int(row[0]),
                call_id=str(row[1]),
                body=bytes(row[2]),
                attempts=int(row[3]),
                created_at=float(row[4]),
            )
            for row in rows
        ]

    def done(self, id: int) -> None:
        """Delivered: delete the row (a no-op if it was dropped meanwhile)."""
        with self._lock:
            self._conn().execute("DELETE FROM outbox WHERE id = ?", (id,))

    def retry(self, id: int, error: str, next_at: float) -> None:
        """Failed: count the attempt, keep ``error``, try again at ``next_at``."""
        with self._lock:
            self._conn().execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?, next_at = ?"
                " WHERE id = ?",
                (error, next_at, id),
            )

    def pending(self) -> int:
        with self._lock:
            (count,) = self._conn().execute("SELECT COUNT(*) FROM outbox").fetchone()
        return int(count)

    def next_due_at(self) -> float | None:
        """The earliest ``next_at`` (None when the queue is empty)."""
        with self._lock:
            (value,) = self._conn().execute("SELECT MIN(next_at) FROM outbox").fetchone()
        return None if value is None else float(value)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
