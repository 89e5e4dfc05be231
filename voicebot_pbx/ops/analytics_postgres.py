"""The PostgreSQL analytics store (shared by several bot nodes): psycopg in autocommit with
explicit transactions, ``%s`` placeholders, and migrations serialised across nodes by a
transaction-level advisory lock."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from voicebot_pbx.ops.analytics_store import Store

_PG_MIGRATION_LOCK = 0x766F6963  # pg_advisory_xact_lock key ("voic")


class PostgresStore(Store):
    dialect = "postgres"

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    @classmethod
    def connect(cls, dsn: str, *, connect_timeout_s: int = 5) -> PostgresStore:
        # Lazy: psycopg is an optional dependency, needed only with backend = postgres.
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
