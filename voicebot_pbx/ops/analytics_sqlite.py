"""The SQLite analytics store (the default): the file is created owner-only, opened in WAL
mode with ``synchronous=NORMAL`` (a commit survives the process being killed) and foreign
keys on; ``BEGIN IMMEDIATE`` write transactions."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from voicebot_pbx.ops.analytics_store import AnalyticsError, Store


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
