"""The call-analytics recorder: call and turn records written to the configured store.

``AnalyticsRecorder`` implements the session's ``Recorder``: every write is an idempotent
upsert of the call row plus the given turns (keyed by ``(call_id, seq)``), done by one writer
thread that owns the connection, so the event loop never touches the database. A turn is
committed when its ``turn_finished`` returns, so killing the process loses at most the turn
in progress, and SQLite's WAL keeps the file consistent. When the database is unreachable,
writes wait in a bounded backlog and are retried.

Redaction (``AnalyticsConfig.redact``, see ``redaction``) is applied before anything is
written; retention deletes calls (and their recordings) older than ``retention_days``, at
start-up and hourly. ``open_recorder`` builds the configured recorder. The schema is in
``analytics_schema``, the stores in ``analytics_store`` / ``analytics_sqlite`` /
``analytics_postgres``, their configuration in ``analytics_open``.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from voicebot_pbx.config import AnalyticsConfig
from voicebot_pbx.ops.analytics_open import node_name, recordings_dir, store_factory
from voicebot_pbx.ops.analytics_schema import Row, call_row, turn_row
from voicebot_pbx.ops.analytics_store import DAY_S, Store
from voicebot_pbx.ops.recording import purge_recordings
from voicebot_pbx.ops.records import CallRecord, TurnRecord
from voicebot_pbx.ops.redaction import Redactor, redact_rows

log = structlog.get_logger("voicebot_pbx.ops.analytics")


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
            redact_rows(self.redactor, job.call, job.turns)
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
