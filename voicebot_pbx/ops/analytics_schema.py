"""The analytics schema and the record <-> row mapping, the same for SQLite and PostgreSQL.

Owns the column lists of ``calls`` and ``turns``, the numbered ``MIGRATIONS`` (portable SQL;
timestamps are unix seconds as DOUBLE PRECISION; ``SCHEMA_VERSION`` is the last one), the
snapshot of a ``CallRecord`` / ``TurnRecord`` as a ``Row``, the idempotent upserts (keyed by
``call_id`` and ``(call_id, seq)``) with their parameters, and the records rebuilt from rows
read back. No I/O.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from voicebot_pbx.ops.records import CallRecord, TurnRecord

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


CALL_UPSERT = (
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
TURN_UPSERT = (
    f"INSERT INTO turns ({', '.join(TURN_COLUMNS)}) VALUES ({_placeholders(len(TURN_COLUMNS))}) "
    f"ON CONFLICT (call_id, seq) DO UPDATE SET {_TURN_UPDATES}, "
    "finished_at = COALESCE(turns.finished_at, excluded.finished_at)"
)


def call_params(row: Row) -> tuple[Any, ...]:
    values = dict(row, errors=json.dumps(row["errors"], ensure_ascii=False))
    return tuple(values[c] for c in CALL_COLUMNS)


def turn_params(row: Row) -> tuple[Any, ...]:
    values = dict(
        row,
        fallbacks=json.dumps(row["fallbacks"], ensure_ascii=False),
        barged_in=bool(row["barged_in"]),
    )
    return tuple(values[c] for c in TURN_COLUMNS)


def call_from_row(row: Sequence[Any]) -> CallRecord:
    values = dict(zip(CALL_COLUMNS, row, strict=True))
    call = CallRecord(**{name: values[name] for name in _CALL_FIELDS})
    call.errors = list(json.loads(values["errors"] or "[]"))
    return call


def turn_from_row(row: Sequence[Any]) -> tuple[str, TurnRecord]:
    values = dict(zip(TURN_COLUMNS, row, strict=True))
    turn = TurnRecord(**{name: values[name] for name in _TURN_FIELDS})
    turn.fallbacks = list(json.loads(values["fallbacks"] or "[]"))
    turn.barged_in = bool(values["barged_in"])
    return values["call_id"], turn
