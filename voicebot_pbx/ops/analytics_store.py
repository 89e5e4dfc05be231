"""The analytics store: one connection to the call-records database, dialect-neutral.

``Store`` owns what both back ends do with the schema of ``analytics_schema``: migrations
(``schema_version``, applied in one transaction), the upsert of a call row and its turns,
closing the calls a dead process left open, the retention delete, and reading calls back
as records, whole (``calls``) or a page at a time, newest first, filtered in SQL
(``calls_page`` with a ``CallQuery``). The dialects (``analytics_sqlite``,
``analytics_postgres``) supply the connection, transactions and the placeholder style.
``AnalyticsError`` is the store's can't-be-used error.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from voicebot_pbx.ops.analytics_schema import (
    CALL_COLUMNS,
    CALL_UPSERT,
    MIGRATIONS,
    TURN_COLUMNS,
    TURN_UPSERT,
    Migration,
    Row,
    call_from_row,
    call_params,
    turn_from_row,
    turn_params,
)
from voicebot_pbx.ops.records import CallRecord

log = structlog.get_logger("voicebot_pbx.ops.analytics_store")

DAY_S = 86400.0


# calls_page: the most calls one page may hold.
MAX_PAGE_SIZE = 500


class AnalyticsError(RuntimeError):
    """The analytics store cannot be used (missing DSN, missing database, newer schema)."""


ValueTest = Callable[[str], bool]


@dataclass(frozen=True, slots=True)
class CallQuery:
    """Which calls ``calls_page`` returns: started in ``[since, until)`` and passing every
    test given. A test is a function over one column's value; the store runs it on the
    column's distinct values (few: profiles, transfer targets, end reasons, intents,
    fallback lists) and filters with ``column IN (the values it accepted)``, so the caller's
    own rules (case folding, end classes, substrings) hold exactly and the rows are still
    filtered, sorted and counted in SQL."""

    since: float | None = None
    until: float | None = None
    end_reason: ValueTest | None = None
    profile: ValueTest | None = None
    transfer_target: ValueTest | None = None  # calls with no transfer never pass
    intent: ValueTest | None = None  # any turn's intent
    fallback: ValueTest | None = None  # any turn's fallback (each fallback of the turn)


@dataclass(slots=True)
class CallPage:
    """One page of ``calls_page``: the calls (newest first, with their turns) and how many
    calls match in all."""

    calls: list[CallRecord] = field(default_factory=list)
    total: int = 0


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
            cur.execute(self._sql(CALL_UPSERT), call_params(call))
            if turns:
                cur.executemany(self._sql(TURN_UPSERT), [turn_params(t) for t in turns])

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
            calls = [call_from_row(r) for r in cur.fetchall()]
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
            call_id, turn = turn_from_row(row)
            if call_id in by_id:
                by_id[call_id].turns.append(turn)
        return calls

    def calls_page(self, query: CallQuery, *, limit: int, offset: int = 0) -> CallPage:
        """The calls ``query`` matches, newest first (``started_at``, then ``call_id``,
        descending), ``limit`` of them (at most ``MAX_PAGE_SIZE``) after skipping ``offset``,
        each with its turns; and the count of all that match. Reads one page of rows: the
        filtering, ordering and counting happen in the database."""
        if not 1 <= limit <= MAX_PAGE_SIZE:
            raise ValueError(f"limit must be 1..{MAX_PAGE_SIZE}, not {limit}")
        if offset < 0:
            raise ValueError(f"offset must be >= 0, not {offset}")
        with self._transaction(write=False) as cur:
            where, params = self._page_where(cur, query)
            if where is None:  # a test no stored value passes
                return CallPage()
            cur.execute(self._sql(f"SELECT COUNT(*) FROM calls WHERE {where}"), params)
            found = cur.fetchone()
            total = int(found[0]) if found else 0
            if offset >= total:
                return CallPage(total=total)
            cur.execute(
                self._sql(
                    f"SELECT {', '.join(CALL_COLUMNS)} FROM calls WHERE {where} "
                    "ORDER BY started_at DESC, call_id DESC LIMIT ? OFFSET ?"
                ),
                (*params, limit, offset),
            )
            calls = [call_from_row(r) for r in cur.fetchall()]
            if calls:
                marks = ", ".join("?" * len(calls))
                cur.execute(
                    self._sql(
                        f"SELECT {', '.join(TURN_COLUMNS)} FROM turns "
                        f"WHERE call_id IN ({marks}) ORDER BY call_id, seq"
                    ),
                    tuple(c.call_id for c in calls),
                )
                by_id = {c.call_id: c for c in calls}
                for row in cur.fetchall():
                    call_id, turn = turn_from_row(row)
                    by_id[call_id].turns.append(turn)
        return CallPage(calls=calls, total=total)

    def _page_where(self, cur: Any, query: CallQuery) -> tuple[str | None, tuple[Any, ...]]:
        """The WHERE clause and parameters of ``query``; None when a test passes nothing."""
        clauses = ["started_at >= ?", "started_at < ?"]
        params: list[Any] = [
            query.since if query.since is not None else -1e18,
            query.until if query.until is not None else 1e18,
        ]
        column_tests: list[tuple[str, str, ValueTest | None, bool]] = [
            ("calls", "end_reason", query.end_reason, False),
            ("calls", "profile", query.profile, False),
            ("calls", "transfer_target", query.transfer_target, False),
            ("turns", "intent", query.intent, False),
            ("turns", "fallbacks", query.fallback, True),
        ]
        for table, column, test, json_list in column_tests:
            if test is None:
                continue
            cur.execute(f"SELECT DISTINCT {column} FROM {table} WHERE {column} IS NOT NULL")
            values = [str(r[0]) for r in cur.fetchall()]
            if json_list:
                accepted = [v for v in values if any(test(str(f)) for f in json.loads(v or "[]"))]
            else:
                accepted = [v for v in values if test(v)]
            if not accepted:
                return None, ()
            marks = ", ".join("?" * len(accepted))
            if table == "calls":
                clauses.append(f"{column} IN ({marks})")
            else:
                clauses.append(
                    f"call_id IN (SELECT call_id FROM turns WHERE {column} IN ({marks}))"
                )
            params += accepted
        return " AND ".join(clauses), tuple(params)

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
            call = call_from_row(rows[0])
            cur.execute(
                self._sql(
                    f"SELECT {', '.join(TURN_COLUMNS)} FROM turns WHERE call_id = ? ORDER BY seq"
                ),
                (call.call_id,),
            )
            call.turns = [turn_from_row(r)[1] for r in cur.fetchall()]
        return call
