"""A campaign's state on disk (SQLite, ``[campaign] db_path``): the contacts with their
status and next due time, every attempt, and the do-not-call list.

The runner writes an attempt *before* it dials (status ``dialling``) and its outcome after,
so a runner that dies mid-call leaves ``dialling`` rows; ``recover`` turns them into
``interrupted`` (never redialled automatically: the call may have reached the person).
Resuming a campaign is running it again by name with the same contact file; another file
under a used name is refused. All methods are blocking and short; the runner calls them
from a worker thread.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from voicebot_pbx.campaign.contacts import Contact, normalise_number
from voicebot_pbx.config import Config

_SCHEMA = """
CREATE TABLE IF NOT EXISTS campaigns (
    name TEXT PRIMARY KEY, source TEXT NOT NULL, sha256 TEXT NOT NULL, created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS contacts (
    campaign TEXT NOT NULL, seq INTEGER NOT NULL, number TEXT NOT NULL, name TEXT NOT NULL,
    profile TEXT NOT NULL, timezone TEXT NOT NULL, variables TEXT NOT NULL,
    status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_at REAL NOT NULL,
    last_outcome TEXT NOT NULL DEFAULT '', updated_at REAL NOT NULL,
    PRIMARY KEY (campaign, seq)
);
CREATE INDEX IF NOT EXISTS contacts_due ON contacts (campaign, status, next_at);
CREATE TABLE IF NOT EXISTS attempts (
    campaign TEXT NOT NULL, seq INTEGER NOT NULL, attempt INTEGER NOT NULL,
    call_id TEXT NOT NULL, started_at REAL NOT NULL, ended_at REAL, outcome TEXT,
    detail TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (campaign, seq, attempt)
);
CREATE TABLE IF NOT EXISTS dnc (
    number_key TEXT PRIMARY KEY, added_at REAL NOT NULL, source TEXT NOT NULL
);
"""


def store_path(config: Config) -> Path:
    """Where the campaigns' state lives: ``[campaign] db_path``, else the state dir's."""
    if config.campaign.db_path:
        return Path(config.campaign.db_path)
    return Path(config.state_dir) / "campaigns.sqlite"


class CampaignError(ValueError):
    """A campaign that cannot be started or resumed as asked (one line)."""


@dataclass(frozen=True, slots=True)
class DueContact:
    contact: Contact
    attempts: int


class CampaignStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(str(path), timeout=5.0, check_same_thread=False)
        self._lock = threading.Lock()
        with self._tx() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._db:
            yield self._db

    # --- campaigns ---------------------------------------------------------------------

    def open_campaign(
        self, name: str, contacts: Sequence[Contact], *, source: str, sha256: str, now: float
    ) -> bool:
        """Create the campaign, or resume it (same contact file). True when created."""
        with self._tx() as db:
            row = db.execute("SELECT sha256, source FROM campaigns WHERE name = ?", (name,))
            found = row.fetchone()
            if found is not None:
                if found[0] != sha256:
                    raise CampaignError(
                        f"campaign {name!r} was started with another contact list ({found[1]});"
                        " use a new name"
                    )
                return False
            db.execute("INSERT INTO campaigns VALUES (?, ?, ?, ?)", (name, source, sha256, now))
            db.executemany(
                "INSERT INTO contacts (campaign, seq, number, name, profile, timezone,"
                " variables, status, attempts, next_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?)",
                [
                    (
                        name,
                        c.seq,
                        c.number,
                        c.name,
                        c.profile,
                        c.timezone,
                        json.dumps(list(c.variables)),
                        now,
                        now,
                    )
                    for c in contacts
                ],
            )
            return True

    def campaigns(self) -> list[str]:
        with self._tx() as db:
            return [r[0] for r in db.execute("SELECT name FROM campaigns ORDER BY created_at")]

    def recover(self, name: str, now: float) -> int:
        """Calls left in flight by a runner that stopped: ``interrupted``. Returns how many."""
        with self._tx() as db:
            db.execute(
                "UPDATE attempts SET ended_at = ?, outcome = 'interrupted'"
                " WHERE campaign = ? AND outcome IS NULL",
                (now, name),
            )
            cursor = db.execute(
                "UPDATE contacts SET status = 'interrupted', last_outcome = 'interrupted',"
                " updated_at = ? WHERE campaign = ? AND status = 'dialling'",
                (now, name),
            )
            return cursor.rowcount

    # --- dialling ----------------------------------------------------------------------

    def due(self, name: str, now: float, limit: int) -> list[DueContact]:
        with self._tx() as db:
            rows = db.execute(
                "SELECT seq, number, name, profile, timezone, variables, attempts FROM contacts"
                " WHERE campaign = ? AND status = 'pending' AND next_at <= ?"
                " ORDER BY next_at, seq LIMIT ?",
                (name, now, limit),
            ).fetchall()
        return [
            DueContact(
                Contact(
                    seq=r[0],
                    number=r[1],
                    name=r[2],
                    profile=r[3],
                    timezone=r[4],
                    variables=tuple((k, v) for k, v in json.loads(r[5])),
                ),
                attempts=r[6],
            )
            for r in rows
        ]

    def call_ids(self, name: str, *, outcome: str) -> set[str]:
        """The call ids of the campaign's attempts that ended in ``outcome``."""
        with self._tx() as db:
            rows = db.execute(
                "SELECT call_id FROM attempts WHERE campaign = ? AND outcome = ?", (name, outcome)
            ).fetchall()
        return {str(r[0]) for r in rows}

    def next_due_at(self, name: str) -> float | None:
        with self._tx() as db:
            row = db.execute(
                "SELECT MIN(next_at) FROM contacts WHERE campaign = ? AND status = 'pending'",
                (name,),
            ).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def contact_number(self, name: str, seq: int) -> str | None:
        with self._tx() as db:
            row = db.execute(
                "SELECT number FROM contacts WHERE campaign = ? AND seq = ?", (name, seq)
            ).fetchone()
        return None if row is None else str(row[0])

    def postpone(self, name: str, seq: int, until: float, now: float) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE contacts SET next_at = ?, updated_at = ? WHERE campaign = ? AND seq = ?",
                (until, now, name, seq),
            )

    def skip_dnc(self, name: str, seq: int, now: float) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE contacts SET status = 'dnc', updated_at = ? WHERE campaign = ? AND seq = ?",
                (now, name, seq),
            )

    def start_attempt(self, name: str, seq: int, call_id: str, now: float) -> int:
        """Record the attempt before dialling; its number (1-based)."""
        with self._tx() as db:
            row = db.execute(
                "SELECT attempts, status FROM contacts WHERE campaign = ? AND seq = ?",
                (name, seq),
            ).fetchone()
            if row is None or row[1] != "pending":
                raise CampaignError(f"contact {seq} of {name!r} is not pending")
            attempt = int(row[0]) + 1
            db.execute(
                "UPDATE contacts SET status = 'dialling', attempts = ?, updated_at = ?"
                " WHERE campaign = ? AND seq = ?",
                (attempt, now, name, seq),
            )
            db.execute(
                "INSERT INTO attempts (campaign, seq, attempt, call_id, started_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (name, seq, attempt, call_id, now),
            )
            return attempt

    def cancel_attempt(self, name: str, seq: int, attempt: int, now: float) -> None:
        """The dial never went out (the PBX link was down): as if it had not been tried."""
        with self._tx() as db:
            db.execute(
                "DELETE FROM attempts WHERE campaign = ? AND seq = ? AND attempt = ?",
                (name, seq, attempt),
            )
            db.execute(
                "UPDATE contacts SET status = 'pending', attempts = attempts - 1, next_at = ?,"
                " updated_at = ? WHERE campaign = ? AND seq = ?",
                (now, now, name, seq),
            )

    def finish_attempt(
        self,
        name: str,
        seq: int,
        attempt: int,
        *,
        outcome: str,
        detail: str,
        now: float,
        retry_at: float | None,
    ) -> None:
        """The attempt's outcome; the contact is due again at ``retry_at``, or finished
        (``done`` when answered, else ``exhausted``)."""
        if retry_at is not None:
            status, next_at = "pending", retry_at
        else:
            status, next_at = ("done" if outcome == "answered" else "exhausted"), now
        with self._tx() as db:
            row = db.execute(
                "SELECT outcome FROM attempts WHERE campaign = ? AND seq = ? AND attempt = ?",
                (name, seq, attempt),
            ).fetchone()
            if row is not None and row[0] == "machine":
                return  # the bot already found a machine on this answered call
            db.execute(
                "UPDATE attempts SET ended_at = ?, outcome = ?, detail = ?"
                " WHERE campaign = ? AND seq = ? AND attempt = ?",
                (now, outcome, detail[:500], name, seq, attempt),
            )
            db.execute(
                "UPDATE contacts SET status = ?, next_at = ?, last_outcome = ?, updated_at = ?"
                " WHERE campaign = ? AND seq = ?",
                (status, next_at, outcome, now, name, seq),
            )

    def mark_machine(
        self, name: str, call_id: str, *, now: float, retry_after: Callable[[int], float | None]
    ) -> bool:
        """The bot found an answering machine on this call: the attempt's outcome becomes
        ``machine`` and the contact is due again after ``retry_after(attempt)`` seconds (or
        exhausted). False when the call is not one of the campaign's attempts."""
        with self._tx() as db:
            found = _attempt_of(db, name, call_id)
            if found is None:
                return False
            seq, attempt = found
            db.execute(
                "UPDATE attempts SET outcome = 'machine', ended_at = COALESCE(ended_at, ?)"
                " WHERE campaign = ? AND seq = ? AND attempt = ?",
                (now, name, seq, attempt),
            )
            after_s = retry_after(attempt)
            status, next_at = ("exhausted", now) if after_s is None else ("pending", now + after_s)
            db.execute(
                "UPDATE contacts SET status = ?, next_at = ?, last_outcome = 'machine',"
                " updated_at = ? WHERE campaign = ? AND seq = ? AND status IN ('done', 'dialling')",
                (status, next_at, now, name, seq),
            )
            return True

    def unmark_machine(self, name: str, call_id: str, *, now: float) -> bool:
        """The bot took back its machine verdict on this call (a person talked over the
        voicemail message): the attempt is ``answered`` again and its contact ``done``, as
        the runner wrote them when the call was answered (a runner that has not written
        its outcome yet still does). False when the call is not one of the campaign's
        attempts marked ``machine``."""
        with self._tx() as db:
            found = _attempt_of(db, name, call_id, outcome="machine")
            if found is None:
                return False
            seq, attempt = found
            db.execute(
                "UPDATE attempts SET outcome = 'answered'"
                " WHERE campaign = ? AND seq = ? AND attempt = ?",
                (name, seq, attempt),
            )
            db.execute(
                "UPDATE contacts SET status = 'done', next_at = ?, last_outcome = 'answered',"
                " updated_at = ? WHERE campaign = ? AND seq = ? AND last_outcome = 'machine'"
                " AND status IN ('pending', 'exhausted')",
                (now, now, name, seq),
            )
            return True

    # --- do not call -------------------------------------------------------------------

    def is_dnc(self, number: str) -> bool:
        with self._tx() as db:
            row = db.execute(
                "SELECT 1 FROM dnc WHERE number_key = ?", (normalise_number(number),)
            ).fetchone()
        return row is not None

    def add_dnc(self, number: str, *, source: str, now: float) -> bool:
        """True when the number was not on the list yet."""
        with self._tx() as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO dnc VALUES (?, ?, ?)",
                (normalise_number(number), now, source),
            )
            return cursor.rowcount == 1

    def remove_dnc(self, number: str) -> bool:
        with self._tx() as db:
            cursor = db.execute("DELETE FROM dnc WHERE number_key = ?", (normalise_number(number),))
            return cursor.rowcount == 1

    def dnc_numbers(self) -> list[tuple[str, float, str]]:
        with self._tx() as db:
            return [
                (r[0], float(r[1]), r[2])
                for r in db.execute("SELECT number_key, added_at, source FROM dnc ORDER BY 1")
            ]

    # --- report ------------------------------------------------------------------------

    def summary(self, name: str) -> dict[str, object]:
        """Contacts by status, attempts by outcome, for ``campaign status``."""
        with self._tx() as db:
            found = db.execute(
                "SELECT source, created_at FROM campaigns WHERE name = ?", (name,)
            ).fetchone()
            if found is None:
                raise CampaignError(f"no campaign named {name!r}")
            statuses = dict(
                db.execute(
                    "SELECT status, COUNT(*) FROM contacts WHERE campaign = ? GROUP BY status",
                    (name,),
                ).fetchall()
            )
            outcomes = dict(
                db.execute(
                    "SELECT outcome, COUNT(*) FROM attempts WHERE campaign = ?"
                    " AND outcome IS NOT NULL GROUP BY outcome",
                    (name,),
                ).fetchall()
            )
            total = db.execute(
                "SELECT COUNT(*) FROM contacts WHERE campaign = ?", (name,)
            ).fetchone()[0]
            opted_out = db.execute(
                "SELECT COUNT(*) FROM dnc WHERE source = ?", (f"opt_out:{name}",)
            ).fetchone()[0]
            in_flight = db.execute(
                "SELECT COUNT(*) FROM attempts WHERE campaign = ? AND outcome IS NULL", (name,)
            ).fetchone()[0]
        return {
            "campaign": name,
            "source": found[0],
            "created_at": found[1],
            "contacts": total,
            "status": statuses,
            "attempts": outcomes,
            "in_flight": in_flight,
            "opted_out": opted_out,
        }


def _attempt_of(
    db: sqlite3.Connection, name: str, call_id: str, *, outcome: str | None = None
) -> tuple[int, int] | None:
    """(seq, attempt) of the campaign's attempt that placed ``call_id`` (with ``outcome``
    only, when given); None when there is none."""
    sql = "SELECT seq, attempt FROM attempts WHERE campaign = ? AND call_id = ?"
    args: tuple[str, ...] = (name, call_id)
    if outcome is not None:
        sql, args = sql + " AND outcome = ?", (*args, outcome)
    row = db.execute(sql, args).fetchone()
    return None if row is None else (int(row[0]), int(row[1]))
